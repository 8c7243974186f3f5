"""Live migration's pure parts: the disks copied and their rewritten paths, libvirt's
flags and parameters, job stats as progress, the migration address, the refusal line."""

from __future__ import annotations

import libvirt
import pytest

from kvmops.errors import MigrationBlockedError, StateError, ValidationError
from kvmops.host import migration as live
from kvmops.migration.model import Blocker, MigrationOptions, Preflight
from kvmops.migration.preflight import parse_domain
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
    assert [(d.target, d.path, d.fmt) for d in copied] == [
        ("vda", "/img/a/v.qcow2", "qcow2")]


def test_rewritten_disk_is_flat_at_its_new_path() -> None:
    out = live.rewrite_disk_paths(XML, {"vda": "/pool/v.qcow2"})
    disks = {d.target: d for d in parse_domain(out).disks}
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


class _FakeDom:
    """A virDomain whose migrate3 runs until it finishes (after ``passes`` polls), is
    aborted, or switches to post-copy; its job stats count memory passes."""

    def __init__(self, passes: int = 1000) -> None:
        import threading

        self.passes = passes
        self.polls = 0
        self.calls: list[str] = []
        self.done = threading.Event()
        self.aborted = False

    def migrate3(self, dconn: object, params: dict[str, object], flags: int) -> object:
        self.calls.append("migrate3")
        self.done.wait(30)
        if self.aborted:
            raise libvirt.libvirtError("operation aborted: migration out job: canceled by client")
        return self

    def jobStats(self, flags: int = 0) -> dict[str, int]:
        if flags:
            return {"type": 3, "downtime": 42, "data_processed": 1000}
        self.polls += 1
        if self.polls >= self.passes:
            self.done.set()
        return {"type": 2, "data_total": 1000, "data_processed": 10 * self.polls,
                "data_remaining": 1000 - 10 * self.polls, "memory_iteration": self.polls}

    def migrateSetMaxDowntime(self, ms: int, flags: int) -> None:
        self.calls.append(f"downtime {ms}")

    def migrateStartPostCopy(self, flags: int) -> None:
        self.calls.append("postcopy")
        self.done.set()

    def abortJob(self) -> None:
        self.calls.append("abort")
        self.aborted = True
        self.done.set()


class _FakeHost:
    uri = "qemu:///system"
    conn = object()

    def __init__(self, dom: _FakeDom) -> None:
        self.dom = dom

    def domain(self, name: str) -> _FakeDom:
        return self.dom


@pytest.fixture
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "POLL_S", 0.01)


def test_run_live_reports_sets_downtime_and_finishes(fast_poll: None) -> None:
    from kvmops.migration.model import MigrationProgress

    dom = _FakeDom(passes=3)
    seen: list[MigrationProgress] = []
    out = live.run_live(_FakeHost(dom), _FakeHost(dom), "v",  # type: ignore[arg-type]
                        live.LiveRequest(max_downtime_ms=300), progress=seen.append)
    assert (out.downtime_ms, out.data_transferred, out.postcopy_started) == (42, 1000, False)
    assert dom.calls.count("downtime 300") == 1 and "abort" not in dom.calls
    assert seen[0].iteration == 1 and seen[-1].phase == "done"


def test_run_live_escalates_to_postcopy_after_three_passes(fast_poll: None) -> None:
    dom = _FakeDom()
    out = live.run_live(_FakeHost(dom), _FakeHost(dom), "v",  # type: ignore[arg-type]
                        live.LiveRequest(postcopy=True))
    assert out.postcopy_started and dom.calls == ["migrate3", "postcopy"]
    assert dom.polls == live.POSTCOPY_AFTER_ITERATIONS


def test_run_live_cancel_aborts_the_job(fast_poll: None) -> None:
    from kvmops.errors import CancelledError

    dom = _FakeDom()
    with pytest.raises(CancelledError, match="keeps running"):
        live.run_live(_FakeHost(dom), _FakeHost(dom), "v",  # type: ignore[arg-type]
                      live.LiveRequest(), cancelled=lambda: dom.polls >= 2)
    assert dom.calls.count("abort") == 1


def test_run_live_progress_that_raises_cancel_aborts(fast_poll: None) -> None:
    """The API's job context raises CancelledError from a progress report."""
    from kvmops.errors import CancelledError

    dom = _FakeDom()

    def progress(_: object) -> None:
        raise CancelledError("job cancelled")

    with pytest.raises(CancelledError):
        live.run_live(_FakeHost(dom), _FakeHost(dom), "v",  # type: ignore[arg-type]
                      live.LiveRequest(), progress=progress)
    assert "abort" in dom.calls


def test_run_live_ctrl_c_aborts_the_job(fast_poll: None) -> None:
    """Ctrl-C at the command line reaches the polling thread: the job is aborted and the
    VM stays on the source (CancelledError, exit code 130)."""
    from kvmops.errors import CancelledError

    dom = _FakeDom()

    def progress(_: object) -> None:
        if dom.polls >= 2:
            raise KeyboardInterrupt

    with pytest.raises(CancelledError, match="interrupted") as caught:
        live.run_live(_FakeHost(dom), _FakeHost(dom), "v",  # type: ignore[arg-type]
                      live.LiveRequest(), progress=progress)
    assert caught.value.exit_code == 130 and dom.calls.count("abort") == 1
