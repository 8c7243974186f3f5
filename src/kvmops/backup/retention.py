"""Retention: which backups to keep, and merging the others away safely.

Expired backups are not simply deleted: a kept backup whose chain runs through
an expired one is first rebased (a safe ``qemu-img rebase``, which copies the
differences into it) onto its nearest kept ancestor, or made self-contained
when no kept ancestor remains. So every kept point stays restorable. Each
rewritten backup is built in a staging directory and swapped in with renames;
the repository is verified after the merge.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from kvmops.backup.model import BackupType, DiskRecord, Manifest
from kvmops.backup.repository import (
    MANIFEST,
    Repository,
    fsync_dir,
    fsync_file,
    sha256_file,
)
from kvmops.backup.restore import require_sound, verify
from kvmops.errors import NotFoundError, StorageError, TamperedError, ValidationError
from kvmops.images import qemuimg

STAGING_PREFIX = ".staging-"
RETIRED_PREFIX = ".retired-"


class RetentionPolicy(BaseModel):
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    def counts(self) -> tuple[int, ...]:
        return (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly,
                self.keep_monthly, self.keep_yearly)

    def validate_policy(self) -> None:
        if min(self.counts()) < 0:
            raise ValidationError("retention counts must not be negative")
        if not any(self.counts()):
            raise ValidationError("a retention policy that keeps nothing is refused",
                                  hint="give --keep-last, --keep-hourly, --keep-daily, "
                                       "--keep-weekly, --keep-monthly or --keep-yearly >= 1")


class PrunePlan(BaseModel):
    keep: list[str]
    remove: list[str]
    rewrite: dict[str, str | None]  # kept id -> its new parent (None: becomes a full)
    reasons: dict[str, str]  # kept id -> why kept


class PruneResult(BaseModel):
    vm: str
    dry_run: bool
    plan: PrunePlan


def _bucket_keep(manifests: list[Manifest], count: int, key: Callable[[datetime], str],
                 label: str, reasons: dict[str, str]) -> None:
    """Keep the newest backup of each of the newest ``count`` buckets (days, weeks)."""
    seen: list[str] = []
    for manifest in reversed(manifests):
        bucket = key(manifest.time)
        if bucket in seen:
            continue
        seen.append(bucket)
        if len(seen) > count:
            break
        reasons.setdefault(manifest.id, f"{label} {bucket}")


def _strftime(time: datetime, fmt: str) -> str:
    return time.strftime(fmt)


def plan_prune(manifests: list[Manifest], policy: RetentionPolicy) -> PrunePlan:
    """Pure: which backups stay, which go, and which kept ones must be re-parented."""
    policy.validate_policy()
    complete = [m for m in manifests if m.complete]
    reasons: dict[str, str] = {}
    for manifest in complete[-policy.keep_last:] if policy.keep_last else []:
        reasons[manifest.id] = "last"
    buckets: list[tuple[int, str, str]] = [
        (policy.keep_hourly, "%Y-%m-%dT%H", "hourly"),
        (policy.keep_daily, "%Y-%m-%d", "daily"),
        (policy.keep_weekly, "%G-W%V", "weekly"),
        (policy.keep_monthly, "%Y-%m", "monthly"),
        (policy.keep_yearly, "%Y", "yearly"),
    ]
    for count, fmt, label in buckets:
        if count:
            _bucket_keep(complete, count, functools.partial(_strftime, fmt=fmt), label,
                         reasons)
    keep = [m.id for m in complete if m.id in reasons]
    remove = [m.id for m in complete if m.id not in reasons]
    by_id = {m.id: m for m in complete}
    rewrite: dict[str, str | None] = {}
    for backup_id in keep:
        manifest = by_id[backup_id]
        if manifest.parent is None or manifest.parent in reasons:
            continue
        ancestor: str | None = manifest.parent
        while ancestor is not None and ancestor not in reasons:
            ancestor = by_id[ancestor].parent if ancestor in by_id else None
        rewrite[backup_id] = ancestor
    return PrunePlan(keep=keep, remove=remove, rewrite=rewrite, reasons=reasons)


def scan_for_prune(repo: Repository, vm: str, policy: RetentionPolicy
                   ) -> tuple[dict[str, Manifest], PrunePlan]:
    """``vm``'s backups by id and the plan; refused when any manifest was rejected."""
    manifests, rejected = repo.scan(vm)
    if rejected:
        raise TamperedError(
            f"not pruning VM '{vm}' in {repo.location}: backup {rejected[0].backup_id} "
            f"failed authentication ({rejected[0].reason})",
            hint="a chain with an untrusted link cannot be merged safely; run "
                 "'kvmops backup verify' and remove or re-take the affected backups")
    if not manifests:
        raise NotFoundError(f"no backups of VM '{vm}' in {repo.location}")
    return {m.id: m for m in manifests}, plan_prune(manifests, policy)


def note_merged(note: Callable[[str], None] | None, backup_id: str,
                new_parent: str | None) -> None:
    if note:
        target = new_parent or "nothing (now a full)"
        note(f"merged the expired backups below {backup_id} into it; "
             f"it now builds on {target}")


