"""A repository under a prefix of an S3 bucket (boto3), on AWS or any S3-compatible server.

``s3://BUCKET[/PREFIX][?endpoint=http://HOST:PORT&region=NAME&profile=NAME]``.
Credentials: the settings' ``s3_credentials`` file (AWS's INI form, section
``profile`` or ``default``: ``aws_access_key_id``, ``aws_secret_access_key``), else
boto3's own chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``...). They never
come from a URL, the database or the audit log.

Objects are atomic by nature: a PUT or a CompleteMultipartUpload makes the whole new
object visible at once, a failed one leaves the old. Files above ``MULTIPART_MIN`` go
up in parts of ``part_size`` (every PUT carries its Content-MD5); the upload's id and the
ETags of the parts sent are kept in a state file in the local work directory
(``WORK/s3-uploads/``) after each part, so an interrupted upload of the same file
resumes with the parts not yet sent (the parts the server lists are checked against the
state). ``parts_in_flight`` parts go at once, each in a thread of its own.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kvmops.backup.remote import RemoteUrl, parse_remote_url
from kvmops.errors import ConfigError, HostUnavailableError, NotFoundError, StorageError

ProgressFn = Callable[[int, int], None]
T = TypeVar("T")
MiB = 1 << 20
MULTIPART_MIN = 64 * MiB  # files from this size go up in parts
PART_SIZE = 64 * MiB  # S3 wants >= 5 MiB for every part but the last, <= 10000 parts
MIN_PART = 5 * MiB
PARTS_IN_FLIGHT = 4  # parts sent at once (each held in memory while it goes)
CHUNK = MiB
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def work_dir() -> Path:
    """Where resumable upload state lives (the backup work directory when configured)."""
    from kvmops.config import settings

    cfg = settings()
    base = getattr(cfg, "backup_work_dir", None) or cfg.cache_dir / "backup-work"
    return Path(base) / "s3-uploads"


def _credentials(remote: RemoteUrl) -> dict[str, str]:
    """Keys from the settings' credentials file; {} lets boto3 use its environment."""
    from kvmops.config import settings

    path = getattr(settings(), "s3_credentials", None)
    profile = remote.params.get("profile", "default")
    if path is None:
        if "profile" in remote.params:
            return {"profile_name": profile}
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as fh:
            parser.read_file(fh)
    except OSError as err:
        raise ConfigError(f"cannot read the S3 credentials file {path}: {err.strerror}",
                          hint="fix s3_credentials in /etc/kvmops/config.toml") from err
    except configparser.Error as err:
        raise ConfigError(f"S3 credentials file {path} is not an INI file: {err}") from err
    if not parser.has_section(profile):
        raise ConfigError(f"S3 credentials file {path} has no section [{profile}]")
    section = parser[profile]
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key or not secret:
        raise ConfigError(f"section [{profile}] of S3 credentials file {path} lacks "
                          "aws_access_key_id or aws_secret_access_key")
    found = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    if section.get("aws_session_token"):
        found["aws_session_token"] = section["aws_session_token"]
    return found


def _in_flight(send: Callable[[int], T], items: list[int], width: int) -> Generator[T, None, None]:
    """``send(item)`` for every item, ``width`` at a time in threads, yielding results as
    they complete. When the consumer stops (an error, a Cut), no new item is started and
    the ones in flight are waited for."""
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="s3-part") as pool:
        pending: set[Future[T]] = set()
        queue = iter(items)
        try:
            for item in itertools.islice(queue, width):
                pending.add(pool.submit(send, item))
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
                    following = next(queue, None)
                    if following is not None:
                        pending.add(pool.submit(send, following))
        finally:
            for future in pending:
                future.cancel()


