"""Snapshot support table and decisions: pure functions, no libvirt."""

from __future__ import annotations

import pytest

from kvmops.errors import StateError, UnsupportedError, ValidationError
from kvmops.snapshot.support import (
    DiskFacts,
    Kind,
    VmFacts,
    decide_create,
    decide_revert,
    deletion_blockers,
    overlay_path,
    packed,
    support_for,
    vm_facts,
)


def _facts(active: bool = True, fmt: str = "qcow2", pflash: bool = False,
           hostdevs: list[str] | None = None) -> VmFacts:
    return VmFacts("vm1", active, [DiskFacts("vda", fmt, "/img/vm1-vda." + fmt),
                                   DiskFacts("hdc", "raw", None, readonly=True,
                                             device="cdrom")],
                   pflash=pflash, hostdevs=hostdevs or [])


@pytest.mark.parametrize(("version", "revert", "delete", "by_kvmops"), [
    (packed(8, 10, 0), False, False, True),
    (packed(9, 0, 0), False, False, True),  # libvirt deletes, but kvmops owns the layout
    (packed(9, 8, 0), False, False, True),
    (packed(9, 9, 0), True, True, False),
    (packed(10, 0, 0), True, True, False),
])
def test_support_table(version: int, revert: bool, delete: bool, by_kvmops: bool) -> None:
    support = support_for(version)
    assert support.native_external_revert is revert
    assert support.native_external_delete is delete
    assert support.external_by_kvmops is by_kvmops


def test_running_qcow2_vm_gets_internal_snapshot_with_memory() -> None:
    decision = decide_create(_facts(), memory=False, disk_only=False, quiesce=False)
    assert (decision.kind, decision.memory) == (Kind.INTERNAL, True)


def test_shut_off_vm_gets_internal_disk_only() -> None:
    decision = decide_create(_facts(active=False), memory=False, disk_only=False,
                             quiesce=False)
    assert (decision.kind, decision.memory) == (Kind.INTERNAL, False)


def test_disk_only_and_quiesce_are_external() -> None:
    assert decide_create(_facts(), memory=False, disk_only=True, quiesce=False).kind \
        is Kind.EXTERNAL
    decision = decide_create(_facts(), memory=False, disk_only=False, quiesce=True)
    assert decision.kind is Kind.EXTERNAL and decision.quiesce and decision.notes


@pytest.mark.parametrize("facts", [_facts(fmt="raw"), _facts(pflash=True)])
def test_external_by_default_where_internal_cannot_work(facts: VmFacts) -> None:
    decision = decide_create(facts, memory=False, disk_only=False, quiesce=False)
    assert decision.kind is Kind.EXTERNAL and not decision.memory
    assert decision.notes


def test_internal_snapshot_on_raw_disk_refused() -> None:
    with pytest.raises(UnsupportedError, match="disk vda is raw"):
        decide_create(_facts(fmt="raw"), memory=True, disk_only=False, quiesce=False)


def test_memory_with_hostdev_refused() -> None:
    xml = """<domain type='kvm'><name>vm1</name><os><type>hvm</type></os><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <hostdev mode='subsystem' type='pci' managed='yes'><source>
        <address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>
    </devices></domain>"""
    facts = vm_facts("vm1", True, xml)
    assert facts.hostdevs == ["pci 0000:03:00.0"]
    for memory in (True, False):
        with pytest.raises(UnsupportedError, match=r"passed-through host device.*03:00\.0"):
            decide_create(facts, memory=memory, disk_only=False, quiesce=False)
    # Disk-only is fine: nothing of the device's state is saved.
    assert decide_create(facts, memory=False, disk_only=True, quiesce=False).kind \
        is Kind.EXTERNAL


def test_vm_facts_reads_pflash_and_usb_hostdev() -> None:
    xml = """<domain type='kvm'><name>vm1</name><os>
      <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader></os>
      <devices><hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/>
      <product id='0xbeef'/></source></hostdev></devices></domain>"""
    facts = vm_facts("vm1", False, xml)
    assert facts.pflash and facts.hostdevs == ["usb 0x1234:0xbeef"]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"memory": True, "disk_only": True, "quiesce": False}, ValidationError),
    ({"memory": True, "disk_only": False, "quiesce": True}, ValidationError),
])
def test_conflicting_options(kwargs: dict[str, bool], error: type[Exception]) -> None:
    with pytest.raises(error):
        decide_create(_facts(), **kwargs)


def test_shut_off_vm_has_no_memory_or_quiesce() -> None:
    with pytest.raises(StateError, match="shut off"):
        decide_create(_facts(active=False), memory=True, disk_only=False, quiesce=False)
    with pytest.raises(StateError, match="quiesce"):
        decide_create(_facts(active=False), memory=False, disk_only=True, quiesce=True)


def test_revert_running_vm_to_disk_only_needs_force() -> None:
    with pytest.raises(StateError, match="running state is lost"):
        decide_revert("vm1", "s1", vm_active=True, snapshot_memory=False, running=False,
                      paused=False, force=False)
    decision = decide_revert("vm1", "s1", vm_active=True, snapshot_memory=False,
                             running=True, paused=False, force=True)
    assert decision.end_state == "running" and decision.force


def test_revert_without_force_where_nothing_is_lost() -> None:
    assert decide_revert("vm1", "s1", vm_active=True, snapshot_memory=True, running=False,
                         paused=False, force=False).end_state is None
    assert decide_revert("vm1", "s1", vm_active=False, snapshot_memory=False, running=False,
                         paused=True, force=False).end_state == "paused"
    with pytest.raises(ValidationError):
        decide_revert("vm1", "s1", vm_active=False, snapshot_memory=False, running=True,
                      paused=True, force=False)


def test_delete_refuses_what_children_need() -> None:
    with pytest.raises(StateError, match="child snapshot 'b'"):
        deletion_blockers("a", Kind.EXTERNAL, {"b": Kind.INTERNAL}, with_children=False)
    with pytest.raises(StateError, match="child snapshot 'c'"):
        deletion_blockers("a", Kind.INTERNAL, {"b": Kind.INTERNAL, "c": Kind.EXTERNAL},
                          with_children=False)
    deletion_blockers("a", Kind.INTERNAL, {"b": Kind.INTERNAL}, with_children=False)
    deletion_blockers("a", Kind.EXTERNAL, {"b": Kind.EXTERNAL}, with_children=True)


def test_overlay_names() -> None:
    assert overlay_path("/d/vm-vda.qcow2", "s1", set()) == "/d/vm-vda.s1.qcow2"
    assert overlay_path("/d/vm-vda.raw", "s1", set()) == "/d/vm-vda.s1.qcow2"
    assert overlay_path("/d/vm-vda.qcow2", "s1", {"/d/vm-vda.s1.qcow2"}) == \
        "/d/vm-vda.s1.2.qcow2"
