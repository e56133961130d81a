"""Bulk row writing for ``Store.write_scan``: one scan encoded with numpy, inserted with executemany.

``pack_scan`` validates and encodes a scan before any transaction opens (one float16 conversion per
space and level, blobs sliced from one buffer). Two writers insert the rows inside the caller's
transaction: ``write_rows_core`` (portable SQLAlchemy ``insert()`` executemany, ids read back in bulk)
and ``write_rows_sqlite`` (the DBAPI cursor with explicit ids from ``max(id)``: valid because the writer
lock is held, so nobody else inserts; it skips SQLAlchemy's per-row parameter processing).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np

from ..errors import StoreError
from ..records import IngestResult

__all__ = ["SpaceBatch", "ScanBatch", "pack_scan", "write_rows_core", "write_rows_sqlite", "pack_indices", "unpack_indices"]

INSTANCE_COLUMNS = ("mask_index", "point_count", "bbox_min_x", "bbox_min_y", "bbox_min_z", "bbox_max_x",
                    "bbox_max_y", "bbox_max_z", "centroid_x", "centroid_y", "centroid_z", "point_indices", "score")
VIEW_COLUMNS = ("rank", "frame_id", "visible_pixels", "crop_boxes", "inlier")


_INDEX_CODECS = {1: "<u1", 2: "<u2", 4: "<u4"}
_EMPTY = 255


def pack_indices(indices: np.ndarray) -> bytes:
    """Point indices as stored: a codec byte, the first index (int32), then zlib(level 1) of the gaps.

    Sorted indices (what ingest gives) have small gaps, 1 or 2 bytes each instead of 4, which makes
    the compression several times faster. Unsorted input is stored as plain int32 (codec 0); an
    empty array is the codec byte alone.
    """
    import zlib  # noqa: PLC0415

    idx = np.ascontiguousarray(indices, dtype="<i4").ravel()
    if idx.size == 0:
        return bytes((_EMPTY,))
    gaps = idx[1:] - idx[:-1]
    if gaps.size and gaps.min() < 0:
        return b"\x00" + zlib.compress(idx.tobytes(), 1)
    top = int(gaps.max()) if gaps.size else 0
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4
    return bytes((width,)) + idx[:1].tobytes() + zlib.compress(gaps.astype(_INDEX_CODECS[width]).tobytes(), 1)


def unpack_indices(blob: bytes) -> np.ndarray:
    """(P,) int32 point indices from :func:`pack_indices`."""
    import zlib  # noqa: PLC0415

    codec = blob[0]
    if codec == _EMPTY:
        return np.zeros(0, dtype=np.int32)
    if codec == 0:
        return np.frombuffer(zlib.decompress(blob[1:]), dtype="<i4").astype(np.int32)
    gaps = np.frombuffer(zlib.decompress(blob[5:]), dtype=_INDEX_CODECS[codec])
    out = np.empty(1 + gaps.size, dtype=np.int64)
    out[0] = np.frombuffer(blob[1:5], dtype="<i4")[0]
    out[1:] = gaps
    return np.cumsum(out).astype(np.int32)


@dataclass(frozen=True)
class SpaceBatch:
    """One encoder's vectors of a scan, float16 as stored."""

    instance: np.ndarray
    """(N, D) little-endian float16, row i for instance i."""
    view: np.ndarray | None
    """(V, D) little-endian float16, all views in instance order then rank; None: views not kept."""


@dataclass(frozen=True)
class ScanBatch:
    """One scan's rows, ready for executemany (Python scalars only)."""

    instance_rows: list[tuple]
    """Per instance, the values of ``INSTANCE_COLUMNS``."""
    view_rows: list[tuple]
    """Per view (instance order, then rank), the values of ``VIEW_COLUMNS`` (crop_boxes as a list)."""
    view_owner: np.ndarray
    """(V,) int64 index into the instances of each view."""
    inlier: np.ndarray
    """(V,) bool DBSCAN inlier flag of each view."""
    spaces: dict[str, SpaceBatch]


