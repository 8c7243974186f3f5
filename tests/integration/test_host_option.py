"""``--host NAME`` against a real second host (a namespaced libvirtd on TCP, added with
``kvmops host add`` in a database of this module's own): a tiny VM created, started and
asked about with ``--host``, a command run in it through its agent, a full backup into
a repository here, its networks, pools and snapshots listed there and not here,
``vm list --host all`` with both hosts' VMs
(a ``host`` key each), and -- the second libvirtd stopped (SIGSTOP: it accepts and never
answers) -- the local VMs still listed with one warning line for the other host."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, CliResult, assert_one_line_error, run_cli
from tests.integration.nshost import NsHost, second_host

H2 = "h2"  # its name in this module's database
VM = f"{SESSION_PREFIX}hopt"
NETWORK = f"{SESSION_PREFIX}hon"
POOL = f"{SESSION_PREFIX}hop"


@dataclass
class Bed:
    h2: NsHost
    env: dict[str, str]  # KVMOPS_DB: a database of its own, where h2 is added

    def cli(self, *args: str, timeout: float = 300) -> CliResult:
        return run_cli(*args, env=self.env, timeout=timeout)

    def json(self, *args: str) -> object:
        result = self.cli(*args, "--json")
        assert result.code == 0, (args, result.stderr)
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    db = tmp_path_factory.mktemp("hostopt") / "hosts.db"
    env = {"KVMOPS_DB": f"sqlite:///{db}"}
    with second_host(f"{SESSION_PREFIX}hop") as h2:
        added = run_cli("host", "add", H2, h2.uri, env=env)
        assert added.code == 0, added.stderr
        yield Bed(h2, env)  # the second host's stop removes its VM, network and pool


def _names(listed: object) -> list[str]:
    assert isinstance(listed, list)
    return [item["name"] for item in listed]


def test_commands_act_on_the_named_host(bed: Bed, tiny_guest: GuestImage, host: Host,
                                        vm_factory: Callable[..., str],
                                        backups_dir: Path) -> None:
    local_vm = vm_factory()  # shut off: listed, never booted
    created = bed.cli("vm", "create", VM, "--memory", "256M", "--vcpus", "1",
                      "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                      "--cmdline", "console=ttyS0", "--disk", "size=64M",
                      "--images-dir", bed.h2.images_dir, "--host", H2)
    assert created.code == 0, created.stderr
    assert VM not in [d.name for d in host.all_domains()]
    assert list(Path(bed.h2.images_dir).iterdir()), "its disk in the images dir named"
    started = bed.cli("vm", "start", VM, "--wait-agent", "180", "--host", H2)
    assert started.code == 0, started.stderr

    info = bed.json("vm", "info", VM, "--host", H2)  # the quick path
    assert isinstance(info, dict)
    assert info["name"] == VM and info["state"] == "running" and info["agent"] is True
    assert_one_line_error(bed.cli("vm", "info", VM), 3, VM)  # not on the local host
    ran = bed.cli("guest", "exec", VM, "--host", H2, "--", "cat", "/proc/version")
    assert ran.code == 0, ran.stderr
    assert ran.stdout.startswith("Linux version ")

    listed = bed.json("vm", "list", "--host", "all")
    assert isinstance(listed, list)
    where = {(vm["host"], vm["name"]) for vm in listed}
    assert (H2, VM) in where and ("local", local_vm) in where
    assert (H2, local_vm) not in where and ("local", VM) not in where
    assert _names(bed.json("vm", "list", "--host", H2)) == [VM]

    made = bed.cli("net", "create", NETWORK, "--mode", "isolated",
                   "--ipv4", "192.168.237.1/24", "--host", H2)
    assert made.code == 0, made.stderr
    assert NETWORK in _names(bed.json("net", "list", "--host", H2))
    assert NETWORK not in _names(bed.json("net", "list"))
    target = str(Path(bed.h2.images_dir) / "pool")
    pooled = bed.cli("pool", "create", POOL, "--type", "dir", "--target", target, "--build",
                     "--on-host", H2)
    assert pooled.code == 0, pooled.stderr
    assert POOL in _names(bed.json("pool", "list", "--host", H2))
    assert POOL not in _names(bed.json("pool", "list"))

    assert bed.json("snapshot", "list", VM, "--host", H2) == []
    assert_one_line_error(bed.cli("snapshot", "list", VM), 3, VM)
    # A backup: QEMU there writes into the repository here (the same file system).
    repo = backups_dir / f"{SESSION_PREFIX}hopt"
    backup = bed.cli("backup", "create", VM, "--repo", str(repo), "--full", "--json",
                     "--host", H2)
    assert backup.code == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    assert manifest["type"] == "full" and manifest["vm"] == VM
    verified = bed.cli("backup", "verify", VM, "--repo", str(repo))
    assert verified.code == 0, verified.stderr
    xml = bed.cli("vm", "dumpxml", VM, "--host", H2)
    assert xml.code == 0 and f"<name>{VM}</name>" in xml.stdout, xml.stderr
    destroyed = bed.cli("vm", "destroy", VM, "--host", H2)
    assert destroyed.code == 0, destroyed.stderr
    info = bed.json("vm", "info", VM, "--host", H2)
    assert isinstance(info, dict) and info["state"] == "shut off"


def test_vm_list_all_names_a_stopped_host_and_lists_the_others(
        bed: Bed, vm_factory: Callable[..., str]) -> None:
    local_vm = vm_factory()
    pid = bed.h2.libvirtd_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the daemon takes connections and never answers
    try:
        listed = bed.cli("vm", "list", "--host", "all", "--json")
        table = bed.cli("vm", "list", "--host", "all")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert listed.code == 0, listed.stderr
    vms = json.loads(listed.stdout)
    assert ("local", local_vm) in {(vm["host"], vm["name"]) for vm in vms}
    assert H2 not in {vm["host"] for vm in vms}
    warnings = [line for line in listed.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, listed.stderr
    assert f"host '{H2}' is unreachable" in warnings[0] and "did not answer" in warnings[0]
    assert table.code == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:2] == ["Host", "Name"]
    assert any(line.split()[:2] == ["local", local_vm] for line in table.stdout.splitlines())
    again = bed.cli("vm", "list", "--host", "all", "--json")  # answering again
    assert again.code == 0 and "unreachable" not in again.stderr, again.stderr
