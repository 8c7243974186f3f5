"""Remote repositories through the real CLI and a booted guest (the session's shared one,
no boot of its own): over SFTP (an OpenSSH sshd in a test network namespace) and on S3
(``rclone serve s3``, the S3 repository encrypted) -- a full and two incrementals with
guest writes between, list, a restore equal to the guest disk at the chosen point,
verify, a flipped byte on the server found by verify, a prune that merges, a restore
after it; and replication of a local repository to S3, restored from the replica."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, run_cli
from tests.integration.backup_util import image_hash, write_random
from tests.integration.remote_servers import S3Server, SshServer

pytestmark = pytest.mark.integration


class Remote:
    """The CLI against one repository (a URL), with its environment and key."""

    def __init__(self, url: str, env: dict[str, str] | None = None,
                 key: list[str] | None = None) -> None:
        self.url, self.env, self.key = url, env or {}, key or []

    def ok(self, *args: str) -> str:
        result = run_cli(*args, "--repo", self.url, *self.key, env=self.env)
        assert result.code == 0, (args, result.stderr)
        return result.stdout

    def backup(self, vm: str, *flags: str) -> dict[str, object]:
        data = json.loads(self.ok("backup", "create", vm, "--json", *flags))
        assert isinstance(data, dict)
        return data

    def ids(self, vm: str) -> list[tuple[str, str]]:
        listed = json.loads(self.ok("backup", "list", vm, "--json"))
        return [(str(m["id"]), str(m["type"])) for m in listed]

    def restore_hash(self, vm: str, backup_id: str, out: Path) -> str:
        self.ok("backup", "restore", vm, "--at", backup_id, "--to", str(out))
        return image_hash(out / "vda.qcow2")


def _stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("vda.qcow2") if p.is_file())


def _round(remote: Remote, vm: str, served: Path, images_dir: Path, first_flags: list[str]
           ) -> None:
    """The whole life of a remote repository (module docstring)."""
    h_full = write_random(vm, 1, 4)
    full = remote.backup(vm, "--full", *first_flags)
    h_inc1 = write_random(vm, 8, 2)
    inc1 = remote.backup(vm, "--incremental")
    h_inc2 = write_random(vm, 12, 2)
    inc2 = remote.backup(vm, "--incremental")
    assert remote.ids(vm) == [(str(full["id"]), "full"), (str(inc1["id"]), "incremental"),
                              (str(inc2["id"]), "incremental")]
    out = images_dir / f"remote-{served.name}"
    assert remote.restore_hash(vm, str(inc1["id"]), out / "a") == h_inc1
    assert remote.restore_hash(vm, str(full["id"]), out / "b") == h_full
    remote.ok("backup", "verify", vm)
    # A flipped byte in a stored file (on the server) fails verify, naming the file.
    files = _stored_files(served)
    assert len(files) == 3
    victim = files[1]
    original = victim.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    victim.write_bytes(bytes(damaged))
    failed = run_cli("backup", "verify", vm, "--repo", remote.url, *remote.key,
                     env=remote.env)
    assert failed.code != 0 and str(inc1["id"]) in failed.stderr, failed.stderr
    victim.write_bytes(original)
    # Prune to the newest two: the full is merged into the first incremental.
    remote.ok("backup", "prune", vm, "--keep-last", "2")
    assert [i for i, _t in remote.ids(vm)] == [str(inc1["id"]), str(inc2["id"])]
    assert remote.restore_hash(vm, str(inc2["id"]), out / "c") == h_inc2
    remote.ok("backup", "verify", vm)


def test_sftp_repository(sshd: SshServer, backup_guest: str, images_dir: Path) -> None:
    remote = Remote(sshd.url("repo"))
    _round(remote, backup_guest, sshd.root / "repo", images_dir, [])
    # A host key that is not the server's is refused in one line.
    wrong = sshd.root.parent / "wrong_known_hosts"
    client_pub = (sshd.root.parent / "keys" / "client_ed25519.pub").read_text().split()
    wrong.write_text(f"[{sshd.address}]:{sshd.port} {client_pub[0]} {client_pub[1]}\n")
    bad = sshd.url("repo", with_keys=False) + f"?identity={sshd.identity}&known_hosts={wrong}"
    refused = run_cli("backup", "list", backup_guest, "--repo", bad)
    assert_one_line_error(refused, 7, "host key", "does not match")


def test_s3_encrypted_repository(s3: S3Server, backup_guest: str, images_dir: Path,
                                 tmp_path: Path) -> None:
    bucket = s3.bucket("kvmops-it")
    key = tmp_path / "repo.key"
    remote = Remote(s3.url(bucket, "enc"), s3.env(), ["--key-file", str(key)])
    _round(remote, backup_guest, s3.root / bucket / "enc", images_dir, ["--encrypt"])
    keyless = run_cli("backup", "restore", backup_guest, "--repo", remote.url, "--to",
                      str(images_dir / "remote-keyless"), env=remote.env)
    assert keyless.code != 0 and not (images_dir / "remote-keyless" / "vda.qcow2").exists()


def test_replicate_local_to_s3(s3: S3Server, backup_guest: str, repo_dir: Path,
                               images_dir: Path) -> None:
    local = Remote(str(repo_dir))
    h_full = write_random(backup_guest, 2, 2)
    full = local.backup(backup_guest, "--full")
    h_inc = write_random(backup_guest, 6, 2)
    inc = local.backup(backup_guest, "--incremental")
    target = s3.url(s3.bucket("kvmops-it"), "replica")
    shipped = run_cli("backup", "replicate", backup_guest, "--from", str(repo_dir), "--to",
                      target, "--json", env=s3.env())
    assert shipped.code == 0, shipped.stderr
    result = json.loads(shipped.stdout)
    assert [p["backup_id"] for p in result["shipped"]] == [full["id"], inc["id"]]
    replica = Remote(target, s3.env())
    assert [i for i, _t in replica.ids(backup_guest)] == [full["id"], inc["id"]]
    assert replica.restore_hash(backup_guest, str(inc["id"]), images_dir / "repl-a") == h_inc
    assert replica.restore_hash(backup_guest, str(full["id"]), images_dir / "repl-b") == h_full
    # A second run ships only what is new.
    h_inc2 = write_random(backup_guest, 10, 1)
    inc2 = local.backup(backup_guest, "--incremental")
    again = json.loads(run_cli("backup", "replicate", backup_guest, "--from", str(repo_dir),
                               "--to", target, "--json", env=s3.env()).stdout)
    assert [p["backup_id"] for p in again["shipped"]] == [inc2["id"]]
    assert replica.restore_hash(backup_guest, str(inc2["id"]), images_dir / "repl-c") == h_inc2
    replica.ok("backup", "verify", backup_guest)
