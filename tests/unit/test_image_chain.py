"""Image chains read without probing, and which files storage removal may delete
(real qemu-img on temporary files; no libvirt)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmops.config import Settings
from kvmops.errors import PathRefusedError, UnsupportedError, ValidationError
from kvmops.images import records
from kvmops.images.chain import choose_format, inspect, inspect_partial
from kvmops.paths import PathPolicy
from kvmops.vm.domxml import DiskSpec, OwnedFile
from kvmops.vm.ownership import plan_removal
from tests.hostile import header


@pytest.fixture
def rules(tmp_path: Path) -> PathPolicy:
    for name in ("images", "backups", "state", "outside"):
        (tmp_path / name).mkdir()
    return PathPolicy.from_settings(Settings(
        uri="qemu:///system", images_dir=tmp_path / "images",
        image_dirs=(tmp_path / "images",), backup_dirs=(tmp_path / "backups",),
        state_dir=tmp_path / "state", cache_dir=tmp_path / "cache"))


def qcow2(path: Path, backing: Path | str | None = None, backing_fmt: str | None = "qcow2",
          *extra: str) -> Path:
    args = ["qemu-img", "create", "-q", "-f", "qcow2", *extra]
    if backing is not None:
        args += ["-u", "-b", str(backing)]
        if backing_fmt:
            args += ["-F", backing_fmt]
    subprocess.run([*args, str(path), "16M"], check=True)
    return path


def drop_backing_format(path: Path) -> None:
    """What an old or hand-made image looks like: a backing file without its format
    (qemu-img 7.2 will not write one; the header extension is cut off by hand)."""
    data = bytearray(path.read_bytes())
    at = data.index(bytes.fromhex("e2792aca"))
    data[at:at + 4] = b"\0\0\0\0"  # extension type 0 ends the extension list
    path.write_bytes(bytes(data))


def raw(path: Path, content: bytes = b"") -> Path:
    path.write_bytes(content.ljust(1024 * 1024, b"\0"))
    return path


def test_a_chain_inside_the_image_dirs_is_read_link_by_link(tmp_path: Path,
                                                            rules: PathPolicy) -> None:
    base = raw(tmp_path / "images" / "base.raw")
    mid = qcow2(tmp_path / "images" / "mid.qcow2", base, "raw")
    top = qcow2(tmp_path / "images" / "top.qcow2", "mid.qcow2", "qcow2")  # relative link
    chain = inspect(top, "qcow2", rules=rules)
    assert [link.path for link in chain.links] == [top.resolve(), mid.resolve(),
                                                    base.resolve()]
    assert [link.format for link in chain.links] == ["qcow2", "qcow2", "raw"]


def test_a_backing_file_outside_is_refused_and_never_opened(tmp_path: Path,
                                                            rules: PathPolicy) -> None:
    secret = raw(tmp_path / "outside" / "secret")
    top = qcow2(tmp_path / "images" / "evil.qcow2", secret, "raw")
    with pytest.raises(PathRefusedError, match=f"backing file {secret}"):
        inspect(top, "qcow2", rules=rules)
    links, problem = inspect_partial(top, "qcow2", rules=rules)
    assert [link.path for link in links] == [top.resolve()] and problem is not None


def test_a_data_file_outside_is_refused(tmp_path: Path, rules: PathPolicy) -> None:
    secret = raw(tmp_path / "outside" / "secret")
    top = tmp_path / "images" / "data.qcow2"
    top.write_bytes(header("qcow2-data-file", secret))
    with pytest.raises(PathRefusedError, match="data file"):
        inspect(top, "qcow2", rules=rules)


def test_backing_without_format_and_protocols_are_refused(tmp_path: Path,
                                                          rules: PathPolicy) -> None:
    base = raw(tmp_path / "images" / "base.raw")
    unnamed = qcow2(tmp_path / "images" / "unnamed.qcow2", base, "raw")
    drop_backing_format(unnamed)
    with pytest.raises(PathRefusedError, match="without its format"):
        inspect(unnamed, "qcow2", rules=rules)
    remote = qcow2(tmp_path / "images" / "remote.qcow2", "nbd://127.0.0.1:10809/x", "raw")
    with pytest.raises(PathRefusedError, match="protocol"):
        inspect(remote, "qcow2", rules=rules)


def test_loops_and_unsupported_formats_are_refused(tmp_path: Path, rules: PathPolicy) -> None:
    a = qcow2(tmp_path / "images" / "a.qcow2", tmp_path / "images" / "b.qcow2")
    qcow2(tmp_path / "images" / "b.qcow2", a)
    with pytest.raises(ValidationError, match="loops"):
        inspect(a, "qcow2", rules=rules)
    with pytest.raises(UnsupportedError, match="vmdk"):
        inspect(a, "vmdk", rules=rules)


def test_a_qcow2_header_in_a_raw_file_is_data(tmp_path: Path, rules: PathPolicy) -> None:
    """What a guest writes into its raw disk is never read as a format."""
    disk = raw(tmp_path / "images" / "guest.raw", header("qcow2-backing", Path("/etc/shadow")))
    assert choose_format(disk, None) == ("raw", "default")
    chain = inspect(disk, "raw", rules=rules)
    assert len(chain.links) == 1 and chain.top.info.format == "raw"
    assert chain.top.info.backing_filename is None
    assert records.header_lookalike(disk) == "qcow2"
    with pytest.raises(PathRefusedError, match="/etc/shadow"):
        inspect(disk, "qcow2", rules=rules)  # only when someone insists it is qcow2


def test_recorded_formats(tmp_path: Path) -> None:
    image = qcow2(tmp_path / "x.qcow2")
    assert choose_format(image, None) == ("raw", "default")
    records.record_format(image, "qcow2")
    assert choose_format(image, None) == ("qcow2", "recorded")
    assert choose_format(image, "raw") == ("raw", "given")
    records.forget_format(image)
    assert records.recorded_format(image) is None


def test_removal_deletes_only_owned_files_inside(tmp_path: Path, rules: PathPolicy) -> None:
    images = tmp_path / "images"
    template = qcow2(images / "template.qcow2")
    mine = qcow2(images / "vm-vda.qcow2", template)
    overlay = qcow2(images / "vm-vda.s1.qcow2", mine)
    shared = qcow2(images / "shared.qcow2")
    outside = qcow2(tmp_path / "outside" / "vm-vdc.qcow2")
    disks = [DiskSpec(target="vda", source=str(overlay)),
             DiskSpec(target="vdb", source=str(shared)),
             DiskSpec(target="vdc", source=str(outside))]
    owned = [OwnedFile(str(p), "qcow2") for p in (mine, overlay, shared, outside)]
    plan = plan_removal("vm", disks, owned, {shared.resolve(): "other"}, rules)
    assert set(plan.remove) == {mine.resolve(), overlay.resolve()}
    kept = {Path(k.path).name: k.reason for k in plan.kept}
    assert "did not create" in kept["template.qcow2"]
    assert "'other' uses it" in kept["shared.qcow2"]
    assert "outside" in kept["vm-vdc.qcow2"]


def test_removal_never_follows_a_link_out(tmp_path: Path, rules: PathPolicy) -> None:
    victim = qcow2(tmp_path / "outside" / "vm-vda")  # a prefix of the VM's image name
    top = qcow2(tmp_path / "images" / "vm-vda.qcow2", victim)
    plan = plan_removal("vm", [DiskSpec(target="vda", source=str(top))],
                        [OwnedFile(str(top), "qcow2"), OwnedFile(str(victim), "qcow2")], {},
                        rules)
    assert plan.remove == [top.resolve()]
    assert victim.exists()
