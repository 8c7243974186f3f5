"""Live migration through libvirt (``migrate3``): the flags and typed parameters, the
destination XML for copied disks, the job-stats poll, cancel, post-copy escalation and
the checkpoint hand-over. The use case (:mod:`kvmops.services.migration`) decides what
to do; this module only talks to libvirt.

Why client-driven (the client holds both connections, no ``VIR_MIGRATE_PEER2PEER``):
the source libvirtd then never needs to reach the target's libvirtd, so a target whose
libvirtd does not listen on the network (the machine's own, on its unix socket) works;
only the migration data stream goes straight from QEMU to QEMU, to the migration URI
``tcp://ADDRESS`` the caller names (the target as seen from the source).

Why ``PERSIST_DEST`` without ``UNDEFINE_SOURCE``: the source definition is removed by
the use case only after the target domain runs and is persistent; a failure at any
point before leaves the VM defined (and running, for a cancel) on the source.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt
from lxml import etree

from kvmops.errors import CancelledError, HypervisorError, StateError
from kvmops.host.connection import Host
from kvmops.host.errors import call, error_text, translate
from kvmops.host.jobwatch import running_job_stats, watch_job
from kvmops.migration.model import MigrationProgress
from kvmops.migration.preflight import DiskFact, parse_domain

POLL_S = 0.5
#: Memory passes after which a migration that asked for post-copy switches to it.
POSTCOPY_AFTER_ITERATIONS = 3
ABORT_WAIT_S = 120.0


@dataclass
class LiveRequest:
    """What one live migration is asked to do (already checked by the preflight)."""

    migrate_uri: str | None = None  # tcp://ADDRESS the data stream goes to
    copy_disks: list[str] = field(default_factory=list)  # disk targets copied (NBD)
    dest_xml: str | None = None  # the running definition on the target
    persist_xml: str | None = None  # the persistent definition on the target
    bandwidth_mib: int | None = None
    auto_converge: bool = False
    postcopy: bool = False
    max_downtime_ms: int | None = None
    unsafe: bool = False  # shared storage libvirt cannot recognise as shared


@dataclass
class LiveOutcome:
    downtime_ms: int | None
    data_transferred: int | None
    postcopy_started: bool


# --------------------------------------------------------------------------- disks
def copied_disks(xml: str) -> list[DiskFact]:
    """The disks ``--copy-storage`` copies live: writable file disks (not cdroms, not
    read-only or shareable ones, which stay where they are); the domain XML read by the
    preflight's one parser."""
    return [d for d in parse_domain(xml).disks if d.device == "disk" and d.type == "file"
            and d.path and not d.readonly and not d.shareable]


def rewrite_disk_paths(xml: str, paths: dict[str, str]) -> str:
    """The domain XML with disk ``target -> new path`` applied; a rewritten disk loses
    its backing chain (the copy is a flat image) and its ``source index``."""
    root = etree.fromstring(xml.encode())
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev not in paths:
            continue
        source = disk.find("source")
        if source is None:
            raise StateError(f"disk {dev} has no source to rewrite")
        source.set("file", paths[dev])
        if "index" in source.attrib:
            del source.attrib["index"]
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
    return etree.tostring(root, encoding="unicode")


def migratable_xml(dom: Any, *, inactive: bool = False) -> str:
    flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
    if inactive:
        flags |= libvirt.VIR_DOMAIN_XML_INACTIVE
    return str(call("reading the VM's XML", dom.XMLDesc, flags))


def capacity(dom: Any, path: str) -> int:
    """The virtual size of a disk of a running VM (libvirt asks QEMU: no probing)."""
    return int(call(f"reading the size of {path}", dom.blockInfo, path)[0])


# --------------------------------------------------------------------------- target pool
def pool_dir(target: Host, pool: str) -> str:
    """The directory of the target's active storage pool ``pool`` (dir/fs/netfs)."""
    try:
        raw = target.conn.storagePoolLookupByName(pool)
    except libvirt.libvirtError as err:
        raise translate(err, f"looking up pool '{pool}' on {target.uri}") from err
    if not raw.isActive():
        raise StateError(f"pool '{pool}' on {target.uri} is not running",
                         hint=f"start it: kvmops pool start {pool} --host TARGET")
    root = etree.fromstring(call("reading the pool's XML", raw.XMLDesc, 0).encode())
    path = root.findtext("./target/path")
    if root.get("type") not in ("dir", "fs", "netfs") or not path:
        raise StateError(f"pool '{pool}' on {target.uri} is a {root.get('type')} pool; "
                         "copied disks need a directory pool (dir, fs, netfs)",
                         hint="name a directory pool with --target-pool")
    return path


