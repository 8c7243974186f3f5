"""Replication (kvmops.backup.replicate) between a plain local repository and the real
remote stores (an sshd in a test namespace, rclone serve s3), without a guest: the
points are qcow2 chains made with qemu-img/qemu-io and published with real, signed
manifests. Local -> SFTP, incremental rounds, a cut-off run resumed, a foreign replica
refused; local -> S3 -> local (remote -> local), restores from the replicas equal the
source's."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest, new_backup_id
from kvmops.backup.replicate import ReplicateResult, plan, replicate
from kvmops.backup.repository import Repository, sha256_file
from kvmops.backup.restore import restore_to_dir, verify
from kvmops.backup.storerepo import open_repository, refuse_replica, replica_source
from kvmops.errors import ValidationError
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.remote_servers import S3Server, SshServer

VM = "replvm"
START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def add_point(repo: Repository, index: int, parent: Manifest | None) -> Manifest:
    """A backup point of VM: a full (16 MiB qcow2) or an incremental over ``parent``,
    with MiB ``index`` written (a pattern per point)."""
    repo.identity()  # made by the first backup, as the engines do
    backup_id = new_backup_id(START + timedelta(hours=index))
    partial = repo.start_partial(VM, backup_id)
    image = partial / "vda.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if parent is not None:
        create += ["-b", f"../{parent.id}/vda.qcow2", "-F", "qcow2"]
    subprocess.run([*create, str(image), "16M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -P {0x10 + index} {index}M 1M", str(image)],
                   check=True, capture_output=True)
    kind = BackupType.FULL if parent is None else BackupType.INCREMENTAL
    record = DiskRecord(target="vda", file="vda.qcow2", source="/images/replvm.qcow2",
                        type=kind, parent=parent.id if parent else None,
                        virtual_size=16 << 20, bytes_written=image.stat().st_size,
                        sha256=sha256_file(image))
    manifest = Manifest(id=backup_id, vm=VM, time=START + timedelta(hours=index), type=kind,
                        parent=record.parent, checkpoint=None, consistency=Consistency.CRASH,
                        disks=[record])
    repo.publish(VM, partial, manifest)
    return manifest


def restored_hash(repo: str | Path, at: str, out: Path) -> str:
    out.mkdir()
    restore_to_dir(open_repository(str(repo)), VM, at, out)
    raw = out / "vda.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out / "vda.qcow2"),
                    str(raw)], check=True)
    return hashlib.sha256(raw.read_bytes()).hexdigest()


def test_plan_ships_newer_points_in_order() -> None:
    def m(backup_id: str) -> Manifest:
        return Manifest(id=backup_id, vm=VM, time=START, type=BackupType.FULL, parent=None,
                        checkpoint=None, consistency=Consistency.CRASH, disks=[])

    source = [m("3"), m("1"), m("2"), m("5")]
    assert [p.id for p in plan(source, set())[0]] == ["1", "2", "3", "5"]
    ship, older = plan(source, {"2", "4"})  # 1 and 3 were pruned from the replica
    assert [p.id for p in ship] == ["5"] and older == ["1", "3"]


def test_local_to_sftp_incremental_resumed(sshd: SshServer, tmp_path: Path) -> None:
    source = Repository(tmp_path / "src")
    full = add_point(source, 1, None)
    inc1 = add_point(source, 2, full)
    url = sshd.url("replica")
    first = replicate(source, url, [VM])
    assert [p.backup_id for p in first.shipped] == [full.id, inc1.id]
    assert all(p.bytes > 0 for p in first.shipped)
    replica = open_repository(url)
    assert [m.id for m in replica.scan(VM)[0]] == [full.id, inc1.id]
    assert verify(replica, VM).sound
    # Nothing new: nothing shipped.
    again = replicate(source, url, [VM])
    assert again.shipped == [] and again.up_to_date == [VM]
    # A new incremental ships alone; a run cut in the middle of a point leaves it
    # unlisted in the replica, and the next run ships it whole.
    inc2 = add_point(source, 3, inc1)
    inc3 = add_point(source, 4, inc2)

    class Cut(Exception):
        pass

    seen: list[int] = []

    def cut(done: int, total: int) -> None:
        seen.append(done)
        if done > 0 and len(seen) > 3:
            raise Cut

    with pytest.raises(Cut):
        replicate(source, url, [VM], progress=cut)
    listed = [m.id for m in open_repository(url).scan(VM)[0]]
    assert inc3.id not in listed and listed[:2] == [full.id, inc1.id]
    result: ReplicateResult = replicate(source, url, [VM])
    assert [p.backup_id for p in result.shipped] == [b for b in (inc2.id, inc3.id)
                                                       if b not in listed]
    assert [m.id for m in open_repository(url).scan(VM)[0]] == [full.id, inc1.id, inc2.id,
                                                                inc3.id]
    assert restored_hash(url, inc2.id, tmp_path / "r1") == \
        restored_hash(source.root, inc2.id, tmp_path / "r2")
    # A repository with another identity is never written into.
    other = Repository(tmp_path / "other")
    add_point(other, 1, None)
    with pytest.raises(ValidationError, match="not a replica of"):
        replicate(other, url, [VM])


def test_local_to_s3_and_back(s3: S3Server, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    source = Repository(tmp_path / "src")
    full = add_point(source, 1, None)
    inc = add_point(source, 2, full)
    url = s3.url(s3.bucket("kvmops-repl"), "site-b")
    shipped = replicate(source, url, None)
    assert [p.backup_id for p in shipped.shipped] == [full.id, inc.id]
    assert verify(open_repository(url), VM).sound
    back = tmp_path / "back"
    from_s3 = replicate(open_repository(url), back, [VM])  # remote -> local
    assert [p.backup_id for p in from_s3.shipped] == [full.id, inc.id]
    assert Repository(back).identity() == source.identity()
    assert restored_hash(back, inc.id, tmp_path / "r1") == \
        restored_hash(source.root, inc.id, tmp_path / "r2") == \
        restored_hash(url, inc.id, tmp_path / "r3")
    # Both replicas are marked and refuse backups (their checkpoints are the source's);
    # the source is no replica.
    assert replica_source(url) == str(source.root) and replica_source(back) == url
    assert replica_source(source.root) is None
    with pytest.raises(ValidationError, match="is a replica of"):
        refuse_replica(url)
    before = sorted(str(p.relative_to(back)) for p in back.rglob("*"))
    refused = run_cli("backup", "create", "kvmops-test-nosuchvm", "--repo", str(back))
    assert_one_line_error(refused, ValidationError.exit_code, "is a replica of")
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*")) == before
    assert Repository(back).scan(VM)[0][-1].id == inc.id
