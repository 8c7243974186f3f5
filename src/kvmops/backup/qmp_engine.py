"""Online backups of a QEMU started by hand, over its QMP socket (no libvirt).

``kvmops backup create NAME --repo DIR --socket QMP [--agent-socket QGA]``
backs up a QEMU that libvirt does not manage; NAME is only the name of the VM
inside the repository. The repository, the manifests, restore, verify and
prune are the same as for libvirt VMs (``transport="qmp"`` in the manifest).

Disks. ``query-block`` lists QEMU's block devices with the node they show to
the guest. Every virtio-blk device (its qdev path ends in ``/virtio-backend``)
is named ``vda``, ``vdb``... in the order QEMU lists them, which is the order
the devices were created: with automatic PCI slots that is the guest's own
order. ``--disk TARGET`` keeps only those targets; ``--disk NODE=TARGET``
names a disk explicitly (NODE is the block node name, the device id or the
drive name), which is also how a non-virtio disk is backed up.

One backup::

    qemu-img create   .partial-ID/vda.qcow2  (incremental: -b ../PARENT/vda.qcow2 -F qcow2 -u)
    blockdev-add      kvmops-target-vda
    [guest-fsfreeze-freeze through the agent socket]
    transaction       per disk: block-dirty-bitmap-add kvmops-ID (persistent on qcow2)
                                blockdev-backup job kvmops-backup-vda
    [guest-fsfreeze-thaw, always]
    query-jobs / JOB_STATUS_CHANGE until every job concluded, job-dismiss
    blockdev-del, relative backing links, checksums, manifest, publish

The invariants this module keeps (the same as the libvirt engine's):

* The new bitmap ``kvmops-ID`` is created in the same QMP ``transaction`` as the
  backup jobs, so it starts exactly at the backup's point in time: no write can
  fall between "copied" and "tracked".
* Incrementals and differentials copy the blocks of the *parent's* bitmap with
  ``sync: bitmap`` and ``bitmap-mode: never``: the parent's bitmap is never
  cleared (``sync: incremental`` means ``bitmap-mode: on-success``, which would
  clear it, and a later differential based on the same full would miss blocks).
  So every ``kvmops-*`` bitmap records every write since its backup, and
  removing an older bitmap never loses a change a newer one needs.
* A backup that does not complete (error, Ctrl-C, SIGTERM) cancels its jobs,
  deletes its target nodes, removes its new bitmap and discards its partial
  directory: the parent's bitmap still holds everything since the parent.
* A killed run leaves jobs ``kvmops-backup-*``, nodes ``kvmops-target-*`` and a
  bitmap ``kvmops-ID`` without a complete backup ``ID``: the next run removes
  them before it plans (:func:`recover`).
* Before an incremental the parent's bitmap is checked on each disk (present,
  not inconsistent, recording); when it cannot be trusted that disk gets a full
  backup and the output and the manifest say why.
* After a backup only the bitmaps future backups need stay: the newest
  backup's and the newest full's.
* The guest's file systems are frozen only around the transaction, and thawed
  whatever happens; SIGTERM/SIGHUP/SIGINT are held back for that instant.

The bitmaps are owned per repository as libvirt checkpoints are
(``kvmops-REPO-ID``, see :mod:`kvmops.vm.checkpoints`): each repository removes
only its own. A QMP socket serves one client at a time, so while a backup runs the
socket is busy for other clients (give QEMU a second ``-qmp`` socket to watch it).
The run (signals, events, clean-up, manifest) is :mod:`kvmops.backup.run`'s, the
plan :mod:`kvmops.backup.plan`'s, as for the libvirt engines.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmops.backup import jobs
from kvmops.backup.files import finish_files
from kvmops.backup.model import BackupType, Consistency, Manifest
from kvmops.backup.plan import Plan, checkpoints_to_keep, plan_backup
from kvmops.backup.repository import Repository
from kvmops.backup.run import (
    BackupRun,
    Cleanup,
    NoteFn,
    NoteLog,
    ProgressFn,
    exclusive,
)
from kvmops.errors import (
    BackupError,
    ChannelError,
    KvmopsError,
    OperationTimeoutError,
    QmpError,
    StateError,
    ValidationError,
)
from kvmops.images import qemuimg
from kvmops.monitor.channel import MonitorChannel, open_monitor
from kvmops.vm.checkpoints import checkpoint_name, is_kvmops, owned_by
from kvmops.vm.domxml import DiskSpec

TARGET_NODE_PREFIX = "kvmops-target-"
JOB_PREFIX = "kvmops-backup-"
JOB_EVENTS = ("JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED",
              "BLOCK_JOB_ERROR")
_TARGET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")
# Filter nodes a block job puts on top of a disk while it runs.
_FILTER_DRIVERS = {"copy-before-write", "backup-top", "mirror_top", "commit_top"}
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@dataclass
class QmpBackupRequest:
    vm: str  # the VM's name in the repository
    repo: Path
    socket: Path  # QMP unix socket of the hand-started QEMU
    agent_socket: Path | None = None  # qemu-ga socket, for freezing file systems
    mode: BackupType | None = None  # None: incremental when a valid chain exists, else full
    disks: list[str] = field(default_factory=list)  # TARGET or NODE=TARGET
    exclude: list[str] = field(default_factory=list)
    freeze: bool = True
    speed: int | None = None  # bytes per second per disk, None for unlimited
    job_timeout: float = 60.0  # how long a cancelled job may take to end
    compress: bool = False  # store compressed qcow2 clusters
    repository: Repository | None = None  # opened by the caller (see BackupRequest)


@dataclass(frozen=True)
class QmpDisk:
    """One disk of the QEMU, as ``query-block`` shows it."""

    target: str  # vda: the name in the repository
    node: str  # the node the guest sees (bitmaps live here, the backup reads it)
    device: str  # qdev id (virtio-disk0) or drive name; "" when anonymous
    file: str  # the image file
    fmt: str  # qcow2, raw ...
    virtual_size: int

    def spec(self) -> DiskSpec:
        return DiskSpec(target=self.target, source=self.file, fmt=self.fmt,
                        node_name=self.node, alias=self.device or None)


# ---------------------------------------------------------------- names
def target_node(target: str) -> str:
    """Node name of a backup target (QEMU node names have at most 31 characters)."""
    return f"{TARGET_NODE_PREFIX}{target}"


def job_id(target: str) -> str:
    return f"{JOB_PREFIX}{target}"


def backup_id_of(bitmap: str) -> str | None:
    """The backup id in a kvmops bitmap name (``kvmops-[REPO-]ID``), else None."""
    if not is_kvmops(bitmap):
        return None
    return bitmap.rsplit("-", 1)[-1]


# ---------------------------------------------------------------- disks
def _qdev_id(qdev: str) -> str:
    """``/machine/peripheral/virtio-disk0/virtio-backend`` -> ``virtio-disk0``;
    other devices give their id as it is (``sata0``)."""
    if "/" not in qdev:
        return qdev
    parts = [p for p in qdev.split("/") if p]
    if parts and parts[-1] == "virtio-backend":
        parts = parts[:-1]
    if len(parts) >= 3 and parts[:2] == ["machine", "peripheral"]:
        return parts[2]
    return ""


def _is_virtio_blk(entry: Mapping[str, Any]) -> bool:
    # virtio-blk is the only virtio device with a block backend of its own.
    return str(entry.get("qdev", "")).endswith("/virtio-backend")


def parse_disk_options(options: list[str]) -> tuple[list[str], dict[str, str]]:
    """``--disk`` values -> (plain targets, {NODE: TARGET})."""
    plain: list[str] = []
    mapping: dict[str, str] = {}
    for option in options:
        node, sep, target = option.partition("=")
        name = target if sep else node
        if not _TARGET_RE.match(name):
            raise ValidationError(
                f"invalid disk name '{name}' in --disk {option}",
                hint="targets look like vda or data (letters, digits, - and _), "
                     "written --disk TARGET or --disk NODE=TARGET")
        if not sep:
            plain.append(name)
            continue
        if not node:
            raise ValidationError(f"invalid --disk {option}: no node before '='",
                                  hint="write --disk NODE=TARGET, e.g. --disk disk1=vdb")
        if node in mapping:
            raise ValidationError(f"node '{node}' given twice in --disk")
        mapping[node] = name
    return plain, mapping


def _disk(entry: Mapping[str, Any], target: str) -> QmpDisk:
    inserted = entry.get("inserted") or {}
    image = inserted.get("image") or {}
    return QmpDisk(
        target=target,
        node=str(inserted.get("node-name") or entry.get("device") or ""),
        device=_qdev_id(str(entry.get("qdev", ""))) or str(entry.get("device") or ""),
        file=str(image.get("filename") or inserted.get("file") or ""),
        fmt=str(inserted.get("drv") or image.get("format") or "raw"),
        virtual_size=int(image.get("virtual-size") or 0),
    )


def discover_disks(block: list[dict[str, Any]], options: list[str] | None = None,
                   exclude: list[str] | None = None, *, where: str = "the QEMU"
                   ) -> tuple[list[QmpDisk], list[str]]:
    """The disks to back up from a ``query-block`` reply, and notes on skipped ones.

    Virtio-blk disks with a medium are named vda, vdb... in ``query-block``'s
    order; ``options`` are the ``--disk`` values (TARGET or NODE=TARGET).
    """
    plain, mapping = parse_disk_options(options or [])
    exclude = exclude or []
    notes: list[str] = []
    auto: list[QmpDisk] = []
    others: list[dict[str, Any]] = []
    every: list[dict[str, Any]] = []
    for entry in block:
        inserted = entry.get("inserted")
        if not inserted:
            continue
        every.append(entry)
        if _is_virtio_blk(entry):
            auto.append(_disk(entry, f"vd{disk_letters(len(auto))}"))
        elif not entry.get("removable"):
            others.append(entry)

    chosen: list[QmpDisk] = []
    for node, target in mapping.items():
        match = [e for e in every if node in _names(e)]
        if not match:
            known = sorted({n for e in every for n in _names(e) if n})
            raise ValidationError(f"{where} has no block node or device '{node}'",
                                  hint=f"its disks are {', '.join(known) or 'none'}")
        chosen.append(_disk(match[0], target))
    by_target = {d.target: d for d in auto}
    for target in plain:
        if target not in by_target:
            raise ValidationError(
                f"{where} has no virtio disk '{target}'",
                hint=f"its virtio disks are {', '.join(by_target) or 'none'}; "
                     "name other disks with --disk NODE=TARGET")
        chosen.append(by_target[target])
    if not options:
        chosen = list(auto)
        for entry in others:
            disk = _disk(entry, "?")
            notes.append(f"disk node {disk.node} ({disk.device or 'no device id'}) is not "
                         "virtio-blk and is not backed up; name it with --disk NODE=TARGET")
    for target in exclude:
        if target not in {d.target for d in chosen}:
            raise ValidationError(f"--exclude {target}: no such disk is selected",
                                  hint=f"the disks are {', '.join(d.target for d in chosen)}")
    chosen = [d for d in chosen if d.target not in exclude]

    seen_targets: set[str] = set()
    seen_nodes: set[str] = set()
    for disk in chosen:
        if disk.target in seen_targets:
            raise ValidationError(f"disk name '{disk.target}' used for two disks",
                                  hint="give each --disk NODE=TARGET its own TARGET")
        if disk.node in seen_nodes:
            raise ValidationError(f"node {disk.node} selected twice (as {disk.target} too)")
        if not disk.node:
            raise ValidationError(f"disk {disk.target} of {where} has no block node name")
        seen_targets.add(disk.target)
        seen_nodes.add(disk.node)
    if not chosen:
        raise ValidationError(f"nothing to back up: no disk of {where} selected",
                              hint="virtio-blk disks are found by themselves; name others "
                                   "with --disk NODE=TARGET")
    return chosen, notes


def _names(entry: Mapping[str, Any]) -> set[str]:
    inserted = entry.get("inserted") or {}
    names = {str(inserted.get("node-name") or ""), str(entry.get("device") or ""),
             _qdev_id(str(entry.get("qdev", "")))}
    return {n for n in names if n}


def disk_letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa (the kernel's vdX naming)."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("a") + rest) + name
    return name


# ---------------------------------------------------------------- bitmaps
def node_bitmaps(nodes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``query-named-block-nodes`` reply -> {node name: its dirty bitmaps}."""
    return {str(n.get("node-name")): list(n.get("dirty-bitmaps") or [])
            for n in nodes if n.get("node-name")}


