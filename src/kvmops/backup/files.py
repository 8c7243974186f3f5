"""The backup files once QEMU wrote them: relative links to the parent, compression,
checksums (qemu-img, formats always named)."""

from __future__ import annotations

import os
from pathlib import Path

from kvmops.backup.model import DiskRecord
from kvmops.backup.plan import Plan
from kvmops.backup.repository import Repository, sha256_file
from kvmops.errors import BackupError
from kvmops.images import qemuimg


def finish_files(repo: Repository, vm: str, partial: Path, plan: Plan,
                 compress: bool = False) -> list[DiskRecord]:
    """Re-link incrementals to their parent (relative), compress if asked, checksum."""
    records = []
    for item in plan.disks:
        path = partial / f"{item.disk.target}.qcow2"
        if not path.is_file():
            raise BackupError(f"backup file {path} was not written for VM '{vm}'")
        if item.parent:
            # A store-backed repository keeps its files sealed in its store: only the
            # parent's presence there is needed, the link is written all the same.
            if not repo.has_file(vm, item.parent, f"{item.disk.target}.qcow2"):
                raise BackupError(f"parent backup file {item.parent}/{item.disk.target}.qcow2"
                                  f" is missing from {repo.location}")
            link_to_parent(path, item.parent, item.disk.target)
        if compress:
            compress_in_place(path, f"../{item.parent}/{item.disk.target}.qcow2"
                              if item.parent else None)
        info = qemuimg.info(path, "qcow2")
        records.append(DiskRecord(
            target=item.disk.target, file=path.name, source=item.disk.source or "",
            type=item.mode, parent=item.parent, virtual_size=info.virtual_size,
            bytes_written=info.actual_size or os.path.getsize(path),
            sha256=sha256_file(path),
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


def link_to_parent(path: Path, parent_id: str, target: str) -> None:
    """Point an incremental at its parent with a *relative* backing link (movable repo)."""
    relative = f"../{parent_id}/{target}.qcow2"
    qemuimg.run_qemu_img(["rebase", "-u", "-f", "qcow2", "-b", relative, "-F", "qcow2",
                          str(path)], what=f"linking {path.name} to {relative}", path=path)
