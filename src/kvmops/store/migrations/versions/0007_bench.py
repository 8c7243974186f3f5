"""Benchmark runs: fio and sysbench results inside a VM's guest, with the VM's
configuration when they ran (vCPUs, memory, the disk's cache, io mode and limits, host).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kvmops.store.models import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bench_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("vm", sa.String(255), nullable=False),
        sa.Column("vm_uuid", sa.String(36), nullable=True),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("test", sa.String(32), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
    )
    op.create_index("ix_bench_runs_vm_kind", "bench_runs", ["vm", "kind"])


def downgrade() -> None:
    op.drop_index("ix_bench_runs_vm_kind", table_name="bench_runs")
    op.drop_table("bench_runs")
