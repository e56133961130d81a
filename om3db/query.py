"""Query engine: nearest instances to a query vector, with filters and mean / max aggregation,
and per-scan labelling against a vocabulary.

Works on vectors: encoding the text / image is the caller's job (``om3db.database``), after
``check_encoder`` has confirmed the encoder is the one the space was built with.

Filters (all optional, combined with AND): scan names, minimum point count, a 3D box region and a
minimum similarity score. The region is an axis-aligned box in world metres; ``region_mode``
"intersects" keeps instances whose bbox overlaps it, "centroid" those whose centroid lies inside it.
Filtered searches restrict FAISS to the allowed ids (an id selector), so they return k results
whenever k matching instances exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import ConfigError, EncoderMismatchError
from .records import EncoderIdentity

__all__ = ["Filters", "RawHit", "check_encoder", "allowed_instances", "search_space", "label_vectors", "parse_region"]

Aggregation = Literal["mean", "max"]


@dataclass(frozen=True)
class Filters:
    """Which instances a search may return."""

    scans: tuple[str, ...] | None = None
    """Scan names to search (None: all)."""
    min_points: int = 0
    """Minimum instance point count."""
    region: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    """((xmin, ymin, zmin), (xmax, ymax, zmax)) world metres."""
    region_mode: Literal["intersects", "centroid"] = "intersects"
    """'intersects': bbox overlaps the region; 'centroid': centroid inside it."""

    def __post_init__(self) -> None:
        if self.min_points < 0:
            raise ConfigError(f"min_points must be >= 0, got {self.min_points}")
        if self.region_mode not in ("intersects", "centroid"):
            raise ConfigError(f"region_mode must be 'intersects' or 'centroid', got {self.region_mode!r}")
        if self.region is not None:
            lo, hi = (np.asarray(a, dtype=float) for a in self.region)
            if lo.shape != (3,) or hi.shape != (3,) or (lo > hi).any():
                raise ConfigError(
                    f"region must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) with min <= max, got {self.region}"
                )

    @property
    def active(self) -> bool:
        return self.scans is not None or self.min_points > 0 or self.region is not None


@dataclass(frozen=True)
class RawHit:
    instance_id: int
    score: float
    """Cosine similarity (inner product of unit vectors)."""
    view_id: int | None
    """Max aggregation: the FAISS key of the best view (``view_key(instance id, rank)``); mean: None."""


def parse_region(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``"xmin,ymin,zmin,xmax,ymax,zmax"`` (metres) -> ((xmin, ymin, zmin), (xmax, ymax, zmax))."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 6:
        raise ConfigError(f"region must be six numbers xmin,ymin,zmin,xmax,ymax,zmax (metres), got {text!r}")
    return tuple(vals[:3]), tuple(vals[3:])


def check_encoder(store, space: str, identity: EncoderIdentity) -> None:
    """Raise EncoderMismatchError when ``identity`` is not the encoder the space was built with."""
    from .store.catalog import identity_matches

    stored = store.identity_of(store.space(space, "instance"))
    if not identity_matches(stored, identity):
        raise EncoderMismatchError(
            f"{store.root}: the {space!r} space was built with {stored.describe()}, but the query encoder is "
            f"{identity.describe()}. Query with the same model the scans were ingested with"
        )


def allowed_instances(store, filters: Filters) -> np.ndarray | None:
    """(n,) int64 instance ids passing the filters (ready scans only); None when nothing is filtered."""
    if not filters.active:
        return None
    from sqlalchemy import select

    from .store.models import InstanceRow as I  # noqa: N817
    from .store.models import ScanRow

    q = select(I.id).join(ScanRow, ScanRow.id == I.scan_id).where(ScanRow.status == "ready")
    if filters.scans is not None:
        q = q.where(ScanRow.name.in_(list(filters.scans)))
    if filters.min_points:
        q = q.where(I.point_count >= filters.min_points)
    if filters.region is not None:
        (x0, y0, z0), (x1, y1, z1) = filters.region
        if filters.region_mode == "centroid":
            q = q.where(I.centroid_x.between(x0, x1), I.centroid_y.between(y0, y1), I.centroid_z.between(z0, z1))
        else:
            q = q.where(
                I.bbox_min_x <= x1,
                I.bbox_max_x >= x0,
                I.bbox_min_y <= y1,
                I.bbox_max_y >= y0,
                I.bbox_min_z <= z1,
                I.bbox_max_z >= z0,
            )
    with store.engine.connect() as conn:
        return np.fromiter(conn.execute(q).scalars(), dtype=np.int64)


def search_space(
    store,
    space: str,
    query: np.ndarray,
    *,
    k: int = 10,
    aggregation: Aggregation = "mean",
    filters: Filters = Filters(),
    min_score: float | None = None,
) -> list[RawHit]:
    """The k instances most similar to ``query`` ((D,) float32 unit vector), best first."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if aggregation not in ("mean", "max"):
        raise ConfigError(f"aggregation must be 'mean' or 'max', got {aggregation!r}")
    allowed = allowed_instances(store, filters)
    if allowed is not None and not len(allowed):
        return []
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    if aggregation == "mean":
        index = store.index(space, "instance")
        scores, ids = index.search(q, k, allowed_ids=allowed)
        hits = [RawHit(int(i), float(s), None) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
    else:
        hits = _search_max(store, space, q, k, allowed)
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    return hits


def _search_max(store, space: str, q: np.ndarray, k: int, allowed: np.ndarray | None) -> list[RawHit]:
    """Max aggregation: best view per instance, over-fetching views until k instances are found."""
    from .store.writer import view_owner

    index = store.index(space, "view")
    allowed_views = None
    if allowed is not None:  # the inlier views of the allowed instances: the index holds exactly those views
        held = index.ids()
        allowed_views = held[np.isin(view_owner(held), allowed)]
    total = index.ntotal if allowed_views is None else len(allowed_views)
    fetch = min(max(4 * k, 16), max(total, 1))
    while True:
        scores, ids = index.search(q, fetch, allowed_ids=allowed_views)
        found = ids[0] >= 0
        owners = view_owner(ids[0][found]).tolist()
        best: dict[int, RawHit] = {}
        # results are sorted: the first view seen of an instance is its best
        for s, vid, inst in zip(scores[0][found].tolist(), ids[0][found].tolist(), owners, strict=True):
            if inst not in best:
                best[inst] = RawHit(inst, s, vid)
        if len(best) >= k or fetch >= total:
            return list(best.values())[:k]
        fetch = min(fetch * 4, total)


def label_vectors(store, space: str, scan_instance_ids: np.ndarray, classes: np.ndarray, *, aggregation: Aggregation):
    """Best class per instance: returns (ids (n,), class index (n,), score (n,)) for the given instances.

    classes: (C, D) float32 unit text vectors. Mean: instance vector · class; max: the maximum over
    the instance's inlier views of view vector · class.
    """
    if aggregation not in ("mean", "max"):
        raise ConfigError(f"aggregation must be 'mean' or 'max', got {aggregation!r}")
    ids = np.asarray(scan_instance_ids, dtype=np.int64)
    if aggregation == "mean":
        vecs, vid = store.stored_vectors(store.space(space, "instance"), instance_ids=ids.tolist())
        sims = dict(zip(vid.tolist(), vecs @ classes.T, strict=True))
    else:
        from .store.writer import view_owner

        vecs, view_ids = store.stored_vectors(store.space(space, "view"), instance_ids=ids.tolist())
        per_view = vecs @ classes.T
        sims = {}
        for inst, row in zip(view_owner(view_ids).tolist(), per_view, strict=True):
            sims[inst] = row if inst not in sims else np.maximum(sims[inst], row)
    keep = np.array([i for i in ids if i in sims], dtype=np.int64)
    if not len(keep):
        return keep, np.zeros(0, np.int64), np.zeros(0, np.float32)
    mat = np.stack([sims[int(i)] for i in keep])
    best = mat.argmax(axis=1)
    return keep, best, mat[np.arange(len(keep)), best].astype(np.float32)
