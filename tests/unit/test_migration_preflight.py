"""The migration preflight's rules (kvmops.migration.preflight) on fake facts: one test per
blocker code, each blocker naming the object and the host with a remedy, every blocker
reported at once; and the CPU check (kvmops.migration.cpu) on domain capabilities captured
from this machine's libvirt (``virsh domcapabilities --virttype qemu``: data/migration/
domcaps-qemu.xml) and a variant for an older target (domcaps-qemu-older.xml: Westmere and
Nehalem not usable, with the features libvirt names as blockers; its host model disables
``pku``) -- the two test daemons share one CPU, so only captured XML can differ."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmops.migration.cpu import (
    cpu_problems,
    host_cpu,
    host_model_xml,
    parse_domain_cpu,
    suggest_baseline,
)
from kvmops.migration.model import MigrationOptions, Preflight
from kvmops.migration.preflight import (
    DiskFact,
    HostdevFact,
    MigrationFacts,
    NicFact,
    PoolFact,
    TargetFacts,
    VmFacts,
    check,
    parse_domain,
    passthrough_devices,
)

DATA = Path(__file__).parent / "data" / "migration"
SOURCE_CAPS = (DATA / "domcaps-qemu.xml").read_text()
OLDER_CAPS = (DATA / "domcaps-qemu-older.xml").read_text()
GIB = 1024**3


def _vm(**kw: object) -> VmFacts:
    base: dict[str, object] = {
        "name": "web1", "uuid": "0b0e5f5e-0000-4000-8000-000000000001", "active": True,
        "memory": 1 * GIB,
        "disks": [DiskFact(target="vda", device="disk", type="file",
                           path="/shared/web1.qcow2", size=GIB, on_target="shared")],
        "nics": [NicFact(type="network", mac="52:54:00:00:00:01", source="lan")]}
    base.update(kw)
    return VmFacts(**base)  # type: ignore[arg-type]


def _target(**kw: object) -> TargetFacts:
    base: dict[str, object] = {
        "networks": {"lan": True}, "interfaces": {"lo", "eth0", "br0"},
        "pools": {"shared": PoolFact("shared", True, 100 * GIB, "/shared"),
                  "fast": PoolFact("fast", True, 100 * GIB, "/fast")},
        "domains": {"other": "0b0e5f5e-0000-4000-8000-000000000099"},
        "free_memory": 16 * GIB}
    base.update(kw)
    return TargetFacts(**base)  # type: ignore[arg-type]


def _run(vm: VmFacts | None = None, target: TargetFacts | None = None, *,
         kind: str = "live", **options: object) -> Preflight:
    facts = MigrationFacts(vm=vm or _vm(), target=target or _target())
    return check(facts, MigrationOptions(target="h2", **options),  # type: ignore[arg-type]
                 source="h1", target="h2", kind=kind)  # type: ignore[arg-type]


def _codes(result: Preflight) -> list[str]:
    return [b.code for b in result.blockers]


def _only(result: Preflight, code: str) -> str:
    """The one blocker's message (it has a remedy)."""
    assert _codes(result) == [code], result.blockers
    blocker = result.blockers[0]
    assert blocker.remedy
    return blocker.message


def test_nothing_in_the_way_is_ok() -> None:
    result = _run()
    assert result.ok and result.blockers == [] and result.warnings == []
    assert _run(_vm(active=False), kind="cold").ok


def test_state_live_needs_running_cold_needs_shut_off() -> None:
    message = _only(_run(_vm(active=False)), "state")
    assert "web1" in message and "h1" in message and "shut off" in message
    assert "running" in _only(_run(kind="cold"), "state")
    assert "migration" in _only(_run(_vm(job="migration")), "state")


def test_name_clash_by_name_and_by_uuid() -> None:
    message = _only(_run(target=_target(domains={"web1": "x"})), "name-clash")
    assert "'web1'" in message and "h2" in message
    twin = _target(domains={"web1-old": "0b0e5f5e-0000-4000-8000-000000000001"})
    assert "'web1-old'" in _only(_run(target=twin), "name-clash")
    assert _codes(_run(_vm(active=False), _target(domains={"web1": "x"}), kind="cold")
                  ) == ["name-clash"]


