"""SR-IOV VF pools: pools, the PFs kvmops knows (pool, VF count to restore at boot),
and the VF given to each VM's NIC ((pf, vf) unique: a VF is never given twice).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kvmops.store.models import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sriov_pools",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
    )
    op.create_table(
        "sriov_pfs",
        sa.Column("name", sa.String(15), primary_key=True),
        sa.Column("pool_id", sa.Integer(),
                  sa.ForeignKey("sriov_pools.id", ondelete="SET NULL"), nullable=True),
        sa.Column("numvfs", sa.Integer(), nullable=True),
    )
    op.create_index("ix_sriov_pfs_pool_id", "sriov_pfs", ["pool_id"])
    op.create_table(
        "sriov_allocations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pool_id", sa.Integer(), sa.ForeignKey("sriov_pools.id"), nullable=False),
        sa.Column("pf", sa.String(15), nullable=False),
        sa.Column("vf", sa.Integer(), nullable=False),
        sa.Column("pci", sa.String(16), nullable=False),
        sa.Column("vm", sa.String(255), nullable=False),
        sa.Column("vm_uuid", sa.String(36), nullable=True),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("vlan", sa.Integer(), nullable=False),
        sa.Column("max_tx_rate", sa.Integer(), nullable=False),
        sa.Column("spoofchk", sa.Boolean(), nullable=False),
        sa.Column("trust", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.UniqueConstraint("pf", "vf", name="uq_sriov_allocations_pf_vf"),
    )
    op.create_index("ix_sriov_allocations_pool_id", "sriov_allocations", ["pool_id"])
    op.create_index("ix_sriov_allocations_vm", "sriov_allocations", ["vm"])


def downgrade() -> None:
    op.drop_index("ix_sriov_allocations_vm", "sriov_allocations")
    op.drop_index("ix_sriov_allocations_pool_id", "sriov_allocations")
    op.drop_table("sriov_allocations")
    op.drop_index("ix_sriov_pfs_pool_id", "sriov_pfs")
    op.drop_table("sriov_pfs")
    op.drop_table("sriov_pools")
