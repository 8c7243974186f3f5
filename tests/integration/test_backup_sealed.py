"""Store-backed repositories through the real stack: an encrypted (AES-256-GCM) repository
from its first backup, zstd compression, tampering found by verify, key change, prune.

One booted guest for the module; the encrypted chain (full + 2 incrementals, the guest
writing between them) is made once and copied for the tests that change a repository.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmops.backup.model import BackupType
from kvmops.backup.storerepo import point_images
from kvmops.errors import KeyRequiredError, NotFoundError, ValidationError
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.backup_util import backup, disk_hash, guest_sh, image_hash, write_random

QCOW2_MAGIC = b"QFI\xfb"


@dataclass
class Chain:
    vm: str
    repo: Path
    key: Path
    ids: list[str]
    hashes: dict[str, str]  # backup id -> the guest's disk at that point


def _cli_key(*args: str, key: Path | None) -> list[str]:
    return [*args, "--key-file", str(key)] if key is not None else list(args)


def restore_to(chain: Chain, backup_id: str, out: Path, key: Path | None,
               repo: Path | None = None) -> str:
    result = run_cli(*_cli_key("backup", "restore", chain.vm, "--repo",
                               str(repo or chain.repo), "--at", backup_id, "--to", str(out),
                               key=key))
    assert result.code == 0, result.stderr
    return image_hash(out / "vda.qcow2")


def verify(repo: Path, vm: str, key: Path | None) -> tuple[int, str]:
    result = run_cli(*_cli_key("backup", "verify", vm, "--repo", str(repo), "--json",
                               key=key))
    return result.code, result.stdout + result.stderr


def stored_files(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix != ".hmac" and p.name != "lock")


def copy_repo(chain: Chain, dst: Path) -> Path:
    shutil.copytree(chain.repo, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def guest(vm_factory: Callable[..., str]) -> str:
    return vm_factory(start=True)


@pytest.fixture(scope="module")
def chain(guest: str, backups_dir: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Chain]:
    """An encrypted repository holding a full and two incrementals of ``guest``."""
    repo = backups_dir / f"sealed-{os.getpid()}"
    key = tmp_path_factory.mktemp("keys") / "repo.key"  # made by kvmops (0600)
    hashes: dict[str, str] = {}
    ids = []
    first = backup(guest, repo, "--full", "--encrypt", "--key-file", str(key))
    assert first["type"] == "full"
    assert key.is_file() and key.stat().st_mode & 0o077 == 0
    ids.append(str(first["id"]))
    hashes[ids[-1]] = disk_hash(guest)
    for seek in (3, 30):
        expected = write_random(guest, seek, 2)
        made = backup(guest, repo, "--incremental", "--key-file", str(key))
        assert made["type"] == "incremental" and made["parent"] == ids[-1]
        ids.append(str(made["id"]))
        hashes[ids[-1]] = expected
    yield Chain(guest, repo, key, ids, hashes)
    shutil.rmtree(repo, ignore_errors=True)


def test_encrypted_chain_lists_and_restores_with_the_key(chain: Chain, tmp_path: Path
                                                         ) -> None:
    result = run_cli("backup", "list", chain.vm, "--repo", str(chain.repo), "--json",
                     "--key-file", str(chain.key))
    assert result.code == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [b["id"] for b in listed] == chain.ids
    assert [b["type"] for b in listed] == ["full", "incremental", "incremental"]
    for index, backup_id in enumerate(chain.ids):
        assert restore_to(chain, backup_id, tmp_path / f"r{index}", chain.key) \
            == chain.hashes[backup_id]
    # File-level restore and instant recovery open a point through point_images.
    with point_images(chain.repo, chain.vm, chain.ids[1], key_file=chain.key) as (point,
                                                                                    tops):
        assert point.id == chain.ids[1] and list(tops) == ["vda"]
        assert image_hash(tops["vda"]) == chain.hashes[chain.ids[1]]
    assert not tops["vda"].exists()
    # Nothing readable is stored: no qcow2 header, no JSON manifest, and no plaintext
    # left in the work directory.
    data = [p for p in stored_files(chain.repo) if p.name == "vda.qcow2"]
    assert len(data) == 3
    for path in data:
        assert path.read_bytes()[:4] != QCOW2_MAGIC
    for path in chain.repo.rglob("manifest.json"):
        with pytest.raises(ValueError):
            json.loads(path.read_bytes())
    info = run_cli("backup", "repo", "info", "--repo", str(chain.repo), "--json")
    assert info.code == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["encrypted"] is True and described["key_id"]
    assert chain.key.read_bytes().hex() not in info.stdout


def test_without_the_key_nothing_is_read_or_written(chain: Chain, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    for key in (None, wrong):
        listed = run_cli(*_cli_key("backup", "list", chain.vm, "--repo", str(chain.repo),
                                   key=key))
        assert_one_line_error(listed, KeyRequiredError.exit_code, str(chain.repo))
        out = tmp_path / f"out-{'none' if key is None else 'wrong'}"
        restored = run_cli(*_cli_key("backup", "restore", chain.vm, "--repo",
                                     str(chain.repo), "--at", chain.ids[-1], "--to", str(out),
                                     key=key))
        assert_one_line_error(restored, KeyRequiredError.exit_code)
        assert not out.exists()
        code, text = verify(chain.repo, chain.vm, key)
        assert code == KeyRequiredError.exit_code, text
    missing = run_cli("backup", "restore", chain.vm, "--repo", str(chain.repo), "--to",
                      str(tmp_path / "out-missing"), "--key-file", str(tmp_path / "nope.key"))
    assert_one_line_error(missing, NotFoundError.exit_code, "nope.key")
    assert not (tmp_path / "out-missing").exists()


def test_a_flipped_byte_in_any_stored_file_fails_verify_naming_it(chain: Chain,
                                                                  tmp_path: Path) -> None:
    repo = copy_repo(chain, tmp_path / "repo")
    code, text = verify(repo, chain.vm, chain.key)
    assert code == 0, text
    targets = [p for p in stored_files(repo) if p.name in ("vda.qcow2", "manifest.json")]
    targets += [repo / "kvmops-repository.json"]
    assert len(targets) == 7
    for path in targets:
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        try:
            code, text = verify(repo, chain.vm, chain.key)
            assert code != 0, (path, text)
            assert str(path.relative_to(repo)) in text, (path, text)
        finally:
            path.write_bytes(original)
    code, text = verify(repo, chain.vm, chain.key)
    assert code == 0, text


def test_rekey_old_key_refused_new_key_restores(chain: Chain, tmp_path: Path) -> None:
    repo = copy_repo(chain, tmp_path / "repo")
    new_key = tmp_path / "new.key"
    result = run_cli("backup", "repo", "rekey", "--repo", str(repo), "--key-file",
                     str(chain.key), "--new-key-file", str(new_key))
    assert result.code == 0, result.stderr
    listed = run_cli("backup", "list", chain.vm, "--repo", str(repo), "--key-file",
                     str(chain.key))
    assert_one_line_error(listed, KeyRequiredError.exit_code)
    assert restore_to(chain, chain.ids[1], tmp_path / "r", new_key, repo) \
        == chain.hashes[chain.ids[1]]


def test_prune_on_an_encrypted_repository_keeps_points_whole(chain: Chain, tmp_path: Path
                                                            ) -> None:
    repo = copy_repo(chain, tmp_path / "repo")
    result = run_cli("backup", "prune", chain.vm, "--repo", str(repo), "--keep-last", "1",
                     "--key-file", str(chain.key), "--json")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert plan["keep"] == [chain.ids[-1]] and plan["remove"] == chain.ids[:2]
    listed = run_cli("backup", "list", chain.vm, "--repo", str(repo), "--key-file",
                     str(chain.key), "--json")
    kept = json.loads(listed.stdout)
    assert [(b["id"], b["type"]) for b in kept] == [(chain.ids[-1], "full")]
    assert not (repo / chain.vm / "backups" / chain.ids[0]).exists()
    code, text = verify(repo, chain.vm, chain.key)
    assert code == 0, text
    assert restore_to(chain, chain.ids[-1], tmp_path / "r", chain.key, repo) \
        == chain.hashes[chain.ids[-1]]


def test_zstd_repository_round_trip_is_smaller(guest: str, backups_dir: Path,
                                               tmp_path: Path) -> None:
    # Compressible data: a repeated text over 16 MiB of the disk.
    guest_sh(guest, "yes kvmops-zstd-test | dd of=/dev/vda bs=1M count=16 iflag=fullblock "
                    "conv=fsync 2>/dev/null; sync")
    expected = disk_hash(guest)
    plain = backups_dir / f"plain-{os.getpid()}"
    packed = backups_dir / f"zstd-{os.getpid()}"
    try:
        backup(guest, plain, "--full")
        made = backup(guest, packed, "--full", "--compress", "zstd:3")
        info = json.loads(run_cli("backup", "repo", "info", "--repo", str(packed),
                                  "--json").stdout)
        assert info["compression"] == "zstd:3" and info["encrypted"] is False
        size = sum(p.stat().st_size for p in stored_files(packed) if p.suffix == ".qcow2")
        plain_size = sum(p.stat().st_size for p in stored_files(plain)
                         if p.suffix == ".qcow2")
        assert size * 4 < plain_size, (size, plain_size)
        out = tmp_path / "r"
        result = run_cli("backup", "restore", guest, "--repo", str(packed), "--at",
                         str(made["id"]), "--to", str(out))
        assert result.code == 0, result.stderr
        assert image_hash(out / "vda.qcow2") == expected
        code, text = verify(packed, guest, None)
        assert code == 0, text
    finally:
        shutil.rmtree(plain, ignore_errors=True)
        shutil.rmtree(packed, ignore_errors=True)


def test_qcow2_compression_is_refused_on_a_sealed_repository(backups_dir: Path,
                                                             tmp_path: Path) -> None:
    repo = backups_dir / f"refused-{os.getpid()}"
    result = run_cli("backup", "create", "no-such-vm", "--repo", str(repo), "--encrypt",
                     "--key-file", str(tmp_path / "k"), "--compress")
    assert_one_line_error(result, ValidationError.exit_code, "bare --compress")
    assert not repo.exists() and not (tmp_path / "k").exists()


def test_metrics_see_the_last_sealed_backup(chain: Chain) -> None:
    """The metrics (kvmops_backup_last_success_time_seconds and the size) of a VM backed up
    into a sealed repository come from the completed event's summary: its manifest is not
    readable without the key."""
    from kvmops.backup import jobs
    from kvmops.services.metrics import _Manifests, backup_samples

    events = jobs.read_events(None, limit=1_000_000)
    completed = [e for e in events if e.get("vm") == chain.vm and e.get("event") == "completed"]
    assert completed and completed[-1]["location"].startswith(str(chain.repo.parent))
    (sample,) = backup_samples(events, {chain.vm: "local"}, _Manifests().get)
    assert sample.last_success is True and (sample.last_size_bytes or 0) > 0
    assert list(sample.disk_success_time) == ["vda"]
    # the chain's own events: its last backup (the second incremental) ends a chain of 3
    own = [e for e in events if e.get("vm") == chain.vm and e.get("location") == str(chain.repo)]
    (sample,) = backup_samples(own, {chain.vm: "local"}, _Manifests().get)
    assert sample.chain_length == {"vda": 3}


# ---------------------------------------------------------------- the memory work area
def _sealed_backup_watching(guest: str, repo: Path, key: Path, ram: Path
                            ) -> tuple[str, list[tuple[bool, list[str]]]]:
    """Back up through the service layer; on each progress report, note whether the
    partial directory is a link and what the memory work directory holds."""
    from kvmops.backup.repository import PARTIAL_PREFIX
    from kvmops.services import backups
    from kvmops.services.caller import Caller

    seen: list[tuple[bool, list[str]]] = []
    roots: list[Path] = []  # the repository exists once the backup runs: opened once

    def progress(_done: int, _total: int) -> None:
        roots[:] = roots or [repo_work(repo, key)]
        partials = list((roots[0] / guest / "backups").glob(f"{PARTIAL_PREFIX}*"))
        linked = bool(partials) and all(p.is_symlink() for p in partials)
        files = sorted(p.name for p in ram.rglob("*") if p.is_file()) if ram.is_dir() else []
        seen.append((linked, files))

    manifest = backups.create(Caller.local(), None, guest, repo, disks=["vda"],
                              mode=BackupType.FULL, encrypt=True, key_file=key,
                              progress=progress)
    return manifest.id, seen


def repo_work(repo: Path, key: Path) -> Path:
    """The local work root of a store-backed repository (settings' backup_work_dir/ID)."""
    from kvmops.backup.storerepo import open_repository
    return open_repository(repo, key_file=key).root


def test_a_sealed_backup_is_written_in_memory_when_it_fits(
        guest: str, backups_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """QEMU's work file goes to the memory work directory (the disk then takes only the
    sealed copy); nothing stays there after the backup; the backup restores right."""
    ram = Path(f"/dev/shm/kvmops-test-ram-{os.getpid()}")
    monkeypatch.setenv("KVMOPS_BACKUP_RAM_WORK_DIR", str(ram))
    repo = backups_dir / f"ram-{os.getpid()}"
    key = tmp_path / "repo.key"
    try:
        backup_id, seen = _sealed_backup_watching(guest, repo, key, ram)
        assert seen and all(linked for linked, _files in seen), seen
        assert any("vda.qcow2" in files for _linked, files in seen), seen
        assert ram.is_dir() and not any(ram.iterdir())  # the work file went with the run
        assert not list((repo_work(repo, key) / guest / "backups").glob(".partial-*"))
        expected = disk_hash(guest)
        out = tmp_path / "r"
        result = run_cli("backup", "restore", guest, "--repo", str(repo), "--at", backup_id,
                         "--to", str(out), "--key-file", str(key))
        assert result.code == 0, result.stderr
        assert image_hash(out / "vda.qcow2") == expected
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(ram, ignore_errors=True)


@pytest.mark.parametrize("case", ["too small", "planted", "off"])
def test_a_sealed_backup_stays_on_disk_when_memory_is_not_safe(
        guest: str, backups_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        case: str) -> None:
    """A tmpfs with less room than the disks' size, a directory someone else could write
    (world-writable, as a name planted in /dev/shm would be), or the setting off: the work
    file is written on disk, and the backup is as good."""
    import subprocess

    ram = tmp_path / "ram"
    mounted = False
    if case == "too small":
        ram.mkdir(mode=0o711)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0711",
                        "kvmops-test-ram", str(ram)], check=True)
        mounted = True
    elif case == "planted":
        ram.mkdir()
        ram.chmod(0o777)
    monkeypatch.setenv("KVMOPS_BACKUP_RAM_WORK_DIR", "off" if case == "off" else str(ram))
    repo = backups_dir / f"disk-work-{os.getpid()}"
    key = tmp_path / "repo.key"
    try:
        _backup_id, seen = _sealed_backup_watching(guest, repo, key, ram)
        assert seen and not any(linked for linked, _files in seen), seen
        assert not any(files for _linked, files in seen), seen
        code, text = verify(repo, guest, key)
        assert code == 0, text
    finally:
        if mounted:
            subprocess.run(["umount", str(ram)], check=False)
        shutil.rmtree(repo, ignore_errors=True)
