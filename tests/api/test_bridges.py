"""Host bridges over an uplink through the REST API, for real: ``kvmops serve`` runs inside
test network namespace A (listening on the uplink's address 192.168.240.2, uplink kvta0: a
veth), and the API client connects from namespace B (192.168.240.1, the veth's other end),
so the "session route" the change must keep is the client's real one.

A passing change keeps the client's own TCP connection (same local port before and
after) and the job says what it checked; a failing check rolls back (the namespace exactly
as before) and the job says so; a server killed mid-change is restored by its guard; a
viewer or operator is refused (403) and audited. The namespaces go even on failure (and
by ``make clean-test``: their names hold ``-upl-``).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kvmops.testing import cleanup
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.browser import CHROMIUM, chromium_page, log_in
from tests.integration.test_bridge_uplink import _ip_json, _settled, _sh, _state

pytestmark = pytest.mark.integration

NS_PREFIX = f"{SESSION_PREFIX}upl-api"
NS_A, NS_B = f"{NS_PREFIX}-a", f"{NS_PREFIX}-b"
UPLINK, PEER_END, BRIDGE = "kvta0", "kvta1", "kvtabr0"
SERVER_IP, CLIENT_IP = "192.168.240.2", "192.168.240.1"
ABSENT = "192.168.240.99"  # nobody answers there
PORT = 8240
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _enter_netns(ns: str) -> None:
    """Move the calling thread (only it: a network namespace is per thread) into ``ns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
    finally:
        os.close(fd)


@dataclass
class Client:
    """One HTTP/1.1 connection from namespace B, kept open (keep-alive) across requests."""

    token: str
    pool: ThreadPoolExecutor
    conn: http.client.HTTPConnection | None = None

    def _in_b(self, fn: Callable[[], T]) -> T:
        return self.pool.submit(fn).result(timeout=120)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        def go() -> tuple[int, Any]:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(SERVER_IP, PORT, timeout=60)
            sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
            data = None
            if body is not None:
                data = json.dumps(body)
                sent["Content-Type"] = "application/json"
            self.conn.request(method, "/api/v1" + path, body=data, headers=sent)
            response = self.conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None

        return self._in_b(go)

    def local(self) -> tuple[str, int]:
        """The connection's own address and port (the same ones: the same connection)."""
        assert self.conn is not None and self.conn.sock is not None
        return tuple(self.conn.sock.getsockname())  # type: ignore[return-value]

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        """Poll the job on this connection until it is final (bounded); also the
        messages seen on the way."""
        deadline = time.monotonic() + timeout
        messages: list[str] = []
        while True:
            status, job = self.request("GET", f"/jobs/{job_id}")
            assert status == 200, job
            if job.get("message") and (not messages or messages[-1] != job["message"]):
                messages.append(job["message"])
            if job["state"] not in ("queued", "running"):
                job["seen"] = messages
                return dict(job)
            assert time.monotonic() < deadline, f"job {job_id} not final: {job}"
            time.sleep(0.3)


@dataclass
class NsServer:
    proc: subprocess.Popen[str]
    db: str
    state_dir: Path
    log: Path
    pool: ThreadPoolExecutor
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, role: str) -> Client:
        return Client(self.tokens[role], self.pool)

    @property
    def record(self) -> Path:
        return self.state_dir / "bridges" / f"{BRIDGE}.json"


def _remove_namespaces() -> None:
    cleanup.remove_uplink_namespaces(NS_PREFIX)
    listed = _sh("ip", "netns", "list")
    assert NS_A not in listed and NS_B not in listed, listed


