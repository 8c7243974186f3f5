"""Fixtures for tests that run real VMs on the real libvirtd.

Everything created carries SESSION_PREFIX and is removed at the end, even when
tests fail. One booted tiny guest is shared by the tests that leave its state
as they found it.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from kvmops.config import settings
from kvmops.devguest.build import GuestImage, build_guest
from kvmops.host.connection import Host
from kvmops.vm import lifecycle
from tests.conftest import SESSION_PREFIX, TEST_BACKUPS, TEST_IMAGES, run_cli
from tests.integration.guest_tools import ToolsVm, boot_tools_vm
from tests.integration.nshost import NsHost, ns_host

_counter = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_guest() -> GuestImage:
    """The tiny guest, built once and cached across sessions."""
    return build_guest(settings().cache_dir / "guest")


@pytest.fixture(scope="session")
def images_dir() -> Iterator[Path]:
    """A directory for this session's disk images, reachable by libvirt-qemu."""
    yield from _session_dir(TEST_IMAGES)


@pytest.fixture(scope="session")
def backups_dir() -> Iterator[Path]:
    """A directory for this session's backup repositories (apart from the images)."""
    yield from _session_dir(TEST_BACKUPS)


def _session_dir(base: Path) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    path = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=base))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# Every conftest importing ``host`` gets its own session copy: a test that restarts
# libvirtd reconnects them all (reconnect_session_hosts).
SESSION_HOSTS: list[Host] = []


@pytest.fixture(scope="session")
def host() -> Iterator[Host]:
    with Host() as conn:
        SESSION_HOSTS.append(conn)
        yield conn
        SESSION_HOSTS.remove(conn)


def reconnect_session_hosts() -> None:
    """Open the session's libvirt connections again (after libvirtd restarted)."""
    for conn in SESSION_HOSTS:
        conn.reconnect()


def remove_vm(host: Host, name: str) -> None:
    """Force a test VM off and remove it with its storage; never fails."""
    with contextlib.suppress(Exception):
        domain = host.conn.lookupByName(name)
        with contextlib.suppress(Exception):
            domain.destroy()
        with contextlib.suppress(Exception):
            lifecycle.undefine(host, name, remove_storage=True)


# VMs created by tests and module fixtures, in creation order; each is removed when the
# test (or module) that created it ends, so idle guests do not pile up on 2 cores.
_scoped_vms: list[str] = []
_session_vms: list[str] = []


@pytest.fixture(scope="session")
def vm_factory(host: Host, tiny_guest: GuestImage, images_dir: Path
               ) -> Iterator[Callable[..., str]]:
    """Create tiny-guest VMs with the CLI.

    A VM lives as long as the test or module fixture that created it (``keep`` keeps it
    for the session); everything is removed at session end even when tests fail.
    """

    def create(*extra: str, start: bool = False, disk: str = "size=64M",
               keep: bool = False) -> str:
        name = f"{SESSION_PREFIX}{next(_counter)}"
        (_session_vms if keep else _scoped_vms).append(name)
        result = run_cli(
            "vm", "create", name, "--memory", "256M", "--vcpus", "1",
            "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
            "--cmdline", "console=ttyS0", "--disk", disk, "--images-dir", str(images_dir),
            *extra,
        )
        assert result.code == 0, result.stderr
        if start:
            result = run_cli("vm", "start", name, "--wait-agent", "120")
            assert result.code == 0, result.stderr
        return name

    yield create
    for name in [*_scoped_vms, *_session_vms]:
        remove_vm(host, name)


def _remove_since(host: Host, mark: int) -> None:
    for name in _scoped_vms[mark:]:
        remove_vm(host, name)
    del _scoped_vms[mark:]


@pytest.fixture(scope="module", autouse=True)
def _module_vms(host: Host) -> Iterator[None]:
    mark = len(_scoped_vms)
    yield
    _remove_since(host, mark)


@pytest.fixture(autouse=True)
def _test_vms(host: Host) -> Iterator[None]:
    mark = len(_scoped_vms)
    yield
    _remove_since(host, mark)


@pytest.fixture
def fresh_vm(vm_factory: Callable[..., str], host: Host) -> Iterator[str]:
    """A new shut-off VM for one test, removed after it."""
    name = vm_factory()
    yield name
    remove_vm(host, name)


@pytest.fixture(scope="session")
def running_vm(vm_factory: Callable[..., str]) -> str:
    """One booted tiny guest with an answering agent, shared by the session.

    Tests using it must leave it running.
    """
    return vm_factory(start=True, keep=True)


@pytest.fixture
def backup_guest(running_vm: str, host: Host) -> Iterator[str]:
    """The session's booted guest for a test that backs it up (no boot of its own): the
    checkpoints the test made are deleted after it, so the guest is left as found."""
    before = {c.getName() for c in host.domain(running_vm).listAllCheckpoints(0)}
    yield running_vm
    domain = host.domain(running_vm)
    for checkpoint in reversed(domain.listAllCheckpoints(
            libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)):
        if checkpoint.getName() not in before:
            with contextlib.suppress(libvirt.libvirtError):
                checkpoint.delete(0)


@pytest.fixture(scope="module")
def tools_vm(vm_factory: Callable[..., str], tiny_guest: GuestImage, images_dir: Path
             ) -> Iterator[ToolsVm]:
    """A booted tiny guest with fio and sysbench on its PATH (the tools disk attached
    read-only) and a raw scratch disk (tests/integration/guest_tools.py); one per module."""
    yield from boot_tools_vm(vm_factory, tiny_guest, images_dir)


@pytest.fixture(scope="session")
def nshost() -> Iterator[NsHost]:
    """A second libvirtd in test network and mount namespaces, with an upstream peer
    namespace (tests/integration/nshost.py); started when a test first asks for it,
    removed with everything on it at session end, even when tests fail."""
    with ns_host(f"{SESSION_PREFIX}nsh") as started:
        yield started


@pytest.fixture
def repo_dir(backups_dir: Path) -> Iterator[Path]:
    """A fresh backup repository that QEMU (libvirt-qemu) can write into."""
    path = backups_dir / f"repo-{next(_counter)}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
