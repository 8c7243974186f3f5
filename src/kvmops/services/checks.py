"""The input checks every face applies to what a caller types, before a use case runs:
VM names, absolute paths, image sizes (the faces parse; these decide)."""

from __future__ import annotations

from kvmops.images.qemuimg import MAX_IMAGE_SIZE
from kvmops.paths import absolute
from kvmops.vm.domxml import validate_name

__all__ = ["MAX_IMAGE_SIZE", "absolute", "validate_name"]
