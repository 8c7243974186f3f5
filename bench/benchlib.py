"""Shared pieces of the benchmarks: a free loopback port, many defined (not running) VMs."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import libvirt

from kvmops.testing.procs import stop_process

REPO = Path(__file__).resolve().parent.parent

def write_marked_section(begin: str, end: str, section: str) -> None:
    """Replace the text between ``begin`` and ``end`` in bench/README.md with ``section``
    (appended when the markers are missing), atomically."""
    readme = REPO / "bench" / "README.md"
    text = readme.read_text()
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(readme)


MINIMAL_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>
<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def remove_vms(conn: libvirt.virConnect, prefix: str) -> None:
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()


@contextlib.contextmanager
def defined_vms(prefix: str, count: int) -> Iterator[libvirt.virConnect]:
    """``count`` minimal VMs named PREFIX0..., removed afterwards even on failure."""
    conn = libvirt.open("qemu:///system")
    try:
        remove_vms(conn, prefix)
        for n in range(count):
            conn.defineXML(MINIMAL_XML.format(name=f"{prefix}{n}"))
        yield conn
    finally:
        remove_vms(conn, prefix)
        conn.close()


@contextlib.contextmanager
def bench_server(workdir: Path, role: str = "viewer") -> Iterator[tuple[str, str]]:
    """A real ``kvmops serve`` on a free loopback port with a user ``bench`` of ``role``
    (password ``bench-password``); yields (base URL, API token)."""
    from kvmops.store import Store, users

    db = f"sqlite:///{workdir / 'bench.db'}"
    store = Store(db)
    store.migrate()
    users.add_user(store, "bench", role, "bench-password")
    token = users.new_token(store, "bench")
    store.close()
    port = free_port()
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "kvmops.cli.main", "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--db", db],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise SystemExit("kvmops serve exited; see " + str(workdir / "serve.log"))
            time.sleep(0.2)
        yield url, token
    finally:
        stop_process(proc, signal.SIGINT)
        log.close()
