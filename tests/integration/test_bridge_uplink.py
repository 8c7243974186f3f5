"""``kvmops net create BR --mode bridge --uplink DEV`` for real, inside test network
namespaces: namespace A is the "host" with uplink kvtu0 (a veth, two addresses, IPv4 and
IPv6 default routes and a route in table 100 via the peer), namespace B holds the peer
192.168.233.1 (and fe80::1) at the veth's other end. The command runs in A
(``ip netns exec A python -m kvmops.cli.main``).

A failed check (an unreachable --verify host, the peer's end down, no confirmation), SIGTERM,
SIGKILL (the guard process restores) and a crash of both (``net rollback``) must leave A
exactly as before (links, addresses, routes of
every table, no bridge); a passing one keeps A reaching the peer through the bridge and
defines the libvirt network (in the host's libvirtd, with the session's test prefix);
``--dry-run`` changes nothing. The namespaces go even on failure (and by make clean-test).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from kvmops.testing import cleanup
from tests.conftest import SESSION_PREFIX, CliResult, assert_one_line_error, run_cli

pytestmark = pytest.mark.integration

NS_A = f"{SESSION_PREFIX}upl-a"
NS_B = f"{SESSION_PREFIX}upl-b"
UPLINK, PEER_END, BRIDGE = "kvtu0", "kvtu1", "kvtbr0"
ADDRESS, SECOND, PEER = "192.168.233.2/24", "192.168.233.3/24", "192.168.233.1"
ABSENT = "192.168.233.99"  # nobody answers there
NETWORK = f"{SESSION_PREFIX}upl"

# An ICMP echo from inside a namespace (this host has no ping): exit 0 on a reply.
PING = """
import socket, struct, sys, time
target = sys.argv[1]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(1.0)
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
for seq in range(3):
    head = struct.pack("!BBHHH", 8, 0, 0, 0x4B56, seq)
    body = b"kvmops-bridge"
    sock.sendto(struct.pack("!BBHHH", 8, 0, checksum(head + body + b"\\0"), 0x4B56, seq)
                + body, (target, 0))
    try:
        while True:
            data, (source, _) = sock.recvfrom(1024)
            icmp = data[(data[0] & 0x0F) * 4:]
            if source == target and icmp[0] == 0:
                sys.exit(0)
    except socket.timeout:
        continue
sys.exit(1)
"""


def _sh(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True,
                          timeout=30).stdout


def _ip_json(ns: str, *args: str) -> Any:
    out = _sh("ip", "-n", ns, "-json", *args)
    return json.loads(out) if out.strip() else []


def _state(ns: str) -> dict[str, Any]:
    """Everything the change touches in ``ns``: links (MAC, MTU, flags, master, kind),
    addresses (not their lifetimes), and the routes of every table of both families."""
    links = sorted((link["ifname"], link.get("address"), link["mtu"],
                    tuple(sorted(link.get("flags", []))), link.get("master"),
                    (link.get("linkinfo") or {}).get("info_kind"))
                   for link in _ip_json(ns, "-details", "link", "show"))
    addresses = sorted((entry["ifname"], a["family"], a["local"], a["prefixlen"],
                        a.get("broadcast"), a.get("scope"), a.get("label"))
                       for entry in _ip_json(ns, "addr", "show")
                       for a in entry.get("addr_info", []))
    routes = sorted(json.dumps({k: v for k, v in route.items() if k != "expires"},
                               sort_keys=True)
                    for family in ("-4", "-6")
                    for route in _ip_json(ns, family, "route", "show", "table", "all"))
    return {"links": links, "addresses": addresses, "routes": routes}


def _settled(ns: str, timeout: float = 20.0) -> None:
    """Wait (bounded) until no IPv6 address in ``ns`` is still in its duplicate check:
    the kernel adds a local route when it ends, which a before/after comparison would see."""
    deadline = time.monotonic() + timeout
    while any(a.get("tentative") for entry in _ip_json(ns, "addr", "show")
              for a in entry.get("addr_info", [])):
        if time.monotonic() > deadline:
            raise AssertionError(f"IPv6 duplicate address detection did not end in {ns}")
        time.sleep(0.2)


def _wait_flag(ns: str, dev: str, flag: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while flag not in _ip_json(ns, "link", "show", "dev", dev)[0].get("flags", []):
        if time.monotonic() > deadline:
            raise AssertionError(f"{dev} in {ns} never showed {flag}")
        time.sleep(0.1)


@dataclass
class Lab:
    state_dir: Path

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "COLUMNS": "200", "KVMOPS_STATE_DIR": str(self.state_dir)}
        for name in ("SSH_CONNECTION", "SSH_CLIENT"):  # the test's own session, if any
            env.pop(name, None)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", NS_A, sys.executable, "-m", "kvmops.cli.main", *args]

    def kvmops(self, *args: str, timeout: float = 120,
               env: dict[str, str] | None = None) -> CliResult:
        """The real command inside namespace A; no terminal on stdin."""
        proc = subprocess.run(self.argv(*args), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The command in the background, its stdin a pipe nobody writes to (an operator
        who does not answer)."""
        return subprocess.Popen(self.argv(*args), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)

    @property
    def record(self) -> Path:
        return self.state_dir / "bridges" / f"{BRIDGE}.json"