def test_hostdev_blocks_live_and_cold() -> None:
    vm = _vm(hostdevs=[HostdevFact("pci", "0000:03:00.0")])
    message = _only(_run(vm), "hostdev")
    assert "0000:03:00.0" in message and "h1" in message
    vm.active = False
    assert _codes(_run(vm, kind="cold")) == ["hostdev"]


def test_vf_remedy_names_the_targets_pool_or_says_there_is_none() -> None:
    vm = _vm(nics=[NicFact(type="hostdev", mac="52:54:00:aa:bb:cc", source=None,
                           pci="0000:3b:02.1")])
    result = _run(vm, _target(sriov_pools=["fast-vfs"]))
    assert "52:54:00:aa:bb:cc" in _only(result, "vf") and "0000:3b:02.1" in _only(result, "vf")
    remedy = result.blockers[0].remedy
    assert "detach the VF" in remedy and "kvmops vm nic remove web1 52:54:00:aa:bb:cc" in remedy
    assert "target's pool fast-vfs" in remedy and "--vf-pool fast-vfs --host h2" in remedy
    none = _run(vm).blockers[0].remedy
    assert "has no SR-IOV pool" in none
    # A NIC on a libvirt network that hands out VFs (forward mode hostdev) is one too.
    on_net = _vm(nics=[NicFact(type="network", mac="52:54:00:aa:bb:cd", source="vfnet",
                               vf_network=True)])
    result = _run(on_net, _target(hostdev_networks=["vfnet"]))
    assert "network 'vfnet'" in _only(result, "vf")
    assert "pool vfnet" in result.blockers[0].remedy


def test_config_only_devices_of_a_running_vm_warn() -> None:
    result = _run(_vm(config_only_devices=["VF NIC 52:54:00:aa:bb:cc (0000:3b:02.1)"]))
    assert result.ok
    assert ["52:54:00:aa:bb:cc" in w for w in result.warnings] == [True]


def test_network_missing_or_inactive() -> None:
    message = _only(_run(target=_target(networks={})), "network")
    assert "'lan'" in message and "h2" in message and "does not exist" in message
    inactive = _target(networks={"lan": False})
    assert "not active" in _only(_run(target=inactive), "network")
    cold = _run(_vm(active=False), inactive, kind="cold")
    assert cold.ok and "not active" in cold.warnings[0]
    assert _codes(_run(_vm(active=False), _target(networks={}), kind="cold")) == ["network"]


def test_bridge_or_direct_device_missing() -> None:
    vm = _vm(nics=[NicFact(type="bridge", mac="52:54:00:00:00:02", source="br-dmz"),
                   NicFact(type="direct", mac="52:54:00:00:00:03", source="eth9"),
                   NicFact(type="bridge", mac="52:54:00:00:00:04", source="br0")])
    result = _run(vm)
    assert _codes(result) == ["bridge", "bridge"]
    assert "bridge 'br-dmz'" in result.blockers[0].message
    assert "host interface 'eth9'" in result.blockers[1].message
    # A target whose interfaces libvirt cannot list is not judged.
    assert _run(vm, _target(interfaces=None)).ok


def test_pool_missing_inactive_full_and_volume_pool() -> None:
    local = _vm(disks=[DiskFact(target="vda", device="disk", type="file",
                                path="/var/lib/libvirt/images/web1.qcow2", size=10 * GIB)])
    message = _only(_run(local, copy_storage=True, target_pool="nope"), "pool")
    assert "'nope'" in message and "h2" in message
    assert "fast, shared" in _run(local, copy_storage=True, target_pool="nope"
                                  ).blockers[0].remedy
    idle = _target(pools={"fast": PoolFact("fast", False, None, "/fast")})
    assert "not active" in _only(_run(local, idle, copy_storage=True, target_pool="fast"),
                                 "pool")
    full = _target(pools={"fast": PoolFact("fast", True, 2 * GIB, "/fast")})
    assert "need" in _only(_run(local, full, copy_storage=True, target_pool="fast"), "pool")
    assert _run(local, copy_storage=True, target_pool="fast").ok
    on_pool = _vm(disks=[DiskFact(target="vda", device="disk", type="volume",
                                  path="/srv/gold/web1.qcow2", pool="gold",
                                  on_target=None)])
    result = _run(on_pool, copy_storage=True)
    assert "'gold'" in _only(result, "pool")


