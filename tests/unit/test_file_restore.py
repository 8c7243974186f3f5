"""Guest paths resolved inside a mounted file system (kvmops.backup.guestfs): never out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmops.backup import guestfs
from kvmops.backup.mount import _blockdev_args
from kvmops.errors import AlreadyExistsError, NotFoundError, PathRefusedError, ValidationError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A little guest tree: /etc/x, /usr/lib/y, links of every kind."""
    base = tmp_path / "fs"
    (base / "etc").mkdir(parents=True)
    (base / "usr" / "lib").mkdir(parents=True)
    (base / "etc" / "x").write_text("x")
    (base / "usr" / "lib" / "y").write_text("y")
    os.symlink("/usr/lib", base / "etc" / "abs")  # absolute: taken from the guest's root
    os.symlink("../usr/lib/y", base / "etc" / "rel")
    os.symlink("../../../..", base / "etc" / "out")  # climbs out
    os.symlink("loop2", base / "etc" / "loop1")
    os.symlink("loop1", base / "etc" / "loop2")
    (tmp_path / "secret").write_text("host")
    return base


def test_plain_and_dotdot_inside(root: Path) -> None:
    assert guestfs.resolve(root, "/etc/x") == root / "etc" / "x"
    assert guestfs.resolve(root, "/usr/lib/../../etc/./x") == root / "etc" / "x"
    assert guestfs.resolve(root, "/") == root


def test_dotdot_above_root_is_refused(root: Path) -> None:
    with pytest.raises(PathRefusedError, match="climbs above the root"):
        guestfs.resolve(root, "/../secret")
    with pytest.raises(PathRefusedError):
        guestfs.resolve(root, "/etc/../../secret")


def test_symlinks_stay_inside(root: Path) -> None:
    assert guestfs.resolve(root, "/etc/abs/y") == root / "usr" / "lib" / "y"
    assert guestfs.resolve(root, "/etc/rel") == root / "usr" / "lib" / "y"
    assert guestfs.resolve(root, "/etc/rel", follow_last=False) == root / "etc" / "rel"
    with pytest.raises(PathRefusedError, match="leaves the file system"):
        guestfs.resolve(root, "/etc/out/secret")
    with pytest.raises(PathRefusedError, match="too many levels"):
        guestfs.resolve(root, "/etc/loop1")


def test_missing_relative_and_nul(root: Path) -> None:
    with pytest.raises(NotFoundError):
        guestfs.resolve(root, "/etc/none")
    with pytest.raises(NotFoundError, match="not a directory"):
        guestfs.resolve(root, "/etc/x/y")
    with pytest.raises(ValidationError):
        guestfs.resolve(root, "etc/x")
    with pytest.raises(ValidationError):
        guestfs.resolve(root, "/etc/\0x")


def test_copy_out_atomic_no_overwrite_dirs_and_devices(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    seen: list[tuple[int, int]] = []
    result = guestfs.copy_out(root, "/etc/rel", out, progress=lambda d, t: seen.append((d, t)))
    assert (out / "rel").read_text() == "y" and not (out / "rel").is_symlink()
    assert result.kind == "file" and result.bytes == 1 and seen[-1] == (1, 1)
    with pytest.raises(AlreadyExistsError):
        guestfs.copy_out(root, "/etc/rel", out)
    (root / "usr" / "lib" / "y").write_text("yy")
    guestfs.copy_out(root, "/etc/rel", out, force=True)
    assert (out / "rel").read_text() == "yy"
    copied = guestfs.copy_out(root, "/usr", out)
    assert copied.kind == "dir" and (out / "usr" / "lib" / "y").read_text() == "yy"
    os.mkfifo(root / "etc" / "fifo")
    with pytest.raises(PathRefusedError, match="fifo"):
        guestfs.copy_out(root, "/etc/fifo", out)
    assert copied.files == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_list_dir_names_links_without_following(root: Path) -> None:
    entries = {e.name: e for e in guestfs.list_dir(root, "/etc")}
    assert entries["out"].type == "symlink" and entries["out"].target == "../../../.."
    assert entries["x"].type == "file" and entries["x"].size == 1
    assert [e.name for e in guestfs.list_dir(root, "/etc/x")] == ["x"]


def test_blockdev_chain_names_every_format_and_backing() -> None:
    args = _blockdev_args([Path("/r/a.qcow2"), Path("/r/b.qcow2")])
    nodes = [a for a in args if a.startswith("{")]
    assert len(nodes) == 4
    assert '"backing": null' in nodes[1] and '"backing": "q0"' in nodes[3]
    assert all('"read-only": true' in n for n in nodes)
    assert all('"driver": "qcow2"' in n or '"driver": "file"' in n for n in nodes)


def test_unsupported_contents_are_named_in_one_line() -> None:
    from kvmops.backup.mount import _describe

    lvm = _describe("LVM2_member", "disk vda partition 2")
    assert "LVM" in lvm and "not supported on this kernel" in lvm and "\n" not in lvm
    assert "LUKS" in _describe("crypto_LUKS", "disk vda")
    assert "swap" in _describe("swap", "disk vda partition 3")
    assert "no file system" in _describe("", "disk vdb")
    assert "ntfs" in _describe("ntfs", "disk vda partition 1")
