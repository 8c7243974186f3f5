"""Fleecing: online backups whose copy-before-write goes to a local scratch image.

In a push-mode backup QEMU copies each old block to the *backup target* before a guest
write may overwrite a block not yet copied (copy-before-write): while the backup runs,
such a guest write waits for a write to the repository. A slow repository (a network
file system, a busy disk) then shows up as guest write latency.

With fleecing the backup is libvirt's pull mode: the old blocks go to a local scratch
qcow2 per disk (the *fleecing image*, in ``--scratch-dir``, by default
``backup_work_dir/fleecing``), QEMU exports the point in time over NBD on a unix socket,
and kvmops copies it out with ``qemu-img`` (a user-space NBD client: no kernel nbd) into
the run's partial directory -- a full as one ``qemu-img convert``, an incremental as the
dirty extents of ``qemu:dirty-bitmap:backup-TARGET`` written into a qcow2 whose backing
is the parent. From there the run is the push path's (:func:`finish_files`, manifest,
checkpoint, publish), so verify, restore and retention do not know the difference.

The pull job never ends by itself: kvmops ends it (``virDomainAbortJob``) after the
copy, on failure and on cancel, and libvirt then deletes the scratch files it made; the
run's scratch directory (``kvmops-fleece-REPOID-VM-BACKUPID``) goes with it. A killed
kvmops leaves the job running: the next backup of the VM recognises the job by that
directory name, aborts it and removes the directory.

``--fleecing auto`` (the default) chooses fleecing when a cheap, stated condition says
copy-before-write would wait on something slow (see :func:`choose`): the repository on a
network or FUSE file system, or the last push-mode backup into this repository having
measured the guest's writes slower by more than :data:`DEGRADED_RATIO` (QEMU's own write
counters of the disks, before vs during the backup: :class:`LatencyWatch`). A ``--speed``
limit alone is no reason: QEMU's copy-before-write writes are not rate-limited, so a
throttled backup costs each guest write the same, only for longer -- which the latency
watch sees and the next run acts on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from kvmops.backup.model import BackupType
from kvmops.backup.plan import Plan
from kvmops.backup.repository import Repository
from kvmops.backup.run import NoteFn, ProgressFn
from kvmops.config import settings
from kvmops.errors import BackupError, StorageError, ValidationError
from kvmops.host import backupjobs
from kvmops.host import fleecing as hostfleece
from kvmops.host.backupjobs import DomainHandle
from kvmops.images import qemuimg
from kvmops.vm.lifecycle import ensure_qemu_can_reach

MODES = ("auto", "on", "off")
DEGRADED_RATIO = 2.0  # guest write latency during / before a backup that calls for fleecing
MIN_WRITES = 50  # fewer guest writes than this (before, or during) measure nothing...
STALLED_NS = 1_000_000_000  # ...unless the guest's writes waited this long in all
RUN_PREFIX = "kvmops-fleece-"
# NBD sockets live apart from the scratch: a unix socket's path has at most 107 bytes.
SOCKET_ROOT = Path("/run/kvmops-fleece")
# Dirty extents closer than this are copied as one run (fewer qemu-img calls; the gap's
# data is the point's too, so copying it is correct, only a little larger).
RUN_GAP = 1 << 20
MAX_RUNS = 256
CLUSTER = 64 * 1024  # the incremental's qcow2 cluster size; runs cover whole clusters
# File systems whose writes cross a network or a user-space daemon.
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs",
              "fuse", "fuseblk", "ocfs2", "gfs2", "davfs"}
_ID_RE = r"\d{8}T\d{6}\.\d{6}Z"


def check_mode(mode: str | None) -> str:
    """``auto`` (None), ``on`` or ``off``; anything else is a one-line error."""
    value = (mode or "auto").lower()
    aliases = {"yes": "on", "true": "on", "no": "off", "false": "off"}
    value = aliases.get(value, value)
    if value not in MODES:
        raise ValidationError(f"invalid --fleecing '{mode}'", hint="use auto, on or off")
    return value


# ---------------------------------------------------------------- extents (pure)
@dataclass(frozen=True)
class Extent:
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def dirty_extents(entries: Iterable[dict[str, Any]]) -> list[Extent]:
    """The dirty extents in ``qemu-img map --output=json`` of an NBD export opened with
    ``x-dirty-bitmap``: QEMU reports a dirty area as ``"data": false`` there (the
    bitmap's bit takes the place of the hole bit), adjacent ones merged."""
    found: list[Extent] = []
    for entry in entries:
        if entry.get("data", True):
            continue
        start, length = int(entry["start"]), int(entry["length"])
        if length <= 0:
            continue
        if found and found[-1].end == start:
            found[-1] = Extent(found[-1].start, found[-1].length + length)
        else:
            found.append(Extent(start, length))
    return found


def plan_runs(extents: list[Extent], *, gap: int = RUN_GAP, max_runs: int = MAX_RUNS
              ) -> list[Extent]:
    """Copy runs covering every extent: neighbours closer than ``gap`` join one run; the
    gap doubles until at most ``max_runs`` remain (each run is one qemu-img call)."""
    ordered = sorted(extents, key=lambda e: e.start)
    while True:
        runs: list[Extent] = []
        for ext in ordered:
            if runs and ext.start - runs[-1].end <= gap:
                last = runs[-1]
                runs[-1] = Extent(last.start, max(last.end, ext.end) - last.start)
            else:
                runs.append(ext)
        if len(runs) <= max_runs:
            return runs
        gap = max(gap * 2, 1)


def align_runs(runs: list[Extent], align: int, size: int) -> list[Extent]:
    """Runs widened to whole ``align``-byte clusters (never past ``size``), neighbours that
    then touch joined: each write covers whole clusters of the target, so nothing is ever
    read from its backing file (the widened bytes are the point's too)."""
    out: list[Extent] = []
    for run in runs:
        start = run.start // align * align
        end = min(-(-run.end // align) * align, size)
        if out and start <= out[-1].end:
            out[-1] = Extent(out[-1].start, max(end, out[-1].end) - out[-1].start)
        else:
            out.append(Extent(start, end - start))
    return out


def export_size(entries: list[dict[str, Any]]) -> int:
    """The export's size: where its last map entry ends."""
    return max((int(e["start"]) + int(e["length"]) for e in entries), default=0)


# ---------------------------------------------------------------- choosing
@dataclass(frozen=True)
class Fleece:
    """A decision to fleece: where the scratch goes, and why (for the manifest's notes)."""

    scratch_root: Path
    reason: str


def fs_type(path: Path) -> str:
    """The type of the file system ``path`` lies on (the longest mount point above it)."""
    real = str(path.resolve())
    best, kind = "", ""
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = fields[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def choose(mode: str, repo: Repository, vm: str, scratch_dir: Path | None,
           need: int, say: NoteFn) -> Fleece | None:
    """Fleece or not (see the module's docstring); ``need`` = bytes the scratch may have
    to hold at worst (the disks' allocation). ``on`` without room is an error; ``auto``
    without room backs up in push mode with a note."""
    root = scratch_dir or settings().backup_work_dir / "fleecing"
    if mode == "off":
        return None
    if mode == "on":
        reason = "fleecing was asked for"
    else:
        reason = _auto_reason(repo, vm) or ""
        if not reason:
            return None
    free = _free_bytes(root)
    if free is not None and free < need:
        problem = (f"the scratch directory {root} has {free >> 20} MiB free, less than the "
                   f"{need >> 20} MiB the disks hold (the most the fleecing image can take)")
        if mode == "on":
            raise StorageError(f"cannot fleece: {problem}",
                               hint="give --scratch-dir on a local file system with room, "
                                    "or back up with --fleecing off")
        say(f"{reason}, but {problem}: backing up in push mode")
        return None
    return Fleece(root, reason)


def scratch_need(domain: DomainHandle, targets: Iterable[str]) -> int:
    """The most the fleecing images of ``targets`` can take: the disks' allocation."""
    return sum(hostfleece.disk_allocation(domain, t) or 0 for t in targets)


def _free_bytes(root: Path) -> int | None:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _auto_reason(repo: Repository, vm: str) -> str | None:
    kind = fs_type(repo.root)
    if kind.split(".")[0] in NETWORK_FS:
        return (f"the repository is on a {kind} file system: copy-before-write would wait "
                "on it, so the old blocks go to a local fleecing image")
    last = latency_record(repo, vm).get("push")
    if last and last.get("ratio") and float(last["ratio"]) > DEGRADED_RATIO:
        return (f"the last push-mode backup ({last.get('backup_id')}) slowed the guest's "
                f"writes {float(last['ratio']):.1f}x (QEMU's mean write time "
                f"{last.get('during_ms')} ms vs {last.get('before_ms')} ms): using a "
                "fleecing image (--fleecing off measures push mode again)")
    return None


# ---------------------------------------------------------------- latency watch
def _record_path(repo: Repository, vm: str) -> Path:
    return settings().state_dir / "fleecing" / f"{repo.identity()}-{vm}.json"


def latency_record(repo: Repository, vm: str) -> dict[str, Any]:
    """The last measured backups of ``vm`` into ``repo``: {"push": {...}, "fleecing": {...}}."""
    try:
        data = json.loads(_record_path(repo, vm).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Latency:
    """QEMU's mean write time of the backed-up disks before and during one backup."""

    backup_id: str
    writes: int  # guest writes during the backup
    before_ms: float
    during_ms: float

    @property
    def ratio(self) -> float:
        return round(self.during_ms / self.before_ms, 2) if self.before_ms > 0 else 0.0


class LatencyWatch:
    """Samples the disks' write counters when the backup begins and when its copy ends."""

    def __init__(self, domain: DomainHandle, targets: list[str]) -> None:
        self.domain = domain
        self.targets = targets
        self.before = self._sample()

    def _sample(self) -> dict[str, hostfleece.WriteCounters]:
        found = {}
        for target in self.targets:
            counters = hostfleece.write_counters(self.domain, target)
            if counters is not None:
                found[target] = counters
        return found

    def finish(self, repo: Repository, vm: str, backup_id: str, fleeced: bool,
               say: NoteFn) -> Latency | None:
        """Measure, record for ``--fleecing auto`` and say when the guest's writes were
        more than :data:`DEGRADED_RATIO` slower; None when too few writes to tell."""
        after = self._sample()
        ops0 = ns0 = ops = ns = 0
        for target, first in self.before.items():
            last = after.get(target)
            if last is None or last.operations < first.operations:
                continue
            ops0, ns0 = ops0 + first.operations, ns0 + first.total_ns
            ops, ns = ops + last.operations - first.operations, ns + last.total_ns - first.total_ns
        # A backup that stalls the guest's writes lets few of them complete: a second spent
        # waiting in writes is a measurement too.
        if ops0 < MIN_WRITES or ops == 0 or (ops < MIN_WRITES and ns < STALLED_NS):
            return None
        found = Latency(backup_id, ops, round(ns0 / ops0 / 1e6, 3), round(ns / ops / 1e6, 3))
        record = latency_record(repo, vm)
        record["fleecing" if fleeced else "push"] = {**asdict(found), "ratio": found.ratio}
        try:
            _write_record(_record_path(repo, vm), record)
        except OSError as err:  # a measurement never fails a backup
            say(f"could not record the write latency of this backup: {err}")
        if found.ratio > DEGRADED_RATIO:
            say(f"the guest's writes were {found.ratio:.1f}x slower during this backup "
                f"({found.writes} writes, QEMU's mean write time {found.during_ms} ms vs "
                f"{found.before_ms} ms before)"
                + ("" if fleeced else ": the next backup with --fleecing auto uses a "
                                      "fleecing image"))
        return found


def _write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ---------------------------------------------------------------- orphans
def run_dir_prefix(repo: Repository, vm: str) -> str:
    return f"{RUN_PREFIX}{repo.identity()}-{vm}-"


def orphaned_run_dirs(domain: DomainHandle, repo: Repository, vm: str) -> list[Path]:
    """The scratch directories of a running pull job that a kvmops run into this
    repository started (we hold the repository's lock on the VM, so its owner is gone);
    [] when the running job is not such a job."""
    scratch = hostfleece.pull_job_scratch(domain)
    pattern = re.compile(re.escape(run_dir_prefix(repo, vm)) + _ID_RE)
    dirs = {Path(f).parent for f in scratch}
    if not scratch or not all(pattern.fullmatch(d.name) for d in dirs):
        return []
    return sorted(dirs)


def socket_dir(run_dir: Path) -> Path:
    """The run's short socket directory (named by a hash of the run directory's name)."""
    return SOCKET_ROOT / hashlib.sha256(run_dir.name.encode()).hexdigest()[:16]


def remove_run_dirs(dirs: Iterable[Path]) -> None:
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(socket_dir(directory), ignore_errors=True)


def remove_stale(root: Path, repo: Repository, vm: str, keep: Path | None = None) -> None:
    """Scratch directories of earlier runs of ``vm`` into ``repo`` (their jobs ended)."""
    pattern = re.compile(re.escape(run_dir_prefix(repo, vm)) + _ID_RE)
    with contextlib.suppress(OSError):
        for child in root.iterdir():
            if child != keep and pattern.fullmatch(child.name):
                remove_run_dirs([child])


# ---------------------------------------------------------------- the pull job
def pull_xml(plan: Plan, socket: Path, scratch: dict[str, Path]) -> str:
    """libvirt's pull-mode backup definition: an NBD export per disk on a unix socket,
    with a scratch qcow2 (the fleecing image) per disk."""
    root = etree.Element("domainbackup", mode="pull")
    if plan.base_checkpoint and plan.type is not BackupType.FULL:
        etree.SubElement(root, "incremental").text = plan.base_checkpoint
    etree.SubElement(root, "server", transport="unix", socket=str(socket))
    disks = etree.SubElement(root, "disks")
    for item in plan.disks:
        target = item.disk.target
        attrs = {"name": target, "backup": "yes", "type": "file", "exportname": target}
        if plan.type is not BackupType.FULL:
            attrs["backupmode"] = "full" if item.mode is BackupType.FULL else "incremental"
            if item.mode is not BackupType.FULL and plan.base_checkpoint:
                attrs["incremental"] = plan.base_checkpoint
                attrs["exportbitmap"] = f"backup-{target}"
        el = etree.SubElement(disks, "disk", attrib=attrs)
        etree.SubElement(el, "scratch", file=str(scratch[target]))
        etree.SubElement(el, "driver", type="qcow2")
    return etree.tostring(root, encoding="unicode")


def _esc(value: object) -> str:
    return str(value).replace(",", ",,")


def nbd_source(socket: Path, export: str, extent: Extent | None = None) -> str:
    """``--image-opts`` of the export read as raw (formats always named; a window of it
    with ``extent``)."""
    window = f"offset={extent.start},size={extent.length}," if extent else ""
    return (f"driver=raw,{window}file.driver=nbd,file.server.type=unix,"
            f"file.server.path={_esc(socket)},file.export={_esc(export)}")


def qcow2_window(path: Path, extent: Extent) -> str:
    """``--target-image-opts`` of a window of a qcow2 file (its backing from its header)."""
    return (f"driver=raw,offset={extent.start},size={extent.length},file.driver=qcow2,"
            f"file.file.driver=file,file.file.filename={_esc(path)}")


def dirty_map(socket: Path, export: str, bitmap: str) -> list[dict[str, Any]]:
    """``qemu-img map`` of the export with its dirty bitmap's meta context."""
    opts = (f"driver=nbd,server.type=unix,server.path={_esc(socket)},export={_esc(export)},"
            f"x-dirty-bitmap=qemu:dirty-bitmap:{_esc(bitmap)}")
    out = qemuimg.run_qemu_img(["map", "--output=json", "--image-opts", opts],
                               what=f"reading the dirty extents of {export}").stdout
    entries = json.loads(out)
    return entries if isinstance(entries, list) else []


@dataclass
class _Copy:
    """What one disk's copy is: a whole export, or runs onto the parent."""

    target: str
    dst: Path
    size: int  # the export's size
    runs: list[Extent] | None  # None: a full copy
    parent: Path | None

    @property
    def bytes(self) -> int:
        return self.size if self.runs is None else sum(r.length for r in self.runs)


def copy_point(domain: DomainHandle, vm: str, repo: Repository, plan: Plan, partial: Path,
               checkpoint_xml: str, fleece: Fleece, backup_id: str,
               freeze: Callable[[], AbstractContextManager[bool]], on_begin: Callable[[], None],
               progress: ProgressFn, say: NoteFn, speed: int | None = None) -> bool:
    """Begin the pull job (frozen for its instant), copy each disk's point into
    ``partial/TARGET.qcow2`` and end the job; returns whether the guest was frozen.
    ``speed`` (bytes/s) limits each qemu-img copy, as ``--speed`` does the push job."""
    root = fleece.scratch_root
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    ensure_qemu_can_reach(root)
    remove_stale(root, repo, vm)
    run_dir = root / f"{run_dir_prefix(repo, vm)}{backup_id}"
    run_dir.mkdir()
    run_dir.chmod(0o777)  # libvirt makes the scratch files here for QEMU (libvirt-qemu)
    sockets = socket_dir(run_dir)
    SOCKET_ROOT.mkdir(mode=0o711, parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    sockets.chmod(0o777)  # QEMU makes the socket
    socket = sockets / "nbd.sock"
    scratch = {item.disk.target: run_dir / f"{item.disk.target}.qcow2" for item in plan.disks}
    say(f"fleecing: {fleece.reason}; scratch in {root}")
    try:
        with _job(domain, vm):
            with freeze() as was_frozen:
                backupjobs.begin_backup(domain, vm, pull_xml(plan, socket, scratch),
                                        checkpoint_xml, base_checkpoint=plan.base_checkpoint,
                                        target_dir=run_dir)
                on_begin()
            _copy_all(_plan_copies(repo, vm, plan, partial, socket, run_dir), socket, progress,
                      ["-r", str(speed)] if speed else [])
    finally:
        remove_run_dirs([run_dir])
    return was_frozen


@contextlib.contextmanager
def _job(domain: DomainHandle, vm: str) -> Iterator[None]:
    """End the pull job however the copy ends (libvirt then deletes the scratch files);
    a job that already ended (the VM stopped, QEMU failed) fails the backup."""
    try:
        yield
        if backupjobs.active_backup_job(domain) is None:
            raise BackupError(f"the fleecing backup job of VM '{vm}' ended before its copy "
                              "was complete; the backup is discarded",
                              hint="see the VM's log in /var/log/libvirt/qemu, and run the "
                                   "backup again")
    finally:
        backupjobs.abort_backup(domain, vm)
        # libvirt tears the pull job down (export, scratch nodes, files) after the job
        # stops showing: wait for that, so the checkpoint can be deleted right after.
        deadline = time.monotonic() + 30
        while hostfleece.pull_job_scratch(domain) and time.monotonic() < deadline:
            time.sleep(0.1)


def _plan_copies(repo: Repository, vm: str, plan: Plan, partial: Path, socket: Path,
                 stand_ins: Path) -> list[_Copy]:
    copies = []
    for item in plan.disks:
        target = item.disk.target
        dst = partial / f"{target}.qcow2"
        if item.mode is BackupType.FULL or item.parent is None:
            entries = json.loads(qemuimg.run_qemu_img(
                ["map", "--output=json", "--image-opts", nbd_source(socket, target)],
                what=f"reading the size of export {target}").stdout)
            copies.append(_Copy(target, dst, export_size(entries), None, None))
            continue
        entries = dirty_map(socket, target, f"backup-{target}")
        size = export_size(entries)
        parent = repo.backups_dir(vm) / item.parent / f"{target}.qcow2"
        if not parent.is_file():
            if not repo.has_file(vm, item.parent, f"{target}.qcow2"):
                raise BackupError(f"parent backup file {item.parent}/{target}.qcow2 is "
                                  "missing from the repository")
            # A store-backed repository keeps the parent sealed in its store: an empty
            # stand-in of its size is the backing while whole clusters are written (see
            # align_runs), and finish_files links the file to the real parent.
            parent = stand_ins / f"parent-{target}.qcow2"
            qemuimg.run_qemu_img(["create", "-q", "-f", "qcow2", str(parent), str(size)],
                                 what=f"creating {parent.name}", path=parent)
        runs = align_runs(plan_runs(dirty_extents(entries)), CLUSTER, size)
        copies.append(_Copy(target, dst, size, runs, parent))
    return copies


def _copy_all(copies: list[_Copy], socket: Path, progress: ProgressFn,
              limit: list[str]) -> None:
    total = max(sum(c.bytes for c in copies), 1)
    done = 0
    progress(0, total)
    for copy in copies:
        if copy.runs is None:
            def full_progress(pct: float, base: int = done, size: int = copy.bytes) -> None:
                progress(base + int(size * pct / 100), total)

            _copy_full(copy, socket, full_progress, limit)
            done += copy.bytes
            progress(done, total)
            continue
        assert copy.parent is not None
        qemuimg.run_qemu_img(["create", "-q", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}",
                              "-F", "qcow2", "-b", str(copy.parent), str(copy.dst),
                              str(copy.size)],
                             what=f"creating {copy.dst.name}", path=copy.dst)
        for run in copy.runs:
            qemuimg.run_qemu_img(
                ["convert", "-n", "-W", "-m", "8", *limit, "--image-opts",
                 nbd_source(socket, copy.target, run), "--target-image-opts",
                 qcow2_window(copy.dst, run)],
                what=f"copying {run.length} bytes at {run.start} of disk {copy.target}",
                path=copy.dst)
            done += run.length
            progress(done, total)


def _copy_full(copy: _Copy, socket: Path, progress: Callable[[float], None],
               limit: list[str]) -> None:
    parser = qemuimg.ProgressParser()

    def on_output(chunk: bytes) -> None:
        for value in parser.feed(chunk):
            progress(value)

    qemuimg.run_qemu_img(["convert", "-p", "-W", "-m", "8", *limit, "-O", "qcow2",
                          "--image-opts",
                          nbd_source(socket, copy.target), str(copy.dst)],
                         what=f"copying disk {copy.target} out of the fleecing export",
                         path=copy.dst, on_output=on_output)
