"""Live migration's pure parts: the disks copied and their rewritten paths, libvirt's
flags and parameters, job stats as progress, the migration address, the refusal line."""

from __future__ import annotations

import libvirt
import pytest

from kvmops.errors import MigrationBlockedError, StateError, ValidationError
from kvmops.host import migration as live
from kvmops.migration.model import Blocker, MigrationOptions, Preflight
from kvmops.services import migration

XML = """<domain type='qemu'><name>v</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
  <source file='/img/a/v.qcow2' index='2'/>
  <backingStore type='file'><format type='raw'/><source file='/img/a/base.raw'/></backingStore>
  <target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/>
  <source file='/img/a/ro.raw'/><readonly/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/>
  </disk>
<disk type='network' device='disk'><source protocol='rbd' name='p/i'/>
  <target dev='vdc' bus='virtio'/></disk>
</devices></domain>"""


def test_only_writable_file_disks_are_copied() -> None:
    copied = live.copied_disks(XML)
    assert [(d.target, d.path, d.format) for d in copied] == [
        ("vda", "/img/a/v.qcow2", "qcow2")]
    assert {d.target for d in live.disks(XML)} == {"vda", "vdb", "sda", "vdc"}


def test_rewritten_disk_is_flat_at_its_new_path() -> None:
    out = live.rewrite_disk_paths(XML, {"vda": "/pool/v.qcow2"})
    disks = {d.target: d for d in live.disks(out)}
    assert disks["vda"].path == "/pool/v.qcow2"
    assert disks["vdb"].path == "/img/a/ro.raw"  # untouched
    assert "backingStore" not in out and "index=" not in out
    assert "/iso/x.iso" in out


def test_rewriting_a_disk_without_source_is_refused() -> None:
    xml = ("<domain><devices><disk type='file' device='disk'><target dev='vda'/></disk>"
           "</devices></domain>")
    with pytest.raises(StateError, match="vda"):
        live.rewrite_disk_paths(xml, {"vda": "/x"})


def test_flags_and_params_follow_the_options() -> None:
    req = live.LiveRequest(migrate_uri="tcp://10.0.0.1", copy_disks=["vda"],
                           dest_xml="<d/>", persist_xml="<p/>", bandwidth_mib=5,
                           auto_converge=True, postcopy=True)
    flags = live._flags(req)
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PERSIST_DEST,
                 libvirt.VIR_MIGRATE_NON_SHARED_DISK, libvirt.VIR_MIGRATE_AUTO_CONVERGE,
                 libvirt.VIR_MIGRATE_POSTCOPY):
        assert flags & flag
    for flag in (libvirt.VIR_MIGRATE_UNDEFINE_SOURCE, libvirt.VIR_MIGRATE_PEER2PEER,
                 libvirt.VIR_MIGRATE_UNSAFE):
        assert not flags & flag
    assert live._params(req) == {
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.0.0.1",
        libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: ["vda"],
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: "<d/>",
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: "<p/>",
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 5}
    shared = live.LiveRequest(unsafe=True)
    assert live._flags(shared) & libvirt.VIR_MIGRATE_UNSAFE
    assert live._params(shared) == {}


def test_job_stats_become_progress() -> None:
    stats = {"type": 2, "data_total": 300, "data_processed": 100, "data_remaining": 200,
             "memory_dirty_rate": 40, "memory_iteration": 2, "downtime": 30}
    report = live.progress_of(stats)
    assert (report.phase, report.data_total, report.data_processed, report.data_remaining,
            report.dirty_rate, report.iteration, report.expected_downtime_ms) == (
        "memory", 300, 100, 200, 40, 2, 30)
    assert report.dirty_rate_unit == "pages/s"
    text = migration.describe(report)
    assert "200 B left" in text and "pass 2" in text and "~30 ms" in text
    disk = live.progress_of({**stats, "disk_total": 10, "disk_remaining": 5})
    assert disk.phase == "storage"


def test_migration_address() -> None:
    tcp = "qemu+tcp://10.250.3.2/system"
    assert migration.migration_address("qemu:///system", tcp) == "tcp://10.250.3.2"
    assert migration.migration_address("qemu:///system", tcp, "192.0.2.7") == \
        "tcp://192.0.2.7"
    assert migration.migration_address("qemu:///system", "qemu+ssh://root@[fd00::2]/system"
                                       ) == "tcp://[fd00::2]"
    # Back to this machine: its address on the route to the source (loopback here).
    assert migration.migration_address("qemu+tcp://127.0.0.1/system", "qemu:///system") \
        == "tcp://127.0.0.1"


def test_refusal_names_every_blocker_with_its_remedy() -> None:
    found = Preflight(vm="v", source="local", target="h2", kind="live", blockers=[
        Blocker("cpu", "CPU model X unsupported on h2", "use a baseline CPU"),
        Blocker("local-disk", "disk vda is local", "add --copy-storage")])
    err = migration.refuse(found)
    assert isinstance(err, MigrationBlockedError) and isinstance(err, StateError)
    assert err.exit_code == 24 and "\n" not in str(err)
    for part in ("cpu:", "use a baseline CPU", "local-disk:", "add --copy-storage"):
        assert part in str(err)
    assert err.blockers == found.blockers


@pytest.mark.parametrize("options, what", [
    (MigrationOptions(target="h2", bandwidth_mib=0), "bandwidth"),
    (MigrationOptions(target="h2", max_downtime_ms=0), "downtime"),
    (MigrationOptions(target="h2", target_pool="p"), "--copy-storage"),
    (MigrationOptions(target="-oX"), "host name"),
])
def test_options_are_checked(options: MigrationOptions, what: str) -> None:
    with pytest.raises(ValidationError, match=what):
        migration.validate(options)