def bitmap_problem(bitmaps: list[dict[str, Any]], name: str) -> str | None:
    """Why bitmap ``name`` (BlockDirtyInfo list of one node) cannot be used, or None."""
    found = [b for b in bitmaps if b.get("name") == name]
    if not found:
        return f"bitmap {name} not found on the disk"
    bitmap = found[0]
    if bitmap.get("inconsistent"):
        return f"bitmap {name} is inconsistent (QEMU was killed or crashed)"
    if bitmap.get("busy"):
        return f"bitmap {name} is in use by another block job"
    if not bitmap.get("recording"):
        return f"bitmap {name} is disabled (it does not record writes)"
    return None


def trust_function(nodes: list[dict[str, Any]], disks: list[QmpDisk]
                   ) -> Callable[[str, str], str | None]:
    """``plan_backup``'s trust callback: checks the parent's bitmap on one disk."""
    bitmaps = node_bitmaps(nodes)
    node_of = {d.target: d.node for d in disks}

    def trusted(checkpoint: str, target: str) -> str | None:
        node = node_of.get(target)
        if node is None or node not in bitmaps:
            return f"QEMU has no block node for disk {target}"
        return bitmap_problem(bitmaps[node], checkpoint)

    return trusted


def stale_bitmaps(nodes: list[dict[str, Any]], keep: set[str], repo_id: str,
                  referenced: set[str]) -> list[tuple[str, str]]:
    """(node, bitmap) pairs of this repository's bitmaps not in ``keep`` (another
    repository's bitmaps are never touched; see :mod:`kvmops.vm.checkpoints`)."""
    pairs = [(node, str(b.get("name", "")))
             for node, bitmaps in node_bitmaps(nodes).items() for b in bitmaps]
    mine = set(owned_by({name for _n, name in pairs}, repo_id, referenced))
    return [(node, name) for node, name in pairs if name in mine and name not in keep]


