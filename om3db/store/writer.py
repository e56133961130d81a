"""Bulk row writing for ``Store.write_scan``: one scan encoded with numpy, inserted with executemany.

A scan is stored as one row per instance (geometry, packed point indices, packed views) plus, per
vector space, one ``vector_blocks`` row holding all the scan's float16 vectors and their FAISS ids.
Row count, not bytes, is what costs in SQLite: this layout writes ~1 row per instance instead of the
1 + views + vectors rows of a row-per-vector layout (docs/benchmarks.md, "Store write throughput").

``pack_scan`` validates and encodes a scan before any transaction opens (one float16 conversion per
space and level, blobs sliced from one buffer). Two writers insert the rows inside the caller's
transaction: ``write_rows_core`` (portable SQLAlchemy ``insert()`` executemany, ids read back in bulk)
and ``write_rows_sqlite`` (the DBAPI cursor with explicit ids from ``max(id)``: valid because the writer
lock is held, so nobody else inserts; it skips SQLAlchemy's per-row parameter processing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import StoreError
from ..records import IngestResult, View

__all__ = [
    "SpaceBatch",
    "ScanBatch",
    "pack_scan",
    "write_rows_core",
    "write_rows_sqlite",
    "pack_indices",
    "pack_indices_many",
    "unpack_indices",
    "pack_views",
    "unpack_views",
    "view_key",
    "view_owner",
    "view_rank",
    "MAX_VIEWS",
    "BLOCK_ROWS",
]

INSTANCE_COLUMNS = (
    "mask_index",
    "point_count",
    "bbox_min_x",
    "bbox_min_y",
    "bbox_min_z",
    "bbox_max_x",
    "bbox_max_y",
    "bbox_max_z",
    "centroid_x",
    "centroid_y",
    "centroid_z",
    "point_indices",
    "score",
    "views",
)
BLOCK_COLUMNS = ("space_id", "scan_id", "count", "ids", "data")

VIEW_KEY_BITS = 8
MAX_VIEWS = 1 << VIEW_KEY_BITS
"""Views an instance may have: a view's FAISS id is ``instance_id << 8 | rank``."""
BLOCK_ROWS = 65536
"""Vectors per ``vector_blocks`` row at most (a scan with more gets several blocks)."""


def view_key(instance_ids, ranks) -> np.ndarray:
    """FAISS ids of views: ``instance_id << 8 | rank`` (int64)."""
    return (np.asarray(instance_ids, dtype=np.int64) << VIEW_KEY_BITS) | np.asarray(ranks, dtype=np.int64)


def view_owner(keys) -> np.ndarray:
    """Instance ids of view FAISS ids."""
    return np.asarray(keys, dtype=np.int64) >> VIEW_KEY_BITS


def view_rank(keys) -> np.ndarray:
    """Ranks (0 = best view) of view FAISS ids."""
    return np.asarray(keys, dtype=np.int64) & (MAX_VIEWS - 1)


_INDEX_CODECS = {1: "<u1", 2: "<u2", 4: "<u4"}
_EMPTY = 255


def pack_indices(indices: np.ndarray) -> bytes:
    """Point indices as stored: a codec byte, the first index (int32), then zlib(level 1) of the gaps.

    Sorted indices (what ingest gives) have small gaps, 1 or 2 bytes each instead of 4, which makes
    the compression several times faster. Unsorted input is stored as plain int32 (codec 0); an
    empty array is the codec byte alone.
    """
    return pack_indices_many([indices])[0]


