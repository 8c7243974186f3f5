"""Backup schedules (a VM or a tag, a repository, a cron expression, retention, full
every N, compression, the key *file* -- never the key) and their runs: one row per
(schedule, VM, due time), unique, so that of several servers on one PostgreSQL database
exactly one claims a slot; a failed run keeps its row (attempt, next attempt) until it
succeeds or is reported failed.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kvmops.store.models import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backup_schedules",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vm", sa.String(255), nullable=True),
        sa.Column("tag", sa.String(64), nullable=True),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("repo", sa.String(1024), nullable=False),
        sa.Column("cron", sa.String(128), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=True),
        sa.Column("keep_last", sa.Integer(), nullable=True),
        sa.Column("keep_hourly", sa.Integer(), nullable=True),
        sa.Column("keep_daily", sa.Integer(), nullable=True),
        sa.Column("keep_weekly", sa.Integer(), nullable=True),
        sa.Column("keep_monthly", sa.Integer(), nullable=True),
        sa.Column("keep_yearly", sa.Integer(), nullable=True),
        sa.Column("full_every", sa.Integer(), nullable=True),
        sa.Column("compress", sa.String(32), nullable=True),
        sa.Column("key_file", sa.String(1024), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
    )
    op.create_index("ix_backup_schedules_vm", "backup_schedules", ["vm"])
    op.create_table(
        "backup_schedule_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("schedule_id", sa.Integer(),
                  sa.ForeignKey("backup_schedules.id", ondelete="CASCADE"), nullable=False),
        sa.Column("vm", sa.String(255), nullable=False),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("repo", sa.String(1024), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("trigger", sa.String(8), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("claimed_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("heartbeat_at", UtcDateTime(), nullable=True),
        sa.Column("instance", sa.String(255), nullable=True),
        sa.Column("kind", sa.String(16), nullable=True),
        sa.Column("backup_id", sa.String(64), nullable=True),
        sa.Column("pruned", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("schedule_id", "vm", "due_at",
                            name="uq_backup_schedule_runs_slot"),
    )
    op.create_index("ix_backup_schedule_runs_result", "backup_schedule_runs", ["result"])
    op.create_index("ix_backup_schedule_runs_vm", "backup_schedule_runs", ["vm"])


def downgrade() -> None:
    op.drop_index("ix_backup_schedule_runs_vm", table_name="backup_schedule_runs")
    op.drop_index("ix_backup_schedule_runs_result", table_name="backup_schedule_runs")
    op.drop_table("backup_schedule_runs")
    op.drop_index("ix_backup_schedules_vm", table_name="backup_schedules")
    op.drop_table("backup_schedules")