# ---------------------------------------------------------------- the transaction
def transaction_actions(plan: Plan, disks: list[QmpDisk], bitmap: str,
                        speed: int | None = None) -> list[dict[str, Any]]:
    """One ``transaction``: the new bitmaps, then one backup job per disk."""
    by_target = {d.target: d for d in disks}
    actions: list[dict[str, Any]] = []
    for item in plan.disks:
        if item.checkpoint:
            disk = by_target[item.disk.target]
            actions.append({"type": "block-dirty-bitmap-add", "data": {
                "node": disk.node, "name": bitmap, "persistent": disk.fmt == "qcow2"}})
    for item in plan.disks:
        disk = by_target[item.disk.target]
        data: dict[str, Any] = {
            "job-id": job_id(disk.target), "device": disk.node,
            "target": target_node(disk.target), "sync": "full",
            "auto-finalize": True, "auto-dismiss": False,
        }
        if item.mode is not BackupType.FULL:
            if not plan.base_checkpoint:
                raise BackupError(f"disk {disk.target}: an incremental needs the parent's "
                                  "bitmap, and the plan has none")
            # 'bitmap' + 'never' copies the parent's dirty blocks and leaves its bitmap
            # whole ('incremental' would clear it on success).
            data.update({"sync": "bitmap", "bitmap": plan.base_checkpoint,
                         "bitmap-mode": "never"})
        if speed:
            data["speed"] = speed
        actions.append({"type": "blockdev-backup", "data": data})
    return actions


