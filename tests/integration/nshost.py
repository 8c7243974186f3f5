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
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from kvmops.host.connection import Host
from kvmops.testing.netns import NAMESPACES_FILE, NSHOST_ROOT, TEST_PREFIX, remove_ns_host
from kvmops.vm import lifecycle
from tests.conftest import CliResult, run_cli

# What the namespaced libvirtd gets privately (host path -> state subdirectory).
PRIVATE_DIRS = {
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/etc/libvirt": "etc",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
}
UPLINK = "uplink"  # the host namespace's end of the veth to the upstream namespace
DOWNLINK = "down"  # the upstream namespace's end
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class NsHost:
    """A running namespaced libvirtd and its upstream peer namespace."""

    netns: str  # the network namespace libvirtd, its networks and QEMU live in
    upstream: str  # the peer namespace behind the host's ``uplink`` (a NAT's outside)
    state: Path  # NSHOST_ROOT/netns: the private directories
    outside4: str = "192.168.234.2"  # the host namespace's address on the uplink
    upstream4: str = "192.168.234.1"  # the upstream namespace's address (default route)
    outside6: str = "fd00:234::2"
    upstream6: str = "fd00:234::1"
    prefix4: int = 24
    prefix6: int = 64

    @property
    def socket(self) -> Path:
        return self.state / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def libvirtd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.state / "run" / "libvirtd.pid").read_text().strip())
        return None

    def run_cli(self, *args: str, input: str | None = None, timeout: float = 300,
                env: dict[str, str] | None = None) -> CliResult:
        """The real ``kvmops`` command against this libvirtd (``KVMOPS_URI``)."""
        return run_cli(*args, input=input, timeout=timeout,
                       env={**(env or {}), "KVMOPS_URI": self.uri})

    def run(self, *cmd: str, where: str = "host", check: bool = True,
            input: str | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the host's namespaces (network and libvirtd's mount namespace,
        so /run/libvirt etc. are the private ones) or, with ``where="upstream"``, in the
        upstream network namespace."""
        if where == "upstream":
            argv = ["ip", "netns", "exec", self.upstream, *cmd]
        elif where == "host":
            pid = self.libvirtd_pid
            argv = (["nsenter", "-t", str(pid), "-m", "-n", "--", *cmd] if pid
                    else ["ip", "netns", "exec", self.netns, *cmd])
        else:
            raise ValueError(f"where must be 'host' or 'upstream', not {where!r}")
        proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip()}")
        return proc

    @contextlib.contextmanager
    def connect(self) -> Iterator[Host]:
        """A kvmops :class:`Host` connected to this libvirtd."""
        with Host(self.uri) as conn:
            yield conn

    def log_tail(self, lines: int = 30) -> str:
        """The end of the namespaced libvirtd's log (for failure messages)."""
        with contextlib.suppress(OSError):
            text = (self.state / "log" / "libvirtd.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


def _sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")


def _private_etc(etc: Path, libvirtd_conf: str) -> None:
    """A copy of the host's /etc/libvirt without its domains, networks, pools, secrets
    and hooks; libvirtd logs to its private /var/log/libvirt."""
    source = Path("/etc/libvirt")
    etc.mkdir(mode=0o755)
    for conf in source.glob("*.conf"):
        shutil.copy2(conf, etc / conf.name)
    if (source / "nwfilter").is_dir():
        shutil.copytree(source / "nwfilter", etc / "nwfilter")
    for sub in ("qemu/networks/autostart", "qemu/autostart"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    with open(etc / "libvirtd.conf", "a", encoding="utf-8") as fh:
        fh.write('\n# kvmops test namespaced host\n'
                 'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n' + libvirtd_conf)


def _wait_ready(host: NsHost) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            libvirt.open(host.uri).close()
            return
        except libvirt.libvirtError as err:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the namespaced libvirtd at {host.uri} did not answer "
                                   f"within {START_TIMEOUT:.0f} s: {err}\n"
                                   f"{host.log_tail()}") from err
        time.sleep(0.5)


def start(netns: str, *, libvirtd_conf: str = "", listen: bool = False) -> NsHost:
    """Start a namespaced libvirtd in a new network namespace ``netns`` (test prefix)
    with an upstream peer namespace ``netns-up``. ``libvirtd_conf`` is appended to its
    libvirtd.conf (e.g. ``listen_tcp = 1`` with ``listen=True`` for ``--listen``).
    On any failure what was made is removed again."""
    if not netns.startswith(TEST_PREFIX):
        raise ValueError(f"a namespaced test host needs the test prefix: {netns!r}")
    state = NSHOST_ROOT / netns
    host = NsHost(netns=netns, upstream=f"{netns}-up", state=state)
    NSHOST_ROOT.mkdir(mode=0o755, exist_ok=True)
    if state.exists():  # left by a crashed run of a process with the same id
        remove_ns_host(state)
    state.mkdir(mode=0o755)
    try:
        (state / NAMESPACES_FILE).write_text(f"{host.netns}\n{host.upstream}\n")
        for sub in PRIVATE_DIRS.values():
            if sub != "etc":
                (state / sub).mkdir(mode=0o755)
        _private_etc(state / "etc", libvirtd_conf)
        _sh("ip", "netns", "add", host.netns)
        _sh("ip", "netns", "add", host.upstream)
        # The veth is made inside the namespaces: no interface appears in the host's.
        _sh("ip", "link", "add", UPLINK, "netns", host.netns, "type", "veth",
            "peer", "name", DOWNLINK, "netns", host.upstream)
        for ns, dev, addr4, addr6 in ((host.netns, UPLINK, host.outside4, host.outside6),
                                      (host.upstream, DOWNLINK, host.upstream4,
                                       host.upstream6)):
            _sh("ip", "-n", ns, "link", "set", "dev", "lo", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{addr4}/{host.prefix4}", "dev", dev)
            _sh("ip", "-n", ns, "-6", "addr", "add", f"{addr6}/{host.prefix6}", "dev", dev,
                "nodad")
            _sh("ip", "-n", ns, "link", "set", "dev", dev, "up")
        _sh("ip", "-n", host.netns, "route", "add", "default", "via", host.upstream4)
        mounts = " && ".join(f"mount --bind {shlex.quote(str(state / sub))} {target}"
                             for target, sub in PRIVATE_DIRS.items())
        script = (f"{mounts} && virtlogd -d -p /run/libvirt/virtlogd.pid"
                  f" && libvirtd -d {'--listen ' if listen else ''}"
                  f"-p /run/libvirt/libvirtd.pid")
        _sh("ip", "netns", "exec", host.netns,
            "unshare", "--mount", "--propagation", "private", "sh", "-c", script)
        _wait_ready(host)
    except BaseException:
        remove_ns_host(state)
        raise
    return host


def stop(host: NsHost) -> None:
    """Remove the domains (with their disks) and networks through the API, then end
    every process in the namespaces, delete them and the state directory. Never fails
    half-way: the kill and removal run whatever the API part did."""
    try:
        with contextlib.suppress(Exception), Host(host.uri) as conn:
            for domain in conn.all_domains():
                with contextlib.suppress(Exception):
                    conn.conn.lookupByName(domain.name).destroy()
                with contextlib.suppress(Exception):
                    lifecycle.undefine(conn, domain.name, remove_storage=True)
            for net in conn.conn.listAllNetworks(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if net.isActive():
                        net.destroy()
                    net.undefine()
    finally:
        remove_ns_host(host.state)


@contextlib.contextmanager
def ns_host(netns: str, *, libvirtd_conf: str = "", listen: bool = False
            ) -> Iterator[NsHost]:
    """:func:`start` … :func:`stop`, the stop whatever happened in between."""
    host = start(netns, libvirtd_conf=libvirtd_conf, listen=listen)
    try:
        yield host
    finally:
        stop(host)