def create_volume(target: Host, pool: str, name: str, capacity_bytes: int, fmt: str
                  ) -> str:
    """A new empty volume for a copied disk on the target (its path); AlreadyExists when
    a file of that name is there (never overwritten)."""
    raw = target.conn.storagePoolLookupByName(pool)
    with contextlib.suppress(libvirt.libvirtError):
        raw.refresh(0)
    with contextlib.suppress(libvirt.libvirtError):
        raw.storageVolLookupByName(name)
        from kvmops.errors import AlreadyExistsError

        raise AlreadyExistsError(f"volume '{name}' already exists in pool '{pool}' on "
                                 f"{target.uri}",
                                 hint="remove it there, or use another --target-pool")
    vol_xml = (f"<volume><name>{_esc(name)}</name><capacity unit='bytes'>{capacity_bytes}"
               f"</capacity><target><format type='{_esc(fmt)}'/></target></volume>")
    vol = call(f"creating volume '{name}' on {target.uri}", raw.createXML, vol_xml, 0)
    return str(vol.path())


def delete_volume_path(target: Host, path: str) -> None:
    """Remove a volume we created on the target (cleanup after a failure)."""
    with contextlib.suppress(libvirt.libvirtError):
        target.conn.storageVolLookupByPath(path).delete(0)


