"""Restore drills: proof that a backup point restores and boots, kept for an auditor.

A drill verifies the point's chain (authenticated manifests, every file's checksum),
restores it as a new, isolated VM (no network interfaces: it must never meet the
production VM's addresses), boots it, waits for its guest agent, optionally runs a check
command in it, then destroys it and removes its disks -- whatever happened. The outcome
is a :class:`DrillRecord`, kept in the state directory, one signed line per drill
(:class:`DrillLog`): a record changed afterwards reads as not authentic.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from kvmops.backup import restore as restore_ops
from kvmops.backup.keys import Keyring, Signature
from kvmops.backup.repository import Repository
from kvmops.config import settings
from kvmops.errors import KvmopsError, ValidationError
from kvmops.host.connection import Host
from kvmops.vm.domxml import DomainSpec

NoteFn = Callable[[str], None]
CHECK_OUTPUT_LIMIT = 4096
DRILL_PREFIX = "drill-"


class DrillRecord(BaseModel):
    """One restore drill: what was checked, what happened, how long it took."""

    id: str
    vm: str
    repo: str
    backup_id: str | None = None
    backup_time: datetime | None = None
    started: datetime
    duration_s: float = 0.0
    host: str = ""
    verified: bool = False  # the chain's manifests authentic and every file's checksum right
    problems: list[str] = Field(default_factory=list)
    restored: bool = False
    restore_s: float | None = None
    disks: dict[str, int] = Field(default_factory=dict)  # target -> restored file's bytes
    dropped: list[str] = Field(default_factory=list)  # parts of the definition not restored
    booted: bool | None = None  # None: the drill did not boot (--no-boot)
    agent_s: float | None = None  # seconds from start to the guest agent's first answer
    check_command: list[str] = Field(default_factory=list)
    check_exit: int | None = None
    check_output: str = ""
    ok: bool = False
    error: str | None = None
    authentic: bool = True  # set when read back: the record's signature matched

    def failure(self) -> str:
        """The one line saying why the drill failed."""
        if self.error:
            if self.booted is False and self.dropped:
                return f"{self.error} (not restored: {'; '.join(self.dropped)})"
            return self.error
        if not self.verified:
            return "the chain failed verification: " + ("; ".join(self.problems) or "?")
        if self.check_exit not in (None, 0):
            return f"the check command exited {self.check_exit}"
        return "the drill did not complete"


def drill_vm_name(vm: str, drill_id: str) -> str:
    """The throw-away VM's name: recognisable, unique, within libvirt's limits."""
    return f"{DRILL_PREFIX}{vm[:40]}-{drill_id[-6:]}"


def isolated(xml: str) -> str:
    """The restored definition without network interfaces (the drill VM must not meet
    the production VM's MAC and IP addresses on any network)."""
    spec = DomainSpec.from_xml(xml)
    spec.nics = []
    return spec.to_xml()


def run_drill(host: Host, repo: Repository, vm: str, at: str | None, *, images_dir: Path,
              boot: bool = True, timeout: float = 180.0, check: list[str] | None = None,
              note: NoteFn | None = None) -> DrillRecord:
    """Verify, restore, boot and check one point; always remove the drill VM."""
    from kvmops.vm import lifecycle

    say = note or (lambda _message: None)
    started = time.monotonic()
    record = DrillRecord(id=secrets.token_hex(6), vm=vm, repo=repo.location,
                         started=datetime.now(UTC), host=os.uname().nodename,
                         check_command=list(check or []))
    name = drill_vm_name(vm, record.id)
    try:
        say("verifying the chain")
        report = restore_ops.verify(repo, vm, at, checksums=True)
        point = restore_ops.resolve(repo, vm, at)
        record.backup_id, record.backup_time = point.id, point.time
        record.problems = [f"{p.backup_id}{' ' + p.disk if p.disk else ''}: {p.problem}"
                           for p in report.problems]
        record.verified = report.sound
        if not record.verified:
            return _finish(record, started)
        say(f"restoring backup {point.id} as VM {name} (no network interfaces)")
        t0 = time.monotonic()
        result = restore_ops.restore_new_vm(host, repo, vm, point.id, name, images_dir,
                                            finish_xml=isolated)
        record.restore_s = round(time.monotonic() - t0, 3)
        record.restored = True
        record.disks = {d.target: os.path.getsize(d.path) for d in result.disks}
        record.dropped = list(result.dropped)
        if boot:
            say(f"starting VM {name} and waiting for its guest agent")
            t0 = time.monotonic()
            lifecycle.start(host, name)
            lifecycle.wait_for_agent(host, name, timeout=timeout)
            record.agent_s = round(time.monotonic() - t0, 3)
            record.booted = True
            if check:
                record.check_exit, record.check_output = _check(name, check, timeout)
        record.ok = record.verified and record.restored and record.booted is not False \
            and record.check_exit in (None, 0)
    except KvmopsError as err:
        record.error = err.message
        if boot and record.restored and record.booted is None:
            record.booted = False
    finally:
        _remove_vm(host, name, say)
    return _finish(record, started)


def _finish(record: DrillRecord, started: float) -> DrillRecord:
    record.duration_s = round(time.monotonic() - started, 3)
    return record


def _check(name: str, argv: list[str], timeout: float) -> tuple[int | None, str]:
    from kvmops.agent import process
    from kvmops.agent.channel import open_agent

    channel = open_agent(name, None, None, None)
    try:
        result = process.exec(channel, argv, timeout=timeout)
    finally:
        channel.close()
    output = (result.stdout + result.stderr).decode(errors="replace")
    return result.exit_code, output[:CHECK_OUTPUT_LIMIT]


def _remove_vm(host: Host, name: str, say: NoteFn) -> None:
    """Destroy and undefine the drill VM with its restored disks (if it got that far)."""
    from kvmops.vm import lifecycle

    if not host.has_domain(name):
        return
    with contextlib.suppress(KvmopsError):
        if host.lookup(name).is_active():
            lifecycle.destroy(host, name)
    try:
        lifecycle.undefine(host, name, remove_storage=True)
        say(f"removed VM {name} and its restored disks")
    except KvmopsError as err:
        say(f"could not remove drill VM {name}: {err.message}; remove it with "
            f"'kvmops vm undefine {name} --remove-storage'")


# ---------------------------------------------------------------- the signed log
class DrillLog:
    """``STATE_DIR/backup-drills.jsonl``: one line per drill, ``{"record", "sig"}``; the
    signature (the installation's manifest key) binds the record's bytes."""

    PLACE = "backup-drills"

    def __init__(self, path: Path | None = None, keyring: Keyring | None = None) -> None:
        self.path = path or settings().state_dir / "backup-drills.jsonl"
        self.keyring = keyring or Keyring()

    def append(self, record: DrillRecord) -> None:
        data = record.model_dump_json(exclude={"authentic"})
        signature = self.keyring.sign(self.PLACE, data.encode())
        line = json.dumps({"record": json.loads(data), "sig": json.loads(
            signature.to_json())}, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self, vm: str | None = None, limit: int = 100) -> list[DrillRecord]:
        """Newest first; a line whose signature fails comes back ``authentic=False``."""
        if not self.path.is_file():
            return []
        found: list[DrillRecord] = []
        for line in self.path.read_text().splitlines():
            record = self._parse(line)
            if record is not None and (vm is None or record.vm == vm):
                found.append(record)
        return list(reversed(found))[:limit]

    def _parse(self, line: str) -> DrillRecord | None:
        try:
            entry = json.loads(line)
            record = DrillRecord.model_validate(entry["record"])
            signature = Signature.parse(json.dumps(entry["sig"]))
        except (ValueError, KeyError, TypeError, KvmopsError):
            return None
        data = record.model_dump_json(exclude={"authentic"})
        record.authentic = self.keyring.check(self.PLACE, data.encode(), signature) is None
        return record


def parse_check(command: str | None) -> list[str]:
    """``--check 'sha256sum /dev/vda'`` as argv (shell-like splitting, no shell)."""
    import shlex

    if not command:
        return []
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise ValidationError(f"cannot parse check command {command!r}: {err}") from err
    return argv
