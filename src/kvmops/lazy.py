"""Modules imported when one of their names is first read (quick CLI start-up)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["OnFirstUse"]


class OnFirstUse:
    """Stands for the module ``name`` and imports it on the first attribute read.

    Use it under ``if not TYPE_CHECKING`` with the real import for the type checker::

        if TYPE_CHECKING:
            from kvmops.vm import lifecycle
        else:
            lifecycle = OnFirstUse("kvmops.vm.lifecycle")
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"