def target_blockdev(target: str, path: Path) -> dict[str, Any]:
    """``blockdev-add`` arguments of a backup target (an incremental's backing file, the
    parent's backup, is opened read-only from the image header)."""
    return {"driver": "qcow2", "node-name": target_node(target),
            "file": {"driver": "file", "filename": str(path)}}


def create_target(path: Path, size: int, parent_id: str | None, target: str) -> None:
    """The empty target file; an incremental's backs onto the parent's file (relative)."""
    args = ["create", "-q", "-f", "qcow2"]
    if parent_id:
        args += ["-b", f"../{parent_id}/{target}.qcow2", "-F", "qcow2", "-u"]
    args += [str(path), str(size)]
    qemuimg.run_qemu_img(args, what=f"creating backup target {path}", path=path)


# ---------------------------------------------------------------- jobs
def summarize_jobs(all_jobs: list[dict[str, Any]], ids: set[str]
                   ) -> tuple[int, int, bool, list[tuple[str, str]]]:
    """(done bytes, total bytes, every job concluded, [(job, error)]) of our jobs."""
    mine = [j for j in all_jobs if j.get("id") in ids]
    done = sum(int(j.get("current-progress", 0)) for j in mine)
    total = sum(int(j.get("total-progress", 0)) for j in mine)
    concluded = len(mine) == len(ids) and all(j.get("status") == "concluded" for j in mine)
    errors = [(str(j["id"]), str(j["error"])) for j in mine
              if j.get("status") == "concluded" and j.get("error")]
    missing = ids - {str(j.get("id")) for j in mine}
    errors += [(m, "the job disappeared from QEMU") for m in sorted(missing)]
    return done, total, concluded, errors


