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
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from kvmops.config import Settings, settings
from kvmops.devguest.build import write_atomic
from kvmops.errors import KvmopsError
from kvmops.host.accel import Accelerator, probe
from kvmops.host.connection import Host, version_text
from kvmops.host.doctor import GuestProbe, ManagedSave, managed_saves
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


# ------------------------------------------------------------------ kernel and sysfs
# Each reads under ``root`` (the file system's root: a fake tree in the unit tests).
def _lines(path: Path) -> list[str]:
    return _read(path).splitlines()


def _int_of(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _is_vm(root: Path) -> bool:
    """Is this host itself a guest (the CPU's ``hypervisor`` flag)?"""
    return any(line.startswith("flags") and " hypervisor" in line
               for line in _lines(root / "proc/cpuinfo"))


def check_nested(root: Path = Path("/")) -> Check:
    """Can this host's guests run KVM themselves (kvm_intel/kvm_amd's ``nested``)?"""
    outer = (" This host is itself a VM: its own KVM depends on the outer host's nested "
             "support.") if _is_vm(root) else ""
    for module in ("kvm_intel", "kvm_amd"):
        value = _read(root / f"sys/module/{module}/parameters/nested").strip()
        if not value:
            continue
        if value in ("Y", "1"):
            return _check("nested", Status.OK,
                          f"{module}: nested virtualisation on (guests can run KVM)." + outer)
        return _check("nested", Status.WARN,
                      f"{module}: nested virtualisation off: guests cannot run KVM "
                      "themselves." + outer,
                      f"if guests need it: 'echo \"options {module} nested=1\" > "
                      f"/etc/modprobe.d/kvm-nested.conf', stop the VMs, then "
                      f"'modprobe -r {module} && modprobe {module}'")
    loaded = sorted(p.name for p in (root / "sys/module").glob("kvm*")) if (
        root / "sys/module").is_dir() else []
    return _check("nested", Status.WARN,
                  "no kvm_intel or kvm_amd module loaded"
                  + (f" (kvm modules: {', '.join(loaded)})" if loaded else "")
                  + ": nested virtualisation unknown." + outer,
                  "load kvm_intel or kvm_amd (VT-x/AMD-V enabled in the firmware)")


def iommu_groups(root: Path = Path("/")) -> int:
    try:
        return sum(1 for _ in (root / "sys/kernel/iommu_groups").iterdir())
    except OSError:
        return 0


def check_iommu(root: Path = Path("/")) -> Check:
    groups = iommu_groups(root)
    if groups:
        return _check("iommu", Status.OK,
                      f"{groups} IOMMU group(s): PCI devices and SR-IOV VFs can be passed "
                      "to guests")
    return _check("iommu", Status.WARN,
                  "no IOMMU groups: no PCI passthrough, no SR-IOV VFs in guests",
                  "enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on (or "
                  "amd_iommu=on) iommu=pt")


def _meminfo(root: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in _lines(root / "proc/meminfo"):
        key, _, rest = line.partition(":")
        number = _int_of(rest.split()[0]) if rest.split() else None
        if number is not None:
            values[key] = number
    return values


def check_hugepages(root: Path = Path("/")) -> Check:
    """Huge pages reserved (``HugePages_Total``) and whether anything uses them: reserved
    pages nobody uses are memory the host and THP cannot have."""
    info = _meminfo(root)
    sizes = []
    free = 0
    for directory in sorted((root / "sys/kernel/mm/hugepages").glob("hugepages-*kB")):
        count = _int_of(_read(directory / "nr_hugepages")) or 0
        size_kib = _int_of(directory.name.removeprefix("hugepages-").removesuffix("kB"))
        if count and size_kib:
            sizes.append((count, size_kib))
            free += (_int_of(_read(directory / "free_hugepages")) or 0) * size_kib * 1024
    total = sum(count * size for count, size in sizes) * 1024
    if not total:  # no per-size directories: the default size's in /proc/meminfo
        page = info.get("Hugepagesize", 0) * 1024
        total = info.get("HugePages_Total", 0) * page
        free = info.get("HugePages_Free", 0) * page
    if not total:
        return _check("hugepages", Status.OK,
                      "none reserved: guest memory is normal pages (THP where enabled)")
    listed = ", ".join(f"{count} x {format_size(size * 1024)}" for count, size in sizes)
    detail = (f"{format_size(total)} reserved ({listed or 'default size'}), "
              f"{format_size(free)} free")
    if free >= total:
        return _check("hugepages", Status.WARN, detail + ": none in use, memory taken from "
                      "the host for nothing",
                      "give VMs <memoryBacking><hugepages/> or release them "
                      "('echo 0 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages')")
    return _check("hugepages", Status.OK, detail)


def check_thp(root: Path = Path("/")) -> Check:
    text = _read(root / "sys/kernel/mm/transparent_hugepage/enabled")
    mode = text[text.find("[") + 1:text.find("]")] if "[" in text and "]" in text else ""
    if mode in ("always", "madvise"):
        return _check("thp", Status.OK, f"transparent huge pages: {mode} (QEMU asks for "
                      "them on guest memory)")
    return _check("thp", Status.WARN,
                  f"transparent huge pages: {mode or 'not supported'}: guest memory uses "
                  "4 KiB pages (more TLB misses, slower guests)",
                  "'echo madvise > /sys/kernel/mm/transparent_hugepage/enabled' (and "
                  "transparent_hugepage=madvise on the kernel command line)")


def check_ksm(root: Path = Path("/")) -> Check:
    ksm = root / "sys/kernel/mm/ksm"
    run = _read(ksm / "run").strip()
    if run != "1":
        return _check("ksm", Status.OK, "KSM off: no page merging between guests"
                      if run else "KSM not in this kernel")
    sharing = _int_of(_read(ksm / "pages_sharing")) or 0
    return _check("ksm", Status.WARN,
                  f"KSM on ({format_size(sharing * 4096)} shared): saves memory at ksmd's "
                  "CPU cost, and guests can time each other's merged pages",
                  "'echo 2 > /sys/kernel/mm/ksm/run' unless you overcommit memory on "
                  "purpose (then keep it and watch ksmd's CPU)")


def check_numa_balancing(root: Path = Path("/")) -> Check:
    nodes = len(list((root / "sys/devices/system/node").glob("node[0-9]*")))
    value = _read(root / "proc/sys/kernel/numa_balancing").strip()
    state = {"0": "off", "": "not in this kernel"}.get(value, "on")
    if nodes <= 1:
        return _check("numa-balancing", Status.OK,
                      f"{max(nodes, 1)} NUMA node: nothing to balance (automatic NUMA "
                      f"balancing {state})")
    if state == "on":
        return _check("numa-balancing", Status.OK,
                      f"{nodes} NUMA nodes, automatic NUMA balancing on: unpinned guests' "
                      "memory follows their vCPUs")
    return _check("numa-balancing", Status.WARN,
                  f"{nodes} NUMA nodes, automatic NUMA balancing {state}: unpinned guests "
                  "may run far from their memory",
                  "'sysctl kernel.numa_balancing=1', unless every VM is pinned to a node "
                  "(vCPUs and memory)")


def check_sriov(sysfs: Path | None = None, root: Path = Path("/")) -> Check:
    """SR-IOV capable PFs (under ``KVMOPS_SYSFS_ROOT`` as ``kvmops sriov`` reads them)."""
    from kvmops.host.sriov import sysfs_root
    from kvmops.network.sriov import discover

    pfs = discover(sysfs if sysfs is not None else sysfs_root())
    if not pfs:
        return _check("sriov", Status.OK, "no SR-IOV capable network device")
    listed = _names([f"{pf.name} ({pf.driver or 'no driver'}: {pf.numvfs} of "
                     f"{pf.totalvfs} VFs)" for pf in pfs])
    if not iommu_groups(root):
        return _check("sriov", Status.WARN,
                      f"SR-IOV PFs {listed}, but no IOMMU groups: VFs cannot be given to "
                      "guests", "enable the IOMMU (see the iommu check)")
    return _check("sriov", Status.OK, f"SR-IOV PFs: {listed}")


#: Schedulers advised for disks without seek time (SSD, NVMe) and with (HDD).
FLASH_SCHEDULERS = ("none", "mq-deadline")
SPINNING_SCHEDULERS = ("mq-deadline", "bfq")


def _block_device(path: Path, root: Path) -> Path | None:
    """The sysfs directory (with ``queue/``) of the disk holding ``path``."""
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None:
        return None
    dev = existing.stat().st_dev
    link = root / f"sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    if not link.exists():
        return None
    device = link.resolve()
    for candidate in (device, device.parent):  # a partition's queue is its disk's
        if (candidate / "queue/scheduler").is_file():
            return candidate
    return None


def check_disk_schedulers(dirs: Iterable[Path], root: Path = Path("/")) -> Check:
    """The I/O scheduler of each disk holding an image directory."""
    found: dict[str, tuple[str, bool]] = {}
    for directory in dirs:
        device = _block_device(directory, root)
        if device is None or device.name in found:
            continue
        text = _read(device / "queue/scheduler")
        current = text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()
        found[device.name] = (current or "unknown",
                              _read(device / "queue/rotational").strip() == "1")
    if not found:
        return _check("disk-scheduler", Status.OK,
                      "the image directories are on no local block device (or one without "
                      "a scheduler)")
    shown = ", ".join(f"{name}: {sched} ({'rotating' if spinning else 'SSD/NVMe'})"
                      for name, (sched, spinning) in sorted(found.items()))
    bad = [name for name, (sched, spinning) in sorted(found.items())
           if sched not in (SPINNING_SCHEDULERS if spinning else FLASH_SCHEDULERS)]
    if not bad:
        return _check("disk-scheduler", Status.OK, shown)
    return _check("disk-scheduler", Status.WARN, shown,
                  f"for SSD/NVMe use none or mq-deadline, for rotating disks mq-deadline or "
                  f"bfq: 'echo none > /sys/block/{bad[0]}/queue/scheduler' (persist with a "
                  "udev rule)")


# ------------------------------------------------------------------ guests and libvirtd
KVM_DEADLINE_S = 8.0  # a working KVM prints its kernel's first line in well under 1 s
TCG_DEADLINE_S = 90.0  # TCG under load takes 8-25 s here
LIBVIRTD_DEADLINE_S = 5.0


def libvirtd_unanswered(uri: str, deadline_s: float) -> Check:
    """The notebook's advice for a libvirtd that accepts and then says nothing."""
    return _check("libvirtd", Status.FAIL,
                  f"libvirtd at {uri} did not answer within {deadline_s:g} s (it accepts "
                  "connections but is stuck or stopped); the checks that need it are "
                  "skipped",
                  f"check whether 'virsh -c {uri} version' hangs too; look at libvirtd's "
                  "log (journalctl -u libvirtd, /var/log/libvirt/libvirtd.log); restart "
                  "it ('systemctl restart libvirtd') -- running VMs keep running, their "
                  "QEMU processes are not libvirtd's children")


def check_kvm_guest(kvm: GuestProbe | None, *, kvm_device: bool, uses: Accelerator) -> Check:
    """Does a guest run under KVM (a probe VM, not only /dev/kvm)?"""
    if not kvm_device:
        return _check("kvm-guest", Status.WARN,
                      "no usable /dev/kvm: guests run under TCG emulation, many times slower",
                      "enable VT-x/AMD-V (or nested virtualisation) and load kvm_intel or "
                      "kvm_amd")
    if kvm is None:
        return _check("kvm-guest", Status.WARN,
                      "/dev/kvm present, KVM not verified: no kernel to probe with",
                      "run 'kvmops dev guest build' (or install a kernel in /boot)")
    if kvm.ran:
        if uses is Accelerator.KVM:
            return _check("kvm-guest", Status.OK, f"a KVM guest runs: {kvm.detail}")
        return _check("kvm-guest", Status.WARN,
                      f"a KVM guest runs ({kvm.detail}) but kvmops uses TCG",
                      "run 'kvmops host info --reprobe'")
    if uses is Accelerator.KVM:
        return _check("kvm-guest", Status.FAIL,
                      f"KVM present but a guest does not run ({kvm.detail}), and kvmops "
                      "uses KVM: new VMs will hang",
                      "run 'kvmops host info --reprobe' (kvmops then uses TCG); fix the "
                      "host's (or outer host's nested) virtualisation for KVM")
    return _check("kvm-guest", Status.WARN,
                  f"KVM present but a guest does not run; kvmops uses TCG ({kvm.detail})",
                  "fix the outer host's nested virtualisation (or the firmware's VT-x/AMD-V)"
                  ", then 'kvmops host info --reprobe'")


def check_tcg_guest(tcg: GuestProbe | None) -> Check:
    if tcg is None:
        return _check("tcg-guest", Status.WARN, "not verified: no kernel to probe with",
                      "run 'kvmops dev guest build' (or install a kernel in /boot)")
    if tcg.ran:
        return _check("tcg-guest", Status.OK, f"a TCG guest runs: {tcg.detail}")
    return _check("tcg-guest", Status.FAIL, f"a TCG guest does not run: {tcg.detail}",
                  "see the VM logs under /var/log/libvirt/qemu/ and 'kvmops host info'")


def probe_checks(host: Host, log_dir: Path) -> list[Check]:
    """``kvm-guest`` and ``tcg-guest``: the probe guests, both at once."""
    from kvmops.host.accel import probe_kernel
    from kvmops.host.doctor import probe_guests

    kvm_device = os.access("/dev/kvm", os.R_OK | os.W_OK)
    kernel = probe_kernel()
    results: dict[str, GuestProbe] = {}
    if kernel is not None:
        deadlines = {"qemu": TCG_DEADLINE_S}
        if kvm_device:
            deadlines["kvm"] = KVM_DEADLINE_S
        results = probe_guests(host, kernel, deadlines, log_dir)
    return [check_kvm_guest(results.get("kvm"), kvm_device=kvm_device,
                            uses=probe().accelerator),
            check_tcg_guest(results.get("qemu"))]


def check_managed_saves(saves: Iterable[ManagedSave], defined: set[str],
                        root: Path = Path("/")) -> Check:
    """libvirt's managed-save images: of VMs that no longer exist (files in its save
    directory), with a header that cannot be read, or older than the VM's definition
    (starting the VM resumes the old state with the old devices). ``root``: where
    libvirt's directories are (this machine's libvirtd)."""
    save_dir = root / "var/lib/libvirt/qemu/save"
    config_dir = root / "etc/libvirt/qemu"
    problems: list[str] = []
    count = 0
    for save in saves:
        count += 1
        if save.problem:
            problems.append(f"{save.vm}: {save.problem}")
            continue
        image, config = save_dir / f"{save.vm}.save", config_dir / f"{save.vm}.xml"
        with contextlib.suppress(OSError):
            if image.stat().st_mtime < config.stat().st_mtime:
                problems.append(f"{save.vm}: saved before its definition last changed")
    orphans = sorted(p.name for p in save_dir.glob("*.save")
                     if p.name.removesuffix(".save") not in defined) if save_dir.is_dir() else []
    problems += [f"{name}: its VM no longer exists" for name in orphans]
    if problems:
        return _check("managed-save", Status.WARN,
                      f"stale managed-save image(s): {_names(problems)}",
                      "for a VM: 'virsh managedsave-remove VM' (it then boots afresh); for "
                      f"a VM that is gone: delete the file in {save_dir}")
    if count:
        return _check("managed-save", Status.OK,
                      f"{count} VM(s) with a managed-save image, each readable")
    return _check("managed-save", Status.OK, "no managed-save images")


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


def check_vms(host: Host, available: int | None, *, remote: bool = False) -> list[Check]:
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
    if remote:
        available = host.memory_available()
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
               host_name: str | None = None, probes: bool = True,
               deadline_s: float = LIBVIRTD_DEADLINE_S) -> DoctorReport:
    """All checks; ``host`` reuses an open connection (the API), else one is opened.
    With ``host_name`` (a kvmops host name) the report is kept as that host's last.

    A remote URI gets the libvirt-side checks only (this machine's files say nothing
    about it); ``probes`` starts the probe guests (this machine only; without, their
    last results are carried over from the last report). libvirtd must
    answer within ``deadline_s`` or its checks are skipped with the advice."""
    from kvmops.host.doctor import answer_within
    from kvmops.host.remote import is_remote

    cfg = settings()
    target = host.uri if host is not None else (uri or cfg.uri)
    remote = is_remote(target)
    checks: list[Check] = []
    answer = answer_within(deadline_s, uri=uri, host=host)
    connected = answer.host
    if answer.timed_out:
        checks.append(libvirtd_unanswered(target, deadline_s))
    elif connected is None:
        err = answer.error
        checks.append(_check("libvirtd", Status.FAIL, err.message if err else "no answer",
                             err.hint if err else None))
    else:
        qemu = version_text(answer.qemu_version) if answer.qemu_version else "?"
        checks.append(_check("libvirtd", Status.OK,
                             f"libvirt {version_text(answer.libvirt_version)} at "
                             f"{connected.uri}, QEMU {qemu}"))
    try:
        if not remote:
            checks.extend(_machine_checks(cfg))
        if connected is not None:
            on_machine = not remote and target == cfg.uri
            available = None if remote else _meminfo_available()
            groups: list[tuple[str, Callable[[], list[Check]]]] = [
                ("libvirt-features", lambda: check_libvirt_features(connected)),
                ("vms", lambda: check_vms(connected, available, remote=remote)),
                ("managed-save", lambda: [check_managed_saves(
                    *managed_saves(connected),
                    root=Path("/") if on_machine else _NOWHERE)]),
            ]
            if probes and not remote:
                groups.append(("kvm-guest", lambda: probe_checks(
                    connected, cfg.state_dir / "doctor")))
            elif not remote:
                groups.append(("kvm-guest", lambda: _last_probes(host_name)))
            for name, group in groups:
                checks.extend(_guarded(name, group))
    finally:
        if connected is not None and host is None:
            connected.close()
    report = summarize(target, checks)
    report.checked_at = datetime.now(UTC)
    if host_name is not None:
        report.host = host_name
        save_report(report, host_name)
    return report


PROBE_CHECKS = ("kvm-guest", "tcg-guest")


def _last_probes(host_name: str | None) -> list[Check]:
    """The probe guests' checks of the last full report (a run without probes), marked
    with their time; none when there is no such report."""
    last = last_report(host_name) if host_name else None
    if last is None:
        return []
    when = last.checked_at.strftime(" (probed %Y-%m-%d %H:%M UTC)") if last.checked_at else ""
    return [c.model_copy(update={"detail": c.detail.split(" (probed ")[0] + when})
            if " (probed " not in c.detail else c
            for c in last.checks if c.name in PROBE_CHECKS]


#: A root with no libvirt directories (another libvirtd's files are not ours to read).
_NOWHERE = Path("/nonexistent-kvmops-root")


def _machine_checks(cfg: Settings) -> list[Check]:
    """The checks of this machine's programs, directories, kernel and sysfs."""
    from kvmops.paths import policy

    try:
        image_dirs = list(policy().image_dirs)
    except KvmopsError:
        image_dirs = [cfg.images_dir]
    return [check_virtlogd(), check_tool("qemu", "qemu-system-x86_64"),
            check_tool("qemu-img", "qemu-img"), check_accelerator(),
            check_directory("images-dir", cfg.images_dir, images=True),
            check_directory("state-dir", cfg.state_dir, images=False),
            check_path_policy(), check_backup_jobs(), check_bridge_rollbacks(),
            check_openvswitch(), check_io_limits(), check_nested(), check_iommu(),
            check_hugepages(), check_thp(), check_ksm(), check_numa_balancing(),
            check_sriov(), check_disk_schedulers(image_dirs)]


def _guarded(name: str, group: Callable[[], list[Check]]) -> list[Check]:
    """A libvirt failure in one group becomes a failed check, not a crashed doctor."""
    try:
        return call(f"checking {name}", group)
    except KvmopsError as err:
        return [_check(name, Status.FAIL, err.message)]


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
        write_atomic(path, report.model_dump_json().encode(), mode=0o600)


def last_report(host_name: str | None = None) -> DoctorReport | None:
    """The last report kept for ``host_name`` (``None``: this machine, ``local``);
    ``None`` when the doctor has not run there (or its record is unreadable)."""
    try:
        text = _report_path(host_name or LOCAL).read_text()
        return DoctorReport.model_validate(json.loads(text))
    except (OSError, ValueError, KvmopsError):
        return None