def _make_namespaces() -> None:
    _sh("ip", "netns", "add", NS_A)
    _sh("ip", "netns", "add", NS_B)
    _sh("ip", "link", "add", UPLINK, "netns", NS_A, "type", "veth", "peer", "name", PEER_END,
        "netns", NS_B)
    for ns in (NS_A, NS_B):
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
    _sh("ip", "-n", NS_A, "addr", "add", f"{SERVER_IP}/24", "dev", UPLINK)
    _sh("ip", "-n", NS_A, "link", "set", UPLINK, "up")
    _sh("ip", "-n", NS_B, "addr", "add", f"{CLIENT_IP}/24", "dev", PEER_END)
    _sh("ip", "-n", NS_B, "link", "set", PEER_END, "up")
    _sh("ip", "-n", NS_A, "route", "add", "default", "via", CLIENT_IP)
    _settled(NS_A)
    _settled(NS_B)


def _start(tmp_path: Path, pool: ThreadPoolExecutor) -> NsServer:
    db = f"sqlite:///{tmp_path / 'api.db'}"
    state_dir = tmp_path / "state"
    log = tmp_path / "serve.log"
    env = {**os.environ, "KVMOPS_STATE_DIR": str(state_dir)}
    for name in ("SSH_CONNECTION", "SSH_CLIENT"):  # the test's own session says nothing
        env.pop(name, None)
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NS_A, sys.executable, "-m", "kvmops.cli.main", "serve",
             "--host", SERVER_IP, "--port", str(PORT), "--db", db, "--workers", "2"],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    server = NsServer(proc=proc, db=db, state_dir=state_dir, log=log, pool=pool)

    def health() -> int:
        conn = http.client.HTTPConnection(SERVER_IP, PORT, timeout=2)
        try:
            conn.request("GET", "/api/v1/health")
            return conn.getresponse().status
        finally:
            conn.close()

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"kvmops serve exited: {log.read_text()}")
        with contextlib.suppress(OSError):
            if pool.submit(health).result(timeout=30) == 200:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"kvmops serve did not come up: {log.read_text()}")
        time.sleep(0.2)
    for name, role in (("op", "operator"), ("view", "viewer")):
        result = run_cli("user", "add", name, "--role", role, "--password-stdin",
                         "--db", db, input=f"password-{name}\n")
        assert result.code == 0, result.stderr
    for name, role in (("admin", "admin"), ("op", "operator"), ("view", "viewer")):
        result = run_cli("user", "token", name, "--db", db)
        assert result.code == 0, result.stderr
        server.tokens[role] = result.stdout.strip().splitlines()[-1]
    return server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[NsServer]:
    """Namespaces A and B with the veth uplink, and ``kvmops serve`` in A."""
    _remove_namespaces()
    pool = ThreadPoolExecutor(max_workers=1, initializer=_enter_netns, initargs=(NS_B,))
    server: NsServer | None = None
    try:
        _make_namespaces()
        server = _start(tmp_path, pool)
        yield server
    finally:
        if server is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGINT)
            try:
                server.proc.wait(20)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
        pool.shutdown(wait=True)
        _remove_namespaces()


def _create(client: Client, headers: dict[str, str] | None = None, **extra: Any
            ) -> tuple[int, Any]:
    return client.request("POST", "/host/bridges", {"name": BRIDGE, "uplink": UPLINK,
                                                   "define": False, **extra}, headers)


# ----------------------------------------------------------------------------- tests
def test_a_passing_change_keeps_the_clients_connection(served: NsServer) -> None:
    before = _state(NS_A)
    admin = served.client("admin")
    status, interfaces = admin.request("GET", "/host/interfaces")
    assert status == 200, interfaces
    assert {(i["name"], i["uplink_ok"]) for i in interfaces} == {(UPLINK, True)}
    # X-Forwarded-For from a peer that is no configured proxy changes nothing.
    status, plan = _create(admin, {"X-Forwarded-For": "192.0.2.9"}, dry_run=True)
    assert status == 200, plan
    assert (plan["dry_run"], plan["verify_source"], plan["verify_target"]) == (
        True, "api client", CLIENT_IP)
    assert any(BRIDGE in step for step in plan["plan"]) and _state(NS_A) == before
    local = admin.local()

    status, started = _create(admin)
    assert status == 202, started
    assert started["plan"] == plan["plan"] and started["verify_source"] == "api client"
    job = admin.wait_job(started["job_id"])
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert (result["verified"], result["verify_target"], result["next_hop"]) == (
        True, CLIENT_IP, CLIENT_IP)
    assert any("check passed" in line for line in result["log"]), result["log"]
    # The same TCP connection carried every request: the client never lost the server.
    assert admin.local() == local
    assert _ip_json(NS_A, "route", "get", CLIENT_IP)[0]["dev"] == BRIDGE
    assert not served.record.exists()

    # Back again: unbridge over the API, checked the same way; A is exactly as before.
    status, started = admin.request("POST", f"/host/bridges/{BRIDGE}/unbridge", {})
    assert status == 202, started
    job = admin.wait_job(started["job_id"])
    assert job["state"] == "succeeded", job
    assert admin.local() == local
    _settled(NS_A)
    assert _state(NS_A) == before
    status, records = admin.request("GET", "/host/bridges/rollbacks")
    assert (status, records) == (200, [])


