"""Backups: create (job, in a child process), list, restore, verify, prune, cancel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response
from pydantic import BeforeValidator, Field, SecretStr, model_validator

from kvmops.api.deps import AdminCaller, Ctx, HostUri, OperatorCaller, ViewerCaller, VmNameDep
from kvmops.api.routes.common import Body, JobAccepted, Message, accepted
from kvmops.api.runner import JobCancelled, JobContext
from kvmops.api.validators import AbsolutePath, Rate, VmName, check_path
from kvmops.errors import KvmopsError, ValidationError
from kvmops.services import backups
from kvmops.services.backups import (
    Manifest,
    PruneResult,
    RestoreResult,
    RetentionPolicy,
    require_sound,
)

router = APIRouter(tags=["backups"])


def _repo(value: object) -> str:
    """A repository: a remote URL (checked against the allow-list by the service) or an
    absolute directory (checked against the path policy by the service)."""
    if isinstance(value, str) and backups.is_remote_url(value):
        return value
    if not isinstance(value, str):
        raise ValueError("a repository is a directory or an sftp:// or s3:// URL")
    return str(check_path(value))


Repo = Annotated[str, BeforeValidator(_repo), Field(max_length=4096)]


class RepoKey(Body):
    """The key of an encrypted repository: never logged, audited or kept. Either the name
    of a key file an admin put in the server's ``STATE_DIR/keys/repository/``, or a
    passphrase sent in this body."""

    key_file: str | None = Field(default=None, max_length=255,
                                 description="a key file of the server's key directory")
    passphrase: SecretStr | None = Field(default=None, max_length=1024,
                                         description="the repository's passphrase")

    def secret(self) -> dict[str, Any]:
        return {"key_file": self.key_file,
                "passphrase": self.passphrase.get_secret_value() if self.passphrase else None}


class BackupBody(RepoKey):
    repo: Repo
    mode: Literal["full", "incremental", "differential"] | None = None
    disks: list[str] = Field(default_factory=list, max_length=26)
    exclude: list[str] = Field(default_factory=list, max_length=26)
    freeze: bool = True
    speed: Rate | None = Field(default=None, description="per second, e.g. 50M; a bare "
                               "number is MiB/s (as at the command line)")
    compress: bool | Annotated[str, Field(pattern=r"^(qcow2|zstd(:\d{1,2})?)$")] = Field(
        default=False, description="true or qcow2: qcow2's compressed clusters; zstd or "
                                   "zstd:LEVEL: a zstd repository (chosen at its first backup)")
    encrypt: bool = Field(default=False, description="encrypt the repository from its first "
                                                     "backup (with key_file or passphrase)")
    fleecing: Literal["auto", "on", "off"] = Field(
        default="auto", description="copy-before-write into a local scratch image (libvirt "
                                    "pull mode); auto: when the repository or a measured "
                                    "slowdown calls for it (docs/concepts/backup-fleecing.md)")


class RestoreBody(RepoKey):
    repo: Repo
    at: str | None = Field(default=None, max_length=64, description="backup id; default the newest")
    to: AbsolutePath | None = Field(default=None, description="directory for flattened images")
    new_vm: VmName | None = None
    in_place: bool = False
    images_dir: AbsolutePath | None = None

    @model_validator(mode="after")
    def one_target(self) -> RestoreBody:
        chosen = [x for x in (self.to is not None, self.new_vm is not None, self.in_place) if x]
        if len(chosen) != 1:
            raise ValueError("give exactly one of to, new_vm and in_place")
        return self


class VerifyBody(RepoKey):
    repo: Repo
    vm: VmName | None = None
    at: str | None = Field(default=None, max_length=64)
    checksums: bool = True


class PruneBody(RepoKey):
    repo: Repo
    keep_last: int = Field(default=0, ge=0, le=10000)
    keep_hourly: int = Field(default=0, ge=0, le=10000)
    keep_daily: int = Field(default=0, ge=0, le=10000)
    keep_weekly: int = Field(default=0, ge=0, le=10000)
    keep_monthly: int = Field(default=0, ge=0, le=10000)
    keep_yearly: int = Field(default=0, ge=0, le=10000)
    dry_run: bool = False

    @model_validator(mode="after")
    def keeps_something(self) -> PruneBody:
        if not any(self.policy().counts()):
            raise ValueError("a policy that keeps nothing is refused: set keep_last, "
                             "keep_hourly, keep_daily, keep_weekly, keep_monthly or "
                             "keep_yearly")
        return self

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(keep_last=self.keep_last, keep_hourly=self.keep_hourly,
                               keep_daily=self.keep_daily, keep_weekly=self.keep_weekly,
                               keep_monthly=self.keep_monthly, keep_yearly=self.keep_yearly)


class RekeyBody(RepoKey):
    """The current key (``key_file`` or ``passphrase``) and the new one."""

    repo: Repo
    new_key_file: str | None = Field(default=None, max_length=255,
                                     description="a key file of the server's key directory "
                                                 "(made when missing)")
    new_passphrase: SecretStr | None = Field(default=None, min_length=8, max_length=1024)

    @model_validator(mode="after")
    def both_keys(self) -> RekeyBody:
        if self.key_file is None and self.passphrase is None:
            raise ValueError("give the current key: key_file or passphrase")
        if self.new_key_file is None and self.new_passphrase is None:
            raise ValueError("give the new key: new_key_file or new_passphrase")
        return self


def _error_class(kind: str) -> type[KvmopsError]:
    import kvmops.errors as errors

    found = getattr(errors, kind, None)
    if isinstance(found, type) and issubclass(found, KvmopsError):
        return found
    return errors.BackupError


def run_backup_process(job: JobContext, request: dict[str, Any]) -> dict[str, Any]:
    """Run the backup engine in a child process, relaying its progress."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmops.api.backup_worker"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "KVMOPS_DEBUG": "0"})
    job.process = proc
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({**request, "job_id": job.id}) + "\n")
    proc.stdin.close()
    outcome: dict[str, Any] = {}
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        try:
            if "progress" in msg:
                job.bytes(*msg["progress"])
            elif "note" in msg:
                job.note(str(msg["note"]))
            else:
                outcome = msg
        except JobCancelled:
            job.cancel()  # SIGTERM: the engine aborts and cleans up; keep reading
    code = proc.wait()
    if "result" in outcome:
        result: dict[str, Any] = outcome["result"]
        return result
    if job.cancelled.is_set():
        raise JobCancelled(f"backup of VM '{request['vm']}' was cancelled"
                           + (f": {outcome['error']}" if outcome.get("error") else ""))
    if "error" in outcome:
        raise _error_class(str(outcome.get("kind")))(str(outcome["error"]))
    raise KvmopsError(f"backup process of VM '{request['vm']}' ended with code {code}")


