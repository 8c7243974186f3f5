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


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Parse ``64M``/``1G``/``512KiB``/``1048576`` (binary units) into bytes.

    Raises ValidationError naming the bad text and the accepted forms.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValidationError(f"invalid {what} {text}: must not be negative")
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValidationError(
            f"invalid {what} '{text}'",
            hint="use a number with an optional unit K, M, G, T (e.g. 64M, 1.5G, 512KiB)",
        )
    number, unit, _suffix = match.groups()
    value = float(number) * _UNITS[unit.upper()]
    if value != int(value):
        raise ValidationError(f"invalid {what} '{text}': not a whole number of bytes")
    return int(value)


def format_size(num_bytes: int | float) -> str:
    """Render bytes as a short binary size, e.g. ``64.0 MiB``."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
