"""The doctor's libvirt side: does libvirtd answer within a deadline, does a guest really
run under KVM (and under TCG), and what managed-save images the VMs have.

A libvirtd that is stopped or wedged accepts the connection and then never answers, so
every call here that could wait runs in a daemon thread of its own and is given up at
its deadline (a connection that comes back late is closed by that thread).

The guest probe is a transient domain (``kvmops-doctor-probe-PID-KIND``) that boots a
Linux kernel with no root file system, its serial port written to a file: the guest runs
when the kernel's first line (``Linux version``) shows there. Under nested
virtualisation KVM can hang before that, so the probe is destroyed at its deadline. It is
started with ``AUTODESTROY``: if kvmops dies mid-probe, libvirtd removes it as the
connection closes; the serial file is removed in any case.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from xml.sax.saxutils import escape, quoteattr

import libvirt

from kvmops.errors import HostUnavailableError, KvmopsError
from kvmops.host.connection import Host, call

T = TypeVar("T")

PROBE_PREFIX = "kvmops-doctor-probe-"
PROBE_MARK = "Linux version"
PROBE_MEMORY_MIB = 128  # a Debian kernel does not get to its first line with 64
_POLL_S = 0.2


class Late(Exception):
    """The call did not return within its deadline (its thread goes on)."""


def within(deadline_s: float, fn: Callable[[], T],
           late: Callable[[T], None] | None = None) -> T:
    """``fn()`` in a daemon thread, its result or its exception; :class:`Late` when it
    has not returned after ``deadline_s`` (then ``late(result)`` is called if it ever
    returns, e.g. to close a connection nobody will use)."""
    box: dict[str, object] = {}
    lock = threading.Lock()
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the waiting thread
            box["error"] = err
        with lock:
            done.set()
            given_up = "given_up" in box
        if given_up and "value" in box and late is not None:
            with contextlib.suppress(Exception):
                late(box["value"])  # type: ignore[arg-type]

    threading.Thread(target=run, name="kvmops-doctor-call", daemon=True).start()
    done.wait(deadline_s)
    with lock:
        if not done.is_set():
            box["given_up"] = True
            raise Late(f"no answer within {deadline_s:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


@dataclass(frozen=True)
class Answer:
    """What libvirtd said within the deadline: the open connection and its versions,
    or why there is none (``timed_out``: it accepted and then said nothing)."""

    host: Host | None
    libvirt_version: int = 0
    qemu_version: int = 0
    error: KvmopsError | None = None
    timed_out: bool = False


def answer_within(deadline_s: float, uri: str | None = None, host: Host | None = None,
                  *, qemu_deadline_s: float = 60.0) -> Answer:
    """Open ``uri`` (or use ``host``) and read libvirt's version within ``deadline_s``
    (the daemon answers that itself); then QEMU's, which a fresh libvirtd answers only
    after probing QEMU's capabilities (seconds), within ``qemu_deadline_s`` (0 when
    not)."""
    def ask() -> tuple[Host, int]:
        opened = host
        if opened is None:
            from kvmops.host.remote import open_remote

            opened = open_remote(uri) if uri else Host(None)
        try:
            return opened, opened.libvirt_version()
        except BaseException:
            if host is None:
                opened.close()
            raise

    def close_late(value: tuple[Host, int]) -> None:
        if host is None:
            value[0].close()

    try:
        opened, lib = within(deadline_s, ask, close_late)
    except Late:
        return Answer(host=None, timed_out=True)
    except KvmopsError as err:
        return Answer(host=None, error=err)
    except libvirt.libvirtError as err:
        return Answer(host=None, error=HostUnavailableError(
            (err.get_error_message() or str(err)).strip()))
    qemu = 0
    with contextlib.suppress(Late, KvmopsError, libvirt.libvirtError):
        qemu = within(qemu_deadline_s, opened.qemu_version)
    return Answer(host=opened, libvirt_version=lib, qemu_version=qemu)


# ------------------------------------------------------------------ guest probe
@dataclass(frozen=True)
class GuestProbe:
    """One probe guest: did its kernel print its first line, and how long it took or
    why not."""

    kind: str  # libvirt's domain type: kvm or qemu (TCG)
    ran: bool
    detail: str
    seconds: float = 0.0


def probe_name(kind: str) -> str:
    return f"{PROBE_PREFIX}{os.getpid()}-{kind}"


def probe_xml(name: str, kind: str, kernel: Path, serial_log: Path) -> str:
    return f"""<domain type={quoteattr(kind)}>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{PROBE_MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{escape(str(kernel))}</kernel>
    <cmdline>console=ttyS0 panic=-1</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path={quoteattr(str(serial_log))}/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def probe_guests(host: Host, kernel: Path, deadlines: Mapping[str, float], log_dir: Path
                 ) -> dict[str, GuestProbe]:
    """Start one probe guest per kind in ``deadlines`` (kvm, qemu) at once and wait for
    each kernel's first line until that kind's deadline; every probe is destroyed and
    its serial file removed before this returns."""
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove_stale_logs(log_dir)
    started: dict[str, tuple[libvirt.virDomain, Path, float]] = {}
    results: dict[str, GuestProbe] = {}
    try:
        for kind in deadlines:
            name = probe_name(kind)
            log = log_dir / f"{name}.log"
            log.unlink(missing_ok=True)
            begin = time.monotonic()
            try:
                dom = call(f"starting the {kind} probe guest", host.conn.createXML,
                           probe_xml(name, kind, kernel, log),
                           libvirt.VIR_DOMAIN_START_AUTODESTROY)
            except KvmopsError as err:
                results[kind] = GuestProbe(kind, False, f"did not start: {err.message}")
                log.unlink(missing_ok=True)
                continue
            started[kind] = (dom, log, begin)
        waiting = dict(started)
        while waiting:
            for kind, (dom, log, begin) in list(waiting.items()):
                spent = time.monotonic() - begin
                if PROBE_MARK in _read(log):
                    results[kind] = GuestProbe(kind, True, "its kernel printed its first "
                                               f"line after {spent:.1f} s", spent)
                elif not _alive(dom):
                    results[kind] = GuestProbe(kind, False, "it stopped before its kernel "
                                               "printed anything", spent)
                elif spent >= deadlines[kind]:
                    results[kind] = GuestProbe(kind, False, "its kernel printed nothing "
                                               f"within {deadlines[kind]:g} s", spent)
                else:
                    continue
                del waiting[kind]
                _destroy(dom)
            if waiting:
                time.sleep(_POLL_S)
    finally:
        for dom, log, _begin in started.values():
            _destroy(dom)
            log.unlink(missing_ok=True)
    return results


def remove_stale_logs(log_dir: Path) -> None:
    """Serial files of probes whose kvmops process is gone (killed mid-probe)."""
    for log in log_dir.glob(f"{PROBE_PREFIX}*.log"):
        pid = log.name.removeprefix(PROBE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log.unlink(missing_ok=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _alive(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False  # transient and gone: destroyed by on_reboot/on_crash


def _destroy(dom: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        dom.destroy()


def probe_domains(host: Host) -> list[str]:
    """Probe guests that exist on ``host`` now (none, unless a probe is running)."""
    return [d.name for d in host.all_domains() if d.name.startswith(PROBE_PREFIX)]


# ------------------------------------------------------------------ managed save
@dataclass(frozen=True)
class ManagedSave:
    """A VM with a managed-save image, and what is wrong with it (None: nothing seen)."""

    vm: str
    problem: str | None = None


def managed_saves(host: Host) -> tuple[list[ManagedSave], set[str]]:
    """The VMs with a managed-save image (each image's header read through libvirt: a
    corrupt one cannot be read), and the names of all defined VMs."""
    found: list[ManagedSave] = []
    names: set[str] = set()
    for domain in host.all_domains():
        with contextlib.suppress(KvmopsError):  # went away while we looked
            names.add(domain.name)
            if not domain.has_managed_save():
                continue
            try:
                call(f"reading the managed-save image of VM '{domain.name}'",
                     domain.raw.managedSaveGetXMLDesc, 0)
            except KvmopsError as err:
                found.append(ManagedSave(domain.name, f"its header cannot be read "
                                         f"({err.message})"))
                continue
            found.append(ManagedSave(domain.name))
    return found, names
