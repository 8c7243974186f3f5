"""Remove what test runs left behind: VMs named ``kvmops-test-*``, their disks and
repositories, libvirt networks named ``kvmops-test-*`` (after the VMs that used them),
the host files the security tests guard, the backup job records of killed test
backups, and namespaced test libvirtds with their namespaces (kvmops.testing.netns).

``make clean-test`` runs this after an interrupted test session; it never
touches a VM or network without the test prefix.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from kvmops.backup.jobs import stale_jobs
from kvmops.config import settings
from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from kvmops.testing.netns import remove_ns_hosts
from kvmops.vm import lifecycle

TEST_PREFIX = "kvmops-test-"
TEST_DIRS = (Path("/var/lib/kvmops/test-images"), Path("/var/lib/kvmops/test-backups"))


def remove_test_networks(host: Host, prefix: str = TEST_PREFIX) -> list[str]:
    """Stop (when active) and undefine every libvirt network whose name starts with
    ``prefix``; return their names. A network that cannot be removed is skipped (said
    on stderr), never a reason to stop cleaning."""
    import sys

    from kvmops.errors import KvmopsError

    if not prefix.startswith(TEST_PREFIX):
        raise ValueError(f"refusing to remove networks outside the test prefix: {prefix!r}")
    removed = []
    for state in host_networks.all_networks(host):
        if not state.name.startswith(prefix):
            continue
        try:
            if state.active:
                host_networks.stop(host, state.name)
            if state.persistent:
                host_networks.undefine(host, state.name)
        except KvmopsError as err:
            print(f"could not remove network {state.name}: {err}", file=sys.stderr)
            continue
        removed.append(state.name)
    return removed


#: Test bridges (Open vSwitch's as well) are named kvt... (interface names: 15 characters).
TEST_BRIDGE_PREFIX = "kvt"


def remove_test_ovs_bridges(prefix: str = TEST_BRIDGE_PREFIX,
                            owner_prefix: str = TEST_PREFIX) -> list[str]:
    """Delete the Open vSwitch bridges tests made: named ``prefix...`` or created by
    kvmops for a network named ``owner_prefix...``; return their names. Nothing when
    Open vSwitch is absent."""
    from kvmops.errors import KvmopsError
    from kvmops.host import ovs

    if not prefix.startswith(TEST_BRIDGE_PREFIX) or not owner_prefix.startswith(TEST_PREFIX):
        raise ValueError(f"refusing to remove bridges outside the test prefixes: {prefix!r}, "
                         f"{owner_prefix!r}")
    removed = []
    try:
        for name in ovs.bridges():
            owner = ovs.bridge_owner(name) or ""
            if name.startswith(prefix) or owner.startswith(owner_prefix):
                ovs.delete_bridge(name)
                removed.append(name)
    except KvmopsError:
        pass  # no Open vSwitch here (or not running): nothing of ours to remove
    return removed


#: Network namespaces of the bridge-over-uplink tests (tests/integration/test_bridge_uplink.py)
#: are named PREFIX...-upl-a/-upl-b.
UPLINK_NS_MARK = "-upl-"
#: The throughput sink's namespace (tests/integration/test_nic_throughput.py): PREFIX...-thr-.
THROUGHPUT_NS_MARK = "-thr-"


def remove_uplink_namespaces(prefix: str = TEST_PREFIX) -> list[str]:
    """Delete the network namespaces the bridge-over-uplink tests made (``prefix...-upl-``)
    and the throughput sink's (``prefix...-thr-``),
    after killing what still runs inside them (a ``kvmops net create`` waiting for its
    confirmation); return their names. Deleting a namespace removes its veths and bridges."""
    import json
    import os
    import signal
    import subprocess

    if not prefix.startswith(TEST_PREFIX):
        raise ValueError(f"refusing to remove namespaces outside the test prefix: {prefix!r}")
    listed = subprocess.run(["ip", "-json", "netns", "list"], capture_output=True, text=True,
                            timeout=30, check=False)
    names = [str(item.get("name")) for item in json.loads(listed.stdout or "[]")
             if isinstance(item, dict)] if listed.returncode == 0 else []
    removed = []
    for name in names:
        if not name.startswith(prefix) or not (UPLINK_NS_MARK in name
                                               or THROUGHPUT_NS_MARK in name):
            continue
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                              timeout=30, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                          check=False).returncode == 0:
            removed.append(name)
    return removed


def remove_test_pools(host: Host, prefix: str = TEST_PREFIX) -> list[str]:
    """Stop (an fs pool: unmount) and undefine every storage pool named ``prefix...``;
    their names. Their files go with the test directories below."""
    from kvmops.errors import KvmopsError
    from kvmops.host import pools as host_pools

    if not prefix.startswith(TEST_PREFIX):
        raise ValueError(f"refusing to remove pools outside the test prefix: {prefix!r}")
    removed = []
    for state in host_pools.all_pools(host):
        if not state.name.startswith(prefix):
            continue
        with contextlib.suppress(KvmopsError):
            if state.active:
                host_pools.stop(host, state.name)
        with contextlib.suppress(KvmopsError):
            if state.persistent:
                host_pools.undefine(host, state.name)
        removed.append(state.name)
    return removed


def main() -> None:
    from kvmops.testing.tgt import detach_test_loop_devices, remove_test_targets

    with Host() as host:
        for domain in host.all_domains():
            name = domain.name
            if not name.startswith(TEST_PREFIX):
                continue
            with contextlib.suppress(Exception):
                domain.destroy()
            with contextlib.suppress(Exception):
                lifecycle.undefine(host, name, remove_storage=True)
            print(f"removed VM {name}")
        for name in remove_test_networks(host):
            print(f"removed network {name}")
        for name in remove_test_pools(host):  # after the VMs; before their tgtd and loops
            print(f"removed storage pool {name}")
    for iqn in remove_test_targets():
        print(f"stopped test iSCSI target {iqn}")
    for device in detach_test_loop_devices(TEST_PREFIX):
        print(f"detached loop device {device}")
    for name in remove_test_ovs_bridges():
        print(f"removed Open vSwitch bridge {name}")
    for record in stale_jobs():  # backups of test VMs killed before their clean-up
        if record.vm.startswith(TEST_PREFIX):
            (settings().state_dir / "jobs" / f"{record.vm}.json").unlink(missing_ok=True)
            print(f"removed stale backup job record of {record.vm}")
    for base in TEST_DIRS:
        if base.is_dir():
            for child in base.glob(f"{TEST_PREFIX}*"):
                shutil.rmtree(child, ignore_errors=True)
                print(f"removed {child}")
    for secret in Path("/tmp").glob(f"{TEST_PREFIX}secret-*"):
        secret.unlink(missing_ok=True)
    for name in remove_uplink_namespaces():
        print(f"removed network namespace {name}")
    for name in remove_ns_hosts():  # namespaced test libvirtds (tests/integration/nshost.py)
        print(f"removed network namespace {name} and what ran in it")


if __name__ == "__main__":
    main()
