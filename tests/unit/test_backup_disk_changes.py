"""Planning across disk changes: a resized disk gets a full of its own, a removed one ends
its chain, and the other disks' chains go on (issue 14, item 8)."""

from __future__ import annotations

from kvmops.backup.model import BackupType
from kvmops.backup.plan import plan_backup
from kvmops.vm.domxml import DiskSpec
from tests.unit.test_backup_model import DISKS, manifest, trusted

FULL, INC = BackupType.FULL, BackupType.INCREMENTAL


def test_resized_disk_gets_its_own_full_and_the_others_continue() -> None:
    ms = [manifest(0, FULL, None, targets=("vda", "vdb"))]  # recorded virtual size 1
    plan = plan_backup("vm", DISKS, ms, None, trusted, {"vda": 1, "vdb": 2 * 1048576})
    assert plan.type is INC and plan.parent is not None
    modes = {d.disk.target: (d.mode, d.parent) for d in plan.disks}
    assert modes == {"vda": (INC, ms[0].id), "vdb": (FULL, None)}
    assert any("vdb" in n and "resized" in n and "2 MiB" in n for n in plan.notes)
    assert all(d.checkpoint for d in plan.disks)  # the resized disk is tracked from now on


def test_same_size_or_unknown_size_continues() -> None:
    ms = [manifest(0, FULL, None, targets=("vda", "vdb"))]
    for sizes in (None, {"vda": 1, "vdb": 1}, {"vda": 1}):
        plan = plan_backup("vm", DISKS, ms, None, trusted, sizes)
        assert {d.mode for d in plan.disks} == {INC}
        assert not any("resized" in n for n in plan.notes)


def test_every_disk_resized_makes_a_full() -> None:
    ms = [manifest(0, FULL, None, targets=("vda", "vdb"))]
    plan = plan_backup("vm", DISKS, ms, INC, trusted, {"vda": 5, "vdb": 5})
    assert plan.type is FULL and plan.parent is None and plan.base_checkpoint is None


def test_removed_disk_ends_its_chain_with_a_note() -> None:
    ms = [manifest(0, FULL, None, targets=("vda", "vdb"))]
    plan = plan_backup("vm", [DiskSpec(target="vda", source="/i/vda")], ms, None, trusted,
                       {"vda": 1})
    assert plan.type is INC and [d.disk.target for d in plan.disks] == ["vda"]
    assert plan.disks[0].parent == ms[0].id
    assert any("vdb" in n and "chain ends" in n for n in plan.notes)


def test_full_request_says_nothing_about_removed_disks() -> None:
    ms = [manifest(0, FULL, None, targets=("vda", "vdb"))]
    plan = plan_backup("vm", [DiskSpec(target="vda", source="/i/vda")], ms, FULL, trusted)
    assert plan.type is FULL and not plan.notes