def _remove_namespaces() -> None:
    cleanup.remove_uplink_namespaces(SESSION_PREFIX)
    listed = _sh("ip", "netns", "list")
    assert NS_A not in listed and NS_B not in listed, listed


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    _remove_namespaces()  # a crashed earlier run of this session's pid (unlikely)
    try:
        _sh("ip", "netns", "add", NS_A)
        _sh("ip", "netns", "add", NS_B)
        _sh("ip", "link", "add", UPLINK, "netns", NS_A, "type", "veth", "peer", "name",
            PEER_END, "netns", NS_B)
        for ns in (NS_A, NS_B):
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", NS_A, "addr", "add", ADDRESS, "dev", UPLINK)
        _sh("ip", "-n", NS_A, "addr", "add", SECOND, "dev", UPLINK, "label", f"{UPLINK}:1")
        _sh("ip", "-n", NS_A, "link", "set", UPLINK, "mtu", "1400", "up")
        _sh("ip", "-n", NS_B, "addr", "add", f"{PEER}/24", "dev", PEER_END)
        _sh("ip", "-n", NS_B, "link", "set", PEER_END, "mtu", "1400", "up")
        _sh("ip", "-n", NS_A, "route", "add", "default", "via", PEER)
        _sh("ip", "-n", NS_A, "route", "add", "192.168.233.128/25", "via", PEER, "table",
            "100", "metric", "50", "proto", "static")
        # An IPv6 default route through the peer's link-local address moves too.
        _sh("ip", "-n", NS_B, "addr", "add", "fe80::1/64", "dev", PEER_END)
        _sh("ip", "-n", NS_A, "-6", "route", "add", "default", "via", "fe80::1", "dev", UPLINK)
        _settled(NS_A)
        yield Lab(state_dir=tmp_path / "state")
    finally:
        _remove_namespaces()


def _ping(target: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", NS_A, sys.executable, "-c", PING, target],
                          capture_output=True, timeout=30, check=False).returncode == 0


