"""SQLAlchemy models. Secrets are stored only as hashes (argon2 for passwords,
SHA-256 for random high-entropy API and session tokens)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect
                             ) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         nullable=False, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)  # shown in listings
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         nullable=False, index=True)
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    progress_done: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    progress_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    # The process running a job the server did not start (a ``kvmops`` command); None for
    # the server's own jobs.
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Scale-out (PostgreSQL): a queued job any server may claim carries its parameters
    # (JSON); ``instance`` is the server running it (host:pid:server-id) and
    # ``heartbeat_at`` its lease, renewed while that server lives.
    params: Mapped[str | None] = mapped_column(Text, nullable=True)
    instance: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False,
                                           index=True)
    user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    path: Mapped[str] = mapped_column(String(512), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
    result: Mapped[str] = mapped_column(String(16), nullable=False)  # ok, denied, failed
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)  # client address
    via: Mapped[str | None] = mapped_column(String(8), nullable=True)  # cli, api or web


class LoginFailure(Base):
    """One failed log-in (the throttle every server instance on one database shares)."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_address_time", "address", "time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    address: Mapped[str] = mapped_column(String(64), nullable=False)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)


class SettingRow(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class SriovPool(Base):
    """An SR-IOV VF pool: the VFs of one or more PFs, handed out one per NIC."""

    __tablename__ = "sriov_pools"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class SriovPf(Base):
    """A PF kvmops knows: the pool it belongs to (one at most) and the VF count kvmops
    set on it (sysfs forgets it at reboot; ``sriov reconcile`` sets it again)."""

    __tablename__ = "sriov_pfs"

    name: Mapped[str] = mapped_column(String(15), primary_key=True)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("sriov_pools.id",
                                                           ondelete="SET NULL"),
                                                nullable=True, index=True)
    numvfs: Mapped[int | None] = mapped_column(Integer, nullable=True)


class SriovAllocation(Base):
    """One VF given to one VM's NIC; (pf, vf) is unique: a VF is never given twice."""

    __tablename__ = "sriov_allocations"
    __table_args__ = (UniqueConstraint("pf", "vf", name="uq_sriov_allocations_pf_vf"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("sriov_pools.id"), nullable=False,
                                         index=True)
    pf: Mapped[str] = mapped_column(String(15), nullable=False)
    vf: Mapped[int] = mapped_column(Integer, nullable=False)
    pci: Mapped[str] = mapped_column(String(16), nullable=False)
    vm: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    vm_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    mac: Mapped[str] = mapped_column(String(17), nullable=False)
    vlan: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_tx_rate: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    spoofchk: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    trust: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class HostRow(Base):
    """A libvirt host kvmops manages besides the local one (which is implicit: ``local``,
    the configured URI, never stored)."""

    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    uri: Mapped[str] = mapped_column(String(1024), nullable=False)
    labels: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object
    added_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    added_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class BenchRun(Base):
    """One benchmark run inside a VM's guest (fio, sysbench): its parameters, parsed
    metrics (JSON objects) and the VM's configuration when it ran, so runs compare."""

    __tablename__ = "bench_runs"
    __table_args__ = (Index("ix_bench_runs_vm_kind", "vm", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vm: Mapped[str] = mapped_column(String(255), nullable=False)
    vm_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    host: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # fio, sysbench
    test: Mapped[str] = mapped_column(String(32), nullable=False)  # randread, cpu ...
    params: Mapped[str] = mapped_column(Text, nullable=False)  # JSON
    config: Mapped[str] = mapped_column(Text, nullable=False)  # JSON
    metrics: Mapped[str] = mapped_column(Text, nullable=False)  # JSON
    score: Mapped[float] = mapped_column(Float, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow,
                                                 nullable=False)
    duration_s: Mapped[float] = mapped_column(Float, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class BackupSchedule(Base):
    """A backup schedule: one VM (or every VM carrying ``tag``), a repository (a
    directory or a remote URL), a cron expression, retention, every Nth backup a full.
    ``key_file`` is the path of an encrypted repository's key file, never the key."""

    __tablename__ = "backup_schedules"
    __table_args__ = (Index("ix_backup_schedules_vm", "vm"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vm: Mapped[str | None] = mapped_column(String(255), nullable=True)
    tag: Mapped[str | None] = mapped_column(String(64), nullable=True)
    host: Mapped[str] = mapped_column(String(64), nullable=False, default="local")
    repo: Mapped[str] = mapped_column(String(1024), nullable=False)
    cron: Mapped[str] = mapped_column(String(128), nullable=False)
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    keep_last: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_hourly: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_daily: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_weekly: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_monthly: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_yearly: Mapped[int | None] = mapped_column(Integer, nullable=True)
    full_every: Mapped[int | None] = mapped_column(Integer, nullable=True)
    compress: Mapped[str | None] = mapped_column(String(32), nullable=True)
    key_file: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class BackupScheduleRun(Base):
    """One run of a schedule for one VM at one due time; (schedule, vm, due) is unique:
    the row is the claim, so one server of several runs a slot. A failed attempt keeps
    the row (``attempt``, ``next_attempt_at``) until it succeeds or is reported failed."""

    __tablename__ = "backup_schedule_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "vm", "due_at", name="uq_backup_schedule_runs_slot"),
        Index("ix_backup_schedule_runs_result", "result"),
        Index("ix_backup_schedule_runs_vm", "vm"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("backup_schedules.id",
                                                        ondelete="CASCADE"), nullable=False)
    vm: Mapped[str] = mapped_column(String(255), nullable=False)
    host: Mapped[str] = mapped_column(String(64), nullable=False)
    repo: Mapped[str] = mapped_column(String(1024), nullable=False)
    due_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    trigger: Mapped[str] = mapped_column(String(8), nullable=False)  # cron, manual
    # queued, running, retrying, ok, failed, skipped
    result: Mapped[str] = mapped_column(String(16), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    claimed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    instance: Mapped[str | None] = mapped_column(String(255), nullable=True)
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)  # full, incremental
    backup_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pruned: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
