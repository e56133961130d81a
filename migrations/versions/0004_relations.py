"""Gravity, instance geometry and spatial relations (issue 22).

New tables only: ``scan_gravity`` (a scan's up axis; a scan without a row has no relations yet:
``om3db reindex`` builds them), ``instance_geometry`` and ``relations``. Existing rows are untouched.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scan_gravity",
        sa.Column("scan_id", sa.Integer(), sa.ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("up_x", sa.Float(), nullable=False),
        sa.Column("up_y", sa.Float(), nullable=False),
        sa.Column("up_z", sa.Float(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
    )
    op.create_table(
        "instance_geometry",
        sa.Column("instance_id", sa.Integer(), sa.ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("scan_id", sa.Integer(), sa.ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
        *[sa.Column(c, sa.Float(), nullable=False) for c in ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z")],
        sa.Column("yaw", sa.Float(), nullable=False),
        sa.Column("box", sa.JSON(), nullable=False),
        sa.Column("footprint_area", sa.Float(), nullable=False),
        sa.Column("volume", sa.Float(), nullable=False),
        sa.Column("footprint", sa.LargeBinary(), nullable=False),
        sa.Column("sample", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_instance_geometry_scan_id", "instance_geometry", ["scan_id"])
    op.create_table(
        "relations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("scan_id", sa.Integer(), sa.ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subject_id", sa.Integer(), sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("object_id", sa.Integer(), sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("relation", sa.String(16), nullable=False),
        *[sa.Column(c, sa.Float(), nullable=False) for c in ("score", "distance", "gap", "overlap")],
    )
    op.create_index("ix_relations_scan_id", "relations", ["scan_id"])
    op.create_index("ix_relations_relation_subject", "relations", ["relation", "subject_id"])
    op.create_index("ix_relations_relation_object", "relations", ["relation", "object_id"])


def downgrade() -> None:
    op.drop_table("relations")
    op.drop_table("instance_geometry")
    op.drop_table("scan_gravity")
