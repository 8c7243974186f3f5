"""The namespaced second libvirtd (tests/integration/nshost.py): it runs in its own
network namespace with private libvirt directories and answers on its unix socket URI,
apart from the machine's libvirtd; one left by a crashed run (never stopped) is removed
by ``make clean-test``'s part for it (kvmops.testing.netns.remove_ns_hosts): its
libvirtd, dnsmasq and every other process in its namespaces ended, the namespaces and
the state directory gone, while the session's own namespaced host and the machine's
libvirtd keep answering. With ``listen=True`` it answers libvirt over TCP on its uplink
address (from the upstream namespace)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from kvmops.host.connection import Host
from kvmops.testing import netns
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.nshost import NsHost, ns_host, start


def test_nshost_is_a_separate_libvirtd(nshost: NsHost, host: Host) -> None:
    pid = nshost.libvirtd_pid
    assert pid is not None and pid in netns.netns_pids(nshost.netns)
    # Its /run/libvirt is the private directory: its pid file is seen there from inside.
    inside = nshost.run("cat", "/run/libvirt/libvirtd.pid").stdout.strip()
    assert inside == str(pid)
    assert not Path("/run/libvirt/libvirtd.pid").exists() or \
        Path("/run/libvirt/libvirtd.pid").read_text().strip() != str(pid)
    listed = nshost.run_cli("vm", "list", "--json")
    assert listed.code == 0, listed.stderr
    with nshost.connect() as conn:
        assert conn.uri == nshost.uri and conn.alive()
    assert host.uri != nshost.uri and host.alive()


def test_crashed_nshost_is_removed_by_clean_test(nshost: NsHost, host: Host) -> None:
    prefix = f"{SESSION_PREFIX}crash-"
    crashed = start(f"{prefix}h")
    try:
        network = f"{prefix}net"  # a dnsmasq in the namespace, besides the daemons
        created = crashed.run_cli("net", "create", network, "--mode", "isolated",
                                  "--ipv4", "192.168.235.1/24",
                                  "--dhcp", "192.168.235.10-192.168.235.20")
        assert created.code == 0, created.stderr
        pids = netns.netns_pids(crashed.netns)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}
        assert {"libvirtd", "virtlogd", "dnsmasq"} <= names, names
    except BaseException:
        netns.remove_ns_host(crashed.state)
        raise
    # The run "crashed": nothing was stopped. What clean-test does for namespaced hosts:
    removed = netns.remove_ns_hosts(prefix=prefix)
    assert sorted(removed) == sorted([crashed.netns, crashed.upstream])
    assert not [pid for pid in pids if netns.alive(pid)]
    assert not Path("/run/netns", crashed.netns).exists()
    assert not Path("/run/netns", crashed.upstream).exists()
    assert not crashed.state.exists()
    # The session's namespaced host and the machine's libvirtd are untouched.
    with nshost.connect() as conn:
        assert conn.alive()
    assert host.alive()
    assert json.loads(run_cli("vm", "list", "--json").stdout) is not None


def test_nshost_listening_on_tcp_answers_from_the_upstream() -> None:
    """``listen=True`` with a libvirtd.conf addition (how a second host for migration
    tests is reached): libvirt over TCP on the uplink address, from the upstream
    namespace."""
    conf = ('listen_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\n'
            'listen_addr = "192.168.234.2"\n')
    with ns_host(f"{SESSION_PREFIX}tcp-h", listen=True, libvirtd_conf=conf) as tcp:
        uri = f"qemu+tcp://{tcp.outside4}/system"
        answered = tcp.run("virsh", "-c", uri, "uri", where="upstream", check=False)
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip() == uri
    assert not tcp.state.exists()


def test_libvirts_default_network_is_disabled_and_removed(nshost: NsHost) -> None:
    """libvirt's shipped ``default`` NAT network (virbr0, 192.168.122.0/24), defined,
    autostarted and running on the namespaced libvirtd (so the machine's own stays as
    it is): ``net autostart --disable``, ``net stop`` and ``net delete`` take it away."""
    shipped = Path("/usr/share/libvirt/networks/default.xml")
    assert shipped.exists(), "libvirt's default network file is missing"
    for step in (["net-define", str(shipped)], ["net-autostart", "default"],
                 ["net-start", "default"]):
        done = subprocess.run(["virsh", "-c", nshost.uri, *step], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr

    def default() -> dict[str, Any]:
        """``default`` in ``net list --json``; {} when it is gone."""
        listed = nshost.run_cli("net", "list", "--json")
        assert listed.code == 0, listed.stderr
        return next((n for n in json.loads(listed.stdout) if n["name"] == "default"), {})

    assert default()["active"] is True
    assert nshost.run_cli("net", "autostart", "default", "--disable").code == 0
    assert default()["autostart"] is False
    assert nshost.run_cli("net", "stop", "default").code == 0
    assert default()["active"] is False
    assert "virbr0" not in nshost.run("ip", "-o", "link", "show").stdout
    assert nshost.run_cli("net", "delete", "default").code == 0
    assert default() == {}