def pack_indices_many(arrays: list[np.ndarray]) -> list[bytes]:
    """:func:`pack_indices` of each array, with the numpy work done once for all of them."""
    import zlib

    if not arrays:
        return []
    sizes = np.fromiter((np.size(a) for a in arrays), dtype=np.int64, count=len(arrays))
    flat = np.concatenate([np.asarray(a, dtype="<i4").ravel() for a in arrays]) if sizes.sum() else np.zeros(0, "<i4")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    gaps = np.zeros(len(flat), dtype=np.int64)
    gaps[1:] = np.diff(flat.astype(np.int64))
    gaps[starts[sizes > 0]] = 0  # the first index of an instance is not a gap
    # per instance: the smallest and largest gap (0 for instances of <= 1 index)
    nonempty = sizes > 0
    lo = np.zeros(len(arrays), dtype=np.int64)
    hi = np.zeros(len(arrays), dtype=np.int64)
    if len(flat):
        lo[nonempty] = np.minimum.reduceat(gaps, starts[nonempty])
        hi[nonempty] = np.maximum.reduceat(gaps, starts[nonempty])
    width = np.where(hi < 1 << 8, 1, np.where(hi < 1 << 16, 2, 4))
    codec = np.where(lo < 0, 0, width)
    narrow = {w: gaps.astype(_INDEX_CODECS[w]).tobytes() for w in (1, 2, 4) if (codec == w).any()}
    raw = flat.tobytes()
    out = []
    for s, n, c in zip(starts.tolist(), sizes.tolist(), codec.tolist(), strict=True):
        if n == 0:
            out.append(bytes((_EMPTY,)))
        elif c == 0:
            out.append(b"\x00" + zlib.compress(raw[4 * s : 4 * (s + n)], 1))
        else:
            out.append(bytes((c,)) + raw[4 * s : 4 * s + 4] + zlib.compress(narrow[c][c * (s + 1) : c * (s + n)], 1))
    return out


def unpack_indices(blob: bytes) -> np.ndarray:
    """(P,) int32 point indices from :func:`pack_indices`."""
    import zlib

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


_VIEWS_FORMAT = 1


def _view_table(views) -> tuple[np.ndarray, int]:
    """(V, 4 + 4L) int32 rows: frame id, visible pixels, inlier, levels, then L crop boxes (zero padded)."""
    n = len(views)
    try:  # every view with the same number of levels (what ingest makes): one numpy call
        same = np.array([v.crop_boxes for v in views], dtype=np.int64).reshape(n, -1, 4)
        boxes, levels = None, same.shape[1]
    except ValueError:  # ragged
        same = None
        boxes = [np.asarray(v.crop_boxes, dtype=np.int64).reshape(-1, 4) for v in views]
        levels = max((len(b) for b in boxes), default=0)
    table = np.zeros((n, 4 + 4 * levels), dtype=np.int64)
    if n:
        table[:, 0] = np.fromiter((v.frame_id for v in views), dtype=np.int64, count=n)
        table[:, 1] = np.fromiter((v.visible_pixels for v in views), dtype=np.int64, count=n)
        table[:, 2] = np.fromiter((bool(v.inlier) for v in views), dtype=np.int64, count=n)
        if same is not None:
            table[:, 3] = levels
            table[:, 4:] = same.reshape(n, -1)
        else:
            for i, b in enumerate(boxes):
                table[i, 3] = len(b)
                table[i, 4 : 4 + 4 * len(b)] = b.ravel()
    if table.size and (table.min() < -(1 << 31) or table.max() >= 1 << 31):
        raise StoreError("a view's frame id, pixel count or crop box does not fit in int32")
    return table.astype("<i4"), levels


def _views_header(levels: int) -> bytes:
    return bytes((_VIEWS_FORMAT, levels))


def pack_views(views) -> bytes:
    """An instance's views (:class:`om3db.records.View`, best first) as stored in ``instances.views``.

    Format 1: a format byte, a byte L (crop levels per view slot), then per view 4 + 4L little-endian
    int32: frame id, visible pixels, inlier (0/1), crop levels used, then L boxes x0, y0, x1, y1.
    """
    table, levels = _view_table(list(views))
    return _views_header(levels) + table.tobytes()


def unpack_views(blob: bytes) -> list[View]:
    """The views of :func:`pack_views`, best first."""
    if len(blob) < 2 or blob[0] != _VIEWS_FORMAT:
        raise StoreError(f"instance views blob has unknown format {blob[:1]!r}; upgrade om3db")
    levels = blob[1]
    table = np.frombuffer(blob, dtype="<i4", offset=2).reshape(-1, 4 + 4 * levels).tolist()
    return [
        View(row[0], row[1], tuple(tuple(row[4 + 4 * j : 8 + 4 * j]) for j in range(row[3])), bool(row[2]))
        for row in table
    ]