def prune(repo_path: Path | Repository, vm: str, policy: RetentionPolicy, *,
          dry_run: bool = False, note: Callable[[str], None] | None = None) -> PruneResult:
    """Apply ``policy`` to ``vm``'s backups (``repo_path``: a directory, or a repository
    opened by :func:`kvmops.backup.storerepo.open_repository`)."""
    repo = repo_path if isinstance(repo_path, Repository) else Repository(repo_path)
    from kvmops.backup.storerepo import StoreRepository, prune_store

    if isinstance(repo, StoreRepository):
        return prune_store(repo, vm, policy, dry_run=dry_run, note=note)
    with repo.lock(vm, "prune"):
        recover_swaps(repo, vm)
        by_id, plan = scan_for_prune(repo, vm, policy)
        if dry_run or not plan.remove:
            return PruneResult(vm=vm, dry_run=dry_run, plan=plan)
        from kvmops.backup.mount import refuse_if_mounted  # a mounted chain is in use

        refuse_if_mounted(repo.root, vm, "prune")
        from kvmops.backup.instant import refuse_if_in_use  # a recovery reads the chain

        refuse_if_in_use(repo.root, vm, set(plan.remove) | set(plan.rewrite), "prune")
        # Oldest first: a rewritten backup's new parent is always already final.
        for backup_id in plan.keep:
            if backup_id in plan.rewrite:
                _rewrite(repo, vm, by_id, by_id[backup_id], plan.rewrite[backup_id])
                note_merged(note, backup_id, plan.rewrite[backup_id])
        for backup_id in plan.remove:
            retire = repo.backups_dir(vm) / f"{RETIRED_PREFIX}{backup_id}"
            os.rename(repo.backups_dir(vm) / backup_id, retire)
        fsync_dir(repo.backups_dir(vm))
        for backup_id in plan.remove:
            shutil.rmtree(repo.backups_dir(vm) / f"{RETIRED_PREFIX}{backup_id}")
        require_sound(verify(repo, vm))
    return PruneResult(vm=vm, dry_run=False, plan=plan)


def _rewrite(repo: Repository, vm: str, by_id: dict[str, Manifest], manifest: Manifest,
             new_parent: str | None) -> Manifest:
    """Re-parent every disk of ``manifest`` onto ``new_parent`` in a staged copy."""
    current = repo.backups_dir(vm) / manifest.id
    staging = repo.backups_dir(vm) / f"{STAGING_PREFIX}{manifest.id}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    records: list[DiskRecord] = []
    parent_manifest = by_id.get(new_parent) if new_parent else None
    for record in manifest.disks:
        src = current / record.file
        dst = staging / record.file
        subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
        parent_has_disk = parent_manifest is not None and any(
            d.target == record.target for d in parent_manifest.disks)
        if record.parent is None:
            new_disk_parent = None  # already self-contained
        elif parent_has_disk:
            assert new_parent is not None
            new_disk_parent = new_parent
            backing = f"../{new_parent}/{record.target}.qcow2"
            # Safe rebase: run from the live directory so the old relative chain resolves.
            _rebase(dst, src.parent, backing)
        else:
            new_disk_parent = None
            _rebase(dst, src.parent, "")
        info = qemuimg.info(dst, "qcow2")
        records.append(record.model_copy(update={
            "parent": new_disk_parent,
            "type": BackupType.FULL if new_disk_parent is None else record.type,
            "bytes_written": info.actual_size or os.path.getsize(dst),
            "sha256": sha256_file(dst),
        }))
    kind = manifest.type
    if all(r.parent is None for r in records):
        kind = BackupType.FULL
    updated = manifest.model_copy(update={
        "parent": new_parent if kind is not BackupType.FULL else None, "type": kind,
        "disks": records,
        "notes": [*manifest.notes, f"expired backups merged into this one at prune "
                                   f"(was {manifest.type.value} on {manifest.parent})"],
    })
    for child in staging.iterdir():
        fsync_file(child)
    repo.write_manifest(staging, updated)
    retired = repo.backups_dir(vm) / f"{RETIRED_PREFIX}{manifest.id}"
    os.rename(current, retired)
    os.rename(staging, current)
    fsync_dir(current.parent)
    shutil.rmtree(retired)
    return updated


def _rebase(image: Path, chain_dir: Path, backing: str) -> None:
    """Safe rebase of a staged copy whose relative backing resolves from ``chain_dir``.

    The staged copy sits in a sibling directory, so ``../ID/vda.qcow2`` resolves to
    the same files from either place.
    """
    del chain_dir  # siblings: relative links resolve identically
    args = ["rebase", "-f", "qcow2", "-b", backing]
    if backing:
        args += ["-F", "qcow2"]
    qemuimg.run_qemu_img([*args, str(image)], what=f"merging into {image.name}", path=image)


def recover_swaps(repo: Repository, vm: str) -> None:
    """Finish or undo a prune that was interrupted between its renames."""
    base = repo.backups_dir(vm)
    if not base.is_dir():
        return
    for retired in base.glob(f"{RETIRED_PREFIX}*"):
        backup_id = retired.name[len(RETIRED_PREFIX):]
        live = base / backup_id
        if live.exists():
            shutil.rmtree(retired)
        elif (retired / MANIFEST).is_file():
            staging = base / f"{STAGING_PREFIX}{backup_id}"
            if (staging / MANIFEST).is_file():
                os.rename(staging, live)
                shutil.rmtree(retired)
            else:
                os.rename(retired, live)
    for staging in base.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(staging, ignore_errors=True)
    if any(base.glob(f"{RETIRED_PREFIX}*")):
        raise StorageError(f"could not recover an interrupted prune in {base}")
