"""Views packed into their instance row, vectors stored as one block per (scan, space).

Row count is what costs when writing to SQLite: a row per view and a row per vector made a scan of N
instances with 5 views and 2 encoders 1 + 5 + 12 rows per instance. Now it is one row per instance
plus one ``vector_blocks`` row per space per scan. View-space FAISS ids become
``instance_id << 8 | rank``; every space's generation is bumped so FAISS files are rebuilt on open.

The vectors of DBSCAN-outlier views, which neither aggregation uses, are not carried over (downgrade
cannot bring them back).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BITS = 8

instances = sa.table(
    "instances", sa.column("id", sa.Integer), sa.column("scan_id", sa.Integer), sa.column("views", sa.LargeBinary)
)
views_t = sa.table(
    "instance_views",
    sa.column("id", sa.Integer),
    sa.column("instance_id", sa.Integer),
    sa.column("rank", sa.Integer),
    sa.column("frame_id", sa.Integer),
    sa.column("visible_pixels", sa.Integer),
    sa.column("crop_boxes", sa.JSON),
    sa.column("inlier", sa.Boolean),
)
vectors = sa.table(
    "vectors",
    sa.column("id", sa.Integer),
    sa.column("space_id", sa.Integer),
    sa.column("instance_id", sa.Integer),
    sa.column("view_id", sa.Integer),
    sa.column("data", sa.LargeBinary),
)
blocks = sa.table(
    "vector_blocks",
    sa.column("id", sa.Integer),
    sa.column("space_id", sa.Integer),
    sa.column("scan_id", sa.Integer),
    sa.column("count", sa.Integer),
    sa.column("ids", sa.LargeBinary),
    sa.column("data", sa.LargeBinary),
)
spaces = sa.table(
    "vector_spaces", sa.column("id", sa.Integer), sa.column("level", sa.String), sa.column("generation", sa.Integer)
)


def _pack_views(rows) -> bytes:
    """Format 1 of ``om3db.store.writer.pack_views`` (kept here so this migration never changes)."""
    levels = max((len(r[3]) for r in rows), default=0)
    table = np.zeros((len(rows), 4 + 4 * levels), dtype="<i4")
    for i, (frame, pixels, inlier, boxes) in enumerate(rows):
        table[i, :4] = frame, pixels, int(bool(inlier)), len(boxes)
        if boxes:
            table[i, 4 : 4 + 4 * len(boxes)] = np.asarray(boxes, dtype=np.int64).ravel()
    return bytes((1, levels)) + table.tobytes()


def _unpack_views(blob: bytes) -> list[tuple]:
    levels = blob[1]
    table = np.frombuffer(blob, dtype="<i4", offset=2).reshape(-1, 4 + 4 * levels).tolist()
    return [(row[0], row[1], bool(row[2]), [row[4 + 4 * j : 8 + 4 * j] for j in range(row[3])]) for row in table]


def _bump(bind) -> None:
    bind.execute(spaces.update().values(generation=spaces.c.generation + 1))


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("instances", sa.Column("views", sa.LargeBinary(), nullable=True))
    per_instance: dict[int, list] = {}
    for iid, frame, pixels, inlier, boxes in bind.execute(
        sa.select(
            views_t.c.instance_id, views_t.c.frame_id, views_t.c.visible_pixels, views_t.c.inlier, views_t.c.crop_boxes
        ).order_by(views_t.c.instance_id, views_t.c.rank)
    ):
        per_instance.setdefault(iid, []).append((frame, pixels, inlier, boxes or []))
    for (iid,) in bind.execute(sa.select(instances.c.id)).all():
        bind.execute(
            instances.update().where(instances.c.id == iid).values(views=_pack_views(per_instance.get(iid, [])))
        )
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("views", existing_type=sa.LargeBinary(), nullable=False)

    op.create_table(
        "vector_blocks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("space_id", sa.Integer(), sa.ForeignKey("vector_spaces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("scan_id", sa.Integer(), sa.ForeignKey("scans.id", ondelete="CASCADE"), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("ids", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_vector_blocks_space_id", "vector_blocks", ["space_id"])
    op.create_index("ix_vector_blocks_scan_id", "vector_blocks", ["scan_id"])

    levels = dict(bind.execute(sa.select(spaces.c.id, spaces.c.level)).all())
    rank = sa.select(views_t.c.id, views_t.c.rank, views_t.c.inlier).subquery()
    q = (
        sa.select(
            vectors.c.space_id, instances.c.scan_id, vectors.c.instance_id, rank.c.rank, rank.c.inlier, vectors.c.data
        )
        .join(instances, instances.c.id == vectors.c.instance_id)
        .outerjoin(rank, rank.c.id == vectors.c.view_id)
        .order_by(vectors.c.space_id, instances.c.scan_id, vectors.c.instance_id, rank.c.rank)
    )
    groups: dict[tuple[int, int], tuple[list, list]] = {}
    for space_id, scan_id, iid, view_rank, inlier, data in bind.execute(q):
        if levels.get(space_id) == "view":
            if view_rank is None or not inlier:
                continue
            key = (iid << _BITS) | view_rank
        else:
            key = iid
        ids, datas = groups.setdefault((space_id, scan_id), ([], []))
        ids.append(key)
        datas.append(data)
    for (space_id, scan_id), (ids, datas) in groups.items():
        bind.execute(
            blocks.insert().values(
                space_id=space_id,
                scan_id=scan_id,
                count=len(ids),
                ids=np.asarray(ids, dtype="<i8").tobytes(),
                data=b"".join(datas),
            )
        )
    op.drop_index("ix_vectors_view_id", table_name="vectors")
    op.drop_index("ix_vectors_instance_id", table_name="vectors")
    op.drop_index("ix_vectors_space_id", table_name="vectors")
    op.drop_table("vectors")
    op.drop_index("ix_instance_views_instance_id", table_name="instance_views")
    op.drop_table("instance_views")
    _bump(bind)


def downgrade() -> None:
    bind = op.get_bind()
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

    view_ids: dict[tuple[int, int], int] = {}
    for iid, blob in bind.execute(sa.select(instances.c.id, instances.c.views).order_by(instances.c.id)).all():
        for r, (frame, pixels, inlier, boxes) in enumerate(_unpack_views(blob)):
            vid = len(view_ids) + 1
            bind.execute(
                views_t.insert().values(
                    id=vid,
                    instance_id=iid,
                    rank=r,
                    frame_id=frame,
                    visible_pixels=pixels,
                    crop_boxes=boxes,
                    inlier=inlier,
                )
            )
            view_ids[(iid, r)] = vid
    levels = dict(bind.execute(sa.select(spaces.c.id, spaces.c.level)).all())
    for space_id, count, ids_blob, data in bind.execute(
        sa.select(blocks.c.space_id, blocks.c.count, blocks.c.ids, blocks.c.data).order_by(blocks.c.id)
    ).all():
        ids = np.frombuffer(ids_blob, dtype="<i8").tolist()
        step = len(data) // max(count, 1)
        for i, key in enumerate(ids):
            chunk = data[i * step : (i + 1) * step]
            if levels.get(space_id) == "view":
                iid, r = key >> _BITS, key & ((1 << _BITS) - 1)
                bind.execute(
                    vectors.insert().values(space_id=space_id, instance_id=iid, view_id=view_ids[(iid, r)], data=chunk)
                )
            else:
                bind.execute(vectors.insert().values(space_id=space_id, instance_id=key, view_id=None, data=chunk))
    op.drop_index("ix_vector_blocks_scan_id", table_name="vector_blocks")
    op.drop_index("ix_vector_blocks_space_id", table_name="vector_blocks")
    op.drop_table("vector_blocks")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("views")
    _bump(bind)
