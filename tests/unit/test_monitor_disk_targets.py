"""Disk target arithmetic for hot-plug (vda, vdb ... vdz, vdaa) and bus names."""

from __future__ import annotations

import pytest

from kvmops.errors import ValidationError
from kvmops.vm.disks import (
    bus_prefix,
    index_suffix,
    next_free_target,
    suffix_index,
    validate_target,
)


@pytest.mark.parametrize(("suffix", "index"), [("a", 0), ("b", 1), ("z", 25), ("aa", 26),
                                                ("az", 51), ("ba", 52), ("zz", 701),
                                                ("aaa", 702)])
def test_suffix_index_round_trip(suffix: str, index: int) -> None:
    assert suffix_index(suffix) == index
    assert index_suffix(index) == suffix


def test_round_trip_everywhere() -> None:
    for index in range(0, 2000):
        assert suffix_index(index_suffix(index)) == index


@pytest.mark.parametrize("bad", ["", "A", "a1", "é"])
def test_bad_suffix(bad: str) -> None:
    with pytest.raises(ValueError):
        suffix_index(bad)


def test_next_free_target() -> None:
    assert next_free_target([]) == "vda"
    assert next_free_target(["vda"]) == "vdb"
    assert next_free_target(["vda", "vdc"]) == "vdb"  # fills holes
    assert next_free_target(["vda", "vdb", "hdc", "sda"]) == "vdc"  # other buses don't count
    assert next_free_target([f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1)]) == "vdaa"
    assert next_free_target(["sda", "sdb"], "sd") == "sdc"
    assert next_free_target(["vdX", "vd", "vda"]) == "vdb"  # junk is ignored


def test_bus_prefix_and_target_validation() -> None:
    assert bus_prefix("virtio") == "vd"
    assert bus_prefix("sata") == "sd"
    assert bus_prefix("ide") == "hd"
    with pytest.raises(ValidationError):
        bus_prefix("floppy")
    assert validate_target("vdb", "virtio") == "vdb"
    assert validate_target("sdaa", "scsi") == "sdaa"
    for target, bus in (("sdb", "virtio"), ("vd", "virtio"), ("vdB", "virtio"),
                        ("vdb1", "virtio")):
        with pytest.raises(ValidationError):
            validate_target(target, bus)
