"""The backup files once QEMU wrote them: relative links to the parent, compression,
checksums (qemu-img, formats always named)."""

from __future__ import annotations

import os
from pathlib import Path

from kvmops.backup.model import BackupType, DiskRecord
from kvmops.backup.plan import Plan
from kvmops.backup.repository import DIGEST_PENDING, Repository, sha256_file
from kvmops.errors import BackupError
from kvmops.images import qemuimg


def finish_files(repo: Repository, vm: str, partial: Path, plan: Plan,
                 compress: bool = False, created: dict[str, int] | None = None
                 ) -> list[DiskRecord]:
    """Re-link incrementals to their parent (relative), compress if asked, checksum.

    ``created``: the virtual sizes of the targets kvmops created itself (create_targets),
    whose parent link and size are known: no ``qemu-img info`` for them (a process start,
    a tenth of a small incremental's fixed cost with a cold page cache)."""
    records = []
    for item in plan.disks:
        target = item.disk.target
        path = partial / f"{target}.qcow2"
        if not path.is_file():
            raise BackupError(f"backup file {path} was not written for VM '{vm}'")
        if item.parent and not repo.has_file(vm, item.parent, f"{target}.qcow2"):
            # A store-backed repository keeps its files sealed in its store: only the
            # parent's presence there is needed, the link is written all the same.
            raise BackupError(f"parent backup file {item.parent}/{target}.qcow2"
                              f" is missing from {repo.location}")
        known = created is not None and target in created and not compress
        if known:
            assert created is not None
            virtual_size, allocated = created[target], os.stat(path).st_blocks * 512
        else:
            info = qemuimg.info(path, "qcow2")
            if item.parent:
                relative = parent_link(item.parent, target)
                if (info.backing_filename, info.backing_format) != (relative, "qcow2"):
                    link_to_parent(path, item.parent, target)  # not pre-created
            if compress:
                compress_in_place(path, parent_link(item.parent, target)
                                  if item.parent else None)
                info = qemuimg.info(path, "qcow2")
            virtual_size, allocated = info.virtual_size, info.actual_size or 0
        records.append(DiskRecord(
            target=target, file=path.name, source=item.disk.source or "",
            type=item.mode, parent=item.parent, virtual_size=virtual_size,
            bytes_written=allocated or os.path.getsize(path),
            sha256=DIGEST_PENDING if repo.digests_in_publish else sha256_file(path),
        ))
    return records


def compress_in_place(path: Path, backing: str | None) -> None:
    """Rewrite a backup file with compressed clusters (QEMU's push job cannot compress).

    With ``-B`` only the clusters of the file itself are copied, so an incremental stays
    an incremental on the same (relative) parent.
    """
    tmp = path.with_name(f".{path.name}.compressing")
    args = ["convert", "-c", "-W", "-m", "8", "-f", "qcow2", "-O", "qcow2"]
    if backing:
        args += ["-B", backing, "-F", "qcow2"]
    try:
        qemuimg.run_qemu_img([*args, str(path), str(tmp)], what=f"compressing {path.name}",
                             path=path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def parent_link(parent_id: str, target: str) -> str:
    """An incremental's backing link to its parent: relative, so the repository moves."""
    return f"../{parent_id}/{target}.qcow2"


def link_to_parent(path: Path, parent_id: str, target: str) -> None:
    """Point an incremental at its parent with a *relative* backing link (movable repo)."""
    relative = parent_link(parent_id, target)
    qemuimg.run_qemu_img(["rebase", "-u", "-f", "qcow2", "-b", relative, "-F", "qcow2",
                          str(path)], what=f"linking {path.name} to {relative}", path=path)


# ---------------------------------------------------------------- push targets
# A full of a disk this large gets 2 MiB clusters with 64 KiB subclusters (extended L2).
# QEMU's full backup writes zeroes over every unallocated area of the disk; a qcow2
# target records them in its L2 tables, and with 64 KiB clusters a 1 TiB disk needs 128
# MiB of them, each newly allocated table flushed before use: ~11 s of the full of a
# 1 TiB disk holding 128 MiB. With 2 MiB clusters it needs 4 L2 tables; the 64 KiB
# subclusters keep small writes as small as before.
BIG_CLUSTERS_FROM = 4 * 1024**3


def target_options(size: int, parent_id: str | None, target: str) -> list[str]:
    """``qemu-img create`` arguments (before the path) of one push target: an
    incremental backs onto its parent's file (relative, never opened: ``-u``), so no
    rebase is needed once QEMU wrote it; a big full gets big clusters (see above)."""
    args = ["create", "-q", "-f", "qcow2"]
    if parent_id:
        args += ["-b", parent_link(parent_id, target), "-F", "qcow2", "-u"]
    elif size >= BIG_CLUSTERS_FROM:
        args += ["-o", "cluster_size=2M,extended_l2=on"]
    return args


def create_targets(plan: Plan, partial: Path, sizes: dict[str, int]) -> bool:
    """Create the push-mode target files for libvirt to reuse
    (``VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL``); False, with nothing created, when a
    disk's size is unknown (libvirt then creates them as before)."""
    if any(item.disk.target not in sizes for item in plan.disks):
        return False
    for item in plan.disks:
        target = item.disk.target
        path = partial / f"{target}.qcow2"
        parent = item.parent if item.mode is not BackupType.FULL else None
        qemuimg.run_qemu_img([*target_options(sizes[target], parent, target), str(path),
                              str(sizes[target])], what=f"creating backup target {path}",
                             path=path)
        path.chmod(0o666)  # QEMU (libvirt-qemu) writes it; libvirt labels it as well
    return True
