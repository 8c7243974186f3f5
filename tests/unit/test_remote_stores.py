"""The remote object stores against real servers (tests/integration/remote_servers.py):
the SFTP store on an OpenSSH sshd in a test network namespace, the S3 store on
``rclone serve s3``. Both: list (prefixes, pagination on S3), put/get of bytes and files,
size, delete, atomic replacement, the host-key and credential refusals, and a cut-off
upload that resumes (SFTP from the bytes there; S3 from the multipart parts there)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.backup.remote.s3 import S3Store, _in_flight
from kvmops.backup.remote.sftp import SftpStore
from kvmops.backup.store import ObjectStore, open_store
from kvmops.errors import ConfigError, HostUnavailableError, NotFoundError, StorageError
from tests.integration.remote_servers import S3Server, SshServer

MiB = 1 << 20


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KVMOPS_S3_CREDENTIALS", raising=False)
    return s3


@pytest.fixture(params=["sftp", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    name = f"t{os.urandom(4).hex()}"
    if request.param == "sftp":
        server: SshServer = request.getfixturevalue("sshd")
        opened = open_store(server.url(name))
    else:
        s3srv: S3Server = request.getfixturevalue("s3_env")
        opened = open_store(s3srv.url(s3srv.bucket("kvmops-unit"), name))
    yield opened
    opened.close()


def _file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_put_get_list_size_delete(store: ObjectStore, tmp_path: Path) -> None:
    assert store.list("") == []
    store.put_bytes("vm1/backups/B1/manifest.json", b"{}")
    store.put_bytes("vm1/backups/B2/manifest.json", b"{2}")
    store.put_bytes("vm2/backups/B1/manifest.json", b"x")
    store.put_bytes("kvmops-repository.json", b"id")
    assert store.list("vm1/") == ["vm1/backups/B1/manifest.json",
                                  "vm1/backups/B2/manifest.json"]
    assert store.list("vm1/backups/B2") == ["vm1/backups/B2/manifest.json"]
    assert store.list("vm") == sorted(store.list("vm1/") + store.list("vm2/"))
    assert len(store.list("")) == 4
    assert store.get_bytes("vm1/backups/B2/manifest.json") == b"{2}"
    assert store.size("vm1/backups/B2/manifest.json") == 3
    assert store.size("vm1/backups/B9/manifest.json") is None
    with pytest.raises(NotFoundError):
        store.get_bytes("vm1/backups/B9/manifest.json")
    with pytest.raises(NotFoundError):
        store.get_file("vm1/nothing", tmp_path / "out")
    src = _file(tmp_path / "disk", 3 * MiB + 17)
    seen: list[tuple[int, int]] = []
    store.put_file("vm1/backups/B1/vda.qcow2", src, lambda d, t: seen.append((d, t)))
    assert seen[-1] == (src.stat().st_size, src.stat().st_size)
    out = tmp_path / "back"
    store.get_file("vm1/backups/B1/vda.qcow2", out)
    assert out.read_bytes() == src.read_bytes()
    assert store.size("vm1/backups/B1/vda.qcow2") == src.stat().st_size
    store.delete("vm1/backups/B1/vda.qcow2")
    store.delete("vm1/backups/B1/vda.qcow2")  # missing is fine
    store.delete("vm1/backups/B1/manifest.json")
    assert store.list("vm1/") == ["vm1/backups/B2/manifest.json"]


def test_replace_is_whole(store: ObjectStore, tmp_path: Path) -> None:
    """A rewrite replaces the object whole; no temporary object is ever listed."""
    store.put_bytes("a/obj", b"old" * 1000)
    store.put_bytes("a/obj", b"new")
    assert store.get_bytes("a/obj") == b"new"
    assert store.list("") == ["a/obj"]
    src = _file(tmp_path / "f", 2 * MiB)
    store.put_file("a/obj", src)
    assert store.get_bytes("a/obj") == src.read_bytes()
    assert store.list("") == ["a/obj"]


class Cut(Exception):
    """Stands for a connection lost or a process killed in the middle of an upload."""


def _cut_after(limit: int) -> object:
    def progress(done: int, total: int) -> None:
        if done >= limit:
            raise Cut

    return progress


def test_sftp_upload_cut_then_resumed(sshd: SshServer, tmp_path: Path) -> None:
    store = SftpStore(sshd.url("resume"))
    src = _file(tmp_path / "disk", 9 * MiB)
    store.put_bytes("vm/obj", b"previous")
    with pytest.raises(Cut):
        store.put_file("vm/obj", src, _cut_after(4 * MiB))  # type: ignore[arg-type]
    # Nothing half-written is visible: the old object stays whole, no temporary listed.
    assert store.get_bytes("vm/obj") == b"previous"
    assert store.list("") == ["vm/obj"]
    partial = [p for p in (sshd.root / "resume" / "vm").iterdir() if p.name != "obj"]
    assert len(partial) == 1 and 4 * MiB <= partial[0].stat().st_size < 9 * MiB
    starts: list[int] = []
    store.put_file("vm/obj", src, lambda d, t: starts.append(d))
    assert starts[0] >= 4 * MiB  # resumed, not sent again from 0
    assert hashlib.sha256(store.get_bytes("vm/obj")).digest() == \
        hashlib.sha256(src.read_bytes()).digest()
    assert sorted(p.name for p in (sshd.root / "resume" / "vm").iterdir()) == ["obj"]
    store.close()


def test_s3_multipart_cut_then_resumed(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.bucket("kvmops-unit")
    state = tmp_path / "state"
    store = S3Store(s3_env.url(bucket, "multipart"), part_size=5 * MiB,
                    multipart_min=6 * MiB, state_dir=state)
    src = _file(tmp_path / "disk", 17 * MiB + 5)
    store.put_bytes("vm/obj", b"previous")
    cut_at: list[int] = []

    def cut(done: int, total: int) -> None:
        if done >= 10 * MiB:
            cut_at.append(done)
            raise Cut

    with pytest.raises(Cut):
        store.put_file("vm/obj", src, cut)
    assert store.get_bytes("vm/obj") == b"previous"  # not completed: the old object
    (saved,) = list(state.iterdir())
    # the parts acknowledged before the cut are recorded (which ones: four go at once)
    parts = [int(n) for n in json.loads(saved.read_text())["parts"]]
    size = src.stat().st_size
    assert sum(min(5 * MiB, size - (n - 1) * 5 * MiB) for n in parts) == cut_at[0]
    assert len(parts) < 4
    starts: list[int] = []
    store.put_file("vm/obj", src, lambda d, t: starts.append(d))
    assert starts[0] == cut_at[0]  # the recorded parts were not sent again
    out = tmp_path / "out"
    store.get_file("vm/obj", out)
    assert out.read_bytes() == src.read_bytes()
    assert list(state.iterdir()) == []  # the state of a finished upload is gone
    assert store.abandon_uploads() == 0
    # A state whose upload the server no longer knows starts over.
    with pytest.raises(Cut):
        store.put_file("vm/obj2", src, _cut_after(5 * MiB))  # type: ignore[arg-type]
    assert store.abandon_uploads() == 1
    store.put_file("vm/obj2", src)
    assert store.size("vm/obj2") == src.stat().st_size
    store.close()


def test_in_flight_yields_every_result_and_stops_starting_when_the_consumer_stops() -> None:
    assert sorted(_in_flight(lambda n: n * 10, list(range(1, 8)), 3)) == \
        [10, 20, 30, 40, 50, 60, 70]
    started: list[int] = []

    def send(n: int) -> int:
        started.append(n)
        return n

    with pytest.raises(Cut):
        for _ in _in_flight(send, list(range(1, 50)), 2):
            raise Cut
    # the first two started at once, at most one more replaced the first result
    assert len(started) <= 3

    def fail(n: int) -> int:
        if n == 2:
            raise OSError("lost")
        return n

    with pytest.raises(OSError, match="lost"):
        list(_in_flight(fail, [1, 2, 3], 1))


def test_s3_parts_go_several_at_once(s3_env: S3Server, tmp_path: Path) -> None:
    """Parts are sent ``parts_in_flight`` at a time (never more), and the object is whole."""
    bucket = s3_env.bucket("kvmops-parallel")
    store = S3Store(s3_env.url(bucket, "par"), part_size=5 * MiB, multipart_min=6 * MiB,
                    state_dir=tmp_path / "state", parts_in_flight=3)
    src = _file(tmp_path / "disk", 31 * MiB + 7)  # 7 parts
    lock = threading.Lock()
    now, most = [0], [0]
    original = store.client.upload_part

    def counted(**kwargs: object) -> object:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.2)  # long enough for the others to start
            return original(**kwargs)
        finally:
            with lock:
                now[0] -= 1

    store.client.upload_part = counted
    store.put_file("vm/obj", src)
    assert most[0] == 3
    out = tmp_path / "out"
    store.get_file("vm/obj", out)
    assert out.read_bytes() == src.read_bytes()
    store.close()


def test_s3_list_pages(s3_env: S3Server) -> None:
    """More keys than one ListObjectsV2 page (1000) are all listed."""
    bucket = s3_env.bucket("kvmops-pages")
    base = s3_env.root / bucket / "many"
    for i in range(1100):
        directory = base / f"vm/backups/{i:05d}"
        directory.mkdir(parents=True)
        (directory / "manifest.json").write_text("{}")
    store = S3Store(s3_env.url(bucket, "many"))
    keys = store.list("vm/")
    assert len(keys) == 1100 and keys[0] == "vm/backups/00000/manifest.json"
    store.close()


def test_sftp_refuses_unknown_or_changed_host_key(sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    url = sshd.url("x", with_keys=False) + f"?identity={sshd.identity}&known_hosts={empty}"
    with pytest.raises(HostUnavailableError, match=r"is not in .*refusing an unknown host"):
        SftpStore(url).list("")
    other = tmp_path / "other"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    empty.write_text(f"[{sshd.address}]:{sshd.port} "
                     + " ".join((tmp_path / "other.pub").read_text().split()[:2]) + "\n")
    with pytest.raises(HostUnavailableError, match="does not match"):
        SftpStore(url).list("")
    missing = sshd.url("x", with_keys=False) + \
        f"?identity={sshd.identity}&known_hosts={tmp_path / 'none'}"
    with pytest.raises(ConfigError, match="does not exist"):
        SftpStore(missing).list("")
    # Another key than the authorised one: no login.
    wrong = sshd.url("x", with_keys=False) + \
        f"?identity={other}&known_hosts={sshd.known_hosts}"
    with pytest.raises(HostUnavailableError, match="refused"):
        SftpStore(wrong).list("")


def test_s3_credentials(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                        ) -> None:
    bucket = s3.bucket("kvmops-unit")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" * 8)
    with pytest.raises(StorageError, match="access denied"):
        S3Store(s3.url(bucket, "creds")).list("")
    # The settings' credentials file wins over the environment.
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {s3.access_key}\n"
                     f"aws_secret_access_key = {s3.secret_key}\n"
                     "[other]\naws_access_key_id = nobody\naws_secret_access_key = no\n")
    monkeypatch.setenv("KVMOPS_S3_CREDENTIALS", str(creds))
    store = S3Store(s3.url(bucket, "creds"))
    store.put_bytes("k", b"v")
    assert store.list("") == ["k"]
    with pytest.raises(StorageError, match="access denied"):
        S3Store(s3.url(bucket, "creds") + "&profile=other").list("")
    with pytest.raises(ConfigError, match=r"no section \[third\]"):
        S3Store(s3.url(bucket, "creds") + "&profile=third").list("")
    with pytest.raises(StorageError, match="bucket kvmops-none does not exist"):
        S3Store(s3.url("kvmops-none", "x")).put_bytes("k", b"v")
