"""Field types for request bodies: each failure is a 422 naming the field.

Paths must lie inside one of the allowed directories (``ApiSettings.allowed_dirs``,
default the images directory and /var/lib/kvmops), after resolving ``..`` and
symbolic links. :func:`set_allowed_dirs` is called by ``create_app``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from kvmops.errors import KvmopsError
from kvmops.sizes import parse_size
from kvmops.vm.domxml import validate_name

_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", re.IGNORECASE)
_allowed_dirs: list[Path] = []


def set_allowed_dirs(dirs: Sequence[Path]) -> None:
    _allowed_dirs[:] = [Path(os.path.realpath(d)) for d in dirs]


def allowed_dirs() -> list[Path]:
    if not _allowed_dirs:
        from kvmops.api.settings import default_allowed_dirs

        set_allowed_dirs(default_allowed_dirs())
    return list(_allowed_dirs)


def _vm_name(value: str) -> str:
    try:
        return validate_name(value)
    except KvmopsError as err:
        raise ValueError(str(err)) from None


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("a size is a number of bytes or a text like 64M, 10G")
    try:
        return parse_size(value)
    except KvmopsError as err:
        raise ValueError(str(err)) from None


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
    """An absolute path inside an allowed directory (symbolic links resolved)."""
    text = str(value)
    if not text or "\x00" in text:
        raise ValueError("empty or invalid path")
    path = Path(text)
    if not path.is_absolute():
        raise ValueError(f"path '{text}' must be absolute")
    real = Path(os.path.realpath(path))
    for base in allowed_dirs():
        if real == base or base in real.parents:
            return real
    raise ValueError(f"path '{text}' is outside the allowed directories "
                     f"({', '.join(str(d) for d in allowed_dirs())})")


VmName = Annotated[str, AfterValidator(_vm_name)]
Size = Annotated[int, BeforeValidator(_size)]
MacAddress = Annotated[str, AfterValidator(_mac)]
IpAddress = Annotated[str, AfterValidator(_ip)]
AllowedPath = Annotated[Path, BeforeValidator(check_path)]