def _read_until(proc: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """Read the background command's stdout until a line holds ``text`` (bounded)."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"no '{text}' from the command: {seen}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            seen += proc.stdout.readline()
    return seen


@contextlib.contextmanager
def _background(lab: Lab, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = lab.start(*args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


# ------------------------------------------------------------------ failed checks
@pytest.mark.parametrize("case", ["verify host unreachable", "peer end down",
                                  "not confirmed"])
def test_a_failed_check_rolls_everything_back(lab: Lab, case: str) -> None:
    args = ["net", "create", BRIDGE, "--mode", "bridge", "--uplink", UPLINK, "--no-define",
            "--verify-timeout", "3"]
    if case == "verify host unreachable":
        args += ["--verify", ABSENT]
        reason = f"next hop {ABSENT} did not answer"
    elif case == "peer end down":
        _sh("ip", "-n", NS_B, "link", "set", PEER_END, "down")
        _wait_flag(NS_A, UPLINK, "NO-CARRIER")  # the "before" is the uplink without carrier
        reason = f"next hop {PEER} did not answer"
    else:  # the check passes, but nobody confirms (no terminal): rolled back as well
        args += ["--confirm-timeout", "30"]
        reason = "not confirmed"
    before = _state(NS_A)
    result = lab.kvmops(*args)
    assert_one_line_error(result, 5, f"check of bridge '{BRIDGE}' failed", reason,
                          f"rolled back, {UPLINK} is as before")
    assert "plan (" in result.stdout  # the plan was shown before it was applied
    assert _state(NS_A) == before
    assert not lab.record.exists()
    if case == "peer end down":
        _sh("ip", "-n", NS_B, "link", "set", PEER_END, "up")
        _wait_flag(NS_A, UPLINK, "LOWER_UP")
    _settled(NS_A)
    assert _ping(PEER), "the uplink does not work after the rollback"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_while_waiting_for_confirmation_rolls_back(lab: Lab,
                                                           sig: signal.Signals) -> None:
    before = _state(NS_A)
    with _background(lab, "net", "create", BRIDGE, "--mode", "bridge", "--uplink", UPLINK,
                     "--no-define", "--confirm-timeout", "300") as proc:
        _read_until(proc, "check passed")
        assert _ip_json(NS_A, "link", "show", "dev", UPLINK)[0].get("master") == BRIDGE
        proc.send_signal(sig)  # SIGHUP: the SSH session that ran it dropped
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"interrupted ({sig.name}); rolled back" in err.strip().splitlines()[-1]
    assert _state(NS_A) == before
    assert not lab.record.exists()


def _wait_gone(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} is still there after {timeout:g} s")
        time.sleep(0.1)


def test_a_killed_run_is_restored_by_its_guard(lab: Lab) -> None:
    before = _state(NS_A)
    with _background(lab, "net", "create", BRIDGE, "--mode", "bridge", "--uplink", UPLINK,
                     "--no-define", "--confirm-timeout", "300") as proc:
        _read_until(proc, "check passed")
        assert lab.record.exists()
        assert _state(NS_A) != before
        # One change at a time: a second one would snapshot this one's half-done state.
        assert_one_line_error(lab.kvmops("net", "create", "kvtbr1", "--mode", "bridge",
                                         "--uplink", UPLINK, "--no-define"),
                              5, "another 'kvmops net create --uplink' or 'net rollback' is "
                                 "running")
        proc.kill()  # SIGKILL: no handler of its own runs
        proc.communicate(timeout=30)
    _wait_gone(lab.record)  # the guard restored, then removed the record
    assert _state(NS_A) == before
    log = (lab.record.parent / f"{BRIDGE}.guard.log").read_text()
    assert f"ended before finishing bridge '{BRIDGE}': restored {UPLINK}" in log


def test_net_rollback_restores_when_the_run_and_its_guard_died(lab: Lab) -> None:
    before = _state(NS_A)
    with _background(lab, "net", "create", BRIDGE, "--mode", "bridge", "--uplink", UPLINK,
                     "--no-define", "--confirm-timeout", "300") as proc:
        _read_until(proc, "check passed")
        record = json.loads(lab.record.read_text())
        # While its owner runs, a rollback from elsewhere is refused (it restores itself).
        assert_one_line_error(lab.kvmops("net", "rollback", BRIDGE), 5,
                              f"(pid {record['pid']}) is still applying bridge '{BRIDGE}'")
        os.kill(record["guard_pid"], signal.SIGKILL)  # a crash of everything: the guard,
        proc.kill()  # then the run itself
        proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{record['guard_pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # (reaped by init: gone once its exit is collected)
    assert lab.record.exists() and _state(NS_A) != before
    assert_one_line_error(lab.kvmops("net", "create", "other0", "--mode", "bridge",
                                     "--bridge", BRIDGE, "--uplink", UPLINK, "--no-define"),
                          5, "rollback record", f"kvmops net rollback {BRIDGE}")
    result = lab.kvmops("net", "rollback", BRIDGE)
    assert result.code == 0, result.stderr
    assert f"bridge '{BRIDGE}' removed and '{UPLINK}' restored" in result.stdout
    assert _state(NS_A) == before
    assert not lab.record.exists()
    assert_one_line_error(lab.kvmops("net", "rollback", BRIDGE), 3,
                          f"no rollback record of bridge '{BRIDGE}'")


# ---------------------------------------------------------------- the route checked
def test_the_check_follows_the_ssh_session_else_the_default_gateway(lab: Lab) -> None:
    before = _state(NS_A)
    base = ["net", "create", BRIDGE, "--mode", "bridge", "--uplink", UPLINK, "--dry-run"]
    # A session whose client is on the uplink's LAN: the client itself is the next hop.
    result = lab.kvmops(*base, "--json",
                        env={"SSH_CONNECTION": f"{PEER} 50022 192.168.233.2 22"})
    assert result.code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["verify_source"], out["verify_target"], out["next_hop"]) == (
        "ssh session", PEER, PEER)
    # A session that does not go through the uplink is not at risk: the gateway is checked.
    result = lab.kvmops(*base, "--json", env={"SSH_CLIENT": "127.0.0.1 50022 22"})
    out = json.loads(result.stdout)
    assert (out["verify_source"], out["next_hop"]) == ("default gateway", PEER)
    assert any("127.0.0.1 is reached through lo, not kvtu0" in n for n in out["notes"])
    # --verify must be reached through the uplink, else its answer proves nothing.
    assert_one_line_error(lab.kvmops(*base, "--verify", "127.0.0.1"), 2,
                          "--verify 127.0.0.1 is reached through lo, not kvtu0")
    assert_one_line_error(lab.kvmops(*base, "--verify", "gw.example"), 2,
                          "--verify gw.example is not an IP address")
    assert _state(NS_A) == before


# ------------------------------------------------------------------------ success
ECHO_SERVER = """
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("192.168.233.2", 2222))
srv.listen(1)
srv.settimeout(60)
print("listening", flush=True)
conn, _ = srv.accept()
conn.settimeout(60)
while data := conn.recv(1024):
    conn.sendall(data)
