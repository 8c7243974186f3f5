"""Two ``kvmops serve`` instances on one PostgreSQL database (a private cluster,
loopback only): queued jobs run exactly once on whichever instance claims them, events
reach the SSE clients of both, log-in sessions and the log-in throttle are shared, and
a job whose instance stopped renewing its lease is marked abandoned, not run again."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import run
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from kvmops.store import Store
from kvmops.store import jobs as job_store
from kvmops.store.models import Job
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, postgres_cluster, start_server, wait_job

JOBS = 50
LEASE = {"KVMOPS_JOB_LEASE": "6"}  # seconds: a killed server's jobs expire soon


@pytest.fixture(scope="module")
def scale_pg() -> Iterator[str]:
    """A private PostgreSQL cluster of this module's own (other tests expect a fresh
    database of theirs)."""
    with postgres_cluster() as url:
        yield url


@pytest.fixture(scope="module")
def pair(scale_pg: str, workdir: Path, images_dir: Path) -> Iterator[tuple[ApiServer, ApiServer]]:
    """Servers A and B on the same database, allowed the same image directory."""
    args = ("--allow-dir", str(images_dir), "--log-format", "json")  # JSON: INFO lines too
    a = start_server(scale_pg, workdir, *args, extra_env=LEASE)
    try:
        b = start_server(scale_pg, workdir, *args, extra_env=LEASE)
        try:
            _users(a)  # users of the shared database serve both
            b.tokens = a.tokens
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def _users(server: ApiServer) -> None:
    """Users op and view (another test on this database may have added them) and a
    token for each role."""
    for name, role in (("op", "operator"), ("view", "viewer")):
        result = run_cli("user", "add", name, "--role", role, "--password-stdin",
                         "--db", server.db, input="password-" + name + "\n")
        assert result.code == 0 or "already exists" in result.stderr, result.stderr
    for name, role in (("admin", "admin"), ("op", "operator"), ("view", "viewer")):
        result = run_cli("user", "token", name, "--db", server.db)
        assert result.code == 0, result.stderr
        server.tokens[role] = result.stdout.strip().splitlines()[-1]


def _instance(server: ApiServer) -> str:
    """This server's instance name (host:pid:id), from its log."""
    found = re.search(r"server instance ([^\s\"]+) on a shared database", server.log.read_text())
    assert found, server.log.read_text()
    return found.group(1)


def _collect(server: ApiServer, out: list[dict[str, Any]], ready: threading.Event,
             stop: threading.Event) -> None:
    """Every event of ``server``'s SSE stream into ``out`` until ``stop``."""
    headers = {"Authorization": f"Bearer {server.tokens['viewer']}"}
    with httpx.stream("GET", server.url + "/api/v1/events", headers=headers,
                      timeout=httpx.Timeout(120, read=120)) as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith(": connected"):
                ready.set()
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                out.append({"sse": kind, **data})
            if stop.is_set():
                return


def test_claims_are_exclusive_and_dead_instances_jobs_are_abandoned(scale_pg: str) -> None:
    """The queue itself: claims from many threads at once take each job once; a job
    whose server stopped renewing its lease is interrupted (Abandoned), one whose
    server beats is left alone. (First in this file: no server runs on the database
    yet, whose own reaping would race this one.)"""
    store = Store(scale_pg)
    store.migrate()
    kind = f"test.{uuid.uuid4().hex[:8]}"  # no server knows it: only this test claims
    try:
        ids = {job_store.create(store, kind, f"t{i}", "admin", params={"i": i}).id
               for i in range(40)}

        def drain(worker: int) -> list[str]:
            got: list[str] = []
            while (claimed := job_store.claim(store, f"w{worker}", [kind])) is not None:
                got.append(claimed[0].id)
                assert claimed[0].instance == f"w{worker}" and claimed[1]["i"] >= 0
            return got

        with ThreadPoolExecutor(4) as pool:
            taken = [job_id for got in pool.map(drain, range(4)) for job_id in got]
        assert sorted(taken) == sorted(ids)  # every job, none twice

        dead, alive = sorted(ids)[:2]
        with store.session() as db:  # its own instance: the alive one's heartbeat skips it
            db.execute(update(Job).where(Job.id == dead).values(
                instance="w-dead", heartbeat_at=datetime.now(UTC) - timedelta(hours=1)))
        job_store.heartbeat(store, job_store.get(store, alive).instance or "")
        gone = job_store.reap_abandoned(store, 30)
        assert dead in gone and alive not in gone
        reaped = job_store.get(store, dead)
        assert (reaped.state, reaped.error_kind) == ("interrupted", "Abandoned")
        assert "was not run again" in (reaped.error or "")
        # its server finishing it after all does not overwrite that
        job_store.update_job(store, dead, state="succeeded", result={"late": True})
        assert job_store.get(store, dead).state == "interrupted"
        assert job_store.get(store, alive).state == "running"
        # a job queued for any server and cancelled before anyone claimed it never runs
        queued = job_store.create(store, kind, "later", "admin", params={"i": -1})
        assert job_store.request_cancel(store, queued.id).state == "cancelled"
        assert job_store.claim(store, "w9", [kind]) is None
    finally:
        with store.session() as db:
            db.execute(update(Job).where(Job.kind == kind).values(state="cancelled"))
        store.close()