def _f16(rows: list, shape: tuple[int, int]) -> np.ndarray:
    # via float32, as one vector at a time always was: float64 input rounds the same way as before
    if not rows:
        return np.zeros(shape, dtype="<f2")
    return np.asarray(np.stack(rows), dtype=np.float32).astype("<f2").reshape(shape)


def _f16_rows(blocks: list[np.ndarray], dim: int) -> np.ndarray:
    if not blocks:
        return np.zeros((0, dim), dtype="<f2")
    return np.asarray(np.concatenate(blocks), dtype=np.float32).astype("<f2")


def pack_scan(result: IngestResult, keep_views: bool) -> ScanBatch:
    """Validate one scan's vectors against its encoders' dims and encode every row."""
    insts = result.instances
    n = len(insts)
    nviews = [len(r.views) for r in insts]
    spaces = {}
    for name, ident in sorted(result.encoders.items()):
        dim = int(ident.dim)
        inst_vecs, view_vecs = [], []
        for rec, nv in zip(insts, nviews, strict=True):
            v = rec.vectors.get(name)
            v = np.asarray(v) if v is not None else np.zeros((0,))
            if v.shape != (dim,):
                raise StoreError(f"scan {result.scan}: {name} vector of mask {rec.mask_index} has shape {v.shape}, "
                                 f"the space has dim {dim}. This is an ingest bug; report it")
            inst_vecs.append(v)
            if keep_views:
                vv = rec.view_vectors.get(name)
                vv = np.asarray(vv).reshape(-1, dim) if vv is not None and np.size(vv) % dim == 0 else None
                if vv is None or len(vv) != nv:
                    got = "no" if vv is None else len(vv)
                    raise StoreError(f"scan {result.scan}: mask {rec.mask_index} has {nv} views but {got} {name} "
                                     "view vectors. This is an ingest bug; report it")
                view_vecs.append(vv)
        spaces[name] = SpaceBatch(
            instance=_f16(inst_vecs, (n, dim)),
            view=_f16_rows(view_vecs, dim) if keep_views else None)
    geo = np.zeros((n, 9), dtype=np.float64)
    for i, rec in enumerate(insts):
        geo[i, 0:3], geo[i, 3:6], geo[i, 6:9] = rec.bbox_min, rec.bbox_max, rec.centroid
    instance_rows = [(int(r.mask_index), len(r.point_indices), *g, pack_indices(r.point_indices), float(r.score))
                     for r, g in zip(insts, geo.tolist(), strict=True)]
    views = [(rank, v) for r in insts for rank, v in enumerate(r.views)]
    view_rows = [(rank, int(v.frame_id), int(v.visible_pixels), boxes, bool(v.inlier))
                 for (rank, v), boxes in zip(views, _boxes([v for _, v in views]), strict=True)]
    return ScanBatch(instance_rows, view_rows, np.repeat(np.arange(n, dtype=np.int64), nviews),
                     np.fromiter((row[4] for row in view_rows), dtype=bool, count=len(view_rows)), spaces)


def _boxes(views) -> list:
    """Crop boxes of every view as nested int lists (one numpy call when all views have as many levels)."""
    arrays = [np.asarray(v.crop_boxes, dtype=np.int64) for v in views]
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays).tolist()
    return [a.tolist() for a in arrays]


def _split(buf: np.ndarray) -> list[bytes]:
    """One bytes object per row of a 2-D array (one tobytes, then slices)."""
    if not len(buf):
        return []
    b = buf.tobytes()
    step = len(b) // len(buf)
    return [b[i : i + step] for i in range(0, len(b), step)]


def _vector_rows(batch: ScanBatch, spaces, inst_ids: np.ndarray, view_ids: np.ndarray):
    """(space id, instance id, view id, blob) rows, and space id -> (FAISS ids, float32 vectors) to add."""
    rows: list[tuple] = []
    added = {}
    inst_list = inst_ids.tolist()
    for row in spaces:
        sb = batch.spaces[row.name]
        if row.level == "instance":
            rows.extend(zip(repeat(row.id), inst_list, repeat(None), _split(sb.instance)))
            # what a rebuild from SQLite would hold: the stored float16 values
            added[row.id] = (inst_ids, sb.instance.astype(np.float32))
        else:
            owners = inst_ids[batch.view_owner].tolist()
            rows.extend(zip(repeat(row.id), owners, view_ids.tolist(), _split(sb.view)))
            added[row.id] = (view_ids[batch.inlier], sb.view[batch.inlier].astype(np.float32))
    return rows, added