class S3Store:
    """An :class:`kvmops.backup.store.ObjectStore` on S3."""

    def __init__(self, url: str, *, part_size: int = PART_SIZE,
                 multipart_min: int = MULTIPART_MIN, state_dir: Path | None = None,
                 parts_in_flight: int = PARTS_IN_FLIGHT) -> None:
        self.remote: RemoteUrl = parse_remote_url(url)
        if self.remote.scheme != "s3":
            raise ValueError(f"not an s3 URL: {url}")
        self.url = str(self.remote)
        self.bucket = self.remote.host
        self.base = f"{self.remote.path}/" if self.remote.path else ""
        self.part_size = max(part_size, MIN_PART)
        self.multipart_min = multipart_min
        self.parts_in_flight = max(1, parts_in_flight)
        self.state_dir = state_dir
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                creds = _credentials(self.remote)
                session = boto3.session.Session(
                    aws_access_key_id=creds.get("aws_access_key_id"),
                    aws_secret_access_key=creds.get("aws_secret_access_key"),
                    aws_session_token=creds.get("aws_session_token"),
                    profile_name=creds.get("profile_name"))
                if session.get_credentials() is None:
                    raise ConfigError(
                        f"no S3 credentials for {self.url}",
                        hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or s3_credentials "
                             "(an AWS credentials file) in /etc/kvmops/config.toml")
                self._client = session.client(
                    "s3", endpoint_url=self.remote.params.get("endpoint"),
                    region_name=self.remote.params.get("region") or "us-east-1",
                    config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                  retries={"max_attempts": 5, "mode": "standard"},
                                  connect_timeout=30, read_timeout=120,
                                  request_checksum_calculation="when_required",
                                  response_checksum_validation="when_required"))
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
            self._client = None

    def __enter__(self) -> S3Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self, key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid store key {key!r}")
        return self.base + "/".join(parts)

    def _fail(self, what: str, err: Exception) -> StorageError | HostUnavailableError:
        if isinstance(err, ClientError):
            code = _code(err)
            if code in ("NoSuchBucket",):
                return StorageError(f"{what}: bucket {self.bucket} does not exist at "
                                    f"{self.url}", hint="create the bucket first")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return StorageError(f"{what}: access denied by {self.url} ({code})",
                                    hint="check the S3 credentials and the bucket policy")
            return StorageError(f"{what} on {self.url} failed: {code} "
                                f"{err.response.get('Error', {}).get('Message', '')}".strip())
        return HostUnavailableError(f"{what}: cannot reach {self.url}: {err}",
                                    hint="check the endpoint and the network")

    # ------------------------------------------------------------ protocol
    def list(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.base + prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.base):]
                    if not any(part.startswith(".") for part in key.split("/")):
                        found.append(key)  # hidden keys are never listed (as LocalStore)
        except (ClientError, BotoCoreError) as err:
            raise self._fail(f"listing {prefix or '/'}", err) from err
        return sorted(found)

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if _code(err) in _MISSING:
                return None
            raise self._fail(f"stat {key}", err) from err
        except BotoCoreError as err:
            raise self._fail(f"stat {key}", err) from err
        return int(head["ContentLength"])

    def get_bytes(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            data: bytes = body.read()
            return data
        except ClientError as err:
            if _code(err) in _MISSING:
                raise NotFoundError(f"{key} does not exist in {self.url}") from err
            raise self._fail(f"reading {key}", err) from err
        except BotoCoreError as err:
            raise self._fail(f"reading {key}", err) from err

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   ContentMD5=_md5(data))
        except (ClientError, BotoCoreError) as err:
            raise self._fail(f"writing {key}", err) from err

    def get_file(self, key: str, dst: Path, progress: ProgressFn | None = None) -> None:
        tmp = dst.with_name(f".{dst.name}.kvmops-down")
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            total = int(reply["ContentLength"])
            done = 0
            if progress is not None:
                progress(0, total)
            with open(tmp, "wb") as fh:
                for block in reply["Body"].iter_chunks(CHUNK):
                    fh.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
                fh.flush()
                os.fsync(fh.fileno())
            if done != total:
                raise StorageError(f"download of {key} from {self.url} ended at {done} of "
                                   f"{total} bytes")
        except ClientError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if _code(err) in _MISSING:
                raise NotFoundError(f"{key} does not exist in {self.url}") from err
            raise self._fail(f"downloading {key}", err) from err
        except (BotoCoreError, OSError, StorageError) as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(err, StorageError):
                raise
            if isinstance(err, OSError):
                raise StorageError(f"cannot write {dst}: {err}") from err
            raise self._fail(f"downloading {key}", err) from err
        os.replace(tmp, dst)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if _code(err) not in _MISSING:
                raise self._fail(f"deleting {key}", err) from err
        except BotoCoreError as err:
            raise self._fail(f"deleting {key}", err) from err

    # ------------------------------------------------------------ uploads
    def put_file(self, key: str, src: Path, progress: ProgressFn | None = None) -> None:
        """Upload ``src``: one PUT when small, else a resumable multipart upload."""
        total = os.path.getsize(src)
        if total < self.multipart_min:
            data = src.read_bytes()
            if progress is not None:
                progress(0, total)
            self.put_bytes(key, data)
            if progress is not None:
                progress(total, total)
            return
        self._multipart(key, src, total, progress)

    def _state_path(self, key: str, src: Path) -> Path:
        st = os.stat(src)
        ident = json.dumps([self.remote.params.get("endpoint"), self.bucket, self._key(key),
                            str(src.absolute()), st.st_size, st.st_mtime_ns, st.st_ino])
        directory = self.state_dir or work_dir()
        return directory / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"

    @staticmethod
    def _save_state(path: Path, state: dict[str, Any]) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _load_state(self, path: Path, key: str) -> dict[str, Any] | None:
        """The saved upload of this file, if the server still knows it (its parts are
        checked against the server's list; a part it lacks is sent again)."""
        try:
            state: dict[str, Any] = json.loads(path.read_text())
            upload_id = str(state["upload_id"])
            parts = {int(n): str(tag) for n, tag in state["parts"].items()}
            if int(state["part_size"]) != self.part_size:
                raise ValueError("another part size")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            listed: dict[int, str] = {}
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
            for page in pages:
                for part in page.get("Parts", []):
                    listed[int(part["PartNumber"])] = str(part["ETag"])
        except ClientError as err:
            if _code(err) in ("NoSuchUpload", "404"):
                return None
            if _code(err) not in ("NotImplemented", "501"):
                raise self._fail(f"resuming the upload of {key}", err) from err
            listed = parts  # a server without ListParts: trust the state file
        state["parts"] = {str(n): tag for n, tag in parts.items() if listed.get(n) == tag}
        return state

    def _multipart(self, key: str, src: Path, total: int, progress: ProgressFn | None
                   ) -> None:
        s3key = self._key(key)
        state_path = self._state_path(key, src)
        part_size = self.part_size
        while -(-total // part_size) > 10000:
            part_size *= 2
        state = self._load_state(state_path, key) if part_size == self.part_size else None
        try:
            if state is None:
                upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=s3key)
                state = {"upload_id": upload["UploadId"], "key": s3key, "src": str(src),
                         "part_size": part_size, "parts": {}}
                self._save_state(state_path, state)
            count = max(1, -(-total // part_size))
            done = sum(min(part_size, total - (int(n) - 1) * part_size)
                       for n in state["parts"])
            if progress is not None:
                progress(done, total)
            fd = os.open(src, os.O_RDONLY)
            try:
                def send(number: int) -> tuple[int, int, str]:
                    data = os.pread(fd, part_size, (number - 1) * part_size)
                    reply = self.client.upload_part(
                        Bucket=self.bucket, Key=s3key, UploadId=state["upload_id"],
                        PartNumber=number, Body=data, ContentMD5=_md5(data))
                    return number, len(data), str(reply["ETag"])

                missing = [n for n in range(1, count + 1) if str(n) not in state["parts"]]
                with contextlib.closing(_in_flight(send, missing, self.parts_in_flight)) as sent:
                    for number, size, etag in sent:
                        # recorded in the caller's thread as each part is acknowledged
                        state["parts"][str(number)] = etag
                        self._save_state(state_path, state)
                        done += size
                        if progress is not None:
                            progress(done, total)
            finally:
                os.close(fd)
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=s3key, UploadId=state["upload_id"],
                MultipartUpload={"Parts": [
                    {"PartNumber": number, "ETag": state["parts"][str(number)]}
                    for number in range(1, count + 1)]})
        except (ClientError, BotoCoreError) as err:
            raise self._fail(f"uploading {key} (resumable: run it again)", err) from err
        except OSError as err:
            raise StorageError(f"cannot read {src}: {err.strerror}") from err
        with contextlib.suppress(OSError):
            state_path.unlink()

    def abandon_uploads(self) -> int:
        """Abort the unfinished multipart uploads under this store's prefix (space a
        killed upload holds on the server); returns how many."""
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.base)
            for page in pages:
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted += 1
        except (ClientError, BotoCoreError) as err:
            raise self._fail("aborting unfinished uploads", err) from err
        return aborted


def open_s3(url: str) -> S3Store:
    """The ``s3`` scheme's factory for :func:`kvmops.backup.store.register_scheme`."""
    return S3Store(url)
