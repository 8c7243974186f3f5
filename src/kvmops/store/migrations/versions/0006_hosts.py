"""Hosts: the libvirt hosts kvmops manages besides the local one (name unique, URI,
who added it when, optional labels as JSON, when it last answered).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kvmops.store.models import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("uri", sa.String(1024), nullable=False),
        sa.Column("labels", sa.Text(), nullable=True),
        sa.Column("added_at", UtcDateTime(), nullable=False),
        sa.Column("added_by", sa.String(64), nullable=True),
        sa.Column("last_seen", UtcDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("hosts")
