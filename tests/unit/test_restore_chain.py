"""A restore reads the chain its authenticated manifests describe, and nothing else: every
link's header is read at once (real qemu-img, signed manifests in a temporary
repository; no libvirt), a link naming another backing file, another format or a data
file is refused before ``qemu-img convert`` opens anything."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvmops.backup.keys import Keyring
from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest
from kvmops.backup.repository import Repository
from kvmops.backup.restore import restore_to_dir
from kvmops.errors import BackupInconsistentError, PathRefusedError, ValidationError
from kvmops.images.chain import read_expected
from tests.hostile import header, state_of

VM = "web"
IDS = ["20260101T000000.000000Z", "20260101T010000.000000Z", "20260101T020000.000000Z"]
MiB = 1 << 20


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qemu_io(image: Path, *commands: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    subprocess.run([*argv, str(image)], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A full and two incrementals of vda (4 MiB), each writing its own pattern."""
    repo = Repository(tmp_path / "repo", Keyring(tmp_path / "keys"))
    for index, backup_id in enumerate(IDS):
        directory = repo.backups_dir(VM) / backup_id
        directory.mkdir(parents=True)
        image = directory / "vda.qcow2"
        if index == 0:
            qemu_img("create", "-q", "-f", "qcow2", str(image), "4M")
        else:
            qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                     f"../{IDS[index - 1]}/vda.qcow2", str(image))
        qemu_io(image, f"write -P {index + 1} {index}M 1M")
        kind = BackupType.FULL if index == 0 else BackupType.INCREMENTAL
        parent = IDS[index - 1] if index else None
        repo.write_manifest(directory, Manifest(
            id=backup_id, vm=VM, time=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=index),
            type=kind, parent=parent, checkpoint=None, consistency=Consistency.CRASH,
            disks=[DiskRecord(target="vda", file="vda.qcow2", source="/x", type=kind,
                              parent=parent, virtual_size=4 * MiB, bytes_written=MiB,
                              sha256="sha256-64m:0")]))
    return repo


def top(repo: Repository) -> Path:
    return repo.backups_dir(VM) / IDS[-1] / "vda.qcow2"


def test_a_point_in_a_chain_restores_every_links_data(repo: Repository, tmp_path: Path
                                                      ) -> None:
    restored = restore_to_dir(repo, VM, None, tmp_path / "out")
    assert restored.disks[0].chain == IDS
    out = tmp_path / "out" / "vda.qcow2"
    for index in range(3):
        qemu_io(out, f"read -P {index + 1} {index}M 1M")
    middle = restore_to_dir(repo, VM, IDS[1], tmp_path / "middle")
    assert middle.disks[0].chain == IDS[:2]
    qemu_io(tmp_path / "middle" / "vda.qcow2", "read -P 0 2M 1M")


def test_the_links_are_read_together_top_first(repo: Repository) -> None:
    paths = [repo.backups_dir(VM) / i / "vda.qcow2" for i in reversed(IDS)]
    links = read_expected(paths, within=[repo.root.resolve()])
    assert [link.path for link in links] == [p.resolve() for p in paths]
    assert [link.backing for link in links] == [p.resolve() for p in paths[1:]] + [None]
    assert [link.backing_format for link in links] == ["qcow2", "qcow2", None]
    with pytest.raises(ValidationError, match="twice"):
        read_expected([paths[0], paths[0]], within=[repo.root.resolve()])


@pytest.mark.parametrize("tamper", ["outside", "skip", "raw-format", "protocol", "data-file"])
def test_a_link_that_is_not_the_manifests_is_refused_before_any_copy(
        repo: Repository, tmp_path: Path, tamper: str) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"host secret\n".ljust(4 * MiB, b"\0"))
    before = state_of(secret)
    image = top(repo)
    if tamper == "outside":
        qemu_img("rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(image))
    elif tamper == "skip":  # the middle point left out of the chain
        qemu_img("rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b",
                 f"../{IDS[0]}/vda.qcow2", str(image))
    elif tamper == "raw-format":  # the right file, read as raw: its qcow2 bytes as data
        qemu_img("rebase", "-u", "-f", "qcow2", "-F", "raw", "-b",
                 f"../{IDS[1]}/vda.qcow2", str(image))
    elif tamper == "protocol":
        qemu_img("rebase", "-u", "-f", "qcow2", "-F", "raw", "-b",
                 "nbd://127.0.0.1:10809/x", str(image))
    else:
        image.write_bytes(header("qcow2-data-file", secret))
    error = (PathRefusedError if tamper in ("protocol", "data-file")
             else BackupInconsistentError)
    with pytest.raises(error) as raised:
        restore_to_dir(repo, VM, None, tmp_path / "out")
    if error is BackupInconsistentError:
        assert "not the one its manifests describe" in raised.value.message
    assert not list((tmp_path / "out").glob("*"))
    assert state_of(secret) == before
