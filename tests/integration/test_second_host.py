"""``kvmops dev second-host`` (issue 12's test bed, kvmops.testing.secondhost): ``up``
starts a namespaced second libvirtd and prints ``qemu+tcp://10.250.0.2/system`` on its
last line; that daemon lists no VMs, takes a tiny VM created through the URI (not seen by
the machine's libvirtd), answers a second ``up`` without a second daemon, and ``down``
removes everything: VM, disk, process, namespace, veth, nftables guard, images directory,
state. Only 10.250.0.1/24 <-> 10.250.0.2/24 is used; the name has the session prefix, so
``make clean-test`` removes what a crashed run left. One guest boots, to prove the test
bed carries a live migration each way."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from kvmops.testing import netns, secondhost
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.conftest import remove_vm
from tests.integration.nshost import SECOND_HOST_INDEX, second_host

N = SECOND_HOST_INDEX  # 10.250.N.0/24: parallel runs on one machine use different N
ADDRESS = f"10.250.{N}.2"
URI = f"qemu+tcp://{ADDRESS}/system"
UP = ("dev", "second-host", "up", "--index", str(N))


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _connect_as(uid: int) -> str:
    """Open a TCP connection to the second libvirtd's port as ``uid``: what happened."""
    code = ("import socket\n"
            f"socket.create_connection(('{ADDRESS}', 16509), 10).close()\n"
            "print('connected')\n")
    proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           "/usr/bin/python3", "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.stdout + proc.stderr


def test_second_host_up_vm_down(tiny_guest: GuestImage, host: Host) -> None:
    name = f"{SESSION_PREFIX}h2"
    vm = f"{SESSION_PREFIX}h2vm"
    try:
        started = run_cli(*UP, "--name", name)
        assert started.code == 0, started.stderr
        assert started.stdout.splitlines()[-1] == URI
        info = json.loads(run_cli(*UP, "--name", name,
                                  "--json").stdout)
        assert info["started"] is False and info["uri"] == URI
        assert info["netns"] == name and info["address"] == ADDRESS
        pid = info["libvirtd_pid"]
        assert pid in netns.netns_pids(name)
        images = Path(info["images_dir"])
        assert images.is_dir() and name in images.name
        # Idempotent: the same daemon still, and its URI last again.
        again = run_cli(*UP, "--name", name)
        assert again.code == 0 and again.stdout.splitlines()[-1] == URI, again.stderr
        assert secondhost.load(name) is not None
        assert secondhost.load(name).libvirtd_pid == pid  # type: ignore[union-attr]
        # Only one second host can hold 10.250.N.0/24: another is refused, naming it.
        assert_one_line_error(run_cli(*UP, "--name", f"{name}x"),
                              4, f"10.250.{N}.0/24", name)
        # The daemon takes no authentication: only root (and QEMU's user) reach it.
        assert _connect_as(0).strip() == "connected"
        assert "ConnectionRefusedError" in _connect_as(65534)
        listed = _virsh(URI, "list", "--all", "--name")
        assert listed.returncode == 0 and listed.stdout.strip() == "", listed
        assert _virsh(URI, "hostname").stdout.strip() == name
        status = json.loads(run_cli("dev", "second-host", "status", "--json").stdout)
        assert [h["answers"] for h in status if h["name"] == name] == [True]

        created = run_cli(
            "vm", "create", vm, "--memory", "256M", "--vcpus", "1",
            "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
            "--cmdline", "console=ttyS0", "--disk", "size=64M",
            "--images-dir", str(images), env={"KVMOPS_URI": URI})
        assert created.code == 0, created.stderr
        on_second = json.loads(run_cli("vm", "list", "--json",
                                       env={"KVMOPS_URI": URI}).stdout)
        assert [v["name"] for v in on_second] == [vm]
        assert vm not in [d.name for d in host.all_domains()]
        disks = list(images.iterdir())
        assert disks, "the VM's disk is in the second host's images directory"
        veth = info["host_veth"]
        assert Path("/sys/class/net", veth).exists()
    finally:
        removed = run_cli("dev", "second-host", "down", "--name", name)
    assert removed.code == 0, removed.stderr
    assert not Path("/run/netns", name).exists()
    assert not netns.alive(pid)
    assert not Path("/sys/class/net", veth).exists()
    assert not images.exists()
    assert not secondhost.state_dir(name).exists()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert name not in tables
    assert _virsh(URI, "uri").returncode != 0
    status = json.loads(run_cli("dev", "second-host", "status", "--json").stdout)
    assert name not in [h["name"] for h in status]
    # A second down finds nothing, says so, and succeeds.
    again = run_cli("dev", "second-host", "down", "--name", name)
    assert again.code == 0 and "no second host" in again.stderr + again.stdout


