"""Shared pieces of the benchmarks: a free loopback port, many defined (not running) VMs."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import libvirt

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
