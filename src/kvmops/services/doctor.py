"""``kvmops host doctor``: is this host able to run, back up and snapshot VMs safely?

Every check reads, none changes anything. A check says ``ok``, ``warn`` (works,
but worse than it could) or ``fail`` (something kvmops needs is broken), with
one line of detail and, where the operator can act, a hint. The checks that
need libvirt are skipped with a failure of their own when libvirtd cannot be
reached, so the doctor still reports everything else.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from kvmops.config import settings
from kvmops.errors import KvmopsError
from kvmops.host.accel import Accelerator, probe
from kvmops.host.connection import Host, version_text
from kvmops.host.errors import call
from kvmops.sizes import format_size
from kvmops.vm.domxml import has_agent_channel

GIB = 1024**3
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
#: libvirt's backup API with checkpoints (push mode) is usable from this version on.
LIBVIRT_BACKUP_SINCE = 7_002_000
MAX_NAMES = 5  # VM names listed in one check's detail


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class Check(BaseModel):
    name: str
    status: Status
    detail: str
    hint: str | None = None


class DoctorReport(BaseModel):
    uri: str
    checks: list[Check]
    ok: bool  # no check failed (warnings allowed)
    failed: int
    warnings: int
    host: str | None = None  # the kvmops host name ("local": this machine) when known
    checked_at: datetime | None = None


def _check(name: str, status: Status, detail: str, hint: str | None = None) -> Check:
    return Check(name=name, status=status, detail=detail, hint=hint)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")


# ------------------------------------------------------------------ pure rules
def space_status(free: int, total: int) -> Status:
    """Free space of a directory that holds images or backups."""
    if free < 1 * GIB:
        return Status.FAIL
    if free < 5 * GIB or (total and free < total // 10):
        return Status.WARN
    return Status.OK


def memory_status(committed: int, total: int, available: int | None) -> Status:
    """Memory of the running VMs against the host's (all in bytes)."""
    if total and committed > total:
        return Status.WARN  # overcommitted: the host swaps or the OOM killer picks a VM
    if available is not None and total and available < total // 20:
        return Status.WARN
    return Status.OK


def summarize(uri: str, checks: Iterable[Check]) -> DoctorReport:
    items = list(checks)
    failed = sum(1 for c in items if c.status is Status.FAIL)
    warnings = sum(1 for c in items if c.status is Status.WARN)
    return DoctorReport(uri=uri, checks=items, ok=failed == 0, failed=failed,
                        warnings=warnings)


