"""A second libvirtd on this machine, inside test namespaces: a *namespaced host*.

Why: NAT networks and multi-host tests need a libvirtd whose bridges, firewall rules,
dnsmasq, taps and QEMU processes live in a network namespace the test made, so guest
traffic never reaches the machine's own network (issue 11), and a second "host" to
migrate to (issue 12). The machine's own libvirtd is never touched.

Layout (``start``)::

    [upstream netns NAME-up]  down 192.168.234.1/24 fd00:234::1/64
              | veth
    [host netns NAME]         uplink 192.168.234.2/24 fd00:234::2/64, default route
                              via 192.168.234.1; libvirtd + virtlogd in a private mount
                              namespace; their /run/libvirt, /var/lib/libvirt,
                              /etc/libvirt (a copy of the host's *.conf and nwfilter/,
                              no domains or networks), /var/log/libvirt and
                              /var/cache/libvirt are bind mounts of directories under
                              NSHOST_ROOT/NAME/ (kvmops.testing.netns)

The implementation is kvmops.testing.secondhost (shared with ``kvmops dev second-host``,
whose ``host`` layout is issue 12's second host: a veth to the machine, 10.250.0.1 <->
10.250.0.2, libvirtd on TCP); this module adds the test helpers (``run_cli``).

The libvirtd answers on a unix socket the host's kvmops reaches through the URI
``qemu+unix:///system?socket=NSHOST_ROOT/NAME/run/libvirt-sock``: kvmops reads its URI
from ``KVMOPS_URI`` (or ``--connect``; then the config file's ``uri``, then
``LIBVIRT_DEFAULT_URI``), so :meth:`NsHost.run_cli` runs the real CLI against it.
Everything else (images under the test image directories, the tiny guest's kernel) is
the same file system. QEMU started by it runs in the namespaces, so its taps and the
networks' bridges exist only there.

API (for tests, and for issue 12's second host)::

    with ns_host(f"{SESSION_PREFIX}nsh") as h:     # or the ``nshost`` fixture
        h.uri, h.netns, h.upstream                 # URI, the two namespace names
        h.outside4, h.upstream4, h.outside6, h.upstream6
        h.run_cli("net", "list", "--json")         # kvmops with KVMOPS_URI=h.uri
        h.run("ip", "-j", "addr")                  # in the host's namespaces
        h.run("nft", "list", "ruleset", where="upstream")
        with h.connect() as conn: ...              # a kvmops Host on h.uri

    # libvirt over TCP as well (a migration target), reachable from the upstream:
    ns_host(name, listen=True, libvirtd_conf='listen_tls = 0\nlisten_tcp = 1\n'
            'auth_tcp = "none"\nlisten_addr = "192.168.234.2"\n')

``stop`` destroys and undefines the domains and networks through the API, then kills
whatever still runs in the two namespaces (libvirtd first), deletes them and the state
directory; ``make clean-test`` does the last part for a run that crashed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

from kvmops.testing import secondhost
from kvmops.testing.secondhost import NamespacedHost
from tests.conftest import CliResult, run_cli


def _second_host_index() -> int:
    """``KVMOPS_TEST_H2_INDEX`` when set (parallel runs on one machine pick different
    ones), else the pytest-xdist worker's number (gw1 -> 1): two workers' second hosts
    never share a subnet."""
    if os.environ.get("KVMOPS_TEST_H2_INDEX"):
        return int(os.environ["KVMOPS_TEST_H2_INDEX"])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


#: Which 10.250.N.0/24 the tests' second hosts use.
SECOND_HOST_INDEX = _second_host_index()

__all__ = ["SECOND_HOST_INDEX", "NsHost", "defined_vm", "ns_host", "second_host", "start", "stop"]


@dataclass(frozen=True)
class NsHost(NamespacedHost):
    """A running namespaced libvirtd (kvmops.testing.secondhost) with the test helpers."""

    def run_cli(self, *args: str, input: str | None = None, timeout: float = 300,
                env: dict[str, str] | None = None) -> CliResult:
        """The real ``kvmops`` command against this libvirtd (``KVMOPS_URI``)."""
        return run_cli(*args, input=input, timeout=timeout,
                       env={**(env or {}), "KVMOPS_URI": self.uri})


def _wrap(host: NamespacedHost) -> NsHost:
    return NsHost(**{f.name: getattr(host, f.name) for f in dataclasses.fields(host)})


def start(netns: str, *, libvirtd_conf: str = "", listen: bool = False,
          layout: str = "upstream", index: int | None = None) -> NsHost:
    """Start a namespaced libvirtd in a new network namespace ``netns`` (test prefix)
    with an upstream peer namespace ``netns-up`` (``layout="host"``: a second host on
    10.250.0.2, see kvmops.testing.secondhost). ``libvirtd_conf`` is appended to its
    libvirtd.conf (e.g. ``listen_tcp = 1`` with ``listen=True`` for ``--listen``).
    On any failure what was made is removed again."""
    if not secondhost.is_test_name(netns):
        raise ValueError(f"a namespaced test host needs the test prefix: {netns!r}")
    return _wrap(secondhost.start(netns, layout=layout, libvirtd_conf=libvirtd_conf,
                                  listen=listen,
                                  index=SECOND_HOST_INDEX if index is None else index))


def stop(host: NamespacedHost) -> None:
    """Remove the domains (with their disks) and networks through the API, then end
    every process in the namespaces, delete them and the state directory. Never fails
    half-way: the kill and removal run whatever the API part did."""
    secondhost.stop(host)


@contextlib.contextmanager
def ns_host(netns: str, *, libvirtd_conf: str = "", listen: bool = False,
            layout: str = "upstream") -> Iterator[NsHost]:
    """:func:`start` … :func:`stop`, the stop whatever happened in between."""
    host = start(netns, libvirtd_conf=libvirtd_conf, listen=listen, layout=layout)
    try:
        yield host
    finally:
        stop(host)


@contextlib.contextmanager
def defined_vm(uri: str, name: str, kernel: str, initrd: str) -> Iterator[str]:
    """A tiny VM defined (not started) on the libvirtd at ``uri``, removed afterwards:
    for listing and state tests that need no boot (start it paused)."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        conn.defineXML(f"""<domain type='qemu'><name>{name}</name>
<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>
<kernel>{kernel}</kernel><initrd>{initrd}</initrd></os>
<devices><serial type='pty'/></devices></domain>""")
        yield name
    finally:
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
        conn.close()


def second_host(netns: str) -> contextlib.AbstractContextManager[NsHost]:
    """Issue 12's second host (``layout="host"``): ``uri`` is qemu+tcp://10.250.N.2/system
    with N = ``KVMOPS_TEST_H2_INDEX`` (default 0: parallel runs pick different ones)."""
    return ns_host(netns, layout="host")
