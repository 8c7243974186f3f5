"""Backup checkpoints of a VM: which are kvmops', which repository owns each, deleting
them the way libvirt merges bitmaps, and the dirty bitmaps behind them in QEMU.

Used by the backup engines (which create, keep and prune checkpoints per repository)
and by snapshots (a revert ends every chain). Names:

* ``kvmops-REPO-BACKUPID``: a checkpoint of repository ``REPO`` (its 8-hex identity);
* ``kvmops-BACKUPID``: written before repositories had identities; owned by the
  repository whose manifests name it;
* anything else: not kvmops', never touched.

Each repository deletes only checkpoints it owns. libvirt merges a deleted
checkpoint's bitmap into its parent, so another repository's chain, based on its own
older checkpoint, still sees every change.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import libvirt
import libvirt_qemu
from lxml import etree

from kvmops.host.connection import call, connection_lost, translate

CHECKPOINT_PREFIX = "kvmops-"
NoteFn = Callable[[str], None]
_OWNED = re.compile(r"^kvmops-([0-9a-f]{8})-(\d{8}T\d{6}\.\d{6}Z)$")
_LEGACY = re.compile(r"^kvmops-(\d{8}T\d{6}\.\d{6}Z)$")


def checkpoint_name(backup_id: str, repo_id: str | None = None) -> str:
    """The checkpoint (and bitmap) of a backup: ``kvmops-REPO-ID``."""
    return f"{CHECKPOINT_PREFIX}{repo_id}-{backup_id}" if repo_id else \
        f"{CHECKPOINT_PREFIX}{backup_id}"


def checkpoint_repo(name: str) -> str | None:
    """The repository identity in a checkpoint name (None for old and foreign names)."""
    match = _OWNED.match(name)
    return match.group(1) if match else None


def is_kvmops(name: str) -> bool:
    return bool(_OWNED.match(name) or _LEGACY.match(name))


def owned_by(names: Iterable[str], repo_id: str, referenced: set[str]) -> list[str]:
    """The names of ``names`` that repository ``repo_id`` owns: its own prefix, or an old
    unprefixed name its manifests reference."""
    return [n for n in names if checkpoint_repo(n) == repo_id
            or (_LEGACY.match(n) is not None and n in referenced)]


def kvmops_checkpoints(domain: libvirt.virDomain) -> list[libvirt.virDomainCheckpoint]:
    """Every kvmops checkpoint of the VM, of any repository, oldest first."""
    return [c for c in call("listing checkpoints", domain.listAllCheckpoints, 0)
            if is_kvmops(c.getName())]


def foreign_checkpoints(domain: libvirt.virDomain) -> list[str]:
    return [c.getName() for c in call("listing checkpoints", domain.listAllCheckpoints, 0)
            if not is_kvmops(c.getName())]


def delete_checkpoint(domain: libvirt.virDomain, name: str, note: NoteFn | None = None) -> None:
    """Delete a checkpoint, merging its bitmaps into its parent's (libvirt semantics)."""
    try:
        checkpoint = domain.checkpointLookupByName(name, 0)
    except libvirt.libvirtError as err:
        if connection_lost(err):
            raise translate(err, f"deleting checkpoint {name}") from err
        return
    try:
        checkpoint.delete(0)
    except libvirt.libvirtError as err:
        # Its bitmaps are broken (e.g. inconsistent after a crash): drop the metadata and the
        # bitmaps; the next backup of that disk is a full anyway.
        try:
            checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        except libvirt.libvirtError as err2:
            raise translate(err2, f"deleting checkpoint {name} of VM '{domain.name()}'"
                            ) from err
        if domain.isActive():
            remove_bitmaps(domain, name)
        if note:
            note(f"checkpoint {name} could not be merged ({err.get_error_message()}); "
                 "removed it")


def qmp_command(domain: libvirt.virDomain, command: str, arguments: dict[str, Any] | None = None
         ) -> Any:
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    reply = libvirt_qemu.qemuMonitorCommand(domain, json.dumps(request), 0)
    return json.loads(reply).get("return")


def node_bitmaps(domain: libvirt.virDomain) -> dict[str, list[dict[str, Any]]]:
    """Dirty bitmaps per disk target of a running VM (read-only QMP query)."""
    xml = etree.fromstring(domain.XMLDesc(0).encode())
    node_of: dict[str, str] = {}
    for disk in xml.findall("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        if target is None or source is None or source.get("index") is None:
            continue
        node_of[f"libvirt-{source.get('index')}-format"] = target.get("dev", "")
    result: dict[str, list[dict[str, Any]]] = {}
    try:
        nodes = qmp_command(domain, "query-named-block-nodes", {"flat": True})
    except libvirt.libvirtError:
        return result
    for node in nodes or []:
        dev = node_of.get(node.get("node-name", ""))
        if dev:
            result[dev] = list(node.get("dirty-bitmaps", []))
    return result


def remove_bitmaps(domain: libvirt.virDomain, name: str) -> None:
    """Remove a bitmap left behind by a checkpoint whose metadata is gone."""
    xml = etree.fromstring(domain.XMLDesc(0).encode())
    for disk in xml.findall("devices/disk/source[@index]"):
        node = f"libvirt-{disk.get('index')}-format"
        with contextlib.suppress(libvirt.libvirtError):
            qmp_command(domain, "block-dirty-bitmap-remove", {"node": node, "name": name})
