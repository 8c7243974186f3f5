"""Placement rules (kvmops.migration.placement): ranking by room left, one reason per
host, rejections for memory, vCPUs, pool space, networks, a name clash, the VM's own host
and an unreachable host; several VMs placed at once take their share as they go."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kvmops.migration.placement import (
    DiskNeed,
    HostFacts,
    Needs,
    PoolFacts,
    judge,
    place,
    plan,
)

GiB = 1024**3
MiB = 1024**2


def host(name: str, *, free: int = 16 * GiB, cpus: int = 4, vcpus: int = 0,
         networks: dict[str, bool] | None = None, pools: list[PoolFacts] | None = None,
         vms: list[str] | None = None) -> HostFacts:
    return HostFacts(name=name, reachable=True, cpus=cpus, memory_total=32 * GiB,
                     memory_free=free, vcpus_running=vcpus, vms=vms or [],
                     networks=networks if networks is not None else {"default": True},
                     pools=pools or [])


def test_the_host_with_most_room_wins_and_every_host_has_a_reason() -> None:
    hosts = [host("a", free=4 * GiB), host("b", free=20 * GiB), host("c", free=10 * GiB)]
    placed = place(hosts, Needs(vm="web", memory=1 * GiB, vcpus=2))
    assert placed.host == "b"
    assert [v.host for v in placed.verdicts] == ["b", "c", "a"]
    assert all(v.fits for v in placed.verdicts)
    assert placed.reason.startswith("the most room: ")
    assert "19.0 GiB memory free after it" in placed.reason
    assert "2 of 64 vCPUs in use after it" in placed.reason
    assert placed.lines()[0].startswith("b: fits: ")
    assert len(placed.lines()) == 3


def test_vcpu_headroom_counts_as_much_as_memory() -> None:
    # Same memory; "a" already runs many vCPUs: "b" has more room.
    hosts = [host("a", vcpus=60), host("b", vcpus=4)]
    assert place(hosts, Needs(vm="x", memory=GiB)).host == "b"


def test_memory_rejection_names_need_reserve_and_free() -> None:
    verdict = judge(host("a", free=2 * GiB), Needs(vm="big", memory=2 * GiB),
                    memory_reserve=512 * MiB)
    assert not verdict.fits
    assert verdict.reason == "memory: needs 2.0 GiB + 512.0 MiB reserve, 2.0 GiB free"
    assert judge(host("a", free=3 * GiB), Needs(vm="big", memory=2 * GiB),
                 memory_reserve=512 * MiB).fits


def test_vcpu_rejection_uses_the_overcommit_ratio() -> None:
    facts = host("a", cpus=2, vcpus=7)
    verdict = judge(facts, Needs(vm="x", memory=GiB, vcpus=2), vcpu_ratio=4)
    assert not verdict.fits
    assert verdict.reason == "vCPUs: 7 running + 2 > 8 (2 CPUs x 4)"
    assert judge(facts, Needs(vm="x", memory=GiB, vcpus=1), vcpu_ratio=4).fits


def test_pool_space_missing_and_inactive_pools() -> None:
    pools = [PoolFacts("fast", "/srv/fast", True, 10 * GiB),
             PoolFacts("slow", "/srv/slow", False, 0)]
    facts = host("a", pools=pools)
    assert judge(facts, Needs(vm="x", memory=GiB,
                              disks=[DiskNeed(8 * GiB, pool="fast")])).fits
    two = judge(facts, Needs(vm="x", memory=GiB,
                             disks=[DiskNeed(8 * GiB, pool="fast"),
                                    DiskNeed(4 * GiB, pool="fast")]))
    assert not two.fits
    assert two.reason == "pool 'fast' has 10.0 GiB free, the disks need 12.0 GiB"
    assert judge(facts, Needs(vm="x", memory=GiB, disks=[DiskNeed(GiB, pool="slow")])
                 ).reason == "storage pool 'slow' is not active"
    assert judge(facts, Needs(vm="x", memory=GiB, disks=[DiskNeed(GiB, pool="nope")])
                 ).reason == "no storage pool 'nope'"


def test_images_directory_disks_are_checked_against_the_pool_holding_it() -> None:
    pools = [PoolFacts("root", "/var/lib", True, 100 * GiB),
             PoolFacts("images", "/var/lib/kvmops/images", True, 2 * GiB)]
    need = Needs(vm="x", memory=GiB,
                 disks=[DiskNeed(4 * GiB, directory="/var/lib/kvmops/images/")])
    verdict = judge(host("a", pools=pools), need)
    assert not verdict.fits and "pool 'images' has 2.0 GiB free" in verdict.reason
    # No pool there: the space is not known, which is said but does not reject.
    unknown = judge(host("a", pools=[]), need)
    assert unknown.fits and "space in /var/lib/kvmops/images/ not known" in unknown.reason


def test_network_missing_or_inactive_rejects() -> None:
    needs = Needs(vm="x", memory=GiB, networks=["blue", "red"])
    missing = judge(host("a", networks={"red": True}), needs)
    assert not missing.fits and missing.reason == "network blue not present"
    inactive = judge(host("a", networks={"red": False, "blue": True}), needs)
    assert not inactive.fits and inactive.reason == "network red not active"
    placed = place([host("a", networks={}), host("b", networks={"red": True, "blue": True})],
                   needs)
    assert placed.host == "b" and placed.reason.startswith("the only host that fits: ")
    assert "networks blue, red present" in placed.reason
    assert placed.lines()[1] == "a: rejected: networks blue, red not present"


def test_every_problem_is_named_at_once() -> None:
    verdict = judge(host("a", free=GiB, cpus=1, vcpus=16, networks={}, vms=["x"]),
                    Needs(vm="x", memory=2 * GiB, networks=["n"]), vcpu_ratio=16)
    assert verdict.reason.split("; ") == [
        "a VM named 'x' exists there",
        "memory: needs 2.0 GiB + 512.0 MiB reserve, 1.0 GiB free",
        "vCPUs: 16 running + 1 > 16 (1 CPUs x 16)",
        "network n not present"]


def test_unreachable_and_own_host_are_skipped_with_the_reason() -> None:
    down = HostFacts(name="down", reachable=False, error="did not answer within 5 s")
    placed = place([host("src"), down, host("ok")],
                   Needs(vm="x", memory=GiB, exclude=["src"]))
    assert placed.host == "ok"
    reasons = {v.host: v.reason for v in placed.verdicts}
    assert reasons["down"] == "unreachable (did not answer within 5 s)"
    assert reasons["src"] == "the VM's own host"


def test_no_host_fits_says_why_for_each() -> None:
    down = HostFacts(name="down", reachable=False, error="refused")
    placed = place([host("src"), down, host("small", free=GiB)],
                   Needs(vm="x", memory=4 * GiB, exclude=["src"]))
    assert placed.host is None
    assert placed.reason.startswith("no host has room: ")
    assert "down: rejected: unreachable (refused)" in placed.reason
    assert "small: rejected: memory" in placed.reason
    assert "src" not in placed.reason
    alone = place([host("src")], Needs(vm="x", memory=GiB, exclude=["src"]))
    assert alone.host is None and "kvmops host add" in alone.reason


def test_plan_places_biggest_first_and_takes_room_as_it_goes() -> None:
    # a and b have room for one 6 GiB VM each (+ reserve); the small one goes where room
    # is left afterwards (b: 2 GiB; a's 1 GiB is less than 1 GiB + the reserve).
    hosts = [host("src"), host("a", free=7 * GiB), host("b", free=8 * GiB)]
    vms = [Needs(vm="small", memory=GiB, exclude=["src"]),
           Needs(vm="big1", memory=6 * GiB, exclude=["src"]),
           Needs(vm="big2", memory=6 * GiB, exclude=["src"])]
    placed = plan(hosts, vms)
    assert [p.vm for p in placed] == ["small", "big1", "big2"]
    assert {placed[1].host, placed[2].host} == {"a", "b"}
    assert placed[1].host == "b"  # the most room first
    assert placed[0].host == "b"
    assert [v.line() for v in placed[0].verdicts][1:] == [
        "src: rejected: the VM's own host",
        "a: rejected: memory: needs 1.0 GiB + 512.0 MiB reserve, 1.0 GiB free"]


def test_plan_counts_vcpus_and_names_of_vms_already_planned() -> None:
    hosts = [host("a", cpus=1, vcpus=0)]
    vms = [Needs(vm=f"v{i}", memory=MiB * 64, vcpus=1) for i in range(3)]
    placed = plan(hosts, vms, vcpu_ratio=2)
    assert [p.host for p in placed] == ["a", "a", None]
    assert "vCPUs: 2 running + 1 > 2" in placed[2].reason


# --------------------------------------------------------------------------- the use case
def test_needs_of_a_create_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kvmops.services import placement as service
    from kvmops.services.vms import CreateRequest, DiskRequest, NicSpec

    req = CreateRequest(name="web", memory=GiB, vcpus=2, network="blue",
                        nics=[NicSpec(kind="network", source="red"),
                              NicSpec(kind="bridge", source="br0"),
                              NicSpec(kind="network", source="blue")],
                        disks=[DiskRequest(size=64 * MiB),
                               DiskRequest(pool="fast", size=GiB),
                               DiskRequest(pool="fast", volume="old"),
                               DiskRequest(path=tmp_path / "x.qcow2")],
                        images_dir=tmp_path)
    needs = service.needs_of(req)
    assert (needs.vm, needs.memory, needs.vcpus) == ("web", GiB, 2)
    assert needs.networks == ["blue", "red"]
    assert needs.disks == [DiskNeed(64 * MiB, directory=str(tmp_path)),
                           DiskNeed(GiB, pool="fast")]


def test_vcpu_ratio_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.errors import ValidationError
    from kvmops.services.placement import vcpu_ratio

    monkeypatch.delenv("KVMOPS_VCPU_RATIO", raising=False)
    assert vcpu_ratio() == 16.0
    monkeypatch.setenv("KVMOPS_VCPU_RATIO", "4")
    assert vcpu_ratio() == 4.0
    for bad in ("0", "many", "-2", "5000"):
        monkeypatch.setenv("KVMOPS_VCPU_RATIO", bad)
        with pytest.raises(ValidationError, match="KVMOPS_VCPU_RATIO"):
            vcpu_ratio()


def test_place_asks_every_host_and_a_silent_one_is_unreachable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.host.capacity import Room
    from kvmops.services import hosts
    from kvmops.services import placement as service
    from kvmops.services.caller import Caller

    known = [hosts._Known("local", "qemu:///system", True),
             hosts._Known("big", "qemu+tcp://big/system", False),
             hosts._Known("hung", "qemu+tcp://hung/system", False)]
    monkeypatch.setattr(hosts, "_known", lambda db: known)
    release = threading.Event()

    def probe(uri: str) -> Room:
        if "hung" in uri:
            release.wait(30)
        free = 20 * GiB if "big" in uri else 2 * GiB
        return Room(cpus=4, memory_total=32 * GiB, memory_free=free, vcpus_running=1,
                    vms_running=1, networks={"default": True})

    monkeypatch.setattr(service, "_probe_room", probe)
    monkeypatch.delenv("KVMOPS_VCPU_RATIO", raising=False)
    try:
        placed = service.place(Caller(name="t"), Needs(vm="x", memory=4 * GiB,
                                                       networks=["default"]),
                               deadline=0.5)
    finally:
        release.set()
    assert placed.host == "big"
    reasons = {v.host: v.reason for v in placed.verdicts}
    assert reasons["hung"] == "unreachable (did not answer within 0.5 s)"
    assert reasons["local"].startswith("memory: needs 4.0 GiB")
