"""Shared CLI output: JSON, tables, messages, progress bars.

Every command module uses these so output looks the same everywhere.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

# Rich loads on first output (and its progress bars only with one): plain
# ``kvmops guest exec`` and ``--json`` never pay for it (kvmops.cli.main: quick start-up).
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


def _width() -> int | None:
    """Piped output is not cut to 80 columns: IDs and paths are what users type next."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None  # the terminal's width (or COLUMNS)
    return 1000


@cache
def _consoles() -> tuple[Console, Console]:
    from rich.console import Console

    return Console(width=_width()), Console(stderr=True)


def __getattr__(name: str) -> Any:
    """``console`` and ``err_console``, made on first use."""
    if name == "console":
        return _consoles()[0]
    if name == "err_console":
        return _consoles()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    """Machine-readable output: plain JSON on stdout, no colours, no wrapping."""
    sys.stdout.write(json.dumps(_plain(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None
                ) -> None:
    from rich.table import Table

    table = Table(title=title, show_edge=False, header_style="bold")
    for column in columns:
        # fold: a long value wraps inside its cell, it is never cut off with an ellipsis
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _consoles()[0].print(table)


def print_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """A two-column ``key: value`` listing, like ``virsh dominfo``."""
    from rich.table import Table

    table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in fields:
        table.add_row(f"{key}:", "" if value is None else str(value))
    _consoles()[0].print(table)


def info(message: str) -> None:
    _consoles()[0].print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    _consoles()[1].print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def byte_progress(transient: bool = False) -> Progress:
    """A Rich progress bar for byte counts: done/total, rate, ETA."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_consoles()[1],
        transient=transient,
    )


def percent_progress(transient: bool = False) -> Progress:
    """A Rich progress bar for work measured in percent."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=_consoles()[1],
        transient=transient,
    )


class LazyBar:
    """A byte progress bar that appears on the first update, so a command that fails
    before any work (lock held, VM missing) prints only its one error line."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def update(self, done: int, total: int) -> None:
        if self._progress is None:
            self._progress = byte_progress()
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=total or None)
        assert self._task is not None
        self._progress.update(self._task, completed=done, total=total or None)

    def __enter__(self) -> LazyBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
