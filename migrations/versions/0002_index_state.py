"""Record each space's index parameters and a generation counter (FAISS crash detection).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vector_spaces") as batch:
        batch.add_column(sa.Column("index_params", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("vector_spaces") as batch:
        batch.drop_column("generation")
        batch.drop_column("index_params")
