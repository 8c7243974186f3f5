"""backup/store.py (LocalStore, URL dispatch) and the pure logic of store-backed
repositories (backup/storerepo.py) on a local store: no libvirt, no QEMU."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kvmops.backup import store as store_mod
from kvmops.backup.keys import Keyring
from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest
from kvmops.backup.repository import Repository, resign
from kvmops.backup.store import LocalStore, is_remote_url, open_store, register_scheme
from kvmops.backup.storerepo import (
    RepoConfig,
    StoreRepository,
    open_repository,
    parse_compress,
    prepare_repository,
    rekey,
    repo_info,
)
from kvmops.errors import (
    KeyRequiredError,
    NotFoundError,
    PathRefusedError,
    TamperedError,
    UnsupportedError,
    ValidationError,
)


# ---------------------------------------------------------------- LocalStore
def test_local_store_objects_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    assert store.list("") == [] and store.size("a/b") is None
    store.put_bytes("vm/backups/1/manifest.json", b"one")
    store.put_bytes("vm/backups/2/manifest.json", b"two")
    store.put_bytes("other/x", b"x")
    (tmp_path / "s" / "vm" / ".hidden").write_bytes(b"h")  # temporaries are never listed
    assert store.list("vm/") == ["vm/backups/1/manifest.json", "vm/backups/2/manifest.json"]
    assert store.list("vm/backups/2") == ["vm/backups/2/manifest.json"]
    assert store.list("") == ["other/x", "vm/backups/1/manifest.json",
                              "vm/backups/2/manifest.json"]
    assert store.get_bytes("vm/backups/2/manifest.json") == b"two"
    assert store.size("other/x") == 1
    store.put_bytes("other/x", b"replaced")
    assert store.get_bytes("other/x") == b"replaced"
    with pytest.raises(NotFoundError):
        store.get_bytes("missing")


def test_local_store_files_and_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    src = tmp_path / "src"
    src.write_bytes(os.urandom(5 << 20))
    seen: list[tuple[int, int]] = []
    store.put_file("vm/backups/1/vda.qcow2", src, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (5 << 20, 5 << 20)
    dst = tmp_path / "dst"
    store.get_file("vm/backups/1/vda.qcow2", dst)
    assert dst.read_bytes() == src.read_bytes()
    assert not [p for p in (tmp_path / "s").rglob(".*")]  # no temporary left
    store.delete("vm/backups/1/vda.qcow2")
    store.delete("vm/backups/1/vda.qcow2")  # missing is fine
    assert not (tmp_path / "s" / "vm").exists()  # emptied directories go too
    assert (tmp_path / "s").is_dir()
    with pytest.raises(NotFoundError):
        store.get_file("vm/backups/1/vda.qcow2", dst)


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/.."])
def test_local_store_refuses_keys_leaving_it(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValidationError):
        LocalStore(tmp_path).get_bytes(key)


def test_open_store_dispatches_on_the_scheme(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(tmp_path), LocalStore)
    local = open_store(f"file://{tmp_path}")
    assert isinstance(local, LocalStore) and local.root == tmp_path
    monkeypatch.setattr(store_mod, "_FACTORIES", {})
    monkeypatch.setattr(store_mod, "_load_remote_backends", lambda: None)
    with pytest.raises(UnsupportedError, match="no repository backend for 'nope://'"):
        open_store("nope://host/x")
    made = LocalStore(tmp_path / "made")
    register_scheme("mem", lambda url: made)
    assert open_store("mem://anything") is made
    assert is_remote_url("s3://bucket/x") and is_remote_url("sftp://u@h/x")
    assert not is_remote_url("/var/lib/kvmops/backups/r") and not is_remote_url("rel/dir")
    assert not is_remote_url(f"file://{tmp_path}")


# ---------------------------------------------------------------- options, identity
@pytest.mark.parametrize(("value", "expected"), [
    (False, (False, None)), (None, (False, None)), (True, (True, None)),
    ("qcow2", (True, None)), ("zstd", (False, "zstd:3")), ("zstd:1", (False, "zstd:1")),
    ("ZSTD:19", (False, "zstd:19")),
])
def test_parse_compress(value: bool | str | None, expected: tuple[bool, str | None]) -> None:
    assert parse_compress(value) == expected


@pytest.mark.parametrize("value", ["gzip", "zstd:0", "zstd:20", "zstd:", "zstd:x"])
def test_parse_compress_refuses(value: str) -> None:
    with pytest.raises(ValidationError):
        parse_compress(value)


def test_repo_config_round_trip_and_validation() -> None:
    config = RepoConfig(id="0123abcd", compress="zstd:5", encryption={"k": 1}, format=2)
    assert RepoConfig.parse(config.to_json().encode(), "R") == config
    plain = RepoConfig.parse(b'{"id": "0123abcd"}', "R")
    assert not plain.sealed and json.loads(plain.to_json()) == {"id": "0123abcd"}
    for bad in (b"[]", b'{"id": "XYZ"}', b'{"id": "0123abcd", "compress": "lz4"}',
                b'{"id": "0123abcd", "encryption": "yes"}', b"not json"):
        with pytest.raises(TamperedError):
            RepoConfig.parse(bad, "R")
    with pytest.raises(ValidationError, match="newer"):
        RepoConfig.parse(b'{"id": "0123abcd", "format": 99}', "R")


# ---------------------------------------------------------------- store-backed repository
def _manifest(vm: str, backup_id: str, parent: str | None = None) -> Manifest:
    return Manifest(
        id=backup_id, vm=vm, time=datetime(2026, 1, 1, tzinfo=UTC),
        type=BackupType.INCREMENTAL if parent else BackupType.FULL, parent=parent,
        checkpoint=None, consistency=Consistency.CRASH,
        disks=[DiskRecord(target="vda", file="vda.qcow2", source="/x", parent=parent,
                          type=BackupType.INCREMENTAL if parent else BackupType.FULL,
                          virtual_size=1 << 20, bytes_written=1 << 20, sha256="s")])


def _publish(repo: StoreRepository, manifest: Manifest, data: bytes) -> Path:
    partial = repo.start_partial(manifest.vm, manifest.id)
    (partial / "vda.qcow2").write_bytes(data)
    repo.publish(manifest.vm, partial, manifest)
    assert not partial.exists()  # the plaintext leaves the work directory
    return partial


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path / "ring")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "work"
    monkeypatch.setenv("KVMOPS_BACKUP_WORK_DIR", str(path))
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path / "state"))  # backup-ram-roots
    return path


def test_zstd_repository_publishes_sealed_and_reads_back(tmp_path: Path, ring: Keyring,
                                                         work: Path) -> None:
    root = tmp_path / "repo"
    repo = prepare_repository(root, compress="zstd:3", keyring=ring)
    assert isinstance(repo, StoreRepository) and repo.root == work / repo.identity()
    data = b"kvmops " * 200_000
    _publish(repo, _manifest("vm1", "20260101T000000.000001Z"), data)
    stored = root / "vm1" / "backups" / "20260101T000000.000001Z" / "vda.qcow2"
    assert stored.is_file() and stored.stat().st_size < len(data) // 10
    again = open_repository(root, keyring=ring)
    assert isinstance(again, StoreRepository) and again.vms() == ["vm1"]
    manifests, rejected = again.scan("vm1")
    assert [m.id for m in manifests] == ["20260101T000000.000001Z"] and not rejected
    point = manifests[0]
    with again.local_chains("vm1", point, {point.id: point}, ["vda"]) as view:
        opened = view.backups_dir("vm1") / point.id / "vda.qcow2"
        assert opened.read_bytes() == data
    assert not opened.exists()
    assert repo_info(root, ring)["compression"] == "zstd:3"
    # A plain repository stays plain.
    assert type(open_repository(tmp_path / "plain", keyring=ring)) is Repository


def test_tampered_manifest_is_rejected_and_checkpoint_xml_round_trips(
        tmp_path: Path, ring: Keyring, work: Path) -> None:
    root = tmp_path / "repo"
    repo = prepare_repository(root, compress="zstd", keyring=ring)
    assert isinstance(repo, StoreRepository)
    first, second = "20260101T000000.000001Z", "20260101T000000.000002Z"
    _publish(repo, _manifest("vm1", first), b"a" * 1000)
    _publish(repo, _manifest("vm1", second, parent=first), b"b" * 1000)
    assert repo.has_file("vm1", first, "vda.qcow2")
    path = root / "vm1" / "backups" / second / "manifest.json"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    manifests, rejected = repo.scan("vm1")
    assert [m.id for m in manifests] == [first]
    assert [r.backup_id for r in rejected] == [second] and "manifest.json" in rejected[0].reason
    repo.save_checkpoint_xml("vm1", "kvmops-x", "<domaincheckpoint/>")
    assert repo.checkpoint_xml("vm1", "kvmops-x") == "<domaincheckpoint/>"
    assert repo.check_checkpoints("vm1") == []
    repo.remove_checkpoint_xml("vm1", "kvmops-x")
    assert repo.checkpoint_xml("vm1", "kvmops-x") is None
    repo.remove_backup(manifests[0])
    assert not repo.has_file("vm1", first, "vda.qcow2") and repo.backup_ids("vm1") == [second]
    # What a killed publish left (data, no manifest) goes before the next publish.
    repo.store.put_bytes(f"vm1/backups/{first}/vda.qcow2", b"orphan")
    _publish(repo, _manifest("vm1", "20260101T000000.000003Z"), b"c" * 1000)
    assert repo.store.size(f"vm1/backups/{first}/vda.qcow2") is None
    assert repo.backup_ids("vm1") == [second, "20260101T000000.000003Z"]


def test_encrypted_repository_needs_its_key(tmp_path: Path, ring: Keyring, work: Path
                                           ) -> None:
    root = tmp_path / "repo"
    key = tmp_path / "k1"
    repo = prepare_repository(root, encrypt=True, key_file=key, keyring=ring)  # key made
    assert key.stat().st_mode & 0o077 == 0
    assert isinstance(repo, StoreRepository) and repo.sealing.key is not None
    data = os.urandom(100_000)
    _publish(repo, _manifest("vm1", "20260101T000000.000001Z"), data)
    repo.save_checkpoint_xml("vm1", "kvmops-c", "<domaincheckpoint/>")
    assert data not in (root / "vm1" / "backups" / "20260101T000000.000001Z"
                        / "vda.qcow2").read_bytes()
    with pytest.raises(KeyRequiredError):
        open_repository(root, keyring=ring)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    with pytest.raises(KeyRequiredError):
        open_repository(root, key_file=wrong, keyring=ring)
    prepare_repository(tmp_path / "z", compress="zstd", keyring=ring)
    with pytest.raises(ValidationError, match="not encrypted"):
        prepare_repository(tmp_path / "z", encrypt=True, key_file=key, keyring=ring)
    with pytest.raises(ValidationError, match="compressed with nothing"):
        prepare_repository(root, compress="zstd:3", key_file=key, keyring=ring)
    info = repo_info(root, ring)
    assert info["encrypted"] is True and info["key_id"] and key.read_bytes().hex() \
        not in json.dumps(info)
    # Key change: the old key no longer opens it, the new one does (same data key).
    new = tmp_path / "k2"
    rekey(root, old_key_file=key, new_key_file=new, keyring=ring)
    with pytest.raises(KeyRequiredError):
        open_repository(root, key_file=key, keyring=ring)
    reopened = open_repository(root, key_file=new, keyring=ring)
    assert isinstance(reopened, StoreRepository)
    assert [m.id for m in reopened.manifests("vm1")] == ["20260101T000000.000001Z"]
    # A manifest key rotation re-signs the sealed (binary) files as they are.
    old_key = ring.current_id()
    ring.rotate()
    assert resign(Repository(root, ring)) == (3, [])  # identity, manifest, checkpoint
    ring.retire(old_key or "")
    assert [m.id for m in open_repository(root, key_file=new, keyring=ring).manifests("vm1")]\
        == ["20260101T000000.000001Z"]


def test_a_plain_repository_with_backups_is_not_turned_sealed(tmp_path: Path, ring: Keyring,
                                                             work: Path) -> None:
    root = tmp_path / "repo"
    plain = Repository(root, ring)
    plain.identity()
    partial = plain.start_partial("vm1", "20260101T000000.000001Z")
    (partial / "vda.qcow2").write_bytes(b"x")
    plain.publish("vm1", partial, _manifest("vm1", "20260101T000000.000001Z"))
    with pytest.raises(ValidationError, match="holds plain backups"):
        prepare_repository(root, compress="zstd", keyring=ring)
    assert type(prepare_repository(root, keyring=ring)) is Repository


def test_api_callers_name_key_files_of_the_server_key_directory_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.services.backups import key_path
    from kvmops.services.caller import Caller

    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path / "state"))
    base = tmp_path / "state" / "keys" / "repository"
    api = Caller(name="u", role="operator", via="api")
    assert key_path(api, None) is None
    assert key_path(api, "site-a.key") == base / "site-a.key"
    assert key_path(api, str(base / "site-a.key")) == base / "site-a.key"
    for outside in ("/etc/shadow", "../../../etc/shadow", "sub/../../x.key"):
        with pytest.raises(PathRefusedError):
            key_path(api, outside)
    assert key_path(Caller.local(), "/any/where.key") == Path("/any/where.key")


def test_a_killed_prune_rewrite_is_finished_or_undone(tmp_path: Path, ring: Keyring,
                                                      work: Path) -> None:
    from kvmops.backup.repository import file_digest
    from kvmops.backup.storerepo import PENDING

    repo = prepare_repository(tmp_path / "repo", compress="zstd", keyring=ring)
    assert isinstance(repo, StoreRepository)
    first = "20260101T000000.000001Z"
    old = tmp_path / "old"
    old.write_bytes(b"o" * 5000)
    new = tmp_path / "new"
    new.write_bytes(b"n" * 5000)
    original = _manifest("vm1", first).model_copy(update={"disks": [
        _manifest("vm1", first).disks[0].model_copy(update={"sha256": file_digest(old)})]})
    partial = repo.start_partial("vm1", first)
    (partial / "vda.qcow2").write_bytes(old.read_bytes())
    repo.publish("vm1", partial, original)
    rewritten = original.model_copy(update={"notes": ["merged"], "disks": [
        original.disks[0].model_copy(update={"sha256": file_digest(new)})]})
    pending = repo.data_key("vm1", first, PENDING)
    # Killed after the pending manifest, before the file: undone.
    repo.write_object(pending, rewritten.model_dump_json().encode())
    assert repo.finish_pending("vm1") == [] and repo.store.size(pending) is None
    assert repo.load("vm1", first).notes == []
    # Killed after the file, before the manifest: finished (by the next publish too).
    repo.write_object(pending, rewritten.model_dump_json().encode())
    repo.put_data(new, repo.data_key("vm1", first, "vda.qcow2"))
    repo.drop_orphans("vm1")
    assert repo.store.size(pending) is None and repo.load("vm1", first).notes == ["merged"]


# ---------------------------------------------------------------- memory work directory
def test_partial_in_memory_when_it_fits_and_discarded_with_its_link(
        tmp_path: Path, ring: Keyring, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ram = tmp_path / "ram"
    monkeypatch.setenv("KVMOPS_BACKUP_RAM_WORK_DIR", str(ram))
    repo = prepare_repository(tmp_path / "repo", compress="zstd", keyring=ring)
    assert isinstance(repo, StoreRepository)
    # size unknown: on disk
    on_disk = repo.start_partial("vm1", "20260101T000000.000001Z")
    assert on_disk.is_dir() and not on_disk.is_symlink()
    repo.discard_partial(on_disk)
    # fits: a link to a private directory in the memory work directory
    partial = repo.start_partial("vm1", "20260101T000000.000002Z", work_bytes=1 << 20)
    assert partial.is_symlink() and partial.resolve().parent == ram
    assert ram.stat().st_mode & 0o777 == 0o711
    (partial / "vda.qcow2").write_bytes(b"x" * 1000)
    target = partial.resolve()
    assert repo.partials("vm1") == [partial]
    repo.discard_partial(partial)
    assert not partial.is_symlink() and not target.exists()
    # does not fit (more than a quarter of the memory): on disk
    huge = repo.start_partial("vm1", "20260101T000000.000003Z", work_bytes=1 << 50)
    assert not huge.is_symlink()
    repo.discard_partial(huge)
    # published from memory: the sealed copy lands, the memory copy goes
    manifest = _manifest("vm1", "20260101T000000.000004Z")
    partial = repo.start_partial("vm1", manifest.id, work_bytes=1 << 20)
    target = partial.resolve()
    (partial / "vda.qcow2").write_bytes(b"kvmops " * 1000)
    repo.publish("vm1", partial, manifest)
    assert not partial.is_symlink() and not target.exists()
    assert [m.id for m in repo.manifests("vm1")] == [manifest.id]


def test_a_killed_runs_memory_partial_is_cleaned_even_after_a_reboot(
        tmp_path: Path, ring: Keyring, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ram = tmp_path / "ram"
    monkeypatch.setenv("KVMOPS_BACKUP_RAM_WORK_DIR", str(ram))
    repo = prepare_repository(tmp_path / "repo", compress="zstd", keyring=ring)
    gone = repo.start_partial("vm1", "20260101T000000.000001Z", work_bytes=1 << 20)
    shutil.rmtree(gone.resolve())  # the tmpfs emptied by a reboot: the link dangles
    assert repo.partials("vm1") == [gone]
    repo.discard_partial(gone)
    assert not gone.is_symlink() and repo.partials("vm1") == []
    # a link pointing anywhere but the memory work directory is only unlinked
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    odd = repo.partial_path("vm1", "20260101T000000.000002Z")
    odd.symlink_to(elsewhere)
    repo.discard_partial(odd)
    assert not odd.is_symlink() and (elsewhere / "keep").read_text() == "keep"


@pytest.mark.parametrize("now", ["off", "other"])
def test_a_killed_runs_memory_partial_is_cleaned_after_the_setting_changed(
        tmp_path: Path, ring: Keyring, work: Path, monkeypatch: pytest.MonkeyPatch,
        now: str) -> None:
    ram = tmp_path / "ram"
    monkeypatch.setenv("KVMOPS_BACKUP_RAM_WORK_DIR", str(ram))
    repo = prepare_repository(tmp_path / "repo", compress="zstd", keyring=ring)
    left = repo.start_partial("vm1", "20260101T000000.000001Z", work_bytes=1 << 20)
    target = left.resolve()
    (left / "vda.qcow2").write_bytes(b"x" * 1000)  # then kill -9: nothing cleaned
    monkeypatch.setenv("KVMOPS_BACKUP_RAM_WORK_DIR",
                       "off" if now == "off" else str(tmp_path / "ram2"))
    assert repo.partials("vm1") == [left]
    repo.discard_partial(left)
    assert not left.is_symlink() and not target.exists()
    assert (tmp_path / "state" / "backup-ram-roots").read_text() == f"{ram}\n"
    # a link into a directory kvmops never used is only unlinked, whatever its name
    elsewhere = tmp_path / "precious"
    (elsewhere / target.name).mkdir(parents=True)
    odd = repo.partial_path("vm1", "20260101T000000.000002Z")
    odd.symlink_to(elsewhere / target.name)
    repo.discard_partial(odd)
    assert not odd.is_symlink() and (elsewhere / target.name).is_dir()


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_memory_work_directory_others_can_write_is_not_used(
        tmp_path: Path, ring: Keyring, work: Path, monkeypatch: pytest.MonkeyPatch,
        mode: int) -> None:
    ram = tmp_path / "ram"
    ram.mkdir()
    ram.chmod(mode)  # e.g. planted in the world-writable /dev/shm by someone else
    monkeypatch.setenv("KVMOPS_BACKUP_RAM_WORK_DIR", str(ram))
    repo = prepare_repository(tmp_path / "repo", compress="zstd", keyring=ring)
    partial = repo.start_partial("vm1", "20260101T000000.000001Z", work_bytes=1 << 20)
    assert not partial.is_symlink() and not any(ram.iterdir())
    monkeypatch.setenv("KVMOPS_BACKUP_RAM_WORK_DIR", "off")
    other = repo.start_partial("vm1", "20260101T000000.000002Z", work_bytes=1 << 20)
    assert not other.is_symlink()


@pytest.mark.parametrize("sealed", [True, False])
def test_pending_digests_are_filled_when_published(tmp_path: Path, ring: Keyring,
                                                   work: Path, sealed: bool) -> None:
    """finish_files leaves a store-backed repository's digests to publish (hashed while
    sealed); whatever repository publishes, no manifest is written with one pending."""
    from kvmops.backup.repository import DIGEST_PENDING, blake3_file

    repo = (prepare_repository(tmp_path / "repo", compress="zstd", keyring=ring) if sealed
            else Repository(tmp_path / "plain", ring))
    assert repo.digests_in_publish is sealed
    manifest = _manifest("vm1", "20260101T000000.000001Z")
    manifest.disks[0].sha256 = DIGEST_PENDING
    data = os.urandom(3 << 20)
    partial = repo.start_partial("vm1", manifest.id)
    (partial / "vda.qcow2").write_bytes(data)
    (tmp_path / "copy").write_bytes(data)
    repo.publish("vm1", partial, manifest)
    want = blake3_file(tmp_path / "copy")
    assert manifest.disks[0].sha256 == want  # the caller's manifest (its JSON output)
    (stored,) = repo.manifests("vm1")
    assert stored.disks[0].sha256 == want
