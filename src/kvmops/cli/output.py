"""Shared CLI output: JSON, tables, messages, progress bars.

Every command module uses these so output looks the same everywhere.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table


def _width() -> int | None:
    """Piped output is not cut to 80 columns: IDs and paths are what users type next."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None  # the terminal's width (or COLUMNS)
    return 1000


console = Console(width=_width())
err_console = Console(stderr=True)


def _plain(value: Any) -> Any:
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
    table = Table(title=title, show_edge=False, header_style="bold")
    for column in columns:
        # fold: a long value wraps inside its cell, it is never cut off with an ellipsis
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def print_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """A two-column ``key: value`` listing, like ``virsh dominfo``."""
    table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in fields:
        table.add_row(f"{key}:", "" if value is None else str(value))
    console.print(table)


def info(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def byte_progress(transient: bool = False) -> Progress:
    """A Rich progress bar for byte counts: done/total, rate, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


def percent_progress(transient: bool = False) -> Progress:
    """A Rich progress bar for work measured in percent."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=err_console,
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
