"""Scale-out on PostgreSQL: queued jobs any server may claim (their parameters as JSON),
the server instance running a job with its heartbeat (a lease: a job whose instance
stopped beating is marked abandoned by the others), and failed log-ins shared by every
instance (the log-in throttle).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kvmops.store.models import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("params", sa.Text(), nullable=True))
        batch.add_column(sa.Column("instance", sa.String(255), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", UtcDateTime(), nullable=True))
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_login_failures_address_time", "login_failures", ["address", "time"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_address_time", table_name="login_failures")
    op.drop_table("login_failures")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("instance")
        batch.drop_column("params")