@dataclass(frozen=True)
class SpaceBatch:
    """One encoder's vectors of a scan, float16 as stored."""

    instance: np.ndarray
    """(N, D) little-endian float16, row i for instance i: the bytes SQLite stores and FAISS copies in."""
    view: np.ndarray | None
    """(V, D) little-endian float16 of the inlier views, instance order then rank; None: views not kept."""


@dataclass(frozen=True)
class ScanBatch:
    """One scan's rows, ready for executemany (Python scalars only)."""

    instance_rows: list[tuple]
    """Per instance, the values of ``INSTANCE_COLUMNS``."""
    view_owner: np.ndarray
    """(V,) int64 index into the instances of each inlier view."""
    view_rank: np.ndarray
    """(V,) int64 rank of each inlier view."""
    spaces: dict[str, SpaceBatch]


def _f32(rows: list, shape: tuple[int, int]) -> np.ndarray:
    # via float32, as one vector at a time always was: float64 input rounds the same way as before
    if not rows:
        return np.zeros(shape, dtype=np.float32)
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32).reshape(shape)


def _f32_rows(blocks: list[np.ndarray], dim: int, keep: np.ndarray) -> np.ndarray:
    if not blocks:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(blocks)[keep], dtype=np.float32)


def pack_scan(result: IngestResult, keep_views: bool) -> ScanBatch:
    """Validate one scan's vectors against its encoders' dims and encode every row."""
    insts = result.instances
    n = len(insts)
    nviews = [len(r.views) for r in insts]
    if nviews and max(nviews) > MAX_VIEWS:
        worst = insts[int(np.argmax(nviews))]
        raise StoreError(
            f"scan {result.scan}: mask {worst.mask_index} has {max(nviews)} views; the store keeps at "
            f"most {MAX_VIEWS} per instance (IngestConfig.top_k)"
        )
    all_views = [v for r in insts for v in r.views]
    table, levels = _view_table(all_views)
    inlier = table[:, 2].astype(bool)
    owner = np.repeat(np.arange(n, dtype=np.int64), nviews)
    rank = np.concatenate([np.arange(k, dtype=np.int64) for k in nviews]) if n else np.zeros(0, np.int64)
    spaces = {}
    for name, ident in sorted(result.encoders.items()):
        dim = int(ident.dim)
        inst_vecs, view_vecs = [], []
        for rec, nv in zip(insts, nviews, strict=True):
            v = rec.vectors.get(name)
            v = np.asarray(v) if v is not None else np.zeros((0,))
            if v.shape != (dim,):
                raise StoreError(
                    f"scan {result.scan}: {name} vector of mask {rec.mask_index} has shape {v.shape}, "
                    f"the space has dim {dim}. This is an ingest bug; report it"
                )
            inst_vecs.append(v)
            if keep_views:
                vv = rec.view_vectors.get(name)
                vv = np.asarray(vv).reshape(-1, dim) if vv is not None and np.size(vv) % dim == 0 else None
                if vv is None or len(vv) != nv:
                    got = "no" if vv is None else len(vv)
                    raise StoreError(
                        f"scan {result.scan}: mask {rec.mask_index} has {nv} views but {got} {name} "
                        "view vectors. This is an ingest bug; report it"
                    )
                view_vecs.append(vv)
        view32 = _f32_rows(view_vecs, dim, inlier) if keep_views else None
        spaces[name] = SpaceBatch(
            _f32(inst_vecs, (n, dim)).astype("<f2"), None if view32 is None else view32.astype("<f2")
        )
    geo = np.zeros((n, 9), dtype=np.float64)
    for i, rec in enumerate(insts):
        geo[i, 0:3], geo[i, 3:6], geo[i, 6:9] = rec.bbox_min, rec.bbox_max, rec.centroid
    views = _split_rows(table, nviews, _views_header(levels))
    points = pack_indices_many([r.point_indices for r in insts])
    instance_rows = [
        (int(r.mask_index), len(r.point_indices), *g, p, float(r.score), v)
        for r, g, p, v in zip(insts, geo.tolist(), points, views, strict=True)
    ]
    return ScanBatch(instance_rows, owner[inlier], rank[inlier], spaces)