class PauseSwitch:
    """Pause/resume requests from ``kvmops backup pause|resume`` (SIGUSR1/SIGUSR2).

    The QMP socket serves one client, so another process cannot send ``job-pause``
    itself; it signals the backup process, which applies the request between polls.
    """

    def __init__(self) -> None:
        self.wanted = False
        self.applied = False

    def handle(self, signum: int, _frame: object) -> None:
        self.wanted = signum == signal.SIGUSR1

    def apply(self, channel: MonitorChannel, ids: set[str], vm: str) -> None:
        if self.wanted == self.applied:
            return
        command = "job-pause" if self.wanted else "job-resume"
        for job_id in sorted(ids):
            with contextlib.suppress(QmpError):  # a job that just concluded
                channel.execute(command, {"id": job_id})
        self.applied = self.wanted
        state = "paused" if self.wanted else "running"
        jobs.set_state(vm, state)
        jobs.record_event(vm, "paused" if self.wanted else "resumed")


def follow_jobs(channel: MonitorChannel, ids: set[str], vm: str,
                progress: ProgressFn | None, poll: float = 0.5,
                switch: PauseSwitch | None = None) -> None:
    """Wait until every job concluded; report progress; raise on the first failed job."""
    while True:
        if switch:
            switch.apply(channel, ids, vm)
        done, total, concluded, errors = summarize_jobs(channel.execute("query-jobs"), ids)
        if errors:
            job, error = errors[0]
            raise BackupError(f"backup job {job} of VM '{vm}' failed: {error}",
                              hint="nothing of this backup was kept; fix the cause and "
                                   "run it again")
        if progress:
            progress(done, total)
        if concluded:
            return
        for _event in channel.events(JOB_EVENTS, timeout=poll):
            break


def _jobs_by_id(channel: MonitorChannel) -> dict[str, dict[str, Any]]:
    return {str(j.get("id")): j for j in channel.execute("query-jobs") or []}


