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

from kvmops.errors import KvmopsError
from kvmops.host.domain import Checkpoint, Domain
from kvmops.vm.domxml import DomainDocument

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


def kvmops_checkpoints(domain: Domain) -> list[Checkpoint]:
    """Every kvmops checkpoint of the VM, of any repository, oldest first."""
    return [c for c in Domain.of(domain).checkpoints() if is_kvmops(c.name)]


def foreign_checkpoints(domain: Domain) -> list[str]:
    return [c.name for c in Domain.of(domain).checkpoints() if not is_kvmops(c.name)]


def delete_checkpoint(domain: Domain, name: str, note: NoteFn | None = None) -> None:
    """Delete a checkpoint, merging its bitmaps into its parent's (libvirt semantics)."""
    domain = Domain.of(domain)
    checkpoint = domain.find_checkpoint(name, what=f"deleting checkpoint {name}")
    if checkpoint is None:
        return
    what = f"deleting checkpoint {name} of VM '{domain.name}'"
    try:
        checkpoint.delete(what=what)
    except KvmopsError as err:
        # Its bitmaps are broken (e.g. inconsistent after a crash): drop the metadata and the
        # bitmaps; the next backup of that disk is a full anyway.
        try:
            checkpoint.delete(metadata_only=True, what=what)
        except KvmopsError as err2:
            raise err2 from err
        if domain.is_active():
            remove_bitmaps(domain, name)
        if note:
            note(f"checkpoint {name} could not be merged "
                 f"({err.message.removeprefix(f'{what}: ')}); removed it")


def qmp_command(domain: Domain, command: str, arguments: dict[str, Any] | None = None
                ) -> Any:
    """One QMP command through libvirt; its ``return`` value."""
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    reply = Domain.of(domain).monitor_command(
        json.dumps(request), what=f"QMP command '{command}'")
    return json.loads(reply).get("return")


def node_bitmaps(domain: Domain) -> dict[str, list[dict[str, Any]]]:
    """Dirty bitmaps per disk target of a running VM (read-only QMP query)."""
    domain = Domain.of(domain)
    node_of = DomainDocument(domain.xml()).disk_nodes()
    result: dict[str, list[dict[str, Any]]] = {}
    try:
        nodes = qmp_command(domain, "query-named-block-nodes", {"flat": True})
    except KvmopsError:
        return result
    for node in nodes or []:
        dev = node_of.get(node.get("node-name", ""))
        if dev:
            result[dev] = list(node.get("dirty-bitmaps", []))
    return result


def remove_bitmaps(domain: Domain, name: str) -> None:
    """Remove a bitmap left behind by a checkpoint whose metadata is gone."""
    domain = Domain.of(domain)
    for node in DomainDocument(domain.xml()).disk_nodes():
        with contextlib.suppress(KvmopsError):
            qmp_command(domain, "block-dirty-bitmap-remove", {"node": node, "name": name})