@router.post("/vms/{name}/backups", status_code=202, response_model=JobAccepted)
def create_backup(caller: OperatorCaller, name: VmNameDep, body: BackupBody, ctx: Ctx,
                  uri: HostUri, response: Response) -> JobAccepted:
    repo = backups.location(caller, body.repo)
    backups.key_path(caller, body.key_file)  # refused here, before the job
    # To the child on its stdin only: the key material is in no job record or log.
    request = {"user": caller.name, "vm": name, "repo": str(repo), "mode": body.mode,
               "disks": body.disks,
               "exclude": body.exclude, "freeze": body.freeze, "speed": body.speed,
               "compress": body.compress, "encrypt": body.encrypt, **body.secret(),
               "uri": uri, "fleecing": body.fleecing}
    return accepted(ctx.runner.submit("backup.create", name, caller.name,
                                      lambda job: run_backup_process(job, request)), response)


@router.get("/vms/{name}/backups", response_model=list[Manifest])
def list_backups(caller: ViewerCaller, name: VmNameDep,
                 repo: str = Query(description="repository directory or URL",
                                   max_length=4096),
                 key_file: str | None = Query(
                     default=None, max_length=255,
                     description="an encrypted repository's key file (server's key directory)"),
                 passphrase: str | None = Header(
                     default=None, alias="X-Kvmops-Repository-Passphrase", max_length=1024,
                     description="an encrypted repository's passphrase (never in the URL)"),
                 ) -> list[Manifest]:
    """Authenticated backups, oldest first (rejected ones are reported by verify)."""
    manifests, _rejected = backups.list_backups(caller, repo, name, key_file=key_file,
                                                passphrase=passphrase)
    return [m.model_copy(update={"domain_xml": ""}) for m in manifests]