def test_fifty_jobs_on_two_servers_each_run_exactly_once(
        pair: tuple[ApiServer, ApiServer], images_dir: Path) -> None:
    a, b = pair
    source = images_dir / f"{SESSION_PREFIX}scale-src.qcow2"
    with a.client("operator") as client:
        made = client.post("/images", json={"path": str(source), "size": "1M"})
        assert made.status_code == 201, made.text
    outputs = [images_dir / f"{SESSION_PREFIX}scale-{i}.raw" for i in range(JOBS)]

    def submit(i: int) -> str:
        server = (a, b)[i % 2]
        with server.client("operator") as client:
            started = client.post("/images/convert", json={
                "source": str(source), "destination": str(outputs[i]), "format": "raw"})
            assert started.status_code == 202, started.text
            return str(started.json()["job_id"])

    try:
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(submit, range(JOBS)))
        assert len(set(ids)) == JOBS
        with a.client("viewer") as on_a, b.client("viewer") as on_b:
            done = [wait_job((on_a, on_b)[i % 2], job_id) for i, job_id in enumerate(ids)]
            # either server reads every job: one database
            assert on_b.get(f"/jobs/{ids[0]}").json()["id"] == ids[0]
        assert [job["state"] for job in done] == ["succeeded"] * JOBS, [
            (job["state"], job["error"]) for job in done if job["state"] != "succeeded"]
        assert all(job["result"]["format"] == "raw" for job in done)
        assert all(path.is_file() for path in outputs)
        names = {_instance(a), _instance(b)}
        ran_on = [job["instance"] for job in done]
        assert set(ran_on) == names  # both servers ran some, and nobody else
        # each job started exactly once, on one of the two servers (their logs)
        logs = a.log.read_text() + b.log.read_text()
        starts = re.findall(r"job (\S+) \(image\.convert\) started on ([^\s\"]+)", logs)
        assert sorted(job_id for job_id, _ in starts if job_id in set(ids)) == sorted(ids)
        assert dict(starts)[ids[0]] == ran_on[0]
    finally:
        for path in [source, *outputs]:
            path.unlink(missing_ok=True)


