"""Plain records for the results on quick paths (``kvmops vm list``, ``vm info``).

A :class:`Record` is a stdlib dataclass that also answers the two pydantic methods the
rest of kvmops calls on results (``model_dump``, ``model_copy``), so a module whose
results are records never imports pydantic (about a third of a CLI command's start-up).
FastAPI takes dataclasses as response models as they are.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection
from datetime import date, datetime
from pathlib import PurePath
from typing import Any, Literal, Self

__all__ = ["Record"]


def _dumped(value: Any, json: bool) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _dumped(getattr(value, f.name), json) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_dumped(v, json) for v in value]
    if isinstance(value, dict):
        return {k: _dumped(v, json) for k, v in value.items()}
    if not json:
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


class Record:
    """Base of a ``@dataclass``: ``model_dump``/``model_copy`` as pydantic's models have."""

    def model_dump(self, *, mode: Literal["python", "json"] | str = "python",
                   exclude: Collection[str] | None = None) -> dict[str, Any]:
        """The fields as a dict (nested records too); ``mode="json"``: JSON types only."""
        data = _dumped(self, mode == "json")
        assert isinstance(data, dict)
        for name in exclude or ():
            data.pop(name, None)
        return data

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self:
        """A copy with ``update`` applied (not validated, as pydantic's is not)."""
        return dataclasses.replace(self, **(update or {}))  # type: ignore[type-var]