def end_jobs(channel: MonitorChannel, ids: set[str], timeout: float) -> list[str]:
    """Cancel (when still running) and dismiss jobs; returns the ones that would not end."""
    present = _jobs_by_id(channel)
    for job in sorted(ids & set(present)):
        if present[job].get("status") not in ("concluded", "null", "aborting"):
            with contextlib.suppress(KvmopsError):
                channel.execute("job-cancel", {"id": job})
    deadline = time.monotonic() + timeout
    stuck: list[str] = []
    while True:
        present = _jobs_by_id(channel)
        waiting = [j for j in ids & set(present) if present[j].get("status") != "concluded"]
        if not waiting:
            break
        if time.monotonic() > deadline:
            stuck = sorted(waiting)
            break
        for _event in channel.events(JOB_EVENTS, timeout=0.3):
            break
    for job in sorted(ids & set(present)):
        if job not in stuck:
            with contextlib.suppress(KvmopsError):
                channel.execute("job-dismiss", {"id": job})
    return stuck


def delete_nodes(channel: MonitorChannel, nodes: list[str], say: NoteFn) -> None:
    for node in nodes:
        try:
            channel.execute("blockdev-del", {"node-name": node})
        except KvmopsError as err:
            say(f"could not remove backup target node {node}: {err}")


def remove_bitmaps(channel: MonitorChannel, pairs: list[tuple[str, str]], say: NoteFn,
                   why: str) -> None:
    for node, name in pairs:
        try:
            channel.execute("block-dirty-bitmap-remove", {"node": node, "name": name})
        except KvmopsError as err:
            say(f"could not remove bitmap {name} from node {node} ({why}): {err}")


# ---------------------------------------------------------------- recover, prune
def recover(channel: MonitorChannel, repo: Repository, vm: str, say: NoteFn,
            timeout: float = 60.0) -> None:
    """Clean up after a killed run: jobs, target nodes, orphan bitmaps, partial directories."""
    leftover_jobs = {j for j in _jobs_by_id(channel) if j.startswith(JOB_PREFIX)}
    if leftover_jobs:
        stuck = end_jobs(channel, leftover_jobs, timeout)
        if stuck:
            raise BackupError(f"backup job(s) {', '.join(stuck)} left by an interrupted run "
                              f"of VM '{vm}' do not end",
                              hint="look at 'query-jobs' with 'kvmops qmp --socket'")
        say(f"ended backup job(s) {', '.join(sorted(leftover_jobs))} left by an "
            "interrupted run")
    nodes = channel.execute("query-named-block-nodes", {"flat": True}) or []
    targets = [str(n["node-name"]) for n in nodes
               if str(n.get("node-name", "")).startswith(TARGET_NODE_PREFIX)]
    if targets:
        delete_nodes(channel, targets, say)
        say(f"removed backup target node(s) {', '.join(targets)} left by an interrupted run")
        nodes = channel.execute("query-named-block-nodes", {"flat": True}) or []
    manifests = repo.manifests(vm)
    complete = {m.checkpoint for m in manifests if m.complete and m.checkpoint}
    orphans = stale_bitmaps(nodes, complete, repo.identity(),
                            {m.checkpoint for m in manifests if m.checkpoint})
    for node, name in orphans:
        try:
            channel.execute("block-dirty-bitmap-remove", {"node": node, "name": name})
        except KvmopsError as err:
            say(f"could not remove bitmap {name} of an unfinished backup from {node}: {err}")
            continue
        say(f"removed bitmap {name} from node {node}: no complete backup of it in this "
            "repository (an unfinished backup's; older bitmaps still hold its changes)")
    for partial in repo.partials(vm):
        repo.discard_partial(partial)
        say(f"removed unfinished backup {partial.name} left by an interrupted run")


def prune_bitmaps(channel: MonitorChannel, repo: Repository, vm: str, say: NoteFn) -> None:
    """Keep only the bitmaps future backups need (see :func:`checkpoints_to_keep`)."""
    manifests = repo.manifests(vm)
    keep = checkpoints_to_keep(manifests)
    if not keep:
        return
    nodes = channel.execute("query-named-block-nodes", {"flat": True}) or []
    referenced = {m.checkpoint for m in manifests if m.checkpoint}
    remove_bitmaps(channel, stale_bitmaps(nodes, keep, repo.identity(), referenced), say,
                   "no longer needed")


