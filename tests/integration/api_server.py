"""A real ``kvmops serve`` in a subprocess, and a throw-away PostgreSQL cluster."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kvmops.testing.procs import stop_process
from tests.conftest import REPO, run_cli

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    url: str
    db: str
    proc: subprocess.Popen[str]
    log: Path
    admin_password: str | None
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, role: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=120)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)


def start_server(db: str, workdir: Path, *args: str, extra_env: dict[str, str] | None = None
                 ) -> ApiServer:
    port = free_port()
    log = workdir / f"serve-{port}.log"
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmops.cli.main", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--db", db, *args],
        stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, **(extra_env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"kvmops serve exited: {log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"kvmops serve did not come up: {log.read_text()}")
        time.sleep(0.2)
    password = None
    for line in log.read_text().splitlines():
        if "One-time password:" in line:
            password = line.split("One-time password:", 1)[1].strip()
    return ApiServer(url=url, db=db, proc=proc, log=log, admin_password=password)


@contextlib.contextmanager
def server_with_host(db: str, workdir: Path, host: str, uri: str, *args: str,
                     extra_env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    """A server (:func:`start_server`) with its users (:func:`add_users`) and the host
    ``host`` at ``uri`` added through the API; stopped afterwards."""
    srv = start_server(db, workdir, *args, extra_env=extra_env)
    try:
        add_users(srv)
        with srv.client("admin") as admin:
            added = admin.post("/hosts", json={"name": host, "uri": uri})
            assert added.status_code == 201, added.text
        yield srv
    finally:
        srv.stop()


def add_users(server: ApiServer) -> None:
    """admin (exists), operator and viewer users, each with an API token."""
    for name, role in (("op", "operator"), ("view", "viewer")):
        result = run_cli("user", "add", name, "--role", role, "--password-stdin",
                         "--db", server.db, input="password-" + name + "\n")
        assert result.code == 0, result.stderr
    for name, role in (("admin", "admin"), ("op", "operator"), ("view", "viewer")):
        result = run_cli("user", "token", name, "--db", server.db)
        assert result.code == 0, result.stderr
        server.tokens[role] = result.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A private PostgreSQL cluster (trust auth, unix socket only); yields a DB URL."""
    if not PG_BIN:
        raise RuntimeError("PostgreSQL is not installed (run scripts/setup-host.sh)")
    bin_dir = PG_BIN[-1]
    base = Path(tempfile.mkdtemp(prefix="kvmops-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    uid = pwd.getpwnam("postgres").pw_uid
    os.chown(base, uid, -1)
    os.chown(sock, uid, -1)
    port = free_port()

    def as_postgres(*cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                       capture_output=True, text=True, timeout=120)

    try:
        as_postgres(str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                    "--no-sync")
        as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"),
                    "-o", f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off",
                    "start")
        as_postgres(str(bin_dir / "createdb"), "-h", str(sock), "-p", str(port), "kvmops")
        yield f"postgresql://postgres@/kvmops?host={sock}&port={port}"
    finally:
        with contextlib.suppress(Exception):
            as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300) -> dict[str, Any]:
    """Poll a job until it is final; return its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.5)
