"""A second libvirtd on this machine in its own network, mount and UTS namespaces: a
*namespaced host* -- ``kvmops dev second-host`` and the tests' ``nshost`` fixture
(tests/integration/nshost.py) both start and stop it here.

Why: migration tests (issue 12) need a second "host" to move VMs to, and NAT network tests
(issue 11) need a libvirtd whose bridges, firewall rules, dnsmasq, taps and QEMU live in a
namespace the test made, so guest traffic never reaches the machine's own network. The
machine's own libvirtd is never touched (never restarted, never signalled).

Two layouts of the namespace's link:

* ``host`` (``kvmops dev second-host up``, issue 12's test bed)::

      [machine's namespace]  HOSTVETH 10.250.0.1/24   (kvh2-<hash>; kvt2-<hash> for tests)
              | veth
      [netns NAME]           uplink 10.250.0.2/24; libvirtd --listen on TCP 10.250.0.2
                             (auth_tcp "none") and on its unix socket

  URI ``qemu+tcp://10.250.0.2/system`` (and ``unix_uri`` from the machine). Only those two
  addresses (IPv6 is off on the veth). A guard table in the machine's nftables
  (``inet NAME``) keeps everyone but root and QEMU's user from reaching 10.250.0.2 and
  drops forwarding to/from the veth: the daemon answers without authentication, and
  neither a local user nor a guest on one of the machine's NAT networks may reach it.

* ``upstream`` (the NAT tests' fixture): the veth goes to a peer namespace ``NAME-up``
  (192.168.234.1, the namespace's default route), no interface in the machine's namespace.

Either way libvirtd and virtlogd run in a private mount namespace whose /run/libvirt,
/var/lib/libvirt, /etc/libvirt (a copy of the machine's ``*.conf`` and nwfilter/, no
domains or networks), /var/log/libvirt and /var/cache/libvirt are bind mounts of
directories under the state directory (``NSHOST_ROOT/NAME`` for test names,
``/run/kvmops/second-hosts/NAME`` otherwise), and a hostname of its own. Its
libvirtd.conf gets its own ``host_uuid`` and its qemu.conf ``migration_host`` (libvirt
refuses a migration between daemons with the same host UUID, and a destination
advertises its hostname for the migration stream). The file system is shared: a second
host gets its own images directory (``/var/lib/kvmops/second-hosts/NAME``; under the test
image directory for test names) for ``--copy-storage`` tests.

The reverse direction (second host -> the machine's libvirtd) needs no listening machine
daemon when the client drives the migration (not peer-to-peer): kvmops on the machine
opens both daemons (``unix_uri``/``qemu:///system``) and passes the migration URI
``tcp://10.250.0.1``. A peer-to-peer migration back would need the machine's libvirtd to
listen (``--listen`` or libvirtd-tcp.socket: a restart of it), which this never does.

``up --ssh`` (:func:`start_ssh`) adds an sshd on 10.250.N.2:22 for the ``qemu+ssh``
transport. It runs in libvirtd's network *and* mount namespaces (``nsenter -t
LIBVIRTD_PID -m -n -u``), so the ``virt-ssh-helper`` (or ``nc``) libvirt's ssh transport
starts there reaches the second host's /run/libvirt/libvirt-sock, not the machine's. Its
host key, a client key (ed25519), ``authorized_keys`` (key only, ``restrict``: no pty, no
forwarding) and ``known_hosts`` are under the state directory's ``ssh/``. libvirt's
``ssh`` transport runs the ``ssh`` binary and ignores the URI's ``known_hosts`` (that one
is for the libssh/libssh2 transports), so the host key is verified through an ssh client
drop-in ``/etc/ssh/ssh_config.d/NAME.conf`` (``Host 10.250.N.2``: that ``known_hosts``,
``StrictHostKeyChecking yes``), removed with the host; root's ~/.ssh is never written.
The URI is ``qemu+ssh://root@10.250.N.2/system?keyfile=STATE/ssh/client_ed25519``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import pwd
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmops.errors import (
    AlreadyExistsError,
    HostUnavailableError,
    KvmopsError,
    StateError,
    ValidationError,
)
from kvmops.host.connection import Host
from kvmops.testing.netns import (
    NAMESPACES_FILE,
    NFT_TABLES_FILE,
    NSHOST_ROOT,
    TEST_PREFIX,
    remove_ns_host,
)

PREFIX = "kvmops-"  # every second host's name (and namespace) starts with it
DEFAULT_NAME = "kvmops-h2"
STATE_ROOT = Path("/run/kvmops/second-hosts")  # state of non-test second hosts
IMAGES_ROOT = Path("/var/lib/kvmops/second-hosts")
TEST_IMAGES_ROOT = Path("/var/lib/kvmops/test-images")  # the tests' allowed image directory
RECORD = "host.json"  # in the state directory: what :func:`load` reads back
HOST_ADDRESS = "10.250.0.1"  # the machine's end of a second host's veth (index 0)
ADDRESS = "10.250.0.2"  # the second host's end, where its libvirtd listens (index 0)
PREFIXLEN = 24
SUBNET = "10.250.0.0/24"
MAX_INDEX = 63  # second host N uses 10.250.N.0/24 (N = 0 by default)


def subnet_of(index: int) -> tuple[str, str, str]:
    """(subnet, machine address, second host address) of second host number ``index``:
    several can run at once (parallel test runs), each on its own /24."""
    if not 0 <= index <= MAX_INDEX:
        raise ValidationError(f"second host index {index} is out of range",
                              hint=f"use 0..{MAX_INDEX}")
    return f"10.250.{index}.0/24", f"10.250.{index}.1", f"10.250.{index}.2"
LIBVIRT_TCP_PORT = 16509
# What the namespaced libvirtd gets privately (host path -> state subdirectory).
PRIVATE_DIRS = {
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/etc/libvirt": "etc",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
}
UPLINK = "uplink"  # the namespace's end of its veth
DOWNLINK = "down"  # the upstream namespace's end (upstream layout)
START_TIMEOUT = 60.0
_NAME = re.compile(r"^kvmops-[a-z0-9][a-z0-9-]{0,40}$")


def is_test_name(name: str) -> bool:
    return name.startswith(TEST_PREFIX)


def _prefix_of(name: str) -> str:
    """The prefix the teardown checks every name against (kvmops.testing.netns)."""
    return TEST_PREFIX if is_test_name(name) else PREFIX


def state_dir(name: str) -> Path:
    return (NSHOST_ROOT if is_test_name(name) else STATE_ROOT) / name


def images_dir_for(name: str) -> Path:
    return (TEST_IMAGES_ROOT if is_test_name(name) else IMAGES_ROOT) / name


def host_veth_for(name: str) -> str:
    """The machine-side veth name (15 characters at most; ``kvt`` for tests, whose
    bridges and links make clean-test's prefix)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{'kvt' if is_test_name(name) else 'kvh'}2-{digest}"


def check_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith("-"):
        raise ValidationError(
            f"invalid second host name {name!r}",
            hint="use 'kvmops-' followed by up to 41 lower-case letters, digits and dashes "
                 f"(default {DEFAULT_NAME})")
    return name


@dataclass(frozen=True)
class NamespacedHost:
    """A running namespaced libvirtd (either layout; see the module docstring)."""

    netns: str  # the network namespace libvirtd, its networks and QEMU live in
    state: Path  # its state directory: the private directories, the record
    upstream: str = ""  # upstream layout: the peer namespace behind ``uplink``
    host_veth: str = ""  # host layout: the machine-side veth
    tcp_address: str = ""  # where libvirtd listens on TCP (host layout: ADDRESS)
    host_address: str = ""  # host layout: the machine's end of the veth (HOST_ADDRESS)
    images_dir: str = ""  # host layout: its own images directory
    outside4: str = "192.168.234.2"  # upstream layout: the namespace's uplink address
    upstream4: str = "192.168.234.1"  # upstream layout: the peer's (default route)
    outside6: str = "fd00:234::2"
    upstream6: str = "fd00:234::1"
    prefix4: int = 24
    prefix6: int = 64
    ssh: bool = False  # host layout: an sshd on tcp_address:22 (:func:`start_ssh`)

    @property
    def name(self) -> str:
        return self.netns

    @property
    def socket(self) -> Path:
        return self.state / "run" / "libvirt-sock"

    @property
    def unix_uri(self) -> str:
        """The daemon's unix socket, reachable from the machine's namespace (root only)."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def tcp_uri(self) -> str:
        return f"qemu+tcp://{self.tcp_address}/system" if self.tcp_address else ""

    @property
    def ssh_dir(self) -> Path:
        return self.state / "ssh"

    @property
    def client_key(self) -> Path:
        """The private key ``qemu+ssh`` logs in with (its ``keyfile``)."""
        return self.ssh_dir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def ssh_uri(self) -> str:
        """``qemu+ssh://root@ADDRESS/system?keyfile=...`` once :func:`start_ssh` ran."""
        if not (self.ssh and self.tcp_address):
            return ""
        return f"qemu+ssh://root@{self.tcp_address}/system?keyfile={self.client_key}"

    @property
    def sshd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.ssh_dir / "sshd.pid").read_text().strip())
        return None

    @property
    def uri(self) -> str:
        """``tcp_uri`` for a second host (``dev second-host up``), else ``unix_uri``."""
        return self.tcp_uri if self.host_veth and self.tcp_address else self.unix_uri

    @property
    def libvirtd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.state / "run" / "libvirtd.pid").read_text().strip())
        return None

    def summary(self) -> dict[str, Any]:
        """``dev second-host up/status --json``."""
        return {"name": self.netns, "uri": self.uri, "unix_uri": self.unix_uri,
                "netns": self.netns, "address": self.tcp_address or self.outside4,
                "host_address": (self.host_address or HOST_ADDRESS) if self.host_veth
                else self.upstream4,
                "host_veth": self.host_veth or None, "images_dir": self.images_dir or None,
                "libvirtd_pid": self.libvirtd_pid, "state_dir": str(self.state),
                "ssh_uri": self.ssh_uri or None,
                "ssh_key": str(self.client_key) if self.ssh else None,
                "known_hosts": str(self.known_hosts) if self.ssh else None}

    def answers(self) -> bool:
        """Does its libvirtd answer on the unix socket?"""
        try:
            with Host(self.unix_uri) as conn:
                return conn.alive()
        except KvmopsError:
            return False

    def run(self, *cmd: str, where: str = "host", check: bool = True,
            input: str | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the host's namespaces (network and libvirtd's mount namespace,
        so /run/libvirt etc. are the private ones) or, with ``where="upstream"``, in the
        upstream network namespace."""
        if where == "upstream":
            if not self.upstream:
                raise ValueError(f"{self.netns} has no upstream namespace")
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
        """A kvmops :class:`Host` connected to this libvirtd (its unix socket)."""
        with Host(self.unix_uri) as conn:
            yield conn

    def log_tail(self, lines: int = 30) -> str:
        """The end of the namespaced libvirtd's log (for failure messages)."""
        with contextlib.suppress(OSError):
            text = (self.state / "log" / "libvirtd.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


_TOOLS_HINT = "install iproute2, util-linux and nftables (scripts/setup-host.sh)"


def _run(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60,
                              check=False)
    except FileNotFoundError:
        raise StateError(f"{argv[0]} is not installed", hint=_TOOLS_HINT) from None


def _sh(*argv: str) -> None:
    proc = _run(list(argv))
    if proc.returncode != 0:
        raise StateError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                         f"{proc.stderr.strip()}")


