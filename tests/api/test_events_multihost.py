"""One event subscription per host feeding the one SSE stream (issue 12).

A server whose database knows the second host before it starts watches it at once
(``events: subscribed`` in GET /api/v1/hosts); a VM defined, started (paused: nothing
boots), destroyed and undefined on the second daemon comes out of the server's
``/api/v1/events`` with ``host`` = that host's name (and ``libvirt`` = its URI); the
second libvirtd frozen (SIGSTOP) is noticed by libvirt's keepalive and shown
``down: REASON`` with a ``host`` event, and after SIGCONT the watch subscribes again by
itself. Removing the host stops its watch (a VM defined while it is gone raises nothing);
adding it again watches it again at once. ``kvmops events --lifecycle --host all`` on the
same database prints the same VM's events, each line naming the host."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from kvmops.devguest.build import GuestImage
from tests.conftest import REPO, SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, add_users, start_server
from tests.integration.nshost import NsHost, second_host

H2 = "evh2"


@pytest.fixture(scope="module")
def h2() -> Iterator[NsHost]:
    with second_host(f"{SESSION_PREFIX}evh") as host:
        yield host


@pytest.fixture(scope="module")
def server(h2: NsHost, workdir: Path) -> Iterator[ApiServer]:
    db = f"sqlite:///{workdir / 'events-multihost.db'}"
    added = run_cli("host", "add", H2, h2.uri, env={"KVMOPS_DB": db})  # before the start
    assert added.code == 0, added.stderr
    srv = start_server(db, workdir)
    try:
        add_users(srv)
        yield srv
    finally:
        srv.stop()


def _collect(server: ApiServer, out: list[dict[str, Any]], ready: threading.Event,
             stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {server.tokens['viewer']}"}
    with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "GET", server.url + "/api/v1/events", headers=headers,
            timeout=httpx.Timeout(180, read=180)) as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith(": connected"):
                ready.set()
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append({"sse": kind, **json.loads(line[6:])})
            if stop.is_set():
                return


def _until(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    end = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.3)


def _events_state(client: httpx.Client, name: str) -> str | None:
    hosts = {h["name"]: h for h in client.get("/hosts", params={"timeout": 2}).json()}
    return hosts[name]["events"] if name in hosts else None


def _domain_xml(name: str, guest: GuestImage) -> str:
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>
<kernel>{guest.kernel}</kernel><initrd>{guest.initrd}</initrd></os>
<devices><serial type='pty'/><graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
</devices></domain>"""


def test_second_hosts_life_cycle_events_reach_the_stream_tagged_with_its_name(
        server: ApiServer, h2: NsHost, tiny_guest: GuestImage) -> None:
    events: list[dict[str, Any]] = []
    ready, stop = threading.Event(), threading.Event()
    reader = threading.Thread(target=_collect, args=(server, events, ready, stop),
                              daemon=True)
    vm, gone_vm, back_vm = (f"{SESSION_PREFIX}evvm", f"{SESSION_PREFIX}evgone",
                            f"{SESSION_PREFIX}evback")
    conn = libvirt.open(h2.uri)
    follow: subprocess.Popen[str] | None = None

    def of(name: str) -> list[dict[str, Any]]:
        return [e for e in list(events) if e["sse"] == "domain" and e.get("vm") == name]

    try:
        with server.client("admin") as admin:
            # registered before the server started: watched from the start
            assert _until("h2 subscribed", lambda: _events_state(admin, H2) == "subscribed")
            assert admin.get(f"/hosts/{H2}").json()["events"] == "subscribed"
            assert admin.get("/hosts/local").json()["events"] == "subscribed"
            reader.start()
            assert ready.wait(30)
            follow = subprocess.Popen(
                [sys.executable, "-m", "kvmops.cli.main", "events", "--lifecycle", "--host",
                 "all", "--json", "--follow", "--timeout", "300", "--quiet"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                env={**os.environ, "KVMOPS_DB": server.db})
            lines: list[dict[str, Any]] = []
            threading.Thread(target=lambda: lines.extend(
                json.loads(line) for line in follow.stdout or ()), daemon=True).start()
            _until("the CLI subscribed to h2", lambda: any(
                e["host"] == H2 and e["event"] == "subscribed" for e in list(lines)))

            dom = conn.defineXML(_domain_xml(vm, tiny_guest))
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            dom.destroy()
            dom.undefine()
            _until("undefined event", lambda: any(e["event"] == "undefined" for e in of(vm)))
            mine = of(vm)
            kinds = [e["event"] for e in mine]
            # destroy: QEMU's SHUTDOWN event first on some versions, then libvirt's stop
            assert [k for k in kinds if k != "shutdown"] == [
                "defined", "started", "suspended", "stopped", "undefined"], kinds
            assert {e["host"] for e in mine} == {H2}
            assert {e["libvirt"] for e in mine} == {h2.uri}
            _until("the CLI's undefined line", lambda: any(
                e.get("vm") == vm and e["event"] == "undefined" for e in list(lines)))
            follow.send_signal(signal.SIGINT)
            assert follow.wait(30) == 0, follow.stderr.read() if follow.stderr else ""
            printed = [e for e in lines if e.get("vm") == vm]
            assert [e["event"] for e in printed] == [e["event"] for e in mine], printed
            assert {e["host"] for e in printed} == {H2}

            # the second libvirtd stops answering: keepalive notices, the watch is down
            pid = h2.libvirtd_pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                down = _until("h2 down", lambda: (s := _events_state(admin, H2)) and
                              s.startswith("down: ") and s)
                assert "lost" in down or "keepalive" in down, down
                assert _events_state(admin, "local") == "subscribed"
            finally:
                os.kill(pid, signal.SIGCONT)
            assert _until("h2 subscribed again",
                          lambda: _events_state(admin, H2) == "subscribed")
            hosts = [e for e in list(events) if e["sse"] == "host" and e.get("host") == H2]
            assert [e["event"] for e in hosts] == ["libvirt-disconnected",
                                                   "libvirt-reconnected"], hosts
            assert hosts[0]["error"] and hosts[0]["libvirt"] == h2.uri

            # removed: not watched; added again (through the API): watched at once
            assert admin.delete(f"/hosts/{H2}").status_code == 200
            conn.defineXML(_domain_xml(gone_vm, tiny_guest)).undefine()
            added = admin.post("/hosts", json={"name": H2, "uri": h2.uri})
            assert added.status_code == 201, added.text
            assert _until("h2 subscribed after add",
                          lambda: _events_state(admin, H2) == "subscribed", timeout=30)
            conn.defineXML(_domain_xml(back_vm, tiny_guest)).undefine()
            _until("events of the host added again",
                   lambda: any(e["event"] == "undefined" for e in of(back_vm)))
            assert [e["host"] for e in of(back_vm)] == [H2, H2]
            assert of(gone_vm) == []
    finally:
        stop.set()
        if follow is not None and follow.poll() is None:
            follow.kill()
            follow.wait(10)
        for name in (vm, gone_vm, back_vm):
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
