"""Jobs and audit rows written by the ``kvmops`` command: a job's process id (a job
the server did not start: a CLI backup) and the face an audit row came through.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("via", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("via")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pid")
