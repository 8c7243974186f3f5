"""Shared CLI output: JSON, tables, messages, progress bars.

Every command module uses these so output looks the same everywhere.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

# Rich loads only for messages and progress bars: tables, key/value listings and JSON are
# plain text, so ``kvmops vm list``/``vm info``/``guest exec`` never pay for it
# (kvmops.cli.main: quick start-up).
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
    """JSON-ready: pydantic models by their ``model_dump`` (recognised by the method, so
    pydantic is never imported here), dataclasses field by field."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def print_json(value: Any) -> None:
    """Machine-readable output: plain JSON on stdout, no colours, no wrapping."""
    sys.stdout.write(json.dumps(_plain(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _columns(text: str) -> int:
    """Terminal columns of ``text`` (wide East Asian characters take two)."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _columns(text))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None
                ) -> None:
    """A plain-text table like virsh's: a header, a rule, the rows (a value with line
    breaks takes more lines); values are never cut or wrapped (IDs and paths are what
    users type next), markup is not read."""
    cells = [[_cell(v).split("\n") for v in row] for row in rows]
    widths = [max([_columns(column), *(_columns(line) for row in cells for line in row[i])])
              for i, column in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return " " + "   ".join(_pad(v, w) for v, w in zip(values, widths, strict=True)).rstrip()

    lines = [] if title is None else [title]
    lines += [line(columns), "-" * (sum(widths) + 3 * (len(widths) - 1) + 2)]
    for row in cells:
        for n in range(max((len(c) for c in row), default=1)):
            lines.append(line([c[n] if n < len(c) else "" for c in row]))
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def print_fields(fields: Iterable[tuple[str, Any]]) -> None:
    """A two-column ``key: value`` listing, like ``virsh dominfo``."""
    items = [(f"{key}:", _cell(value)) for key, value in fields]
    width = max((_columns(key) for key, _ in items), default=0)
    sys.stdout.write("".join(f"{_pad(key, width)} {value}".rstrip() + "\n"
                             for key, value in items))
    sys.stdout.flush()


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
