"""An iscsi-direct pool against a local ``tgt`` target (tgtd on 127.0.0.1 only, a free
port, one LUN backed by a file): its LUN is the disk a tiny guest boots with; the guest
writes bytes to it through ``guest exec`` and the host reads them back from the LUN's
backing file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmops.host import pools as host_pools
from kvmops.host.connection import Host
from kvmops.testing import tgt
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.test_pools import remove_pool

MIB = 1024 * 1024
INITIATOR = "iqn.2024-01.org.kvmops:initiator"
MARK = b"KVMOPS-ISCSI-" + SESSION_PREFIX.encode()
MARK_SECTOR = 2048  # 1 MiB into the LUN

pytestmark = pytest.mark.skipif(shutil.which("tgtd") is None,
                                reason="tgt is not installed (make setup installs it)")


@pytest.fixture(scope="module")
def target(images_dir: Path) -> Iterator[tgt.Target]:
    """A tgtd on 127.0.0.1 with one 64 MiB LUN; stopped and its file removed at the end,
    even on failure."""
    backing = images_dir / f"{SESSION_PREFIX}lun1.img"
    iqn = f"iqn.2024-01.org.kvmops:{SESSION_PREFIX.rstrip('-')}"
    made = tgt.start_target(iqn, backing, 64 * MIB)
    try:
        yield made
    finally:
        tgt.stop_target(made)
        backing.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def pool(target: tgt.Target, host: Host) -> Iterator[str]:
    name = f"{SESSION_PREFIX}iscsi"
    try:
        yield name
    finally:
        remove_pool(host, name)


def _json(*args: str) -> object:
    result = run_cli(*args, "--json")
    assert result.code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def test_iscsi_direct_lun_is_a_disk_a_vm_boots_with_and_writes_to(
        target: tgt.Target, pool: str, vm_factory: Callable[..., str], host: Host) -> None:
    created = _json("pool", "create", pool, "--type", "iscsi-direct", "--host", "127.0.0.1",
                    "--port", str(target.port), "--target-iqn", target.iqn,
                    "--initiator-iqn", INITIATOR)
    assert isinstance(created, dict)
    assert (created["type"], created["active"], created["host"], created["port"],
            created["target_iqn"], created["initiator_iqn"]) == (
        "iscsi-direct", True, "127.0.0.1", target.port, target.iqn, INITIATOR)
    vols = _json("volume", "list", pool)
    assert isinstance(vols, list)
    lun = {v["name"]: v for v in vols}[target.lun_volume]
    assert 63 * MIB < int(lun["capacity"]) <= 64 * MIB  # tgt's LUN over the 64 MiB file
    # The LUNs are the target's: kvmops cannot make one.
    assert_one_line_error(run_cli("volume", "create", pool, "new", "--size", "8M",
                                  "--format", "raw"), 6, "iscsi-direct", "LUNs")
    assert_one_line_error(run_cli("volume", "download", pool, target.lun_volume,
                                  str(target.backing.with_suffix(".copy"))), 6,
                          f"downloading volume '{target.lun_volume}'")  # libvirt has none
    assert not target.backing.with_suffix(".copy").exists()
    assert_one_line_error(run_cli("vm", "create", f"{SESSION_PREFIX}nolun", "--memory",
                                  "256M", "--disk", f"pool={pool},size=8M"), 6, "LUNs")
    # A tiny guest boots with the LUN as its disk (QEMU's user-space initiator).
    vm = vm_factory(disk=f"pool={pool},volume={target.lun_volume}", start=True)
    xml = run_cli("vm", "dumpxml", vm).stdout
    assert f"<source pool='{pool}' volume='{target.lun_volume}'" in xml
    vols = _json("volume", "list", pool)
    assert isinstance(vols, list)
    assert {v["name"]: v["used_by"] for v in vols}[target.lun_volume] == [vm]
    script = (f"printf '%s' '{MARK.decode()}' | dd of=/dev/vda bs=512 seek={MARK_SECTOR} "
              "conv=fsync 2>/dev/null && sync && echo written")
    result = run_cli("guest", "exec", vm, "--", "/bin/sh", "-c", script)
    assert result.code == 0 and "written" in result.stdout, (result.stdout, result.stderr)
    with open(target.backing, "rb") as fh:
        fh.seek(MARK_SECTOR * 512)
        assert fh.read(len(MARK)) == MARK  # the guest's bytes, on the target's file
    # The pool is refused while the VM uses its LUN, named in the refusal.
    assert_one_line_error(run_cli("pool", "stop", pool), 5, vm)
    assert_one_line_error(run_cli("pool", "delete", pool), 5, vm)
    run_cli("vm", "destroy", vm)
    undefined = run_cli("vm", "undefine", vm, "--remove-storage")
    assert undefined.code == 0, undefined.stderr
    assert target.backing.exists()  # a LUN is never a VM's file to remove
    assert run_cli("pool", "delete", pool).code == 0
    assert not host_pools.exists(host, pool)