"""
# The "SSH client" in namespace B: each line of its stdin goes out and its echo is printed.
ECHO_CLIENT = """
import socket, sys
conn = socket.create_connection(("192.168.233.2", 2222), timeout=30)
print(conn.getsockname()[1], flush=True)
for line in sys.stdin:
    conn.sendall(line.encode())
    print(conn.recv(1024).decode().strip(), flush=True)
"""


def _in_ns(ns: str, script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _say(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return _read_until(proc, line, timeout=30).strip()


def test_an_open_session_through_the_uplink_survives_the_change(lab: Lab) -> None:
    server = _in_ns(NS_A, ECHO_SERVER)
    client: subprocess.Popen[str] | None = None
    try:
        _read_until(server, "listening", timeout=30)
        client = _in_ns(NS_B, ECHO_CLIENT)
        assert client.stdout is not None
        port = client.stdout.readline().strip()
        assert _say(client, "before the bridge") == "before the bridge"
        result = lab.kvmops("net", "create", BRIDGE, "--mode", "bridge", "--uplink", UPLINK,
                            "--no-define", "--json",
                            env={"SSH_CONNECTION": f"{PEER} {port} 192.168.233.2 2222"})
        assert result.code == 0, result.stderr
        out = json.loads(result.stdout)
        assert (out["verify_source"], out["next_hop"], out["verified"]) == (
            "ssh session", PEER, True)
        # The same TCP connection carries on: same addresses, same MAC, now via the bridge.
        assert _say(client, "after the bridge") == "after the bridge"
        assert _ip_json(NS_A, "route", "get", PEER)[0]["dev"] == BRIDGE
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.kill()
                proc.communicate(timeout=30)



def test_a_passing_check_keeps_connectivity_and_defines_the_network(lab: Lab,
                                                                    host: Host) -> None:
    before = _state(NS_A)
    dry = lab.kvmops("net", "create", NETWORK, "--mode", "bridge", "--bridge", BRIDGE,
                     "--uplink", UPLINK, "--dry-run")
    assert dry.code == 0, dry.stderr
    assert f"ip link set dev {UPLINK} master {BRIDGE}" in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    assert _state(NS_A) == before
    assert not host_networks.exists(host, NETWORK)
    try:
        result = lab.kvmops("net", "create", NETWORK, "--mode", "bridge", "--bridge", BRIDGE,
                            "--uplink", UPLINK, "--json")
        assert result.code == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["verified"] is True and out["defined"] is True, out
        assert (out["verify_source"], out["next_hop"]) == ("default gateway", PEER)
        # The uplink is a port; the bridge has its MAC, MTU, addresses and routes.
        uplink = _ip_json(NS_A, "-details", "addr", "show", "dev", UPLINK)[0]
        bridge = _ip_json(NS_A, "-details", "addr", "show", "dev", BRIDGE)[0]
        assert uplink.get("master") == BRIDGE
        assert (bridge["address"], bridge["mtu"]) == (uplink["address"], 1400)
        assert [(a["local"], a["prefixlen"], a.get("label")) for a in bridge["addr_info"]
                if a["family"] == "inet"] == [("192.168.233.2", 24, BRIDGE),
                                              ("192.168.233.3", 24, f"{BRIDGE}:1")]
        assert not [a for a in uplink["addr_info"] if a["family"] == "inet"]
        assert _ip_json(NS_A, "route", "show", "default")[0]["dev"] == BRIDGE
        assert _ip_json(NS_A, "route", "show", "table", "100")[0]["dev"] == BRIDGE
        assert _ip_json(NS_A, "-6", "route", "show", "default")[0]["dev"] == BRIDGE
        assert _ping(PEER), "the peer does not answer through the bridge"
        assert not lab.record.exists()
        # libvirt's network (in the host's libvirtd) puts guests on the bridge.
        net = host_networks.network(host, NETWORK)
        assert "<forward mode='bridge'/>" in net.xml and f"name='{BRIDGE}'" in net.xml
        # A second change over the same uplink or bridge is refused before any change.
        _settled(NS_A)  # the bridge's own link-local address
        again = _state(NS_A)
        assert_one_line_error(lab.kvmops("net", "create", "kvtbr1", "--mode", "bridge",
                                         "--uplink", UPLINK, "--no-define"),
                              5, f"uplink '{UPLINK}' is already a port of '{BRIDGE}'")
        assert_one_line_error(lab.kvmops("net", "create", BRIDGE, "--mode", "bridge",
                                         "--uplink", "nosuch0", "--no-define"),
                              2, "uplink 'nosuch0' does not exist")
        assert _state(NS_A) == again
        # Removing the bridge is refused while libvirt's network names it.
        assert_one_line_error(lab.kvmops("net", "unbridge", BRIDGE), 5,
                              f"libvirt network(s) {NETWORK} use bridge '{BRIDGE}'")
        assert _state(NS_A) == again
    finally:
        with contextlib.suppress(Exception):
            host_networks.stop(host, NETWORK)
        with contextlib.suppress(Exception):
            host_networks.undefine(host, NETWORK)


def test_clean_test_removes_left_namespaces() -> None:
    name = f"{SESSION_PREFIX}upl-left"
    try:
        _sh("ip", "netns", "add", name)
        assert cleanup.remove_uplink_namespaces(SESSION_PREFIX) == [name]
        assert name not in _sh("ip", "netns", "list")
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_host_doctor_names_a_left_rollback_record(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"KVMOPS_STATE_DIR": str(state)}
    result = run_cli("host", "doctor", "--json", "--no-probe", env=env)
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["bridge-rollbacks"]["status"] == "ok", checks["bridge-rollbacks"]
    (state / "bridges").mkdir(parents=True)
    (state / "bridges" / f"{BRIDGE}.json").write_text("{}")
    result = run_cli("host", "doctor", "--json", "--no-probe", env=env)
    check = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["bridge-rollbacks"]
    assert check["status"] == "warn" and BRIDGE in check["detail"], check
    assert "kvmops net rollback BRIDGE" in check["hint"]


def test_unbridge_moves_everything_back_and_a_failed_check_makes_the_bridge_again(
        lab: Lab) -> None:
    original = _state(NS_A)
    created = lab.kvmops("net", "create", BRIDGE, "--mode", "bridge", "--uplink", UPLINK,
                         "--no-define")
    assert created.code == 0, created.stderr
    _settled(NS_A)
    bridged = _state(NS_A)
    dry = lab.kvmops("net", "unbridge", BRIDGE, "--dry-run")
    assert dry.code == 0 and f"ip link del dev {BRIDGE}" in dry.stdout, dry.stderr
    # A failed check after the removal: the bridge is made again, as it was.
    failed = lab.kvmops("net", "unbridge", BRIDGE, "--verify", ABSENT, "--verify-timeout", "2")
    assert_one_line_error(failed, 5, f"check after removing bridge '{BRIDGE}' failed",
                          f"rolled back, {BRIDGE} and {UPLINK} are as before")
    _settled(NS_A)  # the new bridge's link-local address
    assert _state(NS_A) == bridged
    assert _ping(PEER)
    # Checked and kept: the uplink has its addresses, labels and routes back, exactly.
    result = lab.kvmops("net", "unbridge", BRIDGE)
    assert result.code == 0, result.stderr
    assert f"bridge '{BRIDGE}' removed" in result.stdout
    assert _state(NS_A) == original
    assert _ping(PEER)
    assert_one_line_error(lab.kvmops("net", "unbridge", BRIDGE), 2,
                          f"bridge '{BRIDGE}' does not exist")
    assert_one_line_error(lab.kvmops("net", "unbridge", UPLINK), 2,
                          f"'{UPLINK}' is not a bridge")


def test_a_killed_unbridge_gets_its_bridge_back_from_the_guard(lab: Lab) -> None:
    created = lab.kvmops("net", "create", BRIDGE, "--mode", "bridge", "--uplink", UPLINK,
                         "--no-define")
    assert created.code == 0, created.stderr
    _settled(NS_A)
    bridged = _state(NS_A)
    with _background(lab, "net", "unbridge", BRIDGE, "--confirm-timeout", "300") as proc:
        _read_until(proc, "check passed")
        assert not _ip_json(NS_A, "link", "show", "type", "bridge")  # removed meanwhile
        proc.kill()
        proc.communicate(timeout=30)
    _wait_gone(lab.record)
    _settled(NS_A)
    assert _state(NS_A) == bridged
    assert _ping(PEER)