def test_a_failing_check_rolls_back_and_the_api_says_so(served: NsServer) -> None:
    before = _state(NS_A)
    admin = served.client("admin")
    status, started = _create(admin, verify=ABSENT, verify_timeout=2)
    assert status == 202, started
    job = admin.wait_job(started["job_id"])
    assert job["state"] == "failed", job
    assert job["error_kind"] == "StateError"
    assert f"{ABSENT}" in job["error"] and "rolled back" in job["error"], job["error"]
    assert "\n" not in job["error"]
    _settled(NS_A)
    assert _state(NS_A) == before and not served.record.exists()
    # A refusal before any change is a one-line HTTP error at once, no job.
    status, error = _create(admin, uplink="kvtnosuch0")
    assert status == 422, error
    assert "uplink 'kvtnosuch0' does not exist" in error["error"], error
    status, error = admin.request("POST", f"/host/bridges/{BRIDGE}/rollback")
    assert status == 404 and "no rollback record" in error["error"], error


def test_a_server_killed_mid_change_is_restored_by_the_guard(served: NsServer) -> None:
    before = _state(NS_A)
    admin = served.client("admin")
    status, started = _create(admin, verify=ABSENT, verify_timeout=60)
    assert status == 202, started
    deadline = time.monotonic() + 60
    while not served.record.exists():  # the change is applied, the check waits
        assert time.monotonic() < deadline and served.proc.poll() is None, \
            served.log.read_text()
        time.sleep(0.1)
    record = json.loads(served.record.read_text())
    assert record["pid"] == served.proc.pid
    served.proc.kill()  # a crash of the server: only the guard is left
    served.proc.wait(30)
    deadline = time.monotonic() + 90
    while served.record.exists():
        assert time.monotonic() < deadline, "the guard did not restore"
        time.sleep(0.2)
    _settled(NS_A)
    assert _state(NS_A) == before
    guard_log = served.record.with_suffix(".guard.log").read_text()
    assert f"process {served.proc.pid} ended before finishing bridge '{BRIDGE}'" in guard_log