def test_local_disk_without_copy_storage() -> None:
    vm = _vm(disks=[DiskFact(target="vda", device="disk", type="file",
                             path="/var/lib/libvirt/images/web1.qcow2"),
                    DiskFact(target="vdb", device="disk", type="network", path=None)])
    message = _only(_run(vm), "local-disk")
    assert "vda" in message and "/var/lib/libvirt/images/web1.qcow2" in message
    assert "h1" in message and "--copy-storage" in _run(vm).blockers[0].remedy
    assert _run(vm, copy_storage=True).ok
    vm.active = False
    # Cold: without --copy-storage only the definition moves, so the disk must be
    # shared too; with it the disk is copied (into --target-pool, else 'default').
    assert "--copy-storage" in _run(vm, kind="cold").blockers[0].remedy
    assert _codes(_run(vm, kind="cold")) == ["local-disk"]
    assert _run(vm, kind="cold", copy_storage=True, target_pool="fast").ok
    assert "'default'" in _only(_run(vm, kind="cold", copy_storage=True), "pool")


def test_cold_only_rules() -> None:
    """State (persistent, no saved memory), disks a copy cannot take, the copy's pool
    (a file pool with room), a leftover volume or the disk itself in that pool, and a
    shared disk that is not the same file on the target."""
    def cold(vm: VmFacts, target: TargetFacts | None = None, **options: object
             ) -> Preflight:
        options.setdefault("copy_storage", True)
        options.setdefault("target_pool", "fast")
        return _run(vm, target, kind="cold", **options)

    def disk(**kw: object) -> DiskFact:
        base: dict[str, object] = {"target": "vda", "device": "disk", "type": "file",
                                   "path": "/local/web1.qcow2", "fmt": "qcow2",
                                   "length": GIB}
        base.update(kw)
        return DiskFact(**base)  # type: ignore[arg-type]

    off = {"active": False}
    assert cold(_vm(disks=[disk()], **off)).ok
    assert "transient" in _only(cold(_vm(persistent=False, **off)), "state")
    assert "saved memory" in _only(cold(_vm(managed_save=True, **off)), "state")
    assert "running, not shut off" in _only(cold(_vm()), "state")
    assert "is not a file" in _only(cold(_vm(disks=[disk(type="block")], **off)), "disk")
    assert "is vmdk" in _only(cold(_vm(disks=[disk(fmt="vmdk")], **off)), "disk")
    assert "not found" in _only(cold(_vm(disks=[disk(unreadable="disk file x not found")],
                                         **off)), "disk")
    assert "data file" in _only(cold(_vm(disks=[disk(data_file=True)], **off)), "disk")
    big = _vm(disks=[disk(length=200 * GIB)], **off)
    assert "need" in _only(cold(big), "pool")
    ceph = _target(pools={"fast": PoolFact("fast", True, GIB, None, "rbd")})
    assert "file pools" in _only(cold(_vm(disks=[disk()], **off), ceph), "pool")
    left = _target(volumes={"fast": {"web1.qcow2"}})
    message = _only(cold(_vm(disks=[disk()], **off), left), "name-clash")
    assert "volume 'web1.qcow2' exists in pool 'fast'" in message
    itself = _vm(disks=[disk(path="/fast/web1.qcow2")], **off)
    assert "the target sees the disk itself" in _only(cold(itself), "name-clash")
    other = _vm(disks=[disk(on_target="shared", length_on_target=GIB + 1)], **off)
    assert "not the same file" in _only(cold(other, copy_storage=False, target_pool=None),
                                        "local-disk")


