"""The tiny test guest (``build``) and its tools disk (``tools``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmops.devguest.build import GuestImage


def guest_paths(directory: Path | None = None) -> GuestImage:
    """Where the tiny guest's files are: ``.kernel``, ``.initrd``, ``.data_disk`` and
    ``.tools`` (``tools.ext4``: fio and sysbench, attach it read-only). Default directory
    ``<cache_dir>/guest``; nothing is built or checked (``build.build_guest`` builds)."""
    from kvmops.devguest.build import guest_paths as paths

    return paths(directory)
