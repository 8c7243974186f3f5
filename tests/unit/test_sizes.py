from __future__ import annotations

import pytest

from kvmops.errors import ValidationError
from kvmops.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64M", 64 * 1024**2), ("1G", 1024**3), ("1.5G", 1536 * 1024**2), ("512KiB", 512 * 1024),
     ("100", 100), ("2t", 2 * 1024**4), ("10MB", 10 * 1024**2), (" 7 M ", 7 * 1024**2)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["12XB", "", "M", "-1G", "1.5", "1e9", "ten"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_size(text, what="disk size")
    assert "disk size" in str(info.value)


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(64 * 1024**2) == "64.0 MiB"
    assert format_size(3 * 1024**4) == "3.0 TiB"


def test_petabytes_are_shown_as_such() -> None:
    assert format_size(3 * 1024**5) == "3.0 PiB"
