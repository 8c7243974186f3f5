"""Field types for request bodies: each failure is a 422 naming the field.

Paths are checked here only for form (absolute, no NUL, valid UTF-8); *where* they
may point is the path policy's decision (:mod:`kvmops.paths`), applied by the
services, and a refusal there is a 403 that the audit log records.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from kvmops.errors import KvmopsError
from kvmops.services.checks import absolute, validate_name
from kvmops.sizes import parse_size

_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", re.IGNORECASE)
MAX_SIZE = 2**63 - 1


def _vm_name(value: str) -> str:
    try:
        return validate_name(value)
    except KvmopsError as err:
        raise ValueError(str(err)) from None


def _sized(bare_unit: str) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("a size is a number or a text like 64M, 10G")
        try:
            size = parse_size(value, bare_unit=bare_unit)
        except KvmopsError as err:
            raise ValueError(str(err)) from None
        if size > MAX_SIZE:
            raise ValueError(f"size {value} is too large")
        return size

    return parse


_size = _sized("")


def _image_size(value: object) -> int:
    from kvmops.services.checks import MAX_IMAGE_SIZE
    from kvmops.sizes import format_size

    size = _size(value)
    if size > MAX_IMAGE_SIZE:
        raise ValueError(f"{value} is more than the largest image kvmops makes "
                         f"({format_size(MAX_IMAGE_SIZE)})")
    return size


def _mac(value: str) -> str:
    if not _MAC_RE.match(value):
        raise ValueError(f"invalid MAC address '{value}' (use 52:54:00:xx:xx:xx)")
    first = int(value[:2], 16)
    if first & 1:
        raise ValueError(f"MAC address '{value}' is a multicast address")
    return value.lower()


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"invalid IP address '{value}'") from None


def check_path(value: str | Path) -> Path:
    """An absolute path (the policy decides later whether it may be used)."""
    try:
        return absolute(value)
    except KvmopsError as err:
        raise ValueError(err.message) from None


VmName = Annotated[str, AfterValidator(_vm_name)]
Size = Annotated[int, BeforeValidator(_size)]
# Memory and rates: a bare number is MiB (MiB/s), the same at the command line.
MemorySize = Annotated[int, BeforeValidator(_sized("M"))]
Rate = Annotated[int, BeforeValidator(_sized("M"))]
ImageSize = Annotated[int, BeforeValidator(_image_size)]
MacAddress = Annotated[str, AfterValidator(_mac)]
IpAddress = Annotated[str, AfterValidator(_ip)]
AbsolutePath = Annotated[Path, BeforeValidator(check_path)]