def test_memory_on_the_target() -> None:
    message = _only(_run(target=_target(free_memory=512 * 1024**2)), "memory")
    assert "h2" in message and "512" in message and "web1" in message
    assert _run(target=_target(free_memory=None)).ok  # unknown: not judged
    assert _run(_vm(active=False), _target(free_memory=1), kind="cold").ok


def test_block_job_and_backup() -> None:
    message = _only(_run(_vm(block_jobs={"vda": "copy"})), "block-job")
    assert "vda" in message and "copy" in message and "h1" in message
    assert "backup of VM 'web1'" in _only(_run(_vm(job="backup")), "backup")


def test_memory_snapshots_live_only() -> None:
    vm = _vm(memory_snapshots=[("before-upgrade", "internal")], snapshots=2)
    message = _only(_run(vm), "memory-snapshot")
    assert "'before-upgrade'" in message and "internal" in message
    vm.active = False
    cold = _run(vm, kind="cold")
    assert cold.ok and "2 snapshot(s)" in cold.warnings[0]


def test_cdrom_not_on_the_target() -> None:
    iso = DiskFact(target="sda", device="cdrom", type="file", path="/isos/install.iso",
                   readonly=True)
    vm = _vm(disks=[*_vm().disks, iso])
    message = _only(_run(vm, copy_storage=True), "cdrom")
    assert "/isos/install.iso" in message and "h2" in message
    iso.on_target = "isos"
    assert _run(vm).ok
    empty = DiskFact(target="sdb", device="cdrom", type="file", path=None, readonly=True)
    assert _run(_vm(disks=[*_vm().disks, empty])).ok


def test_cpu_blocker_names_model_and_suggests_a_baseline() -> None:
    cpu = parse_domain_cpu("<domain><cpu mode='custom' match='exact'><model>Westmere</model>"
                           "<feature policy='require' name='pku'/></cpu></domain>")
    vm = _vm(cpu=cpu)
    older = host_cpu(OLDER_CAPS)
    facts = MigrationFacts(vm=vm, target=_target(cpu=older), source_cpu=host_cpu(SOURCE_CAPS))
    result = check(facts, MigrationOptions(target="h2"), source="h1", target="h2", kind="live")
    message = _only(result, "cpu")
    assert "Westmere" in message and "h2" in message and "aes" in message and "pku" in message
    assert "<model>Penryn</model>" in result.blockers[0].remedy
    # libvirt's own verdict (the target's compare) counts when the XML shows nothing.
    facts = MigrationFacts(vm=vm, target=_target(cpu=host_cpu(SOURCE_CAPS),
                                                 cpu_verdict="missing features: avx"),
                           baseline_cpu="Nehalem")
    result = check(facts, MigrationOptions(target="h2"), source="h1", target="h2", kind="live")
    assert "missing features: avx" in _only(result, "cpu")
    assert "<model>Nehalem</model>" in result.blockers[0].remedy
    # Cold: the CPU is chosen again at the next boot.
    vm.active = False
    assert _run(vm, _target(cpu=older), kind="cold").ok


def test_every_blocker_at_once() -> None:
    vm = _vm(disks=[DiskFact(target="vda", device="disk", type="file", path="/local/a.qcow2"),
                    DiskFact(target="sda", device="cdrom", type="file", path="/local/x.iso",
                             readonly=True)],
             nics=[NicFact(type="network", mac="52:54:00:00:00:01", source="lan"),
                   NicFact(type="bridge", mac="52:54:00:00:00:02", source="br-x"),
                   NicFact(type="hostdev", mac="52:54:00:00:00:03", source=None, pci="x")],
             hostdevs=[HostdevFact("usb", "0x1234:0x5678")], block_jobs={"vda": "commit"},
             job="backup", memory_snapshots=[("s1", "external")], memory=64 * GIB)
    target = _target(networks={}, domains={"web1": "y"}, free_memory=GIB)
    result = _run(vm, target)
    assert sorted(_codes(result)) == sorted(
        ["name-clash", "hostdev", "vf", "network", "bridge", "local-disk", "cdrom",
         "memory", "block-job", "backup", "memory-snapshot"])
    assert all(b.message and b.remedy for b in result.blockers)


