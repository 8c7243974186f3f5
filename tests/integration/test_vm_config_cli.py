"""``kvmops vm setvcpus`` and ``vm setmem``: the persistent definition changes (read
back with ``vm info`` and libvirt's inactive XML), a running VM is told it gets the
change at its next start, and refusals are one line with a remedy."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import assert_one_line_error, run_cli


def _inactive_xml(name: str) -> str:
    return subprocess.run(["virsh", "dumpxml", "--inactive", name], capture_output=True,
                          text=True, timeout=60, check=True).stdout


def test_setvcpus_and_setmem_change_the_definition(fresh_vm: str) -> None:
    done = run_cli("vm", "setvcpus", fresh_vm, "2")
    assert done.code == 0, done.stderr
    assert f"VM '{fresh_vm}': 2 vCPU(s)" in done.stdout + done.stderr
    done = run_cli("vm", "setmem", fresh_vm, "384", "--json")  # a bare number is MiB
    assert done.code == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["vcpus"], result["memory"], result["applies"]) == (2, 384 * 1024**2, "now")
    info = json.loads(run_cli("vm", "info", fresh_vm, "--json").stdout)
    assert (info["vcpus"], info["memory"]) == (2, 384 * 1024**2)
    xml = _inactive_xml(fresh_vm)
    assert "<memory unit='KiB'>393216</memory>" in xml
    assert "<currentMemory unit='KiB'>393216</currentMemory>" in xml
    # lower again: the maximum comes down with the current value
    assert run_cli("vm", "setvcpus", fresh_vm, "1").code == 0
    assert run_cli("vm", "setmem", fresh_vm, "200M").code == 0
    xml = _inactive_xml(fresh_vm)
    assert ">1</vcpu>" in xml and "<memory unit='KiB'>204800</memory>" in xml


def test_setmem_refusals_are_one_line(fresh_vm: str) -> None:
    assert_one_line_error(run_cli("vm", "setmem", fresh_vm, "4000G"), 2,
                          "more than this host has", "--force")
    assert_one_line_error(run_cli("vm", "setmem", fresh_vm, "8M"), 2, "too small", "16M")
    assert_one_line_error(run_cli("vm", "setvcpus", fresh_vm, "100000"), 2, "at most")
    assert_one_line_error(run_cli("vm", "setvcpus", f"{fresh_vm}-none", "1"), 3,
                          "not found")
    info = json.loads(run_cli("vm", "info", fresh_vm, "--json").stdout)
    assert (info["vcpus"], info["memory"]) == (1, 256 * 1024**2)


def test_running_vm_gets_the_change_at_next_start(running_vm: str) -> None:
    """The shared guest keeps its values (1 vCPU, 256M): the change is a no-op for it,
    and the command says when a running VM sees it."""
    done = run_cli("vm", "setvcpus", running_vm, "1", "--json")
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["applies"] == "next start"
    done = run_cli("vm", "setmem", running_vm, "256M")
    assert done.code == 0, done.stderr
    assert "next start" in done.stdout + done.stderr
    assert json.loads(run_cli("vm", "info", running_vm, "--json").stdout)["state"] == "running"
