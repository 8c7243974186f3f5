"""Build the tiny test guest (placeholder: see issue #2, being implemented)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GuestImage:
    """What ``build_guest`` produced."""

    kernel: Path  # DIR/vmlinuz
    initrd: Path  # DIR/initrd.img
    data_disk: Path  # DIR/data.ext4: small ext4 image (label kvmopsfs) to attach as a 2nd disk


def build_guest(out_dir: Path, *, force: bool = False) -> GuestImage:
    raise NotImplementedError
