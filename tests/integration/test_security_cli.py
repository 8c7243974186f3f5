"""The command line with hostile images and manifests: what a guest wrote into its raw
disk, a chain leading out of the allowed directories, a forged manifest. Root at the
command line may name any file, but never makes kvmops follow what a file says."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmops.errors import BackupInconsistentError, PathRefusedError, TamperedError
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.hostile import host_secret, hostile_raw, state_of
from tests.integration.conftest import remove_vm


@pytest.fixture
def secret() -> Iterator[Path]:
    path = host_secret("cli")
    yield path
    path.unlink(missing_ok=True)


def _xml(name: str) -> str:
    result = run_cli("vm", "dumpxml", name, "--inactive")
    assert result.code == 0, result.stderr
    return result.stdout


def test_create_with_a_guest_written_disk_reads_it_as_raw(images_dir: Path, secret: Path,
                                                          host: Host) -> None:
    before = state_of(secret)
    disk = hostile_raw(images_dir / f"{SESSION_PREFIX}hostile-create.raw", "qcow2-backing",
                       secret)
    name = f"{SESSION_PREFIX}sec-create"
    try:
        refused = run_cli("vm", "create", name, "--memory", "64M", "--disk",
                          f"path={disk},format=qcow2")
        assert_one_line_error(refused, PathRefusedError.exit_code, str(secret))
        assert not host.has_domain(name)
        made = run_cli("vm", "create", name, "--memory", "64M", "--disk", f"path={disk}")
        assert made.code == 0, made.stderr
        assert "look like qcow2" in made.stderr  # told, never acted on
        assert "type=\"raw\"" in _xml(name) or "type='raw'" in _xml(name)
        assert state_of(secret) == before
    finally:
        remove_vm(host, name)


def test_disk_attach_of_a_guest_written_disk(vm_factory: Callable[..., str], images_dir: Path,
                                             secret: Path) -> None:
    before = state_of(secret)
    vm = vm_factory()
    disk = hostile_raw(images_dir / f"{SESSION_PREFIX}hostile-attach.raw", "qcow2-data-file",
                       secret)
    refused = run_cli("vm", "disk", "attach", vm, "--image", str(disk), "--format", "qcow2")
    assert_one_line_error(refused, PathRefusedError.exit_code, str(secret), "data file")
    attached = run_cli("vm", "disk", "attach", vm, "--image", str(disk), "--json")
    assert attached.code == 0, attached.stderr
    assert json.loads(attached.stdout)["format"] == "raw"
    assert state_of(secret) == before


def test_undefine_removes_only_what_kvmops_made(vm_factory: Callable[..., str],
                                                images_dir: Path, host: Host) -> None:
    imported = images_dir / f"{SESSION_PREFIX}imported-cli.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(imported), "16M"],
                   check=True)
    vm = vm_factory("--disk", f"path={imported},format=qcow2")
    vda = images_dir / f"{vm}-vda.qcow2"
    victim = Path("/tmp") / vda.stem  # a prefix of the image's name, outside
    victim.write_bytes(b"victim\n" * 64)
    victim.chmod(0o600)
    try:
        before = state_of(victim)
        subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(victim), "-F",
                        "raw", str(vda)], check=True)
        result = run_cli("vm", "undefine", vm, "--remove-storage")
        assert result.code == 0, result.stderr
        assert f"kept {imported}" in result.stderr and "did not create it" in result.stderr
        assert "outside the allowed directories" in result.stderr
        assert not vda.exists() and imported.exists()
        assert state_of(victim) == before
    finally:
        victim.unlink(missing_ok=True)
        imported.unlink(missing_ok=True)
        remove_vm(host, vm)


def test_restore_never_uses_a_forged_manifest(vm_factory: Callable[..., str], repo_dir: Path,
                                              secret: Path, host: Host) -> None:
    before = state_of(secret)
    vm = vm_factory(disk="size=8M")
    made = run_cli("backup", "create", vm, "--repo", str(repo_dir), "--json")
    assert made.code == 0, made.stderr
    genuine = json.loads(made.stdout)["id"]
    backups = repo_dir / vm / "backups"
    forged = backups / "20990101T000000.000000Z"
    forged.mkdir()
    shutil.copy(backups / genuine / "vda.qcow2", forged / "vda.qcow2")
    manifest = json.loads((backups / genuine / "manifest.json").read_text())
    manifest.update(id=forged.name, domain_xml=(
        f"<domain type='qemu'><name>{vm}</name><memory unit='MiB'>64</memory><os><type>hvm"
        f"</type><kernel>{secret}</kernel></os></domain>"))
    (forged / "manifest.json").write_text(json.dumps(manifest))
    listed = run_cli("backup", "list", vm, "--repo", str(repo_dir), "--json")
    assert [b["id"] for b in json.loads(listed.stdout)] == [genuine]
    assert "is not listed" in listed.stderr and "not signed" in listed.stderr
    restored = run_cli("backup", "restore", vm, "--repo", str(repo_dir), "--at", forged.name,
                       "--new-vm", f"{vm}-x")
    assert_one_line_error(restored, TamperedError.exit_code, forged.name)
    assert not host.has_domain(f"{vm}-x")
    verified = run_cli("backup", "verify", vm, "--repo", str(repo_dir))
    assert_one_line_error(verified, BackupInconsistentError.exit_code, "tampered")
    pruned = run_cli("backup", "prune", vm, "--repo", str(repo_dir), "--keep-last", "1")
    assert_one_line_error(pruned, TamperedError.exit_code, "not pruning")
    assert state_of(secret) == before
    shutil.rmtree(forged)
    assert run_cli("backup", "verify", vm, "--repo", str(repo_dir)).code == 0


def test_manifest_key_rotation_keeps_backups_trusted(vm_factory: Callable[..., str],
                                                     repo_dir: Path, tmp_path: Path) -> None:
    """Rotate, re-sign, retire, and move the key to another host (a state directory of
    this test's own: the host's key is not touched)."""
    vm = vm_factory(disk="size=8M")
    state = {"KVMOPS_STATE_DIR": str(tmp_path / "state")}
    other = {"KVMOPS_STATE_DIR": str(tmp_path / "other-host")}

    def cli(*args: str, env: dict[str, str] = state, stdin: str | None = None) -> Any:
        result = run_cli(*args, env=env, input=stdin)
        return result

    assert cli("backup", "create", vm, "--repo", str(repo_dir)).code == 0
    old = next(k["id"] for k in json.loads(cli("backup", "key", "list", "--json").stdout)
               if k["current"])
    assert cli("backup", "key", "rotate").code == 0
    assert cli("backup", "verify", vm, "--repo", str(repo_dir)).code == 0  # the old key
    resigned = cli("backup", "key", "resign", "--repo", str(repo_dir))
    assert resigned.code == 0, resigned.stderr
    assert cli("backup", "key", "retire", old).code == 0
    assert cli("backup", "verify", vm, "--repo", str(repo_dir)).code == 0  # the new key
    # another host does not trust the repository until it has the key
    assert_one_line_error(cli("backup", "verify", vm, "--repo", str(repo_dir), env=other),
                          BackupInconsistentError.exit_code, "does not have")
    key = cli("backup", "key", "export").stdout.strip()
    assert cli("backup", "key", "import", "-", env=other, stdin=key + "\n").code == 0
    assert cli("backup", "verify", vm, "--repo", str(repo_dir), env=other).code == 0
