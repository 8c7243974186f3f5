"""Human sizes (``64M``, ``1.5G``, ``512KiB``) to bytes and back."""

from __future__ import annotations

import re

from kvmops.errors import ValidationError

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "T": 1024**4,
    "P": 1024**5,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int, *, what: str = "size", bare_unit: str = "") -> int:
    """Parse ``64M``/``1G``/``512KiB``/``1048576`` (binary units) into bytes.

    A number without a unit is in ``bare_unit`` (bytes by default; memory and rates
    pass ``"M"``: ``--memory 256`` is 256 MiB, as in virt-install). Raises
    ValidationError naming the bad text and the accepted forms.
    """
    factor = _UNITS[bare_unit.upper()]
    if isinstance(text, int):
        if text < 0:
            raise ValidationError(f"invalid {what} {text}: must not be negative")
        return text * factor
    match = _SIZE_RE.match(text)
    if not match:
        raise ValidationError(
            f"invalid {what} '{text}'",
            hint="use a number with an optional unit K, M, G, T (e.g. 64M, 1.5G, 512KiB)",
        )
    number, unit, suffix = match.groups()
    value = float(number) * (_UNITS[unit.upper()] if unit or suffix else factor)
    if value != int(value):
        raise ValidationError(f"invalid {what} '{text}': not a whole number of bytes")
    return int(value)


def parse_memory(text: str | int, *, what: str = "memory size") -> int:
    """Memory: a bare number is MiB (``256`` = 256 MiB), as virt-install reads it."""
    return parse_size(text, what=what, bare_unit="M")


def parse_rate(text: str | int, *, what: str = "speed") -> int:
    """A rate in bytes per second: a bare number is MiB/s (``50`` = 50 MiB/s)."""
    return parse_size(text, what=what, bare_unit="M")


def format_size(num_bytes: int | float) -> str:
    """Render bytes as a short binary size, e.g. ``64.0 MiB``."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
