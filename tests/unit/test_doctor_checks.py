"""The doctor's kernel, sysfs and probe checks on fake trees (each check's good and bad
outcome), its deadline helper, and the last report kept per host."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kvmops.host import doctor as host_doctor
from kvmops.host.accel import Accelerator
from kvmops.host.doctor import GuestProbe, Late, ManagedSave, within
from kvmops.host.sriov import write_fake_tree
from kvmops.services import doctor
from kvmops.services.doctor import Status


def put(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_nested(tmp_path: Path) -> None:
    put(tmp_path, "sys/module/kvm_intel/parameters/nested", "Y\n")
    assert doctor.check_nested(tmp_path).status is Status.OK
    put(tmp_path, "sys/module/kvm_intel/parameters/nested", "N\n")
    off = doctor.check_nested(tmp_path)
    assert off.status is Status.WARN and off.hint and "nested=1" in off.hint
    other = tmp_path / "other"
    put(other, "sys/module/kvm_pvm/refcnt", "0\n")
    put(other, "proc/cpuinfo", "flags\t\t: fpu vme hypervisor lahf_lm\n")
    none = doctor.check_nested(other)
    assert none.status is Status.WARN and "kvm_pvm" in none.detail
    assert "itself a VM" in none.detail


def test_iommu(tmp_path: Path) -> None:
    assert doctor.check_iommu(tmp_path).status is Status.WARN
    (tmp_path / "sys/kernel/iommu_groups/0").mkdir(parents=True)
    (tmp_path / "sys/kernel/iommu_groups/1").mkdir()
    ok = doctor.check_iommu(tmp_path)
    assert ok.status is Status.OK and ok.detail.startswith("2 IOMMU group")


def meminfo(total: int, free: int) -> str:
    return (f"MemTotal: 8000000 kB\nHugePages_Total: {total}\nHugePages_Free: {free}\n"
            "Hugepagesize: 2048 kB\n")


def test_hugepages(tmp_path: Path) -> None:
    put(tmp_path, "proc/meminfo", meminfo(0, 0))
    put(tmp_path, "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "0\n")
    assert doctor.check_hugepages(tmp_path).status is Status.OK
    put(tmp_path, "proc/meminfo", meminfo(512, 512))
    assert doctor.check_hugepages(tmp_path).status is Status.WARN  # /proc/meminfo alone
    put(tmp_path, "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "512\n")
    put(tmp_path, "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "512\n")
    put(tmp_path, "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "2\n")
    put(tmp_path, "sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", "2\n")
    idle = doctor.check_hugepages(tmp_path)
    assert idle.status is Status.WARN and "3.0 GiB reserved" in idle.detail, idle.detail
    put(tmp_path, "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "12\n")
    used = doctor.check_hugepages(tmp_path)
    assert used.status is Status.OK and "2.0 GiB free" in used.detail, used.detail


@pytest.mark.parametrize(("text", "status"), [
    ("always [madvise] never\n", Status.OK), ("[always] madvise never\n", Status.OK),
    ("always madvise [never]\n", Status.WARN), (None, Status.WARN)])
def test_thp(tmp_path: Path, text: str | None, status: Status) -> None:
    if text is not None:
        put(tmp_path, "sys/kernel/mm/transparent_hugepage/enabled", text)
    assert doctor.check_thp(tmp_path).status is status


def test_ksm(tmp_path: Path) -> None:
    put(tmp_path, "sys/kernel/mm/ksm/run", "0\n")
    assert doctor.check_ksm(tmp_path).status is Status.OK
    put(tmp_path, "sys/kernel/mm/ksm/run", "1\n")
    put(tmp_path, "sys/kernel/mm/ksm/pages_sharing", "256\n")
    on = doctor.check_ksm(tmp_path)
    assert on.status is Status.WARN and "1.0 MiB shared" in on.detail


def test_numa_balancing(tmp_path: Path) -> None:
    (tmp_path / "sys/devices/system/node/node0").mkdir(parents=True)
    put(tmp_path, "proc/sys/kernel/numa_balancing", "0\n")
    assert doctor.check_numa_balancing(tmp_path).status is Status.OK  # one node
    (tmp_path / "sys/devices/system/node/node1").mkdir()
    assert doctor.check_numa_balancing(tmp_path).status is Status.WARN
    put(tmp_path, "proc/sys/kernel/numa_balancing", "1\n")
    assert doctor.check_numa_balancing(tmp_path).status is Status.OK


def test_sriov(tmp_path: Path) -> None:
    sysfs, root = tmp_path / "sysfs", tmp_path / "root"
    assert doctor.check_sriov(sysfs, root).status is Status.OK
    write_fake_tree(sysfs, "enp3s0f0", 8, "ixgbe", numvfs=2)
    without = doctor.check_sriov(sysfs, root)
    assert without.status is Status.WARN and "enp3s0f0 (ixgbe: 2 of 8 VFs)" in without.detail
    (root / "sys/kernel/iommu_groups/7").mkdir(parents=True)
    assert doctor.check_sriov(sysfs, root).status is Status.OK


def fake_disk(root: Path, directory: Path, scheduler: str, rotational: str) -> None:
    """``sys/dev/block/MAJ:MIN`` of ``directory``'s file system -> a partition of a disk."""
    dev = directory.stat().st_dev
    disk = root / "sys/devices/virtual/block/fakedisk"
    put(root, "sys/devices/virtual/block/fakedisk/queue/scheduler", scheduler)
    put(root, "sys/devices/virtual/block/fakedisk/queue/rotational", rotational)
    (disk / "fakedisk1").mkdir(exist_ok=True)
    link = root / f"sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(disk / "fakedisk1")