def _esc(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;"))


# --------------------------------------------------------------------------- the job
def _flags(req: LiveRequest) -> int:
    flags: int = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
    if req.copy_disks:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    if req.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if req.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if req.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    return flags


def _params(req: LiveRequest) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if req.migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = req.migrate_uri
    if req.copy_disks:
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(req.copy_disks)
    if req.dest_xml:
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = req.dest_xml
    if req.persist_xml:
        params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = req.persist_xml
    if req.bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(req.bandwidth_mib)
    return params


def progress_of(stats: dict[str, Any], *, postcopy: bool = False) -> MigrationProgress:
    """libvirt's job stats as a progress report."""

    def num(key: str) -> int | None:
        value = stats.get(key)
        return int(value) if value is not None else None

    phase = "memory"
    if stats.get("disk_total") and (stats.get("disk_remaining") or 0) > 0:
        phase = "storage"
    if postcopy:
        phase = "postcopy"
    return MigrationProgress(
        phase=phase, data_total=num("data_total"), data_processed=num("data_processed"),
        data_remaining=num("data_remaining"), dirty_rate=num("memory_dirty_rate"),
        dirty_rate_unit="pages/s" if "memory_dirty_rate" in stats else None,
        iteration=num("memory_iteration"), expected_downtime_ms=num("downtime"),
        postcopy=postcopy)


def run_live(source: Host, target: Host, vm: str, req: LiveRequest, *,
             progress: Callable[[MigrationProgress], None] | None = None,
             cancelled: Callable[[], bool] | None = None) -> LiveOutcome:
    """Migrate the running VM ``vm`` from ``source`` to ``target`` (client-driven
    ``migrate3`` in a worker thread) while this thread polls the job stats every
    ``POLL_S``, reports them, applies the max downtime once the job runs, escalates to
    post-copy after ``POSTCOPY_AFTER_ITERATIONS`` memory passes when asked, and aborts
    the job (``abortJob``) when ``cancelled()`` turns true or on Ctrl-C: then the VM
    keeps running on the source and CancelledError is raised."""
    dom = source.domain(vm)
    flags = _flags(req)
    params = _params(req)
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["dom"] = dom.migrate3(target.conn, params, flags)
        except libvirt.libvirtError as err:
            outcome["error"] = err
        except BaseException as err:  # reported to the polling thread
            outcome["error"] = err

    thread = threading.Thread(target=worker, name=f"migrate-{vm}", daemon=True)
    thread.start()
    downtime_set = False
    postcopy_started = False
    last: dict[str, Any] = {}

    def tick(active: bool) -> None:
        nonlocal last, downtime_set, postcopy_started
        stats = running_job_stats(dom)
        if not stats:
            return
        last = stats
        if req.max_downtime_ms and not downtime_set:
            with contextlib.suppress(libvirt.libvirtError):
                dom.migrateSetMaxDowntime(int(req.max_downtime_ms), 0)
                downtime_set = True
        if (req.postcopy and not postcopy_started
                and (stats.get("memory_iteration") or 0) >= POSTCOPY_AFTER_ITERATIONS
                and not _storage_copying(stats)):
            with contextlib.suppress(libvirt.libvirtError):
                dom.migrateStartPostCopy(0)
                postcopy_started = True
        if progress is not None:
            progress(progress_of(stats, postcopy=postcopy_started))

    aborted = watch_job(thread, dom, poll_s=POLL_S, abort_wait_s=ABORT_WAIT_S,
                        cancelled=cancelled, tick=tick)
    error = outcome.get("error")
    if aborted is not None:
        if error is None:
            # The job finished before the abort reached it: it succeeded, report so.
            aborted = None
        else:
            raise CancelledError(f"migration of '{vm}' {aborted}: the VM keeps running on "
                                 f"{source.uri}", hint="run it again when ready")
    if isinstance(error, libvirt.libvirtError):
        raise _migration_error(error, vm)
    if error is not None:
        raise error
    done = _completed_stats(outcome.get("dom"), dom)
    if progress is not None and (done or last):
        report = progress_of(done or last, postcopy=postcopy_started)
        report.phase = "done"
        report.data_remaining = 0
        with contextlib.suppress(CancelledError):  # too late: the VM has moved
            progress(report)
    return LiveOutcome(downtime_ms=_int(done.get("downtime")) if done else None,
                       data_transferred=_int((done or last).get("data_processed")),
                       postcopy_started=postcopy_started)


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _storage_copying(stats: dict[str, Any]) -> bool:
    return bool(stats.get("disk_total")) and (stats.get("disk_remaining") or 0) > 0


def _completed_stats(target_dom: Any, source_dom: Any) -> dict[str, Any]:
    """The finished job's stats (with the measured downtime): the source keeps them."""
    for dom in (source_dom, target_dom):
        if dom is None:
            continue
        with contextlib.suppress(libvirt.libvirtError):
            stats = dict(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
            if stats:
                return stats
    return {}


def _migration_error(err: libvirt.libvirtError, vm: str) -> HypervisorError:
    text = error_text(err)
    return HypervisorError(f"migration of '{vm}' failed: {text}",
                           hint="the VM stays on its source host; see the target's "
                                "libvirtd log, then run it again")


# --------------------------------------------------------------------------- after
def target_ready(target: Host, vm: str) -> bool:
    """The migrated VM runs on the target and is persistent there."""
    try:
        dom = target.conn.lookupByName(vm)
        return bool(dom.isActive()) and bool(dom.isPersistent())
    except libvirt.libvirtError:
        return False


def _checkpoint_order(source_dom: Any) -> list[Any]:
    """The source's checkpoints, parents before children (REDEFINE needs the parent)."""
    try:
        checkpoints = list(source_dom.listAllCheckpoints(0))
    except (libvirt.libvirtError, AttributeError):
        return []
    by_name = {cp.getName(): cp for cp in checkpoints}
    ordered: list[Any] = []
    seen: set[str] = set()

    def visit(cp: Any) -> None:
        name = cp.getName()
        if name in seen:
            return
        seen.add(name)
        with contextlib.suppress(libvirt.libvirtError):
            parent = cp.getParent(0).getName()
            if parent in by_name:
                visit(by_name[parent])
        ordered.append(cp)

    for cp in checkpoints:
        visit(cp)
    return ordered


def handover_checkpoints(source_dom: Any, target_conn: Any) -> list[str]:
    """Redefine the source's libvirt checkpoints on the target
    (``VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE``), parents first, so incremental backups
    continue there; the names redefined. ``target_conn`` is a Host or a virConnect.
    A checkpoint the target refuses raises HypervisorError (the caller then notes that
    the next backup is a full one)."""
    conn = getattr(target_conn, "conn", target_conn)
    target_dom = conn.lookupByName(source_dom.name())
    done = []
    for cp in _checkpoint_order(source_dom):
        xml = call("reading a checkpoint", cp.getXMLDesc,
                   libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN)
        call(f"redefining checkpoint '{cp.getName()}' on the target",
             target_dom.checkpointCreateXML, xml,
             libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)
        done.append(str(cp.getName()))
    return done


def undefine_source(source: Host, vm: str) -> None:
    """Remove the (now shut off) source definition, with its checkpoint and snapshot
    metadata (the data went along with the VM)."""
    try:
        dom = source.conn.lookupByName(vm)
    except libvirt.libvirtError:
        return  # a transient VM leaves nothing behind on its source
    if dom.isActive():
        raise StateError(f"VM '{vm}' still runs on {source.uri}; its definition stays")
    if not dom.isPersistent():
        return
    flags = (libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
             | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
             | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
             | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    call(f"undefining '{vm}' on {source.uri}", dom.undefineFlags, flags)


def remove_target_definition(target: Host, vm: str, uuid: str) -> None:
    """Remove what a failed or cancelled migration left on the target: only a domain of
    the same UUID that does not run there (a half-defined target)."""
    try:
        dom = target.conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError:
        return
    if dom.name() != vm:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            return  # it runs there: the migration did happen, never removed
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def domain_uuid(source: Host, vm: str) -> str:
    return str(source.domain(vm).UUIDString())


def is_running(host: Host, vm: str) -> bool:
    try:
        return bool(host.conn.lookupByName(vm).isActive())
    except libvirt.libvirtError:
        return False


def remove_source_volume(source: Host, path: str) -> bool:
    """Delete a copied disk's file on the source through its storage pool (works for a
    remote source); False when no pool of the source holds it."""
    try:
        vol = source.conn.storageVolLookupByPath(path)
    except libvirt.libvirtError:
        return False
    try:
        vol.delete(0)
    except libvirt.libvirtError:
        return False
    return True


def remove_local_file(path: str) -> None:
    """Delete a copied disk's file on this machine (the caller checked the path policy)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def wait_gone(fn: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.2)
    return fn()