def _set_conf(path: Path, settings: dict[str, str]) -> None:
    """Set ``key = value`` lines in a libvirt .conf file, dropping earlier ones for the
    same keys (libvirt takes the first)."""
    keys = re.compile(r"^\s*(" + "|".join(map(re.escape, settings)) + r")\s*=")
    kept = [line for line in (path.read_text().splitlines() if path.exists() else [])
            if not keys.match(line)]
    added = [f"{key} = {value}" for key, value in settings.items()]
    path.write_text("\n".join([*kept, "# kvmops namespaced host", *added]) + "\n")


def _private_etc(etc: Path, libvirtd: dict[str, str], qemu: dict[str, str],
                 libvirtd_conf: str) -> None:
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
    _set_conf(etc / "libvirtd.conf",
              {"log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"', **libvirtd})
    if qemu:
        _set_conf(etc / "qemu.conf", qemu)
    if libvirtd_conf:
        with open(etc / "libvirtd.conf", "a", encoding="utf-8") as fh:
            fh.write(libvirtd_conf)


def _wait_ready(host: NamespacedHost) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not host.answers():
        if time.monotonic() >= deadline:
            raise HostUnavailableError(
                f"the namespaced libvirtd at {host.unix_uri} did not answer within "
                f"{START_TIMEOUT:.0f} s: {host.log_tail(5)}")
        time.sleep(0.5)


def _qemu_uids(qemu_conf: Path = Path("/etc/libvirt/qemu.conf")) -> list[int]:
    """Root and the user QEMU runs as (qemu.conf's ``user``, Debian's libvirt-qemu by
    default): its migration stream goes to a second host."""
    user = "libvirt-qemu"
    with contextlib.suppress(OSError):
        for line in qemu_conf.read_text().splitlines():
            found = re.match(r'^\s*user\s*=\s*"([^"]+)"', line)
            if found:
                user = found.group(1)
                break
    uids = [0]
    with contextlib.suppress(KeyError, ValueError):
        uid = int(user[1:]) if user.startswith("+") else pwd.getpwnam(user).pw_uid
        if uid not in uids:
            uids.append(uid)
    return uids


def _guard(table: str, veth: str) -> None:
    """The machine-side nftables guard of a second host's veth (module docstring)."""
    uids = ", ".join(map(str, _qemu_uids()))
    rules = (f"table inet {table} {{\n"
             f"  chain output {{ type filter hook output priority 0; policy accept;\n"
             f'    oifname "{veth}" meta skuid != {{ {uids} }} reject\n  }}\n'
             f"  chain forward {{ type filter hook forward priority -10; policy accept;\n"
             f'    oifname "{veth}" drop\n    iifname "{veth}" drop\n  }}\n}}\n')
    proc = _run(["nft", "-f", "-"], input=rules)
    if proc.returncode != 0:
        raise StateError(f"could not add the nftables guard of {veth}: {proc.stderr.strip()}")


def _subnet_in_use(subnet: str = SUBNET) -> str | None:
    """The machine-side device with an address in ``subnet`` (another second host's
    veth, or something else), if any."""
    proc = subprocess.run(["ip", "-j", "-4", "addr", "show", "to", subnet],
                          capture_output=True, text=True, timeout=30, check=False)
    with contextlib.suppress(ValueError):
        for link in json.loads(proc.stdout or "[]"):
            if link.get("addr_info"):
                return str(link.get("ifname"))
    return None


def _write_record(host: NamespacedHost) -> None:
    record = {key: (str(value) if isinstance(value, Path) else value)
              for key, value in dataclasses.asdict(host).items()}
    tmp = host.state / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(host.state / RECORD)


def load(name: str) -> NamespacedHost | None:
    """The namespaced host ``name`` from its state directory's record (None: none)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        data = json.loads((state_dir(name) / RECORD).read_text())
        data["state"] = Path(data["state"])
        return NamespacedHost(**data)
    return None


def start(netns: str, *, layout: str = "upstream", libvirtd_conf: str = "",
          listen: bool = False, index: int = 0) -> NamespacedHost:
    """Start a namespaced libvirtd in a new network namespace ``netns`` (``kvmops-``
    prefix; state under ``NSHOST_ROOT`` for test names). ``layout="upstream"``: a peer
    namespace ``netns-up``; ``libvirtd_conf`` is appended to libvirtd.conf (e.g.
    ``listen_tcp = 1`` with ``listen=True`` for ``--listen``). ``layout="host"``: a
    second host (module docstring), listening on TCP. On any failure what was made is
    removed again."""
    check_name(netns)
    if layout not in ("upstream", "host"):
        raise ValueError(f"layout must be 'upstream' or 'host', not {layout!r}")
    if layout == "upstream" and not is_test_name(netns):
        raise ValueError(f"an upstream-layout namespaced host is for tests: {netns!r}")
    state = state_dir(netns)
    second = layout == "host"
    subnet, machine_end, address = subnet_of(index)
    host = NamespacedHost(
        netns=netns, state=state, upstream="" if second else f"{netns}-up",
        host_veth=host_veth_for(netns) if second else "",
        tcp_address=address if second else "",
        host_address=machine_end if second else "",
        images_dir=str(images_dir_for(netns)) if second else "")
    prefix = _prefix_of(netns)
    if second:
        _check_subnet_free(subnet, machine_end)
    state.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if state.exists():  # left by a crashed run
        remove_ns_host(state, prefix=prefix)
    state.mkdir(mode=0o755)
    libvirtd = {"host_uuid": f'"{uuid.uuid5(uuid.NAMESPACE_URL, "kvmops:" + netns)}"'}
    qemu: dict[str, str] = {}
    if second:
        libvirtd.update({"listen_tls": "0", "listen_tcp": "1", "auth_tcp": '"none"',
                         "listen_addr": f'"{address}"'})
        qemu = {"migration_host": f'"{address}"', "migration_address": f'"{address}"'}
        listen = True
    try:
        names = [host.netns] + ([host.upstream] if host.upstream else [])
        (state / NAMESPACES_FILE).write_text("".join(f"{n}\n" for n in names))
        for sub in PRIVATE_DIRS.values():
            if sub != "etc":
                (state / sub).mkdir(mode=0o755)
        _private_etc(state / "etc", libvirtd, qemu, libvirtd_conf)
        _sh("ip", "netns", "add", host.netns)
        _sh("ip", "-n", host.netns, "link", "set", "dev", "lo", "up")
        if second:
            _write_record(host)  # from here on, a failed start is removed with its veth
            _link_to_machine(host)
        else:
            _link_to_upstream(host)
        mounts = " && ".join(f"mount --bind {shlex.quote(str(state / sub))} {target}"
                             for target, sub in PRIVATE_DIRS.items())
        script = (f"hostname {shlex.quote(netns)} && {mounts}"
                  f" && virtlogd -d -p /run/libvirt/virtlogd.pid"
                  f" && libvirtd -d {'--listen ' if listen else ''}"
                  f"-p /run/libvirt/libvirtd.pid")
        _sh("ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts",
            "--propagation", "private", "sh", "-c", script)
        _wait_ready(host)
        if host.images_dir:
            Path(host.images_dir).mkdir(mode=0o755, parents=True, exist_ok=True)
        _write_record(host)
    except BaseException:
        remove(host)
        raise
    return host


def _link_to_upstream(host: NamespacedHost) -> None:
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


def _link_to_machine(host: NamespacedHost) -> None:
    """The veth HOSTVETH (machine, 10.250.0.1) <-> uplink (namespace, 10.250.0.2), IPv6
    off on both ends, behind the nftables guard."""
    veth = host.host_veth
    (host.state / NFT_TABLES_FILE).write_text(f"{host.netns}\n")
    _guard(host.netns, veth)
    _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", UPLINK,
        "netns", host.netns)
    _sh("sysctl", "-qw", f"net.ipv6.conf.{veth}.disable_ipv6=1")
    _sh("ip", "netns", "exec", host.netns, "sysctl", "-qw",
        f"net.ipv6.conf.{UPLINK}.disable_ipv6=1")
    _sh("ip", "addr", "add", f"{host.host_address}/{PREFIXLEN}", "dev", veth)
    _sh("ip", "-n", host.netns, "addr", "add", f"{host.tcp_address}/{PREFIXLEN}", "dev",
        UPLINK)
    _sh("ip", "link", "set", "dev", veth, "up")
    _sh("ip", "-n", host.netns, "link", "set", "dev", UPLINK, "up")


SSHD = Path("/usr/sbin/sshd")
SSH_CONFIG_DIR = Path("/etc/ssh/ssh_config.d")  # Debian's ssh_config includes *.conf
SSH_PORT = 22
_SSH_HINT = "install openssh-server and openssh-client (scripts/setup-host.sh)"


def ssh_client_config(name: str) -> Path:
    """The ssh client drop-in that verifies second host ``name``'s host key."""
    return SSH_CONFIG_DIR / f"{check_name(name)}.conf"


def _sshd_config(host: NamespacedHost) -> str:
    ssh = host.ssh_dir
    return "\n".join([
        "# kvmops second host: the qemu+ssh transport only (key login as root)",
        f"ListenAddress {host.tcp_address}:{SSH_PORT}",
        f"HostKey {ssh / 'ssh_host_ed25519_key'}",
        f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
        f"PidFile {ssh / 'sshd.pid'}",
        "AllowUsers root", "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "PermitUserEnvironment no",
        "X11Forwarding no", "AllowTcpForwarding no", "AllowAgentForwarding no",
        "AllowStreamLocalForwarding no", "PermitTunnel no", "PrintMotd no",
        "LogLevel ERROR", ""])


def _wait_port(host: NamespacedHost, port: int) -> None:
    import socket

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection((host.tcp_address, port), timeout=5).close()
            return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise HostUnavailableError(
                    f"the sshd of second host {host.netns} does not answer on "
                    f"{host.tcp_address}:{port} within {START_TIMEOUT:.0f} s: {err}"
                ) from None
            time.sleep(0.3)


def start_ssh(host: NamespacedHost) -> NamespacedHost:
    """An sshd for ``qemu+ssh`` in the second host's namespaces (module docstring): its
    keys and config under ``state/ssh``, listening on ``tcp_address:22`` only; the
    client drop-in that pins its host key. Returns the host with ``ssh=True`` (recorded);
    a host whose sshd runs already is returned as it is."""
    if not (host.host_veth and host.tcp_address):
        raise ValidationError(f"{host.netns} is not a second host (no veth to the machine)",
                              hint="start it with 'kvmops dev second-host up'")
    if host.ssh and host.sshd_pid and Path(f"/proc/{host.sshd_pid}").exists():
        return host
    pid = host.libvirtd_pid
    if pid is None or not Path(f"/proc/{pid}").exists():
        raise StateError(f"the libvirtd of second host {host.netns} is not running",
                         hint=f"'kvmops dev second-host down --name {host.netns}', then up")
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        raise StateError("sshd or ssh-keygen is not installed", hint=_SSH_HINT)
    ssh = host.ssh_dir
    shutil.rmtree(ssh, ignore_errors=True)  # a half-made earlier attempt
    ssh.mkdir(mode=0o700)
    for key, comment in (("ssh_host_ed25519_key", f"{host.netns} host"),
                         ("client_ed25519", f"kvmops client of {host.netns}")):
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
            "-f", str(ssh / key))
    client_pub = (ssh / "client_ed25519.pub").read_text().strip()
    (ssh / "authorized_keys").write_text(f"restrict {client_pub}\n")
    host_pub = " ".join((ssh / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    host.known_hosts.write_text(f"{host.tcp_address} {host_pub}\n")
    config = ssh / "sshd_config"
    config.write_text(_sshd_config(host))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    enter = ["nsenter", "-t", str(pid), "-m", "-n", "-u", "--"]
    _sh(*enter, str(SSHD), "-t", "-f", str(config))
    _sh(*enter, str(SSHD), "-f", str(config))
    _wait_port(host, SSH_PORT)
    SSH_CONFIG_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    drop_in = ssh_client_config(host.netns)
    tmp = drop_in.with_name(f".{drop_in.name}.tmp")
    tmp.write_text(f"# kvmops second host {host.netns}: removed with it\n"
                   f"Host {host.tcp_address}\n"
                   f"    UserKnownHostsFile {host.known_hosts}\n"
                   "    GlobalKnownHostsFile /dev/null\n"
                   "    StrictHostKeyChecking yes\n")
    tmp.replace(drop_in)
    started = dataclasses.replace(host, ssh=True)
    _write_record(started)
    return started


def remove(host: NamespacedHost) -> None:
    """Kill what runs in its namespaces, delete them (their veths), its nftables guard,
    its ssh client drop-in, its images directory and its state directory. Safe on a
    half-made host."""
    remove_ns_host(host.state, prefix=_prefix_of(host.netns))
    with contextlib.suppress(OSError, ValidationError):
        ssh_client_config(host.netns).unlink(missing_ok=True)
    if host.host_veth and Path("/sys/class/net", host.host_veth).exists():
        subprocess.run(["ip", "link", "delete", host.host_veth], capture_output=True,
                       check=False, timeout=30)
    if host.images_dir and Path(host.images_dir) == images_dir_for(host.netns):
        shutil.rmtree(host.images_dir, ignore_errors=True)


def stop(host: NamespacedHost) -> None:
    """Remove the domains (with their disks) and networks through the API, then
    :func:`remove`. Never fails half-way: the removal runs whatever the API part did."""
    from kvmops.host import networks as host_networks
    from kvmops.vm import lifecycle

    try:
        with contextlib.suppress(Exception), Host(host.unix_uri) as conn:
            for domain in conn.all_domains():
                with contextlib.suppress(Exception):
                    domain.destroy()
                with contextlib.suppress(Exception):
                    lifecycle.undefine(conn, domain.name, remove_storage=True)
            for net in host_networks.all_networks(conn):
                with contextlib.suppress(KvmopsError):
                    if net.active:
                        host_networks.stop(conn, net.name)
                    if net.persistent:
                        host_networks.undefine(conn, net.name)
    finally:
        remove(host)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One ``up``/``down`` at a time (they share 10.250.0.0/24)."""
    STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(STATE_ROOT / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def up(name: str = DEFAULT_NAME, index: int = 0, *, ssh: bool = False
       ) -> tuple[NamespacedHost, bool]:
    """Start the second host ``name`` unless it runs already (then return it as it is);
    the host and whether it was started now. One whose libvirtd no longer answers is an
    error (``down`` removes it); one gone with its namespace (a reboot) is started
    afresh; another second host holding 10.250.INDEX.0/24 is an error naming it.
    ``ssh``: with an sshd for ``qemu+ssh`` too (:func:`start_ssh`)."""
    check_name(name)
    with _lock():
        host, started = _up(name, index)
        if ssh:
            host = start_ssh(host)
        return host, started


def _up(name: str, index: int) -> tuple[NamespacedHost, bool]:
    """:func:`up` under the lock, without the sshd."""
    found = load(name)
    if found is not None and found.host_veth and found.answers():
        return found, False
    if found is not None and Path("/run/netns", name).exists():
        # Its VM definitions live in its state: never wiped behind the operator's back.
        raise StateError(f"second host {name} exists but its libvirtd does not answer",
                         hint=f"see {found.state}/log/libvirtd.log; 'kvmops dev "
                              f"second-host down --name {name}' removes it with "
                              "everything on it, then 'up' again")
    if found is not None or state_dir(name).exists():  # gone with a reboot or crash
        remove(found or NamespacedHost(netns=name, state=state_dir(name)))
    return start(name, layout="host", index=index), True


def _check_subnet_free(subnet: str = SUBNET, machine_end: str = HOST_ADDRESS) -> None:
    holder = _subnet_in_use(subnet)
    if holder is not None:
        owner = next((h.netns for h in status() if h.host_veth == holder), None)
        raise AlreadyExistsError(
            f"{subnet} is in use on {holder}"
            + (f" by the second host {owner}" if owner else ""),
            hint=f"remove it first: 'kvmops dev second-host down --name {owner}', or "
                 "use another --index" if owner
            else f"a second host needs {machine_end}/24 on the machine")


def down(name: str = DEFAULT_NAME) -> bool:
    """Remove the second host ``name`` with its domains, networks, disks, processes,
    namespace, veth and state; False when there was none."""
    check_name(name)
    with _lock():
        found = load(name)
        if found is None:
            if not state_dir(name).exists() and not Path("/run/netns", name).exists():
                return False
            found = NamespacedHost(netns=name, state=state_dir(name),
                                   host_veth=host_veth_for(name),
                                   images_dir=str(images_dir_for(name)))
            found.state.mkdir(mode=0o755, parents=True, exist_ok=True)
            (found.state / NAMESPACES_FILE).write_text(f"{name}\n")
            (found.state / NFT_TABLES_FILE).write_text(f"{name}\n")
        stop(found)
        return True


def status() -> list[NamespacedHost]:
    """The second hosts (``host`` layout) with a record, test ones included."""
    found = []
    for root in (STATE_ROOT, NSHOST_ROOT):
        for record in sorted(root.glob(f"*/{RECORD}")) if root.is_dir() else []:
            host = load(record.parent.name)
            if host is not None and host.host_veth:
                found.append(host)
    return found