# ---------------------------------------------------------------- freezing
@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP (delivered at the end): the guest gets thawed."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def frozen(agent_socket: Path | None, wanted: bool, say: NoteFn,
           timeout: float = 30.0) -> Iterator[bool]:
    """Freeze the guest's file systems through the agent socket; always thaw."""
    if not wanted or agent_socket is None:
        say("freezing was turned off: the backup is crash-consistent" if not wanted else
            "no guest agent socket was given (--agent-socket), so nothing was frozen: the "
            "backup is crash-consistent")
        yield False
        return
    from kvmops.agent import guest
    from kvmops.agent.channel import AgentChannel, open_agent

    channel: AgentChannel | None = None
    try:
        channel = open_agent(socket=str(agent_socket))
        count = guest.fsfreeze(channel, timeout=timeout)
    except KvmopsError as err:
        say(f"could not freeze the guest's file systems ({err}): the backup is "
            "crash-consistent")
        if channel is not None:
            # A freeze that timed out may still have happened in the guest.
            with contextlib.suppress(KvmopsError):
                guest.fsthaw(channel, timeout=timeout)
            channel.close()
        yield False
        return
    assert channel is not None
    if count == 0:
        say("the guest agent froze no file system (none it can freeze is mounted): the "
            "backup is crash-consistent")
    try:
        yield count > 0
    finally:
        try:
            for attempt in range(5):
                try:
                    guest.fsthaw(channel, timeout=timeout)
                    break
                except KvmopsError as err:
                    if attempt == 4:
                        say(f"THAW FAILED through {agent_socket}: {err}; run 'kvmops guest "
                            f"fsthaw --socket {agent_socket}' now")
                    time.sleep(0.5)
        finally:
            channel.close()


def _qemu_version(channel: MonitorChannel) -> str:
    with contextlib.suppress(KvmopsError, KeyError, TypeError):
        qemu = channel.execute("query-version")["qemu"]
        return f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}"
    return ""


def _give_to_qemu(path: Path, socket: Path) -> None:
    """A QEMU run by another user must be able to write the target: give it the file."""
    with contextlib.suppress(OSError):
        owner = socket.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:
            os.chown(path, owner.st_uid, owner.st_gid)


# ---------------------------------------------------------------- the backup
def run_qmp_backup(req: QmpBackupRequest, *, progress: ProgressFn | None = None,
                   note: NoteFn | None = None) -> Manifest:
    """Back up the QEMU behind ``req.socket`` into the repository; return the manifest."""
    say = NoteLog(note)
    repo = req.repository or Repository(req.repo)
    with exclusive(repo, req.vm, "qmp"), open_monitor(socket=req.socket) as channel:
        return _run(channel, repo, req, progress, say)


