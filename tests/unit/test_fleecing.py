"""Fleecing's pure parts: dirty extents from qemu-img map, copy runs, the pull-mode XML,
the auto choice and the latency watch (kvmops.backup.fleecing)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from kvmops.backup import fleecing
from kvmops.backup.fleecing import (
    Extent,
    align_runs,
    dirty_extents,
    export_size,
    plan_runs,
)
from kvmops.backup.model import BackupType
from kvmops.backup.plan import DiskPlan, Plan
from kvmops.backup.repository import Repository
from kvmops.errors import StorageError, ValidationError
from kvmops.vm.domxml import DiskSpec

K = 64 * 1024
M = 1 << 20


def entry(start: int, length: int, data: bool) -> dict[str, Any]:
    return {"start": start, "length": length, "depth": 0, "present": data, "zero": False,
            "data": data}


def test_dirty_extents_are_the_entries_without_data() -> None:
    # As qemu-img map prints an export opened with x-dirty-bitmap (seen on QEMU 7.2).
    entries = [entry(0, 100 * K, True), entry(100 * K, 3 * K, False),
               entry(103 * K, 2 * K, False), entry(105 * K, 400 * M, True),
               entry(105 * K + 400 * M, 2 * M, False)]
    assert dirty_extents(entries) == [Extent(100 * K, 5 * K),
                                      Extent(105 * K + 400 * M, 2 * M)]
    assert dirty_extents([entry(0, 8 * M, True)]) == []
    assert export_size(entries) == 105 * K + 402 * M
    assert export_size([]) == 0


def test_plan_runs_joins_close_extents_and_keeps_far_ones_apart() -> None:
    extents = [Extent(0, K), Extent(2 * K, K), Extent(10 * M, K)]
    assert plan_runs(extents, gap=M) == [Extent(0, 3 * K), Extent(10 * M, K)]
    assert plan_runs(extents, gap=0) == [Extent(0, K), Extent(2 * K, K), Extent(10 * M, K)]
    assert plan_runs([], gap=M) == []


def test_plan_runs_bounds_the_number_of_runs_and_still_covers_every_extent() -> None:
    extents = [Extent(i * 4 * M, K) for i in range(1000)]
    runs = plan_runs(extents, gap=M, max_runs=10)
    assert 0 < len(runs) <= 10
    for ext in extents:
        assert any(r.start <= ext.start and ext.end <= r.end for r in runs)
    assert runs == sorted(runs, key=lambda r: r.start)
    assert all(a.end < b.start for a, b in itertools.pairwise(runs))


def test_plan_runs_merges_overlapping_and_unsorted_extents() -> None:
    assert plan_runs([Extent(4 * M, M), Extent(0, 5 * M)], gap=0) == [Extent(0, 5 * M)]


def _plan(kind: BackupType) -> Plan:
    disks = [DiskPlan(DiskSpec(target="vda", source="/i/a.qcow2", fmt="qcow2"),
                      kind, None if kind is BackupType.FULL else "P1", True),
             DiskPlan(DiskSpec(target="vdb", source="/i/b.raw", fmt="raw"),
                      BackupType.FULL, None, False)]
    return Plan(kind, None, None if kind is BackupType.FULL else "cp-1", disks, [])


def test_pull_xml_full_and_incremental() -> None:
    scratch = {"vda": Path("/s/vda.qcow2"), "vdb": Path("/s/vdb.qcow2")}
    full = etree.fromstring(fleecing.pull_xml(_plan(BackupType.FULL), Path("/s/nbd.sock"),
                                              scratch))
    assert full.get("mode") == "pull"
    assert full.find("incremental") is None
    server = full.find("server")
    assert server is not None and server.get("socket") == "/s/nbd.sock"
    assert server.get("transport") == "unix"
    disks = full.findall("disks/disk")
    assert [d.get("exportname") for d in disks] == ["vda", "vdb"]
    assert [d.xpath("string(scratch/@file)") for d in disks] == ["/s/vda.qcow2",
                                                                 "/s/vdb.qcow2"]

    inc = etree.fromstring(fleecing.pull_xml(_plan(BackupType.INCREMENTAL),
                                             Path("/s/nbd.sock"), scratch))
    assert inc.findtext("incremental") == "cp-1"
    vda, vdb = inc.findall("disks/disk")
    assert (vda.get("backupmode"), vda.get("incremental"), vda.get("exportbitmap")) == (
        "incremental", "cp-1", "backup-vda")
    assert vdb.get("backupmode") == "full" and vdb.get("exportbitmap") is None


def test_image_opts_name_every_driver_and_escape_commas() -> None:
    src = fleecing.nbd_source(Path("/r/a,b/nbd.sock"), "vda", Extent(K, 2 * K))
    assert src.startswith(f"driver=raw,offset={K},size={2 * K},file.driver=nbd,")
    assert "file.server.path=/r/a,,b/nbd.sock" in src
    dst = fleecing.qcow2_window(Path("/r/x.qcow2"), Extent(K, 2 * K))
    assert "file.driver=qcow2" in dst and "file.file.driver=file" in dst


def test_check_mode() -> None:
    assert fleecing.check_mode(None) == "auto"
    assert fleecing.check_mode("ON") == "on"
    assert fleecing.check_mode("no") == "off"
    with pytest.raises(ValidationError, match="--fleecing"):
        fleecing.check_mode("sometimes")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repository:
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KVMOPS_BACKUP_WORK_DIR", str(tmp_path / "work"))
    (tmp_path / "repo").mkdir()
    return Repository(tmp_path / "repo")


class FakeDomain:
    """blockStatsFlags as libvirt returns it: cumulative write counters."""

    def __init__(self) -> None:
        self.ops = 0
        self.ns = 0

    def write(self, count: int, ms: float) -> None:
        self.ops += count
        self.ns += int(count * ms * 1e6)

    def blockStatsFlags(self, target: str, flags: int) -> dict[str, int]:
        return {"wr_operations": self.ops, "wr_total_times": self.ns}


def test_auto_fleeces_after_a_push_backup_that_slowed_the_writes(repo: Repository) -> None:
    notes: list[str] = []
    assert fleecing.choose("auto", repo, "vm1", None, 0, notes.append) is None

    domain = FakeDomain()
    domain.write(1000, 0.5)
    watch = fleecing.LatencyWatch(domain, ["vda"])
    domain.write(200, 2.0)  # 4x slower during the backup
    found = watch.finish(repo, "vm1", "B1", False, notes.append)
    assert found is not None and found.ratio == 4.0
    assert "4.0x slower" in notes[-1] and "--fleecing auto" in notes[-1]

    chosen = fleecing.choose("auto", repo, "vm1", None, 0, notes.append)
    assert chosen is not None and "B1" in chosen.reason and "4.0x" in chosen.reason
    assert chosen.scratch_root == Path(str(repo.root.parent / "work")) / "fleecing"
    # another VM of the repository measured nothing yet
    assert fleecing.choose("auto", repo, "vm2", None, 0, notes.append) is None
    assert fleecing.choose("off", repo, "vm1", None, 0, notes.append) is None

    # a fleecing run's measurement does not switch auto back to push mode
    watch = fleecing.LatencyWatch(domain, ["vda"])
    domain.write(200, 0.5)
    assert watch.finish(repo, "vm1", "B2", True, notes.append) is not None
    assert fleecing.choose("auto", repo, "vm1", None, 0, notes.append) is not None
    # a push run measured as fine does
    watch = fleecing.LatencyWatch(domain, ["vda"])
    domain.write(200, 0.6)
    watch.finish(repo, "vm1", "B3", False, notes.append)
    assert fleecing.choose("auto", repo, "vm1", None, 0, notes.append) is None


def test_too_few_writes_measure_nothing(repo: Repository) -> None:
    domain = FakeDomain()
    domain.write(1000, 0.5)
    watch = fleecing.LatencyWatch(domain, ["vda"])
    domain.write(fleecing.MIN_WRITES - 1, 10.0)  # 0.49 s in all: noise
    assert watch.finish(repo, "vm1", "B1", False, lambda _m: None) is None
    assert fleecing.latency_record(repo, "vm1") == {}


def test_a_few_stalled_writes_are_a_measurement(repo: Repository) -> None:
    domain = FakeDomain()
    domain.write(1000, 0.5)
    watch = fleecing.LatencyWatch(domain, ["vda"])
    domain.write(3, 3000.0)  # three writes that took 3 s each
    found = watch.finish(repo, "vm1", "B1", False, lambda _m: None)
    assert found is not None and found.ratio > 1000
    assert fleecing.choose("auto", repo, "vm1", None, 0, lambda _m: None) is not None


def test_no_room_for_the_scratch(repo: Repository, tmp_path: Path) -> None:
    notes: list[str] = []
    huge = 1 << 60
    with pytest.raises(StorageError, match="cannot fleece"):
        fleecing.choose("on", repo, "vm1", tmp_path, huge, notes.append)
    chosen = fleecing.choose("on", repo, "vm1", tmp_path, 0, notes.append)
    assert chosen is not None and chosen.scratch_root == tmp_path


def test_network_file_systems_are_recognised(monkeypatch: pytest.MonkeyPatch,
                                             repo: Repository) -> None:
    assert fleecing.fs_type(Path("/")) != ""
    monkeypatch.setattr(fleecing, "fs_type", lambda _p: "fuse.sshfs")
    chosen = fleecing.choose("auto", repo, "vm1", None, 0, lambda _m: None)
    assert chosen is not None and "fuse.sshfs" in chosen.reason


def test_stale_run_dirs_of_this_repo_and_vm_only(repo: Repository, tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    prefix = fleecing.run_dir_prefix(repo, "vm1")
    mine = root / f"{prefix}20260101T000000.000000Z"
    other_vm = root / f"{fleecing.run_dir_prefix(repo, 'vm1-b')}20260101T000000.000000Z"
    unrelated = root / f"{prefix}notanid"
    for d in (mine, other_vm, unrelated):
        d.mkdir(parents=True)
    fleecing.remove_stale(root, repo, "vm1")
    assert not mine.exists() and other_vm.exists() and unrelated.exists()


class PullJobDomain:
    """backupGetXMLDesc of a running pull job whose scratch files lie in ``dirs``."""

    def __init__(self, mode: str, dirs: list[Path]) -> None:
        self.mode, self.dirs = mode, dirs

    def backupGetXMLDesc(self, flags: int) -> str:
        disks = "".join(f"<disk name='vd{i}' backup='yes'><scratch file='{d}/vd{i}.qcow2'/>"
                        "</disk>" for i, d in enumerate(self.dirs))
        return f"<domainbackup mode='{self.mode}'><disks>{disks}</disks></domainbackup>"


def test_an_orphaned_pull_job_is_recognised_by_its_scratch_directory(
        repo: Repository, tmp_path: Path) -> None:
    run_dir = tmp_path / f"{fleecing.run_dir_prefix(repo, 'vm1')}20260101T000000.000000Z"
    assert fleecing.orphaned_run_dirs(PullJobDomain("pull", [run_dir]), repo, "vm1") == [
        run_dir]
    # another VM's, another tool's, or a push job: not ours to abort
    assert fleecing.orphaned_run_dirs(PullJobDomain("pull", [run_dir]), repo, "vm2") == []
    assert fleecing.orphaned_run_dirs(PullJobDomain("pull", [tmp_path / "x"]), repo,
                                      "vm1") == []
    assert fleecing.orphaned_run_dirs(PullJobDomain("pull", [run_dir, tmp_path / "x"]),
                                      repo, "vm1") == []
    assert fleecing.orphaned_run_dirs(PullJobDomain("push", [run_dir]), repo, "vm1") == []


def test_align_runs_covers_whole_clusters_within_the_disk() -> None:
    runs = [Extent(K + 512, 100), Extent(3 * K, K), Extent(4 * K + 1, 10), Extent(10 * K, 5)]
    assert align_runs(runs, K, 10 * K + 100) == [Extent(K, K), Extent(3 * K, 2 * K),
                                                 Extent(10 * K, 100)]
    for run in runs:  # every extent still covered
        assert any(a.start <= run.start and run.end <= a.end
                   for a in align_runs(runs, K, 10 * K + 100))