def test_disk_schedulers(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    root = tmp_path / "root"
    assert doctor.check_disk_schedulers([images], root).status is Status.OK  # no device
    fake_disk(root, images, "[none] mq-deadline kyber bfq\n", "0\n")
    ssd = doctor.check_disk_schedulers([images, images / "not-yet"], root)
    assert ssd.status is Status.OK and ssd.detail == "fakedisk: none (SSD/NVMe)"
    fake_disk(root, images, "none mq-deadline kyber [bfq]\n", "0\n")
    bfq = doctor.check_disk_schedulers([images], root)
    assert bfq.status is Status.WARN and bfq.hint and "fakedisk" in bfq.hint
    fake_disk(root, images, "none mq-deadline kyber [bfq]\n", "1\n")
    assert doctor.check_disk_schedulers([images], root).status is Status.OK  # rotating


def test_kvm_and_tcg_probe_rules() -> None:
    ran = GuestProbe("kvm", True, "its kernel printed its first line after 0.4 s")
    hung = GuestProbe("kvm", False, "its kernel printed nothing within 8 s")
    assert doctor.check_kvm_guest(ran, kvm_device=True, uses=Accelerator.KVM).status \
        is Status.OK
    warn = doctor.check_kvm_guest(hung, kvm_device=True, uses=Accelerator.TCG)
    assert warn.status is Status.WARN
    assert warn.detail.startswith("KVM present but a guest does not run; kvmops uses TCG")
    assert doctor.check_kvm_guest(hung, kvm_device=True, uses=Accelerator.KVM).status \
        is Status.FAIL  # kvmops would start VMs that hang
    assert doctor.check_kvm_guest(None, kvm_device=False, uses=Accelerator.TCG).status \
        is Status.WARN
    assert doctor.check_tcg_guest(GuestProbe("qemu", True, "ok")).status is Status.OK
    assert doctor.check_tcg_guest(GuestProbe("qemu", False, "no")).status is Status.FAIL


def test_managed_saves(tmp_path: Path) -> None:
    save_dir = tmp_path / "var/lib/libvirt/qemu/save"
    assert doctor.check_managed_saves([], set(), tmp_path).status is Status.OK
    put(tmp_path, "etc/libvirt/qemu/fine.xml", "<domain/>")
    put(tmp_path, "var/lib/libvirt/qemu/save/fine.save", "x")
    ok = doctor.check_managed_saves([ManagedSave("fine")], {"fine"}, tmp_path)
    assert ok.status is Status.OK and ok.detail.startswith("1 VM(s)")
    put(tmp_path, "var/lib/libvirt/qemu/save/gone.save", "x")
    put(tmp_path, "etc/libvirt/qemu/old.xml", "<domain/>")
    put(tmp_path, "var/lib/libvirt/qemu/save/old.save", "x")
    os.utime(save_dir / "old.save", (1_000_000, 1_000_000))
    stale = doctor.check_managed_saves(
        [ManagedSave("fine"), ManagedSave("old"), ManagedSave("bad", "its header cannot "
                                                                    "be read")],
        {"fine", "old", "bad"}, tmp_path)
    assert stale.status is Status.WARN
    for part in ("gone.save: its VM no longer exists", "old: saved before",
                 "bad: its header cannot be read"):
        assert part in stale.detail, stale.detail


def test_libvirtd_advice_names_the_uri() -> None:
    check = doctor.libvirtd_unanswered("qemu+tcp://10.0.0.2/system", 5)
    assert check.status is Status.FAIL and "within 5 s" in check.detail
    assert check.hint and "virsh -c qemu+tcp://10.0.0.2/system version" in check.hint
    assert "restart" in check.hint and "running VMs keep running" in check.hint


def test_within_gives_up_and_hands_a_late_result_over() -> None:
    assert within(5, lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        within(5, lambda: 1 // 0)
    release, handed = threading.Event(), threading.Event()
    got: list[int] = []

    def slow() -> int:
        release.wait(30)
        return 7

    def late(value: int) -> None:
        got.append(value)
        handed.set()

    with pytest.raises(Late):
        within(0.05, slow, late)
    release.set()
    assert handed.wait(30) and got == [7]


def test_stale_probe_logs_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"{host_doctor.PROBE_PREFIX}999999999-kvm.log"
    mine = tmp_path / f"{host_doctor.probe_name('kvm')}.log"
    dead.write_text("")
    mine.write_text("")
    host_doctor.remove_stale_logs(tmp_path)
    assert not dead.exists() and mine.exists()


def test_last_report_per_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path))
    assert doctor.last_report() is None and doctor.last_report("h2") is None
    report = doctor.summarize("qemu:///system", [
        doctor.Check(name="thp", status=Status.WARN, detail="never", hint="madvise")])
    doctor.save_report(report, "local")
    kept = doctor.last_report()
    assert kept is not None and kept.checks[0].status is Status.WARN and kept.failed == 0
    assert doctor.last_report("h2") is None
    (tmp_path / "doctor" / "h2.json").write_text("{not json")
    assert doctor.last_report("h2") is None  # unreadable: as if never run
    assert sorted(p.name for p in (tmp_path / "doctor").iterdir()) == ["h2.json",
                                                                        "local.json"]


class FrozenHost:
    """A connection whose libvirtd accepted and then says nothing (until released)."""

    uri = "qemu+tcp://10.250.99.2/system"

    def __init__(self) -> None:
        self.release = threading.Event()

    def libvirt_version(self) -> int:
        self.release.wait(30)
        return 9_000_000


def test_a_frozen_libvirtd_is_one_failed_check(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path))
    frozen = FrozenHost()
    try:
        report = doctor.run_doctor(host=frozen, host_name="h2", deadline_s=0.2)  # type: ignore[arg-type]
    finally:
        frozen.release.set()
    assert [c.name for c in report.checks] == ["libvirtd"]  # remote: libvirt side only
    assert report.checks[0].status is Status.FAIL and not report.ok
    assert report.checks[0].hint and f"virsh -c {frozen.uri} version" in report.checks[0].hint
    kept = doctor.last_report("h2")
    assert kept is not None and kept.host == "h2" and kept.failed == 1


def test_last_doctor_of_a_host_that_never_ran(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.errors import NotFoundError
    from kvmops.services import host as host_service
    from kvmops.services.caller import Caller

    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path))
    with pytest.raises(NotFoundError, match="no doctor report for host 'local'"):
        host_service.last_doctor(Caller.local(), "local")
    doctor.save_report(doctor.summarize("qemu:///system", []), "local")
    assert host_service.last_doctor(Caller.local(), "local").failed == 0
