"""fio and sysbench in the tiny guest: from the tools disk, run through the agent.

One booted guest for the module (``tools_vm``): the read-only tools disk mounted by
/init, ``fio``/``sysbench`` found by name by guest-exec, a short fio job on the raw
scratch disk with JSON output, a sysbench cpu run; the read-only image shared by
another VM (``vm disk attach --readonly``), a writable attach of it refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from kvmops.devguest.build import GuestImage
from kvmops.errors import StateError
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.backup_util import guest_sh
from tests.integration.guest_tools import ToolsVm


def _exec(vm: str, *argv: str, timeout: int = 120) -> str:
    result = run_cli("guest", "exec", vm, "--timeout", str(timeout), "--", *argv)
    assert result.code == 0, (argv, result.code, result.stdout, result.stderr)
    return result.stdout


def test_tools_disk_is_mounted_read_only_and_linked_on_path(tools_vm: ToolsVm) -> None:
    mounts = guest_sh(tools_vm.name, "cat /proc/mounts")
    line = next(ln for ln in mounts.splitlines() if " /opt/kvmops-tools " in ln)
    assert line.split()[2] == "ext4" and "ro" in line.split()[3].split(","), line
    links = guest_sh(tools_vm.name, "readlink /usr/bin/fio; readlink /usr/bin/sysbench").split()
    assert links == ["/opt/kvmops-tools/bin/fio", "/opt/kvmops-tools/bin/sysbench"]


def test_fio_and_sysbench_versions(tools_vm: ToolsVm) -> None:
    assert re.fullmatch(r"fio-3\.\d+\S*", _exec(tools_vm.name, "fio", "--version").strip())
    assert re.fullmatch(r"sysbench 1\.\d+\S*",
                        _exec(tools_vm.name, "sysbench", "--version").strip())


def test_fio_json_run_on_the_scratch_disk(tools_vm: ToolsVm) -> None:
    out = _exec(tools_vm.name, "fio", "--name=kvmops", f"--filename={tools_vm.scratch_dev}",
                "--rw=randrw", "--bs=4k", "--size=8M", "--iodepth=4", "--ioengine=libaio",
                "--direct=1", "--runtime=2", "--time_based", "--output-format=json")
    report = json.loads(out)
    job = report["jobs"][0]
    assert job["jobname"] == "kvmops" and job["error"] == 0, job
    assert job["read"]["io_bytes"] > 0 and job["write"]["io_bytes"] > 0
    assert job["read"]["iops"] > 0


def test_sysbench_cpu_run(tools_vm: ToolsVm) -> None:
    out = _exec(tools_vm.name, "sysbench", "cpu", "run", "--time=2")
    match = re.search(r"events per second:\s*([0-9.]+)", out)
    assert match and float(match.group(1)) > 0, out


def test_a_read_only_image_is_shared_a_writable_attach_refused(
        tools_vm: ToolsVm, vm_factory: Callable[..., str], tiny_guest: GuestImage) -> None:
    other = vm_factory()  # shut off: only its definition changes
    refused = run_cli("vm", "disk", "attach", other, "--image", str(tiny_guest.tools),
                      "--format", "raw")
    assert_one_line_error(refused, StateError.exit_code, "in use by running VM(s)", tools_vm.name)
    shared = run_cli("vm", "disk", "attach", other, "--image", str(tiny_guest.tools),
                     "--format", "raw", "--readonly", "--json")
    assert shared.code == 0, shared.stderr
    assert json.loads(shared.stdout)["readonly"] is True
