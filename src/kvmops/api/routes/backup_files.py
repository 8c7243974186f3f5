"""File-level restore over the API: list a backup point's files, restore one file (a
job: to a directory on the server's host, or into the running guest), download one.

``backup mount``/``umount`` are not offered here: a mount point on the server's host is
of no use to a remote caller, and a long-lived root mount is a host administrator's
decision (``kvmops backup mount`` at the host). Every call mounts the point for its own
length and unmounts after; the paths given are guest paths, resolved inside the
mounted file system (never out), and ``to`` goes through the path policy.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import FileResponse
from pydantic import Field, model_validator
from starlette.background import BackgroundTask

from kvmops.api.deps import Ctx, HostUri, OperatorCaller, VmNameDep
from kvmops.api.routes.backups import Repo, RepoKey
from kvmops.api.routes.common import JobAccepted, accepted
from kvmops.api.runner import JobContext
from kvmops.api.validators import AbsolutePath
from kvmops.errors import ValidationError
from kvmops.services import filerestore
from kvmops.services.filerestore import FilesResult, RestoreFileResult

router = APIRouter(tags=["backups"])
GuestPath = Field(max_length=4096, pattern=r"^/", description="absolute path in the guest")


class RestoreFileBody(RepoKey):
    repo: Repo
    path: str = GuestPath
    to: AbsolutePath | None = Field(default=None, description="writes TO/<basename of path>")
    into_guest: bool = False
    guest_path: str | None = Field(default=None, max_length=4096, pattern=r"^/")
    disk: str | None = Field(default=None, max_length=32, pattern=r"^[a-z]+$")
    partition: int | None = Field(default=None, ge=1, le=128)
    force: bool = False

    @model_validator(mode="after")
    def one_target(self) -> RestoreFileBody:
        if self.into_guest == (self.to is not None):
            raise ValueError("give exactly one of to and into_guest")
        return self


def _backup_id(value: str) -> str:
    if not value or len(value) > 64 or "/" in value:
        raise ValidationError("invalid backup id")
    return value


KeyFileQuery = Query(None, max_length=255,
                     description="an encrypted repository's key file (server's key directory)")
PassHeader = Header(None, alias="X-Kvmops-Repository-Passphrase", max_length=1024,
                    description="an encrypted repository's passphrase (never in the URL)")


@router.get("/vms/{name}/backups/{backup_id}/files", response_model=FilesResult)
def list_files(caller: OperatorCaller, name: VmNameDep, backup_id: str,
               repo: str = Query(max_length=4096, description="repository directory or URL"),
               path: str = Query("/", max_length=4096, pattern=r"^/"),
               disk: str | None = Query(None, max_length=32, pattern=r"^[a-z]+$"),
               partition: int | None = Query(None, ge=1, le=128),
               key_file: str | None = KeyFileQuery,
               passphrase: str | None = PassHeader) -> FilesResult:
    """A directory of the guest's file system at a backup point (operator: it mounts
    the point on the server's host for the call)."""
    return filerestore.list_files(caller, repo, name, _backup_id(backup_id), path,
                                  disk=disk, partition=partition, key_file=key_file,
                                  passphrase=passphrase)


@router.post("/vms/{name}/backups/{backup_id}/restore-file", status_code=202,
             response_model=JobAccepted)
def restore_file(caller: OperatorCaller, name: VmNameDep, backup_id: str,
                 body: RestoreFileBody, ctx: Ctx, uri: HostUri, response: Response
                 ) -> JobAccepted:
    """Restore one file (or directory) of a point: a job; its result names what was
    written (and the sha256 of a file)."""
    filerestore.where(caller, body.repo)  # checked before the job starts
    if body.to is not None:
        filerestore.check_to(caller, body.to)
    at = _backup_id(backup_id)

    def run(job: JobContext) -> RestoreFileResult:
        return filerestore.restore_file(
            caller, uri, body.repo, name, at, body.path, to=body.to,
            into_guest=body.into_guest, guest_path=body.guest_path, disk=body.disk,
            partition=body.partition, force=body.force, progress=job.bytes, note=job.note,
            **body.secret())

    return accepted(ctx.runner.submit("backup.restore-file", name, caller.name, run),
                    response)


@router.get("/vms/{name}/backups/{backup_id}/file", response_class=FileResponse)
def download_file(caller: OperatorCaller, name: VmNameDep, backup_id: str,
                  repo: str = Query(max_length=4096, description="repository directory or URL"),
                  path: str = Query(max_length=4096, pattern=r"^/"),
                  disk: str | None = Query(None, max_length=32, pattern=r"^[a-z]+$"),
                  partition: int | None = Query(None, ge=1, le=128),
                  key_file: str | None = KeyFileQuery,
                  passphrase: str | None = PassHeader) -> FileResponse:
    """Download one regular file of a point (copied out to a private staging file in
    the state directory, removed once sent)."""
    stage = Path(tempfile.mkdtemp(prefix="download-", dir=filerestore.staging_dir()))
    try:
        result = filerestore.restore_file(caller, None, repo, name, _backup_id(backup_id),
                                          path, to=stage, disk=disk, partition=partition,
                                          trusted_to=True, key_file=key_file,
                                          passphrase=passphrase)
        if result.kind != "file":
            raise ValidationError(f"{path} is a directory: download files one by one",
                                  hint="or restore the directory with restore-file")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return FileResponse(result.written, filename=Path(result.written).name,
                        media_type="application/octet-stream",
                        background=BackgroundTask(shutil.rmtree, stage, True))