def test_live_migration_both_ways_over_the_test_bed(tiny_guest: GuestImage, host: Host
                                                    ) -> None:
    """The test bed carries migrations (own host UUID, migration_host, the guard lets
    QEMU's user through): a tiny guest booted on the second host moves to the machine's
    libvirtd and back (shared storage: the same file system, hence --unsafe), its RAM
    intact (a file in its RAM root file system), defined only where it runs. The way back
    needs no listening machine libvirtd: virsh drives it and names tcp://10.250.0.1."""
    vm = f"{SESSION_PREFIX}h2mig"
    with second_host(f"{SESSION_PREFIX}h2m") as h2:
        assert h2.uri == URI
        try:
            created = h2.run_cli(
                "vm", "create", vm, "--memory", "256M", "--vcpus", "1",
                "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                "--cmdline", "console=ttyS0", "--disk", "size=64M",
                "--images-dir", h2.images_dir)
            assert created.code == 0, created.stderr
            started = h2.run_cli("vm", "start", vm, "--wait-agent", "240")
            assert started.code == 0, (started.stderr, h2.log_tail())
            marked = h2.run_cli("guest", "exec", vm, "--", "sh", "-c",
                                "echo ram-survived > /tmp/marker")
            assert marked.code == 0, marked.stderr
            moved = _virsh(URI, "migrate", "--live", "--unsafe", "--persistent",
                           "--undefinesource", vm, "qemu:///system", f"tcp://10.250.{N}.1")
            assert moved.returncode == 0, (moved.stderr, h2.log_tail())
            assert vm in [d.name for d in host.all_domains()]
            assert _virsh(URI, "list", "--all", "--name").stdout.strip() == ""
            read = run_cli("guest", "exec", vm, "--", "cat", "/tmp/marker")
            assert read.code == 0 and read.stdout.strip() == "ram-survived", read
            back = _virsh(host.uri, "migrate", "--live", "--unsafe", "--persistent",
                          "--undefinesource", vm, URI)
            assert back.returncode == 0, (back.stderr, h2.log_tail())
            assert vm not in [d.name for d in host.all_domains()]
            read = h2.run_cli("guest", "exec", vm, "--", "cat", "/tmp/marker")
            assert read.code == 0 and read.stdout.strip() == "ram-survived", read
        finally:
            if vm in [d.name for d in host.all_domains()]:  # stopped half-way back
                remove_vm(host, vm)


def test_crashed_second_host_is_removed_by_clean_test() -> None:
    """A test second host never taken down (its run crashed): ``make clean-test``'s part
    for namespaced hosts removes its processes, namespace, veth and nftables guard."""
    name = f"{SESSION_PREFIX}crash2-h2"
    crashed, started = secondhost.up(name, N)
    try:
        assert started
        pids = netns.netns_pids(name)
        assert crashed.libvirtd_pid in pids
    except BaseException:
        secondhost.remove(crashed)
        raise
    removed = netns.remove_ns_hosts(prefix=f"{SESSION_PREFIX}crash2-")
    assert removed == [name]
    assert not [pid for pid in pids if netns.alive(pid)]
    assert not Path("/run/netns", name).exists()
    assert not Path("/sys/class/net", crashed.host_veth).exists()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert name not in tables
    assert not crashed.state.exists()
    # Its images directory is under the test image directory, which clean-test empties of
    # test-prefixed entries.
    assert Path(crashed.images_dir).parent == secondhost.TEST_IMAGES_ROOT
    Path(crashed.images_dir).rmdir()