def test_event_raised_on_one_server_reaches_sse_client_of_the_other(
        pair: tuple[ApiServer, ApiServer], images_dir: Path) -> None:
    a, b = pair
    vm = f"{SESSION_PREFIX}scale-ev"
    source = images_dir / f"{SESSION_PREFIX}scale-ev.qcow2"
    target = images_dir / f"{SESSION_PREFIX}scale-ev.raw"
    events: list[dict[str, Any]] = []
    ready, stop = threading.Event(), threading.Event()

    def queued(job_id: str) -> list[dict[str, Any]]:
        return [e for e in list(events) if e["sse"] == "job" and e.get("id") == job_id
                and e.get("state") == "queued"]

    reader = threading.Thread(target=_collect, args=(b, events, ready, stop), daemon=True)
    reader.start()
    assert ready.wait(30)
    try:
        with a.client("operator") as client:
            assert client.post("/images", json={"path": str(source), "size": "1M"}
                               ).status_code == 201
            started = client.post("/images/convert", json={
                "source": str(source), "destination": str(target), "format": "raw"})
            assert started.status_code == 202, started.text
            job_id = str(started.json()["job_id"])
            assert wait_job(client, job_id)["state"] == "succeeded"
        # 'queued' is raised only by the server that took the request (A): B's client
        # sees it through PostgreSQL LISTEN/NOTIFY
        deadline = time.monotonic() + 60
        while not queued(job_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(queued(job_id)) == 1, [e for e in events if e["sse"] == "job"]

        # A and B watch the same libvirtd: each raises a VM's events itself, and what the
        # other relays is dropped -- B's client sees each event once, not twice
        xml = (f"<domain type='qemu'><name>{vm}</name><memory unit='MiB'>64</memory>"
               "<os><type>hvm</type></os></domain>")
        run(["virsh", "-c", "qemu:///system", "define", "/dev/stdin"], input=xml,
            check=True, capture_output=True, text=True, timeout=60)
        run(["virsh", "-c", "qemu:///system", "undefine", vm], check=True,
            capture_output=True, text=True, timeout=60)
        mine = [e for e in list(events) if e["sse"] == "domain" and e.get("vm") == vm]
        deadline = time.monotonic() + 60
        while len({e["event"] for e in mine}) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            mine = [e for e in list(events) if e["sse"] == "domain" and e.get("vm") == vm]
        time.sleep(2)  # a duplicate relayed from A would arrive meanwhile
        mine = [e for e in list(events) if e["sse"] == "domain" and e.get("vm") == vm]
        assert sorted(e["event"] for e in mine) == ["defined", "undefined"], mine
    finally:
        stop.set()
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        run(["virsh", "-c", "qemu:///system", "undefine", vm], capture_output=True,
            timeout=60)
    reader.join(20)


def test_login_on_one_server_is_valid_on_the_other_and_throttle_counts_both(
        pair: tuple[ApiServer, ApiServer]) -> None:
    a, b = pair
    name = f"scale-{uuid.uuid4().hex[:6]}"
    added = run_cli("user", "add", name, "--role", "viewer", "--password-stdin",
                    "--db", a.db, input="password-scale\n")
    assert added.code == 0, added.stderr
    with httpx.Client(base_url=a.url + "/api/v1", timeout=30) as on_a:
        login = on_a.post("/login", json={"username": name, "password": "password-scale"})
        assert login.status_code == 200, login.text
        cookies = dict(on_a.cookies)
    with httpx.Client(base_url=b.url + "/api/v1", timeout=30, cookies=cookies) as on_b:
        me = on_b.get("/me")
        assert me.status_code == 200, me.text
        assert me.json()["name"] == name
    with httpx.Client(base_url=b.url + "/api/v1", timeout=30) as anonymous:
        assert anonymous.get("/me").status_code == 401
    # five failures (the default limit), spread over both servers
    for i in range(5):
        server = (a, b)[i % 2]
        with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as client:
            bad = client.post("/login", json={"username": name, "password": "wrong-guess"})
            assert bad.status_code == 401, bad.text
    for server in (a, b):  # now both refuse even the right password
        with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as client:
            refused = client.post("/login", json={"username": name,
                                                  "password": "password-scale"})
            assert refused.status_code == 429, refused.text
            assert 1 <= int(refused.headers["Retry-After"]) <= 300


def test_jobs_of_a_killed_server_are_abandoned_by_the_others(
        pair: tuple[ApiServer, ApiServer], scale_pg: str, workdir: Path) -> None:
    """Server C runs a job (its row names C) and is killed: C renewed the lease while it
    lived; afterwards A or B marks the job interrupted (Abandoned) -- it is not run
    again."""
    a, _b = pair
    c = start_server(scale_pg, workdir, "--log-format", "json", extra_env=LEASE)
    store = Store(scale_pg)
    try:
        name = _instance(c)
        job = job_store.create(store, "image.convert", "/nowhere", "admin", instance=name)
        job_store.update_job(store, job.id, state="running")
        with store.session() as db:
            first = db.get(Job, job.id)
            assert first is not None and first.heartbeat_at is not None
            created_beat = first.heartbeat_at
        deadline = time.monotonic() + 60  # C renews the lease of its job
        while job_store.get(store, job.id).state == "running" and time.monotonic() < deadline:
            with store.session() as db:
                row = db.get(Job, job.id)
                if row is not None and row.heartbeat_at and row.heartbeat_at > created_beat:
                    break
            time.sleep(0.5)
        assert job_store.get(store, job.id).state == "running"
        c.proc.kill()  # no clean shutdown: nothing of C marks its job
        c.proc.wait(30)
        with a.client("viewer") as client:
            seen = wait_job(client, job.id, timeout=120)
        assert (seen["state"], seen["error_kind"], seen["instance"]) == (
            "interrupted", "Abandoned", name)
        assert name in seen["error"] and "not run again" in seen["error"]
    finally:
        c.stop()
        store.close()
