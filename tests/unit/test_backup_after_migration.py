"""Backups after a migration (issue 12), the pure part: the manifest records the host,
``moved_since`` tells a VM that moved since its last backup, and ``migration_note`` says
whether the chain went on (checkpoint and bitmaps came along) or the backup is a full."""

from __future__ import annotations

from kvmops.backup.model import BackupType, Manifest
from kvmops.backup.plan import migration_note, moved_since, plan_backup
from kvmops.vm.domxml import DiskSpec
from tests.unit.test_backup_model import manifest

A, B = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
DISK = [DiskSpec(target="vda", device="disk", source="/i/vda", fmt="qcow2")]


def on(m: Manifest, uuid: str, name: str) -> Manifest:
    return m.model_copy(update={"host_uuid": uuid, "host": name})


def test_moved_since_compares_the_newest_complete_backup_host() -> None:
    full = on(manifest(0, BackupType.FULL, None), A, "host-a")
    assert moved_since([full], A) is None
    assert moved_since([full], B) == full
    assert moved_since([full], B, "host-b") == full
    # The same host name with another UUID: a daemon that made up a temporary UUID at
    # its restart (no SMBIOS UUID), not a migration.
    assert moved_since([full], B, "host-a") is None
    assert moved_since([], B) is None
    assert moved_since([full], "") is None  # host unknown here: no claim
    older = manifest(0, BackupType.FULL, None)  # before manifests recorded the host
    assert older.host_uuid == "" and moved_since([older], B) is None
    unfinished = on(manifest(1, BackupType.INCREMENTAL, 0), B, "host-b").model_copy(
        update={"complete": False})
    assert moved_since([full, unfinished], B) == full


def test_note_after_migration_chain_continues_or_full() -> None:
    full = on(manifest(0, BackupType.FULL, None), A, "host-a")
    continued = plan_backup("vm", DISK, [full], None, lambda cp, t: None)
    note = migration_note("vm", full, "host-b", continued, untrusted=False)
    assert note is not None and "migrated from host host-a to host-b" in note
    assert f"checkpoint {full.checkpoint}" in note and "incremental" in note

    fell_back = plan_backup("vm", DISK, [full], None,
                            lambda cp, t: f"bitmap {cp} not found on the disk")
    assert fell_back.type is BackupType.FULL
    note = migration_note("vm", full, "host-b", fell_back, untrusted=True)
    assert note is not None and "did not come along" in note and "full" in note
    assert full.id in note
    # A full asked for (or taken for another reason) gets no migration note.
    asked = plan_backup("vm", DISK, [full], BackupType.FULL, lambda cp, t: None)
    assert migration_note("vm", full, "host-b", asked, untrusted=False) is None