def _split_rows(table: np.ndarray, counts: list[int], prefix: bytes) -> list[bytes]:
    """``prefix`` + the bytes of consecutive row groups of ``table`` (``counts`` rows each)."""
    b = table.tobytes()
    step = table.shape[1] * table.itemsize
    out, at = [], 0
    for c in counts:
        out.append(prefix + b[at : at + c * step])
        at += c * step
    return out


def _blocks(batch: ScanBatch, spaces, scan_id: int, inst_ids: np.ndarray):
    """``vector_blocks`` rows (values of ``BLOCK_COLUMNS``) and space id -> (FAISS ids, float16 vectors)."""
    rows: list[tuple] = []
    added = {}
    keys = view_key(inst_ids[batch.view_owner], batch.view_rank)
    for row in spaces:
        sb = batch.spaces[row.name]
        ids, data = (inst_ids, sb.instance) if row.level == "instance" else (keys, sb.view)
        ids = np.ascontiguousarray(ids, dtype="<i8")
        for at in range(0, len(ids), BLOCK_ROWS):
            part = slice(at, at + BLOCK_ROWS)
            rows.append((row.id, scan_id, len(ids[part]), ids[part].tobytes(), data[part].tobytes()))
        added[row.id] = (ids.astype(np.int64), data)  # FAISS copies these float16 bytes: the stored values
    return rows, added


def write_rows_sqlite(conn, scan_id: int, batch: ScanBatch, spaces) -> dict:
    """SQLite only, writer lock held: instances and vector blocks through the DBAPI cursor, explicit ids."""
    from .models import InstanceRow, VectorBlock

    cur = conn.connection.cursor()
    try:

        def insert(table, cols, rows) -> None:
            sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"  # noqa: S608
            cur.executemany(sql, rows)

        inst_t = InstanceRow.__table__
        first = int(cur.execute(f"SELECT coalesce(max(id), 0) FROM {inst_t.name}").fetchone()[0]) + 1  # noqa: S608
        inst_ids = np.arange(first, first + len(batch.instance_rows), dtype=np.int64)
        insert(
            inst_t,
            ("id", "scan_id", *INSTANCE_COLUMNS),
            [(i, scan_id, *r) for i, r in zip(inst_ids.tolist(), batch.instance_rows, strict=True)],
        )
        rows, added = _blocks(batch, spaces, scan_id, inst_ids)
        insert(VectorBlock.__table__, BLOCK_COLUMNS, rows)
    finally:
        cur.close()
    return added


def write_rows_core(conn, scan_id: int, batch: ScanBatch, spaces) -> dict:
    """Any dialect: SQLAlchemy Core executemany; ids read back in insertion order (writer lock held)."""
    from sqlalchemy import insert, select

    from .models import InstanceRow, VectorBlock

    if batch.instance_rows:
        conn.execute(
            insert(InstanceRow.__table__),
            [dict(zip(("scan_id", *INSTANCE_COLUMNS), (scan_id, *r), strict=True)) for r in batch.instance_rows],
        )
    inst_ids = np.fromiter(
        conn.scalars(select(InstanceRow.id).where(InstanceRow.scan_id == scan_id).order_by(InstanceRow.id)),
        dtype=np.int64,
    )
    if len(inst_ids) != len(batch.instance_rows):
        raise StoreError(f"scan {scan_id}: read back {len(inst_ids)} instance ids for {len(batch.instance_rows)} rows")
    rows, added = _blocks(batch, spaces, scan_id, inst_ids)
    if rows:
        conn.execute(insert(VectorBlock.__table__), [dict(zip(BLOCK_COLUMNS, r, strict=True)) for r in rows])
    return added