def test_hosts_add_list_info_remove_across_two_daemons(tiny_guest: GuestImage,
                                                       tmp_path: Path) -> None:
    """``host add/list/info/remove`` (issue 12 item 1) with the second daemon and a host
    that never answers (10.250.N.9: inside the test bed's /24, nobody there): the list
    shows the second host reachable with its VM counts, the other unreachable with the
    reason, each on its own; ``local`` is always listed and cannot be removed."""
    env = {"KVMOPS_DB": f"sqlite:///{tmp_path / 'hosts.db'}"}
    vm = f"{SESSION_PREFIX}h2hvm"
    gone = f"qemu+tcp://10.250.{N}.9/system"
    with second_host(f"{SESSION_PREFIX}h2h") as h2:
        created = h2.run_cli(
            "vm", "create", vm, "--memory", "256M", "--vcpus", "1",
            "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
            "--cmdline", "console=ttyS0", "--disk", "size=64M",
            "--images-dir", h2.images_dir)
        assert created.code == 0, created.stderr
        added = run_cli("host", "add", "h2", URI, "--label", "rack=r1", "--json", env=env)
        assert added.code == 0, added.stderr
        entry = json.loads(added.stdout)
        assert entry["reachable"] is True and entry["vms_defined"] == 1
        assert entry["hostname"] == h2.netns and entry["labels"] == {"rack": "r1"}
        assert_one_line_error(run_cli("host", "add", "h2", URI, env=env), 4, "'h2'")
        # Checked first: a host that does not answer is not added.
        assert_one_line_error(run_cli("host", "add", "gone", gone, env=env), 7,
                              "host 'gone'", gone, "--no-check")
        assert run_cli("host", "add", "gone", gone, "--no-check", env=env).code == 0
        assert_one_line_error(run_cli("host", "add", "evil",
                                      "qemu+ssh://-oProxyCommand=id/system", env=env),
                              2, "not an option")

        listed = run_cli("host", "list", "--json", "--timeout", "2", env=env)
        assert listed.code == 0, listed.stderr
        hosts = {h["name"]: h for h in json.loads(listed.stdout)}
        assert list(hosts) == ["local", "gone", "h2"]
        assert hosts["local"]["reachable"] is True
        assert hosts["h2"]["uri"] == URI and hosts["h2"]["reachable"] is True
        assert (hosts["h2"]["vms_defined"], hosts["h2"]["vms_running"]) == (1, 0)
        assert hosts["gone"]["reachable"] is False and hosts["gone"]["error"]
        assert hosts["gone"]["vms_defined"] is None

        info = json.loads(run_cli("host", "info", "h2", "--json", env=env).stdout)
        assert info["reachable"] is True and info["accelerator"] in ("kvm", "tcg")
        assert info["libvirt_version"] and info["qemu_version"] and info["cpus"] >= 1
        assert info["memory_total"] > 0 and info["last_seen"]
        assert (info["vms_defined"], info["vms_running"]) == (1, 0)
        text = run_cli("host", "info", "h2", env=env)
        assert text.code == 0 and "Reachable:" in text.stdout and URI in text.stdout

        assert_one_line_error(run_cli("host", "remove", "local", env=env), 5, "local")
        for name in ("h2", "gone"):
            removed = run_cli("host", "remove", name, env=env)
            assert removed.code == 0, removed.stderr
        names = [h["name"] for h in json.loads(run_cli("host", "list", "--json",
                                                       env=env).stdout)]
        assert names == ["local"]
        assert_one_line_error(run_cli("host", "info", "h2", env=env), 3, "'h2'")