def _run(channel: MonitorChannel, repo: Repository, req: QmpBackupRequest,
         progress: ProgressFn | None, say: NoteLog) -> Manifest:
    vm = req.vm
    where = f"the QEMU at {req.socket}"
    # The disks first, so a wrong --disk changes nothing; again after the recovery,
    # because a left-over job's filter node sits on top of its disk until it ends.
    discover_disks(channel.execute("query-block") or [], req.disks, req.exclude, where=where)
    recover(channel, repo, vm, say, req.job_timeout)
    disks, skipped = discover_disks(channel.execute("query-block") or [], req.disks,
                                    req.exclude, where=where)
    busy = [d.target for d in disks if d.fmt in _FILTER_DRIVERS]
    if busy:
        raise StateError(f"another block job works on disk(s) {', '.join(busy)} of {where}",
                         hint="see 'query-jobs' with 'kvmops qmp --socket'; wait for it or "
                              "cancel it")
    for message in skipped:
        say(message)
    nodes = channel.execute("query-named-block-nodes", {"flat": True}) or []
    history = repo.manifests(vm)
    plan = plan_backup(vm, [d.spec() for d in disks], history, req.mode,
                       trust_function(nodes, disks),
                       {d.target: d.virtual_size for d in disks if d.virtual_size})
    for message in plan.notes:
        say(message)

    run = BackupRun(repo, vm, progress=progress)
    backup_id = run.backup_id
    bitmap = checkpoint_name(backup_id, repo.identity())
    by_target = {d.target: d for d in disks}
    added_nodes: list[str] = []
    started_jobs: set[str] = set()
    bitmap_nodes: list[str] = []
    switch = PauseSwitch()

    def clean_up() -> Cleanup:
        _clean_up(channel, started_jobs, added_nodes, [(n, bitmap) for n in bitmap_nodes],
                  req.job_timeout, say)
        return Cleanup(f"the unfinished backup {backup_id}, its jobs, nodes and bitmap "
                       "were removed")

    pause = {signal.SIGUSR1: switch.handle, signal.SIGUSR2: switch.handle}
    try:
        with run.running(plan.type, clean_up, handlers=pause, transport="qmp") as partial:
            for item in plan.disks:
                disk = by_target[item.disk.target]
                path = partial / f"{disk.target}.qcow2"
                create_target(path, disk.virtual_size, item.parent, disk.target)
                _give_to_qemu(path, req.socket)
                channel.execute("blockdev-add", target_blockdev(disk.target, path))
                added_nodes.append(target_node(disk.target))
            actions = transaction_actions(plan, disks, bitmap, req.speed)
            with held_signals(), frozen(req.agent_socket, req.freeze, say) as was_frozen:
                channel.execute("transaction", {"actions": actions})
                started_jobs.update(a["data"]["job-id"] for a in actions
                                    if a["type"] == "blockdev-backup")
                bitmap_nodes.extend(a["data"]["node"] for a in actions
                                    if a["type"] == "block-dirty-bitmap-add")
            follow_jobs(channel, started_jobs, vm, progress, switch=switch)
            stuck = end_jobs(channel, started_jobs, req.job_timeout)
            started_jobs.intersection_update(stuck)
            for node in list(added_nodes):
                channel.execute("blockdev-del", {"node-name": node})
                added_nodes.remove(node)

            records = finish_files(repo, vm, partial, plan, compress=req.compress)
            written = sum(r.bytes_written for r in records)
            run.report(written, written)
            manifest = run.publish(run.manifest(
                type=plan.type, parent=plan.parent.id if plan.parent else None,
                checkpoint=bitmap,
                consistency=Consistency.APPLICATION if was_frozen else Consistency.CRASH,
                transport="qmp", disks=records, notes=say.messages,
                qemu_version=_qemu_version(channel),
            ), history=history)
    except (ChannelError, OperationTimeoutError) as err:
        if isinstance(err, BackupError):
            raise
        raise BackupError(f"backup of VM '{vm}' failed: {err}",
                          hint="nothing of it was kept") from err
    try:
        prune_bitmaps(channel, repo, vm, say)
    except KvmopsError as err:
        say(f"could not remove old bitmaps: {err}")
    return manifest


def _clean_up(channel: MonitorChannel, started_jobs: set[str], added_nodes: list[str],
              new_bitmaps: list[tuple[str, str]], timeout: float, say: NoteFn) -> None:
    """Undo a backup that did not complete in QEMU; QEMU keeps only the parent's bitmaps
    (the run discards the partial directory)."""
    try:
        if started_jobs:
            stuck = end_jobs(channel, started_jobs, timeout)
            if stuck:
                say(f"backup job(s) {', '.join(stuck)} did not end; the next backup ends them")
        delete_nodes(channel, added_nodes, say)
        remove_bitmaps(channel, new_bitmaps, say, "the next backup removes it")
    except KvmopsError as err:
        say(f"could not clean up in QEMU ({err}); the next backup does it")
