"""Which files ``vm undefine --remove-storage`` deletes (real qemu-img on temp files)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kvmops.vm.lifecycle import owned_images


def make(path: Path, backing: Path | None = None) -> Path:
    args = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        args += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*args, str(path), "16M"], check=True)
    return path


def test_plain_disk_is_just_itself(tmp_path: Path) -> None:
    disk = make(tmp_path / "vm-vda.qcow2")
    assert owned_images(disk) == [disk]


def test_snapshot_overlays_and_base_are_owned(tmp_path: Path) -> None:
    base = make(tmp_path / "vm-vda.qcow2")
    snap1 = make(tmp_path / "vm-vda.qcow2.s1.qcow2", base)
    abandoned = make(tmp_path / "vm-vda.qcow2.s1.1.qcow2", snap1)
    top = make(tmp_path / "vm-vda.qcow2.s2.qcow2", snap1)
    other_vm = make(tmp_path / "other-vda.qcow2")
    owned = set(owned_images(top))
    assert owned == {base, snap1, abandoned, top}
    assert other_vm not in owned


def test_shared_template_is_never_owned(tmp_path: Path) -> None:
    golden = make(tmp_path / "golden.qcow2")
    disk = make(tmp_path / "vm-vda.qcow2", golden)
    assert owned_images(disk) == [disk]


def test_missing_file_is_just_itself(tmp_path: Path) -> None:
    assert owned_images(tmp_path / "gone.qcow2") == [tmp_path / "gone.qcow2"]