# --------------------------------------------------------------------------- XML
DOMAIN = """<domain type='qemu' id='3'><name>web1</name>
<uuid>0b0e5f5e-0000-4000-8000-000000000001</uuid><memory unit='KiB'>262144</memory>
<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
<devices>
 <disk type='file' device='disk'><source file='/img/web1.qcow2'/><target dev='vda'/></disk>
 <disk type='file' device='cdrom'><source file='/isos/a.iso'/><target dev='sda'/><readonly/>
 </disk>
 <disk type='volume' device='disk'><source pool='gold' volume='d.qcow2'/><target dev='vdb'/>
 </disk>
 <disk type='network' device='disk'><source protocol='rbd' name='p/x'/><target dev='vdc'/>
 </disk>
 <interface type='network'><mac address='52:54:00:00:00:01'/><source network='lan'/>
 </interface>
 <interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/>
 </interface>
 <interface type='hostdev'><mac address='52:54:00:00:00:03'/><source>
  <address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>
 </interface>
 <hostdev mode='subsystem' type='pci'><source>
  <address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>
 <hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0x5678'/>
 </source></hostdev>
</devices></domain>"""


def test_parse_domain() -> None:
    facts = parse_domain(DOMAIN)
    assert facts.name == "web1" and facts.active and facts.memory == 256 * 1024**2
    assert [(d.target, d.device, d.type, d.path, d.readonly, d.pool) for d in facts.disks] == [
        ("vda", "disk", "file", "/img/web1.qcow2", False, None),
        ("sda", "cdrom", "file", "/isos/a.iso", True, None),
        ("vdb", "disk", "volume", None, False, "gold"),
        ("vdc", "disk", "network", None, False, None)]
    assert [(n.type, n.source, n.pci) for n in facts.nics] == [
        ("network", "lan", None), ("bridge", "br0", None), ("hostdev", None, "0000:3b:02.1")]
    assert [(h.type, h.address) for h in facts.hostdevs] == [
        ("pci", "0000:03:00.0"), ("usb", "0x1234:0x5678")]
    assert facts.cpu is not None and facts.cpu.model == "qemu64"
    assert passthrough_devices(DOMAIN) == ["pci host device 0000:03:00.0",
                                           "usb host device 0x1234:0x5678",
                                           "VF NIC 52:54:00:00:00:03 (0000:3b:02.1)"]
    assert not parse_domain(DOMAIN.replace(" id='3'", "")).active


# --------------------------------------------------------------------------- CPU
def test_captured_domain_capabilities() -> None:
    caps = host_cpu(SOURCE_CAPS)
    assert caps.host_model and caps.models["qemu64"] and caps.models["Westmere"]
    assert not caps.models["Skylake-Server"] and caps.features["pku"] == "require"
    older = host_cpu(OLDER_CAPS)
    assert not older.models["Westmere"] and older.blockers["Westmere"] == ["aes", "pclmuldq"]
    xml = host_model_xml(caps)
    assert xml is not None and f"<model fallback=\"forbid\">{caps.host_model}</model>" in xml


@pytest.mark.parametrize(("cpu", "problems"), [
    ("<cpu mode='custom'><model>Westmere</model></cpu>",
     ["CPU model 'Westmere' is not usable there (missing aes, pclmuldq)"]),
    ("<cpu mode='custom'><model>Nehalem</model><feature policy='force' name='pku'/></cpu>",
     ["CPU model 'Nehalem' is not usable there (missing popcnt)",
      "feature(s) pku required but not offered"]),
    ("<cpu mode='custom'><model>NoSuchLake</model></cpu>",
     ["CPU model 'NoSuchLake' is unknown there"]),
    ("<cpu mode='custom'><model>Penryn</model><feature policy='disable' name='pku'/></cpu>",
     []),
    ("<cpu mode='host-passthrough'/>", []),
])
def test_cpu_against_the_older_target(cpu: str, problems: list[str]) -> None:
    parsed = parse_domain_cpu(f"<domain>{cpu}</domain>")
    assert parsed is not None
    assert cpu_problems(parsed, host_cpu(OLDER_CAPS)) == problems
    # The source's own capabilities run every model it reports usable.
    if "NoSuchLake" not in cpu:
        assert cpu_problems(parsed, host_cpu(SOURCE_CAPS)) == []