@router.post("/vms/{name}/backups/restore", status_code=202, response_model=JobAccepted)
def restore(caller: OperatorCaller, name: VmNameDep, body: RestoreBody, ctx: Ctx,
            uri: HostUri, response: Response) -> JobAccepted:
    backups.check_restore(caller, body.repo, to=body.to, images_dir=body.images_dir,
                          **body.secret())

    def run(job: JobContext) -> RestoreResult:
        def progress(label: str, pct: float) -> None:
            job.percent(pct, f"restoring {label}")

        return backups.restore(caller, uri, body.repo, name,
                               body.at, to=body.to, new_vm=body.new_vm,
                               in_place=body.in_place, images_dir=body.images_dir,
                               progress=progress, **body.secret())

    return accepted(ctx.runner.submit("backup.restore", name, caller.name, run), response)


@router.post("/backups/verify", status_code=202, response_model=JobAccepted)
def verify(caller: OperatorCaller, body: VerifyBody, ctx: Ctx, response: Response
           ) -> JobAccepted:
    backups.open_existing(caller, body.repo, **body.secret())

    def run(job: JobContext) -> dict[str, Any]:
        job.note(f"verifying {body.repo}")
        report = backups.verify(caller, body.repo, body.vm, body.at, checksums=body.checksums,
                                **body.secret())
        require_sound(report)
        return {**report.model_dump(mode="json"), "sound": report.sound}

    return accepted(ctx.runner.submit("backup.verify", body.vm or str(body.repo), caller.name,
                                      run), response)


@router.post("/vms/{name}/backups/prune", status_code=202, response_model=JobAccepted)
def prune_backups(caller: OperatorCaller, name: VmNameDep, body: PruneBody, ctx: Ctx,
                  response: Response) -> JobAccepted:
    policy = body.policy()
    backups.open_existing(caller, body.repo, **body.secret())

    def run(job: JobContext) -> PruneResult:
        return backups.prune_backups(caller, body.repo, name, policy, dry_run=body.dry_run,
                                     note=job.note, **body.secret())

    return accepted(ctx.runner.submit("backup.prune", name, caller.name, run), response)


@router.get("/backups/repo")
def repo_info(caller: ViewerCaller,
              repo: str = Query(description="repository directory or URL", max_length=4096),
              ) -> dict[str, Any]:
    """A repository's format, compression, encryption (cipher, KDF, key id: never a key)
    and VMs, as `kvmops backup repo info`."""
    return backups.repo_info(caller, repo)


@router.post("/backups/repo/rekey")
def repo_rekey(caller: AdminCaller, body: RekeyBody) -> dict[str, Any]:
    """Re-wrap an encrypted repository's data key under a new key: the old key no longer
    opens it (no data is rewritten)."""
    return backups.rekey(caller, body.repo, **body.secret(), new_key_file=body.new_key_file,
                         new_passphrase=(body.new_passphrase.get_secret_value()
                                         if body.new_passphrase else None))


@router.post("/vms/{name}/backups/cancel", response_model=Message)
def cancel(caller: OperatorCaller, name: VmNameDep, ctx: Ctx, uri: HostUri) -> Message:
    mine = ctx.runner.active(kind="backup.create", target=name)
    if mine:
        for job in mine:
            ctx.runner.cancel(job.id)
        return Message(message=f"cancelling the backup of VM '{name}'",
                       details={"jobs": [j.id for j in mine]})
    running = [j for j in backups.running() if j.vm == name]
    if running and running[0].pid == os.getpid():  # never signal ourselves
        raise ValidationError(f"the backup of VM '{name}' runs inside this server")
    return Message(message=backups.cancel(caller, uri, name))