def test_a_server_stopped_mid_change_finishes_its_rollback_first(served: NsServer) -> None:
    """SIGTERM (systemctl stop) while the check waits: the server is not killed under the
    change; its job thread ends it (rolled back) before the process exits."""
    before = _state(NS_A)
    admin = served.client("admin")
    status, started = _create(admin, verify=ABSENT, verify_timeout=8)
    assert status == 202, started
    deadline = time.monotonic() + 60
    while not served.record.exists():
        assert time.monotonic() < deadline and served.proc.poll() is None, \
            served.log.read_text()
        time.sleep(0.1)
    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(90)
    assert not served.record.exists(), served.log.read_text()
    _settled(NS_A)
    assert _state(NS_A) == before
    guard_log = served.record.with_suffix(".guard.log")
    assert "restored" not in (guard_log.read_text() if guard_log.exists() else "")
    assert "Traceback" not in served.log.read_text(), served.log.read_text()


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_below_admin_is_refused_and_audited(served: NsServer, role: str) -> None:
    before = _state(NS_A)
    client = served.client(role)
    for method, path, body in (
            ("POST", "/host/bridges", {"name": BRIDGE, "uplink": UPLINK, "define": False}),
            ("POST", "/host/bridges", {"name": BRIDGE, "uplink": UPLINK, "dry_run": True}),
            ("POST", f"/host/bridges/{BRIDGE}/unbridge", {}),
            ("POST", f"/host/bridges/{BRIDGE}/rollback", None),
            ("GET", "/host/bridges/rollbacks", None), ("GET", "/host/interfaces", None)):
        status, error = client.request(method, path, body)
        assert status == 403, (method, path, error)
        assert "needs the admin role" in error["error"]
    assert _state(NS_A) == before
    user = "view" if role == "viewer" else "op"
    status, rows = served.client("admin").request("GET", f"/audit?user={user}")
    assert status == 200, rows
    refused = {(r["method"], r["path"], r["status_code"], r["address"]) for r in rows}
    assert ("POST", "/api/v1/host/bridges", 403, CLIENT_IP) in refused, rows
    assert ("POST", f"/api/v1/host/bridges/{BRIDGE}/unbridge", 403, CLIENT_IP) in refused


# --------------------------------------------------------------------------- web UI
@contextlib.contextmanager
def _forwarder(pool: ThreadPoolExecutor) -> Iterator[str]:
    """A TCP relay from 127.0.0.1 (where Chromium runs) into namespace B, then through the
    uplink to the server: the server sees 192.168.240.1, so the checked route is real."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.5)
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                near, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                far = pool.submit(socket.create_connection, (SERVER_IP, PORT), 30).result(60)
            except OSError:
                near.close()
                continue
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        listener.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium missing: run scripts/setup-host.sh")
def test_the_networks_page_form_dry_runs_and_applies(served: NsServer) -> None:
    pytest.importorskip("playwright.sync_api")
    before = _state(NS_A)
    added = run_cli("user", "add", "webadmin", "--role", "admin", "--password-stdin", "--db",
                    served.db, input="web-admin-1\n")
    assert added.code == 0, added.stderr
    with _forwarder(served.pool) as url, chromium_page() as page:
        log_in(page, url, "webadmin", "web-admin-1")
        page.goto(url + "/networks")
        page.wait_for_selector(f"#bridge-create select[name=uplink] option[value={UPLINK}]",
                               state="attached")
        page.fill("#bridge-create input[name=name]", BRIDGE)
        page.uncheck("#bridge-create input[name=define]")
        page.click("#bridge-dry-run")
        page.wait_for_selector("#bridge-status:has-text('dry run: nothing changed')")
        steps = page.inner_text("#bridge-steps")
        assert f"check after the change: {CLIENT_IP} (api client)" in steps, steps
        assert BRIDGE in steps and _state(NS_A) == before

        # A host that never answers: the job fails, the page says it was rolled back.
        page.fill("#bridge-create input[name=verify]", ABSENT)
        page.fill("#bridge-create input[name=verify_timeout]", "2")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#bridge-create button[type=submit]")
        page.wait_for_selector("#bridge-status[data-outcome=error]", timeout=120_000)
        assert "rolled back" in page.inner_text("#bridge-status")
        _settled(NS_A)
        assert _state(NS_A) == before

        # This browser's own route checked: kept, and the page (through it) says so.
        page.fill("#bridge-create input[name=verify]", "")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#bridge-create button[type=submit]")
        page.wait_for_selector("#bridge-status[data-outcome=ok]", timeout=120_000)
        text = page.inner_text("#bridge-status")
        assert f"kept: bridge '{BRIDGE}' over '{UPLINK}', {CLIENT_IP} answered" in text, text
        assert "check passed" in page.inner_text("#bridge-steps")
        assert _ip_json(NS_A, "route", "get", CLIENT_IP)[0]["dev"] == BRIDGE
    assert "Traceback" not in served.log.read_text()
