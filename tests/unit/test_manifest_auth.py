"""Authenticated repositories: signatures bound to the place, tampering, replay, keys."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kvmops.backup.keys import Keyring
from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest
from kvmops.backup.repository import Repository, resign
from kvmops.errors import TamperedError

ID = "20260101T000000.000000Z"


def manifest(vm: str = "web", backup_id: str = ID) -> Manifest:
    return Manifest(id=backup_id, vm=vm, time=datetime(2026, 1, 1, tzinfo=UTC),
                    type=BackupType.FULL, parent=None, checkpoint=None,
                    consistency=Consistency.CRASH,
                    disks=[DiskRecord(target="vda", file="vda.qcow2", source="/x",
                                      type=BackupType.FULL, parent=None, virtual_size=1,
                                      bytes_written=1, sha256="sha256-64m:0")])


def publish(repo: Repository, item: Manifest) -> Path:
    directory = repo.backups_dir(item.vm) / item.id
    directory.mkdir(parents=True)
    repo.write_manifest(directory, item)
    return directory / "manifest.json"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "repo", Keyring(tmp_path / "keys"))


def test_a_signed_manifest_loads(repo: Repository) -> None:
    publish(repo, manifest())
    assert [m.id for m in repo.manifests("web")] == [ID]
    assert (repo.keyring.directory.stat().st_mode & 0o777) == 0o700


def test_changed_unsigned_and_replayed_manifests_are_rejected(repo: Repository) -> None:
    path = publish(repo, manifest())
    path.write_text(path.read_text().replace('"crash"', '"application"'))
    good, bad = repo.scan("web")
    assert good == [] and "does not match" in bad[0].reason

    unsigned = repo.backups_dir("db") / ID
    unsigned.mkdir(parents=True)
    (unsigned / "manifest.json").write_text(manifest("db").model_dump_json())
    assert "not signed" in repo.scan("db")[1][0].reason

    # a genuine manifest of VM 'app', copied (with its signature) under VM 'mail'
    original = publish(repo, manifest("app"))
    copy = repo.backups_dir("mail") / ID
    copy.mkdir(parents=True)
    for name in ("manifest.json", "manifest.json.hmac"):
        (copy / name).write_bytes((original.parent / name).read_bytes())
    assert repo.scan("mail")[0] == []
    with pytest.raises(TamperedError):
        repo.load("mail", ID)


def test_another_key_does_not_verify(repo: Repository, tmp_path: Path) -> None:
    publish(repo, manifest())
    stranger = Repository(repo.root, Keyring(tmp_path / "other-keys"))
    assert "does not have" in stranger.scan("web")[1][0].reason
    stranger.keyring.import_key(repo.keyring.export(repo.keyring.signing_key()[0]))
    assert [m.id for m in stranger.manifests("web")] == [ID]


def test_rotation_resign_and_retire(repo: Repository) -> None:
    publish(repo, manifest())
    old = repo.keyring.signing_key()[0]
    new = repo.keyring.rotate()
    assert new != old and repo.manifests("web")  # the old key still verifies
    assert resign(repo) == (1, [])
    repo.keyring.retire(old)
    assert [m.id for m in repo.manifests("web")] == [ID]
    with pytest.raises(Exception, match="current key"):
        repo.keyring.retire(new)


def test_adopting_unsigned_manifests_is_explicit(repo: Repository) -> None:
    legacy = repo.backups_dir("web") / ID
    legacy.mkdir(parents=True)
    (legacy / "manifest.json").write_text(manifest().model_dump_json())
    assert resign(repo)[0] == 0 and repo.manifests("web") == []
    assert resign(repo, adopt_unsigned=True)[0] == 1
    assert [m.id for m in repo.manifests("web")] == [ID]


def test_checkpoint_xml_is_authenticated(repo: Repository) -> None:
    repo.save_checkpoint_xml("web", "kvmops-x", "<domaincheckpoint/>")
    assert repo.checkpoint_xml("web", "kvmops-x") == "<domaincheckpoint/>"
    path = repo.checkpoints_dir("web") / "kvmops-x.xml"
    path.write_text("<domaincheckpoint><domain>forged</domain></domaincheckpoint>")
    assert repo.checkpoint_xml("web", "kvmops-x") is None
