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


def main() -> None:
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
    for name in remove_ns_hosts():  # namespaced test libvirtds (tests/integration/nshost.py)
        print(f"removed network namespace {name} and what ran in it")


if __name__ == "__main__":
    main()
