"""Push-mode backup targets kvmops creates for libvirt to reuse: an incremental's links
to its parent (no rebase afterwards), big clusters for the full of a big disk."""

from __future__ import annotations

from pathlib import Path

from kvmops.backup import files
from kvmops.backup.model import BackupType
from kvmops.backup.plan import DiskPlan, Plan
from kvmops.images import qemuimg
from kvmops.vm.domxml import DiskSpec

GiB = 1024**3


def _plan(*items: tuple[str, BackupType, str | None]) -> Plan:
    kind = BackupType.FULL if all(m is BackupType.FULL for _, m, _ in items) \
        else BackupType.INCREMENTAL
    return Plan(type=kind, parent=None, base_checkpoint=None, notes=[], disks=[
        DiskPlan(disk=DiskSpec(target=t, source=f"/img/{t}.qcow2"), mode=m, parent=p,
                 checkpoint=True) for t, m, p in items])


def test_options_incremental_links_parent_relative_and_unopened() -> None:
    args = files.target_options(64 * GiB, "20260101T000000.000000Z", "vdb")
    assert args[-5:] == ["-b", "../20260101T000000.000000Z/vdb.qcow2", "-F", "qcow2", "-u"]
    assert "cluster_size" not in " ".join(args)  # an incremental keeps 64 KiB clusters


def test_options_full_clusters_by_size() -> None:
    assert files.target_options(files.BIG_CLUSTERS_FROM - 1, None, "vda") == [
        "create", "-q", "-f", "qcow2"]
    assert files.target_options(files.BIG_CLUSTERS_FROM, None, "vda")[-2:] == [
        "-o", "cluster_size=2M,extended_l2=on"]


def test_created_targets(tmp_path: Path) -> None:
    plan = _plan(("vda", BackupType.FULL, None), ("vdb", BackupType.FULL, None),
                 ("vdc", BackupType.INCREMENTAL, "P1"))
    sizes = {"vda": 64 * 1024**2, "vdb": 1024 * GiB, "vdc": 8 * GiB}
    assert files.create_targets(plan, tmp_path, sizes)
    small = qemuimg.info(tmp_path / "vda.qcow2", "qcow2")
    big = qemuimg.info(tmp_path / "vdb.qcow2", "qcow2")
    inc = qemuimg.info(tmp_path / "vdc.qcow2", "qcow2")
    assert (small.virtual_size, small.cluster_size, small.backing_filename) == (
        64 * 1024**2, 64 * 1024, None)
    assert (big.virtual_size, big.cluster_size) == (1024 * GiB, 2 * 1024**2)
    assert (inc.virtual_size, inc.cluster_size) == (8 * GiB, 64 * 1024)
    assert (inc.backing_filename, inc.backing_format) == ("../P1/vdc.qcow2", "qcow2")
    assert (tmp_path / "vdb.qcow2").stat().st_size < 16 * 1024**2  # nothing preallocated


def test_unknown_size_creates_nothing(tmp_path: Path) -> None:
    plan = _plan(("vda", BackupType.FULL, None), ("vdb", BackupType.FULL, None))
    assert not files.create_targets(plan, tmp_path, {"vda": GiB})
    assert list(tmp_path.iterdir()) == []