def write_rows_sqlite(conn, scan_id: int, batch: ScanBatch, spaces) -> dict:
    """SQLite only, writer lock held: instances, views, vectors through the DBAPI cursor, explicit ids."""
    from .models import InstanceRow, VectorRow, ViewRow  # noqa: PLC0415

    cur = conn.connection.cursor()
    try:
        def next_id(table) -> int:
            return int(cur.execute(f"SELECT coalesce(max(id), 0) FROM {table.name}").fetchone()[0]) + 1  # noqa: S608

        def insert(table, cols, rows) -> None:
            sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"  # noqa: S608
            cur.executemany(sql, rows)

        inst_t, view_t, vec_t = InstanceRow.__table__, ViewRow.__table__, VectorRow.__table__
        first = next_id(inst_t)
        inst_ids = np.arange(first, first + len(batch.instance_rows), dtype=np.int64)
        insert(inst_t, ("id", "scan_id", *INSTANCE_COLUMNS),
               [(i, scan_id, *r) for i, r in zip(inst_ids.tolist(), batch.instance_rows, strict=True)])
        first = next_id(view_t)
        view_ids = np.arange(first, first + len(batch.view_rows), dtype=np.int64)
        owners = inst_ids[batch.view_owner].tolist()
        insert(view_t, ("id", "instance_id", *VIEW_COLUMNS),
               # repr of nested int lists is valid JSON and much cheaper than json.dumps
               [(i, o, r[0], r[1], r[2], repr(r[3]), int(r[4]))
                for i, o, r in zip(view_ids.tolist(), owners, batch.view_rows, strict=True)])
        rows, added = _vector_rows(batch, spaces, inst_ids, view_ids)
        insert(vec_t, ("space_id", "instance_id", "view_id", "data"), rows)
    finally:
        cur.close()
    return added


def write_rows_core(conn, scan_id: int, batch: ScanBatch, spaces) -> dict:
    """Any dialect: SQLAlchemy Core executemany; ids read back in insertion order (writer lock held)."""
    from sqlalchemy import insert, select  # noqa: PLC0415

    from .models import InstanceRow, VectorRow, ViewRow  # noqa: PLC0415

    if batch.instance_rows:
        conn.execute(insert(InstanceRow.__table__),
                     [dict(zip(("scan_id", *INSTANCE_COLUMNS), (scan_id, *r), strict=True)) for r in batch.instance_rows])
    inst_ids = np.fromiter(conn.scalars(select(InstanceRow.id).where(InstanceRow.scan_id == scan_id)
                                        .order_by(InstanceRow.id)), dtype=np.int64)
    if len(inst_ids) != len(batch.instance_rows):
        raise StoreError(f"scan {scan_id}: read back {len(inst_ids)} instance ids for {len(batch.instance_rows)} rows")
    view_ids = np.zeros(0, dtype=np.int64)
    if batch.view_rows:
        owners = inst_ids[batch.view_owner].tolist()
        conn.execute(insert(ViewRow.__table__),
                     [dict(zip(("instance_id", *VIEW_COLUMNS), (o, *r), strict=True))
                      for o, r in zip(owners, batch.view_rows, strict=True)])
        view_ids = np.fromiter(conn.scalars(select(ViewRow.id).where(ViewRow.instance_id.in_(
            select(InstanceRow.id).where(InstanceRow.scan_id == scan_id))).order_by(ViewRow.id)), dtype=np.int64)
    rows, added = _vector_rows(batch, spaces, inst_ids, view_ids)
    if rows:
        conn.execute(insert(VectorRow.__table__),
                     [dict(space_id=s, instance_id=i, view_id=v, data=d) for s, i, v, d in rows])
    return added