# ------------------------------------------------------------------ host checks
def check_virtlogd(path: Path = VIRTLOGD_SOCKET) -> Check:
    hint = "start it with 'virtlogd -d' (or 'make setup'); libvirt cannot start VMs without it"
    if not path.exists():
        return _check("virtlogd", Status.FAIL, f"no socket at {path}", hint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError as err:
            return _check("virtlogd", Status.FAIL, f"{path} does not answer ({err.strerror})",
                          hint)
    return _check("virtlogd", Status.OK, f"listening on {path}")


def check_tool(name: str, program: str) -> Check:
    path = shutil.which(program)
    if path is None:
        return _check(name, Status.FAIL, f"{program} not found on PATH",
                      "install Debian's qemu-system-x86 and qemu-utils (or run 'make setup')")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        return _check(name, Status.FAIL, f"{path} does not run: {err}")
    first = (out.strip().splitlines() or ["version unknown"])[0]
    return _check(name, Status.OK, f"{path}: {first}")


def check_accelerator() -> Check:
    result = probe()
    if result.accelerator is Accelerator.KVM:
        return _check("accelerator", Status.OK, f"KVM ({result.reason})")
    device = "/dev/kvm present" if result.kvm_device else "no usable /dev/kvm"
    return _check("accelerator", Status.WARN,
                  f"guests run under TCG emulation, many times slower ({device}; "
                  f"{result.reason})",
                  "enable VT-x/AMD-V (or nested virtualisation) for this host, then "
                  "'kvmops host info --reprobe'")


def check_directory(name: str, directory: Path, *, images: bool) -> Check:
    existing = next((p for p in [directory, *directory.parents] if p.exists()), Path("/"))
    if not existing.is_dir():
        return _check(name, Status.FAIL, f"{existing} is not a directory",
                      f"remove it or point kvmops elsewhere ({_env_for(name)})")
    if not os.access(existing, os.W_OK | os.X_OK):
        return _check(name, Status.FAIL, f"{existing} is not writable",
                      f"fix its permissions or point kvmops elsewhere ({_env_for(name)})")
    if images:
        from kvmops.vm.lifecycle import ensure_qemu_can_reach

        try:
            ensure_qemu_can_reach(directory)
        except KvmopsError as err:
            return _check(name, Status.FAIL, err.message, err.hint)
    usage = shutil.disk_usage(existing)
    status = space_status(usage.free, usage.total)
    where = directory if existing == directory else f"{directory} (created on first use)"
    detail = f"{where}: {format_size(usage.free)} free of {format_size(usage.total)}"
    hint = None if status is Status.OK else "free space there or move it to a larger file system"
    return _check(name, status, detail, hint)


def check_path_policy() -> Check:
    """The allowed directories keep away from the state directory, which only root reads."""
    from kvmops.errors import ConfigError
    from kvmops.paths import policy

    try:
        rules = policy()
    except ConfigError as err:
        return _check("path-policy", Status.FAIL, err.message, err.hint)
    state = rules.state_dir
    if state.exists() and state.stat().st_mode & 0o077:
        return _check("path-policy", Status.WARN,
                      f"the state directory {state} is readable by other users "
                      f"(mode {state.stat().st_mode & 0o777:o}): it holds the database and "
                      "the manifest keys", f"run 'chmod 700 {state}'")
    return _check("path-policy", Status.OK,
                  f"images in {', '.join(map(str, rules.image_dirs))}; repositories in "
                  f"{', '.join(map(str, rules.backup_dirs))}; state apart in {state}")


def _env_for(name: str) -> str:
    return {"images-dir": "KVMOPS_IMAGES_DIR", "state-dir": "KVMOPS_STATE_DIR"}.get(
        name, "see 'kvmops host info'")


def check_backup_jobs() -> Check:
    from kvmops.backup import jobs

    running = jobs.running_jobs()
    stale = jobs.stale_jobs()
    if stale:
        return _check("backup-jobs", Status.WARN,
                      f"backup(s) of {_names([j.vm for j in stale])} ended without clean-up "
                      "(their process is gone)",
                      "the next 'kvmops backup create' of each VM cleans up and says so")
    if running:
        return _check("backup-jobs", Status.OK,
                      f"{len(running)} running: {_names([j.vm for j in running])}")
    return _check("backup-jobs", Status.OK, "none running, none left over")


def check_bridge_rollbacks() -> Check:
    """A ``net create --uplink`` that neither finished nor rolled back (kvmops and its
    guard both killed) leaves a rollback record: the uplink may still be half moved."""
    from kvmops.services import bridges

    left = bridges.pending()
    if left:
        return _check("bridge-rollbacks", Status.WARN,
                      f"bridge(s) {_names(left)}: an unfinished 'net create --uplink' left "
                      f"a rollback record in {bridges.record_dir()}",
                      "restore with 'kvmops net rollback BRIDGE' (in the network namespace "
                      "where it ran)")
    return _check("bridge-rollbacks", Status.OK, "no unfinished bridge change")


def check_openvswitch() -> Check:
    """Open vSwitch (``ovs`` networks, per-vNIC VLANs): optional, so at worst a warning;
    where it runs, which datapath bridges get."""
    from kvmops.host import ovs

    name, start = "openvswitch", ("start ovsdb-server and ovs-vswitchd ('make setup'; see "
                                  "docs/concepts/networks.md)")
    if shutil.which("ovs-vsctl") is None:
        return _check(name, Status.WARN, "not installed: no --mode ovs networks, no VLAN "
                      "tags on vNICs", "install openvswitch-switch ('make setup')")
    try:
        count = len(ovs.bridges())
    except KvmopsError as err:
        return _check(name, Status.WARN, f"its database does not answer ({err.message})",
                      start)
    if not ovs.vswitchd_answers():
        return _check(name, Status.WARN, "ovs-vswitchd does not answer: Open vSwitch "
                      "bridges pass no traffic", start)
    datapath = ("kernel (system)" if ovs.kernel_datapath() else
                "user space (netdev) only: the kernel has no openvswitch module")
    return _check(name, Status.OK, f"running, {count} bridge(s); datapath: {datapath}")


def check_io_limits(root: Path = Path("/sys/fs/cgroup")) -> Check:
    if (root / "blkio").is_dir() or "io" in _read(root / "cgroup.controllers").split():
        return _check("io-limits", Status.OK, "the block I/O cgroup controller is available")
    return _check("io-limits", Status.WARN,
                  "no blkio/io cgroup controller: per-VM disk I/O limits cannot be applied",
                  "mount the cgroup blkio (v1) or io (v2) controller")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    for line in _read(path).splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


# ------------------------------------------------------------------ libvirt checks
def check_libvirt_features(host: Host) -> list[Check]:
    from kvmops.snapshot.support import support_for

    version = host.libvirt_version()
    checks = []
    if version >= LIBVIRT_BACKUP_SINCE:
        checks.append(_check("backup-api", Status.OK,
                             f"libvirt {version_text(version)} has the backup API with "
                             "checkpoints: online full and incremental backups"))
    else:
        checks.append(_check("backup-api", Status.WARN,
                             f"libvirt {version_text(version)} has no backup API: VMs it runs "
                             "get offline backups only",
                             "upgrade libvirt to 7.2 or later"))
    support = support_for(version)
    how = ("libvirt" if not support.external_by_kvmops else
           "kvmops (libvirt < 9.9 cannot revert them)")
    checks.append(_check("snapshots", Status.OK,
                         f"internal and external snapshots; external revert/delete by {how}"))
    return checks


def check_vms(host: Host) -> list[Check]:
    total = host.memory_total()
    committed = 0
    without_agent: list[str] = []
    for domain in host.all_domains():
        with contextlib.suppress(KvmopsError):  # went away while we looked
            if not domain.is_active():
                continue
            committed += domain.stats().memory
            if not has_agent_channel(domain.xml()):
                without_agent.append(domain.name)
    available = _meminfo_available()
    status = memory_status(committed, total, available)
    detail = f"running VMs use {format_size(committed)} of {format_size(total)}"
    if available is not None:
        detail += f"; {format_size(available)} available"
    checks = [_check("memory", status, detail,
                     None if status is Status.OK else
                     "stop or shrink VMs, or move some to another host")]
    if without_agent:
        checks.append(_check(
            "guest-agents", Status.WARN,
            f"running without a guest-agent channel: {_names(sorted(without_agent))}; their "
            "backups are crash-consistent and guest operations are unavailable",
            "add the channel (kvmops creates VMs with one) and install qemu-guest-agent"))
    else:
        checks.append(_check("guest-agents", Status.OK,
                             "every running VM has a guest-agent channel"))
    return checks


def run_doctor(uri: str | None = None, *, host: Host | None = None,
               host_name: str | None = None) -> DoctorReport:
    """All checks; ``host`` reuses an open connection (the API), else one is opened.
    With ``host_name`` (a kvmops host name) the report is kept as that host's last."""
    cfg = settings()
    checks: list[Check] = []
    own: Host | None = None
    if host is None:
        try:
            host = own = Host(uri)
        except KvmopsError as err:
            checks.append(_check("libvirtd", Status.FAIL, err.message, err.hint))
    try:
        if host is not None:
            checks.append(_check("libvirtd", Status.OK,
                                 f"libvirt {version_text(host.libvirt_version())} at "
                                 f"{host.uri}, QEMU {version_text(host.qemu_version())}"))
        checks.append(check_virtlogd())
        checks.append(check_tool("qemu", "qemu-system-x86_64"))
        checks.append(check_tool("qemu-img", "qemu-img"))
        checks.append(check_accelerator())
        checks.append(check_directory("images-dir", cfg.images_dir, images=True))
        checks.append(check_directory("state-dir", cfg.state_dir, images=False))
        checks.append(check_path_policy())
        checks.append(check_backup_jobs())
        checks.append(check_bridge_rollbacks())
        checks.append(check_openvswitch())
        checks.append(check_io_limits())
        if host is not None:
            for group in (check_libvirt_features, check_vms):
                checks.extend(_guarded(group, host))
    finally:
        if own is not None:
            own.close()
    report = summarize(host.uri if host else (uri or cfg.uri), checks)
    report.checked_at = datetime.now(UTC)
    if host_name is not None:
        report.host = host_name
        save_report(report, host_name)
    return report


# ------------------------------------------------------------------ the last report
LOCAL = "local"


def _report_path(host_name: str) -> Path:
    from kvmops.services.hosts import validate_name

    return settings().state_dir / "doctor" / f"{validate_name(host_name)}.json"


def save_report(report: DoctorReport, host_name: str) -> None:
    """Keep ``report`` as ``host_name``'s last (atomic: a reader sees the old or the new).
    A state directory that cannot be written loses the memory, never the report."""
    path = _report_path(host_name)
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(report.model_dump_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def last_report(host_name: str | None = None) -> DoctorReport | None:
    """The last report kept for ``host_name`` (``None``: this machine, ``local``);
    ``None`` when the doctor has not run there (or its record is unreadable)."""
    try:
        text = _report_path(host_name or LOCAL).read_text()
        return DoctorReport.model_validate(json.loads(text))
    except (OSError, ValueError, KvmopsError):
        return None


def _guarded(group: Callable[[Host], list[Check]], host: Host) -> list[Check]:
    """A libvirt failure in one group becomes a failed check, not a crashed doctor."""
    name = group.__name__.removeprefix("check_").replace("_", "-")
    try:
        return call(f"checking {name}", group, host)
    except KvmopsError as err:
        return [_check(name, Status.FAIL, err.message)]