def test_cpu_none_or_topology_only() -> None:
    assert parse_domain_cpu("<domain/>") is None
    assert parse_domain_cpu("<domain><cpu><topology sockets='1' cores='2' threads='1'/>"
                            "</cpu></domain>") is None


def test_cpu_target_without_a_model_list_is_left_to_libvirt() -> None:
    bare = host_cpu("<domainCapabilities><cpu><mode name='custom' supported='no'/></cpu>"
                    "</domainCapabilities>")
    cpu = parse_domain_cpu("<domain><cpu mode='custom'><model>Westmere</model></cpu></domain>")
    assert cpu is not None and bare.models == {} and cpu_problems(cpu, bare) == []


def test_baseline_is_a_model_both_run() -> None:
    source, older = host_cpu(SOURCE_CAPS), host_cpu(OLDER_CAPS)
    assert suggest_baseline(source, source) == "Westmere"
    assert suggest_baseline(source, older) == "Penryn"
    nothing = host_cpu(OLDER_CAPS.replace("usable='yes'", "usable='no'"))
    assert suggest_baseline(source, nothing) is None


# --------------------------------------------------------------------------- use case
class _FakeConn:
    """A connection for the use case's own decisions (the facts are patched)."""

    def __init__(self, uri: str, uuid: str, alive: bool = True) -> None:
        self.uri, self.uuid, self._alive = uri, uuid, alive

    def lookup(self, name: str) -> None:
        return None

    def alive(self) -> bool:
        return self._alive


def _service(monkeypatch: pytest.MonkeyPatch, target: _FakeConn,
             gather: object) -> Preflight:
    from kvmops.host import migration_facts
    from kvmops.services import migration_checks
    from kvmops.services.caller import Caller

    monkeypatch.setattr(migration_facts, "host_uuid", lambda conn: conn.uuid)
    monkeypatch.setattr(migration_facts, "gather", gather)
    return migration_checks.preflight(
        Caller.local(), _FakeConn("qemu:///system", "u1"), target,  # type: ignore[arg-type]
        "web1", MigrationOptions(target="h2"), source_name="h1", kind="live")


def test_use_case_same_host_unreachable_and_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.errors import HostUnavailableError, NotFoundError

    def never(*args: object, **kw: object) -> MigrationFacts:
        raise AssertionError("not asked")

    same = _service(monkeypatch, _FakeConn("qemu+tcp://h2/system", "u1"), never)
    assert [b.code for b in same.blockers] == ["same-host"] and "u1" in same.blockers[0].message

    def lost(*args: object, **kw: object) -> MigrationFacts:
        raise HostUnavailableError("listing networks: lost the connection to libvirtd")

    gone = _service(monkeypatch, _FakeConn("qemu+tcp://h2/system", "u2", alive=False), lost)
    assert [b.code for b in gone.blockers] == ["unreachable"]
    assert "host h2 does not answer" in gone.blockers[0].message

    def missing(*args: object, **kw: object) -> MigrationFacts:
        raise NotFoundError("VM 'web1' not found")

    with pytest.raises(NotFoundError):
        _service(monkeypatch, _FakeConn("qemu+tcp://h2/system", "u2"), missing)

    def facts(*args: object, **kw: object) -> MigrationFacts:
        assert kw == {"live": True}
        return MigrationFacts(vm=_vm(), target=_target(networks={}))

    found = _service(monkeypatch, _FakeConn("qemu+tcp://h2/system", "u2"), facts)
    assert (found.vm, found.source, found.target, found.kind) == ("web1", "h1", "h2", "live")
    assert [b.code for b in found.blockers] == ["network"]
