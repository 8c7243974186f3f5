"""Placement and evacuation across the two daemons (issue 12 items 2 and 5).

``vm create --host auto`` asks every known host for its room and picks the one that
fits: with a network that exists only on the second host, a VM joining it is placed
there, the local host rejected for that reason (one line per host); nowhere to go is a
one-line error naming each host's reason.

``host evacuate`` of three running tiny guests from the second host to the machine's
libvirtd (shared storage: their disks are in the second host's images directory on the
same file system): ``--dry-run`` shows the plan and changes nothing; ``--parallel 2``
moves all three, each running only on the target afterwards, a file in one guest's RAM
root file system intact. Three guests boot in this module, nothing else.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from kvmops.vm import lifecycle
from tests.conftest import SESSION_PREFIX, CliResult, assert_one_line_error, run_cli
from tests.integration.conftest import remove_vm
from tests.integration.nshost import NsHost, second_host

BOOT_TIMEOUT = 300.0
EVACUATE_TIMEOUT = 900.0
NETWORK = f"{SESSION_PREFIX}plc"


@dataclass
class Bed:
    h2: NsHost
    env: dict[str, str]  # a database of its own, where h2 is added

    def cli(self, *args: str, timeout: float = 300) -> CliResult:
        return run_cli(*args, env=self.env, timeout=timeout)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    db = tmp_path_factory.mktemp("placement") / "hosts.db"
    # The machine's libvirtd runs other tests' guests too: the vCPU limit (2 CPUs here)
    # must not depend on how many there are right now.
    env = {"KVMOPS_DB": f"sqlite:///{db}", "KVMOPS_VCPU_RATIO": "64"}
    with second_host(f"{SESSION_PREFIX}plc") as h2:
        added = run_cli("host", "add", "h2", h2.uri, env=env)
        assert added.code == 0, added.stderr
        yield Bed(h2, env)


def _virsh_names(uri: str, *flags: str) -> list[str]:
    out = subprocess.run(["virsh", "-c", uri, "list", "--name", *flags],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def _create_args(tiny_guest: GuestImage, name: str, images: str) -> list[str]:
    return ["vm", "create", name, "--memory", "256M", "--vcpus", "1",
            "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
            "--cmdline", "console=ttyS0", "--disk", "size=64M", "--images-dir", images]


def test_create_host_auto_places_on_the_host_with_the_network(
        bed: Bed, tiny_guest: GuestImage, host: Host) -> None:
    h2 = bed.h2
    made = h2.run_cli("net", "create", NETWORK, "--mode", "isolated",
                      "--ipv4", "192.168.236.1/24")
    assert made.code == 0, made.stderr
    vm = f"{SESSION_PREFIX}plcauto"
    created = bed.cli(*_create_args(tiny_guest, vm, h2.images_dir), "--host", "auto",
                      "--nic", f"network={NETWORK}")
    assert created.code == 0, created.stderr
    lines = created.stdout.splitlines()
    assert any(line.startswith("placed on h2: the only host that fits: ")
               and f"network {NETWORK} present" in line for line in lines), lines
    assert f"  local: rejected: network {NETWORK} not present" in lines, lines
    assert any(line.startswith("  h2: fits: ") for line in lines), lines
    assert vm in _virsh_names(h2.uri, "--all")
    assert vm not in [d.name for d in host.all_domains()]
    # --json: the VM with where and why (as POST /api/v1/vms?host=auto answers)
    shown = bed.cli(*_create_args(tiny_guest, f"{vm}j", h2.images_dir), "--host", "auto",
                    "--nic", f"network={NETWORK}", "--json")
    assert shown.code == 0, shown.stderr
    made_json = json.loads(shown.stdout)
    assert (made_json["name"], made_json["host"]) == (f"{vm}j", "h2")
    assert made_json["placement"]["host"] == "h2"
    assert {v["host"]: v["fits"] for v in made_json["placement"]["verdicts"]} == {
        "h2": True, "local": False}

    # Nowhere to go: one line naming every host's reason, nothing created.
    refused = bed.cli(*_create_args(tiny_guest, f"{vm}x", h2.images_dir), "--host", "auto",
                      "--nic", "network=nowhere-net")
    assert_one_line_error(refused, 5, f"no host can take VM '{vm}x'",
                          "local: rejected: network nowhere-net not present",
                          "h2: rejected: network nowhere-net not present")
    # A name the chosen host has already: that host is rejected for it.
    clash = bed.cli(*_create_args(tiny_guest, vm, h2.images_dir), "--host", "auto",
                    "--nic", f"network={NETWORK}")
    assert_one_line_error(clash, 5, f"h2: rejected: a VM named '{vm}' exists there")
    assert f"{vm}x" not in _virsh_names(h2.uri, "--all")


@pytest.fixture(scope="module")
def three(bed: Bed, tiny_guest: GuestImage, host: Host) -> Iterator[list[str]]:
    """Three tiny guests running on h2 (booted at once), one with a file in its RAM root
    file system; removed from wherever they are at the end. Their disks are shared
    storage: the machine's libvirtd has a pool over h2's images directory (the same file
    system), which is how the preflight knows the target sees them."""
    h2 = bed.h2
    names = [f"{SESSION_PREFIX}evac{i}" for i in range(3)]
    pool = f"{SESSION_PREFIX}plcshared"
    try:
        shared = run_cli("pool", "create", pool, "--type", "dir", "--target", h2.images_dir)
        assert shared.code == 0, shared.stderr
        for name in names:
            created = h2.run_cli(*_create_args(tiny_guest, name, h2.images_dir))
            assert created.code == 0, created.stderr
        for name in names:
            started = h2.run_cli("vm", "start", name)
            assert started.code == 0, started.stderr
        with Host(h2.uri) as conn:
            for name in names:
                lifecycle.wait_for_agent(conn, name, BOOT_TIMEOUT)
        marked = h2.run_cli("guest", "exec", names[0], "--", "sh", "-c",
                            "echo ram-survived > /tmp/marker")
        assert marked.code == 0, marked.stderr
        yield names
    finally:
        for name in names:  # moved (or half-way): the machine's; h2's go with h2
            remove_vm(host, name)
        run_cli("pool", "delete", pool)  # its directory goes with h2


def test_evacuate_plans_then_moves_three_running_vms_two_at_a_time(
        bed: Bed, three: list[str], host: Host) -> None:
    """--dry-run first (the plan, nothing changed), then the evacuation (one test: the
    order matters and pytest-randomly shuffles tests)."""
    planned = bed.cli("host", "evacuate", "h2", "--dry-run", "--json")
    assert planned.code == 0, planned.stderr
    report = json.loads(planned.stdout)
    assert report["host"] == "h2" and report["dry_run"] is True
    items = {item["vm"]: item for item in report["vms"]}
    assert set(three) <= set(items)
    for name in three:
        assert items[name]["target"] == "local", items[name]
        assert items[name]["status"] == "planned", items[name]["blockers"]
        assert items[name]["reason"].startswith("the only host that fits: ")
        assert items[name]["hosts"][0].startswith("local: fits: ")
    text = bed.cli("host", "evacuate", "h2", "--dry-run")
    assert text.code == 0, text.stderr
    for name in three:
        assert f"plan: {name} -> local: planned (the only host that fits: " in text.stdout
    assert "plan of host 'h2':" in text.stdout
    # Nothing moved.
    assert set(three) <= set(_virsh_names(bed.h2.uri))
    assert not set(three) & {d.name for d in host.all_domains()}

    # The evacuation as an operator sees it: the plan first, a line per VM moved.
    moved = bed.cli("host", "evacuate", "h2", "--parallel", "2", timeout=EVACUATE_TIMEOUT)
    assert moved.code == 0, (moved.stdout, moved.stderr, bed.h2.log_tail())
    lines = moved.stdout.splitlines()
    for name in three:
        plan = lines.index(next(ln for ln in lines if ln.startswith(f"plan: {name} -> ")))
        done = lines.index(next(ln for ln in lines
                                if ln.startswith(f"  {name} -> local: moved in ")))
        assert plan < done, lines
    assert lines[-1] == "evacuation of host 'h2': 3 moved", lines
    running_here = {d.name for d in host.all_domains() if d.is_active()}
    assert set(three) <= running_here
    assert not set(three) & set(_virsh_names(bed.h2.uri, "--all"))
    read = run_cli("guest", "exec", three[0], "--", "cat", "/tmp/marker")
    assert read.code == 0 and read.stdout.strip() == "ram-survived", read
    # Nothing left to move: a second evacuation plans nothing and succeeds.
    again = bed.cli("host", "evacuate", "h2")
    assert again.code == 0, again.stderr
    assert "no VM runs on host 'h2'" in again.stdout
