"""Initial schema: scans, instances, views, vector spaces, vectors.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("frame_count", sa.Integer(), nullable=False),
        sa.Column("num_points", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("scan_id", sa.Integer(), sa.ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
        sa.Column("mask_index", sa.Integer(), nullable=False),
        sa.Column("point_count", sa.Integer(), nullable=False),
        *[sa.Column(f"bbox_{m}_{a}", sa.Float(), nullable=False) for m in ("min", "max") for a in "xyz"],
        *[sa.Column(f"centroid_{a}", sa.Float(), nullable=False) for a in "xyz"],
        sa.Column("point_indices", sa.LargeBinary(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
    )
    op.create_index("ix_instances_scan_id", "instances", ["scan_id"])
    op.create_index("ix_instances_point_count", "instances", ["point_count"])
    op.create_table(
        "instance_views",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("instance_id", sa.Integer(), sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("frame_id", sa.Integer(), nullable=False),
        sa.Column("visible_pixels", sa.Integer(), nullable=False),
        sa.Column("crop_boxes", sa.JSON(), nullable=False),
        sa.Column("inlier", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_instance_views_instance_id", "instance_views", ["instance_id"])
    op.create_table(
        "vector_spaces",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(128), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("normalization", sa.String(32), nullable=False),
        sa.Column("preprocessing", sa.Text(), nullable=False),
        sa.Column("index_kind", sa.String(32), nullable=False),
        sa.UniqueConstraint("name", "level", name="uq_vector_spaces_name_level"),
    )
    op.create_table(
        "vectors",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("space_id", sa.Integer(), sa.ForeignKey("vector_spaces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("instance_id", sa.Integer(), sa.ForeignKey("instances.id", ondelete="CASCADE"), nullable=False),
        sa.Column("view_id", sa.Integer(), sa.ForeignKey("instance_views.id", ondelete="CASCADE"), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_vectors_space_id", "vectors", ["space_id"])
    op.create_index("ix_vectors_instance_id", "vectors", ["instance_id"])
    op.create_index("ix_vectors_view_id", "vectors", ["view_id"])


def downgrade() -> None:
    for table in ("vectors", "vector_spaces", "instance_views", "instances", "scans"):
        op.drop_table(table)
