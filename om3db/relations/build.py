"""Relations between the instances of one scan, from their gravity-frame geometry.

Only nearby pairs are examined: a sweep over the instances' boxes sorted along x (O(n log n) plus the
pairs found) yields the candidates whose boxes come within ``near`` horizontally and within
``above_range`` vertically; everything else is measured on those pairs only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError
from .geometry import Gravity, InstanceGeometry, gravity_rotation, gravity_up, instance_geometry, polygon_area

__all__ = ["RELATIONS", "RelationConfig", "Relation", "ScanRelations", "compute_relations", "scan_relations"]

RELATIONS = ("on", "in", "near", "next_to", "above", "below", "same_scan")
"""Every relation a query may name. All but ``same_scan`` (any two instances of one scan) are stored."""


@dataclass(frozen=True)
class RelationConfig:
    """Metric thresholds of the relations (metres unless said otherwise)."""

    on_gap: float = 0.05
    """A is on B when A's bottom is at most this far above B's top ..."""
    on_penetration: float = 0.02
    """... or at most this far below it (sensor noise) ..."""
    on_overlap: float = 0.3
    """... and at least this fraction of A's footprint lies over B's footprint."""
    in_fraction: float = 0.8
    """A is in B when at least this fraction of A's sample lies inside B's convex hull (and A is smaller)."""
    near: float = 1.0
    """A is near B when their minimum point distance is at most this; the distance is stored, so queries
    may ask for less (``within``) but not more."""
    next_to: float = 0.15
    """A is next to B when near within this distance, side by side: z ranges overlap, footprints barely."""
    above_range: float = 2.0
    """A is above B (and B below A) when A's bottom is above B's top by at most this, footprints overlapping."""
    voxel: float = 0.02
    """Voxel size of each instance's stored point sample."""
    max_sample: int = 512
    """At most this many sample points per instance (the voxel grows until it fits)."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"RelationConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.near <= 0 or self.voxel <= 0 or self.max_sample < 8:
            raise ConfigError("RelationConfig: near and voxel must be > 0 and max_sample >= 8")
        for name in ("on_overlap", "in_fraction"):
            if getattr(self, name) > 1:
                raise ConfigError(f"RelationConfig.{name} is a fraction in [0, 1], got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Relation:
    """Subject ``subject`` stands in ``relation`` to object ``object`` (positions in the scan's instance list)."""

    subject: int
    object: int
    relation: str
    score: float
    """In (0, 1]: how clearly the relation holds."""
    distance: float
    """Minimum distance between the two instances' points."""
    gap: float
    """Subject bottom minus object top along up (negative: they overlap vertically)."""
    overlap: float
    """Fraction of the subject's footprint over the object's footprint ('in': fraction inside the hull)."""


@dataclass(frozen=True)
class ScanRelations:
    """What relation building produced for one scan: stored with it."""

    gravity: Gravity
    geometry: list[InstanceGeometry] = field(repr=False)
    relations: list[Relation] = field(repr=False)
    config: RelationConfig = RelationConfig()
    seconds: float = 0.0


def _clip(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of convex polygon ``subject`` inside convex CCW polygon ``clip``."""
    out = subject
    for a, b in zip(clip, np.roll(clip, -1, axis=0), strict=True):
        if not len(out):
            break
        edge = b - a
        side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])
        new = []
        for i in range(len(out)):
            p, q, sp, sq = out[i], out[(i + 1) % len(out)], side[i], side[(i + 1) % len(out)]
            if sp >= 0:
                new.append(p)
            if (sp >= 0) != (sq >= 0):
                new.append(p + (q - p) * (sp / (sp - sq)))
        out = np.array(new) if new else np.zeros((0, 2))
    return out


def _overlap(a: InstanceGeometry, b: InstanceGeometry) -> float:
    """Fraction of a's footprint area over b's footprint."""
    if a.footprint_area <= 0:
        return 0.0
    lo = np.maximum(a.aabb_min[:2], b.aabb_min[:2])
    hi = np.minimum(a.aabb_max[:2], b.aabb_max[:2])
    if (lo > hi).any():
        return 0.0
    inter = _clip(a.footprint.astype(np.float64), b.footprint.astype(np.float64))
    return min(1.0, polygon_area(inter) / a.footprint_area)


def _candidates(geom: list[InstanceGeometry], reach: float, vertical: float) -> list[tuple[int, int]]:
    """Unordered pairs (i < j) whose boxes come within ``reach`` in x, y and ``vertical`` in z (sweep on x)."""
    if len(geom) < 2:
        return []
    lo = np.array([g.aabb_min for g in geom])
    hi = np.array([g.aabb_max for g in geom])
    order = np.argsort(lo[:, 0], kind="stable")
    xs = lo[order, 0]
    pairs = []
    for rank, i in enumerate(order):
        end = np.searchsorted(xs, hi[i, 0] + reach, side="right")
        js = order[rank + 1 : end]
        if not len(js):
            continue
        ok = (lo[js, 1] <= hi[i, 1] + reach) & (hi[js, 1] >= lo[i, 1] - reach)
        ok &= (lo[js, 2] <= hi[i, 2] + vertical) & (hi[js, 2] >= lo[i, 2] - vertical)
        pairs += [(min(i, j), max(i, j)) for j in js[ok].tolist()]
    return sorted(pairs)


def _min_distance(points: list[np.ndarray], geom: list[InstanceGeometry], trees: dict, i: int, j: int, bound: float):
    """Exact minimum distance between instance i's and j's points (inf when surely past ``bound``).

    The voxel samples give an upper bound (they are real points) and a lower one (every point lies within
    a voxel diagonal of a sample point); only the points of one instance within that upper bound of the
    other's box are then queried against the other's k-d tree, so dense neighbours stay cheap."""
    from scipy.spatial import cKDTree

    def tree(key, data):
        if key not in trees:
            trees[key] = cKDTree(data)
        return trees[key]

    small, big = (i, j) if len(points[i]) <= len(points[j]) else (j, i)
    slack = math.sqrt(3) * (geom[i].voxel + geom[j].voxel)
    d_s, _ = tree(("s", big), geom[big].sample).query(geom[small].sample, k=1, distance_upper_bound=bound + slack)
    upper = float(d_s.min())
    if not math.isfinite(upper):
        return math.inf
    reach = upper + 1e-5  # the float32 sample may sit a rounding error closer than the true points
    p = points[small]
    lo, hi = np.array(geom[big].aabb_min) - reach, np.array(geom[big].aabb_max) + reach
    p = p[((p >= lo) & (p <= hi)).all(axis=1)]
    d, _ = tree(("p", big), points[big]).query(p, k=1, distance_upper_bound=reach)
    exact = float(d.min()) if len(d) else math.inf
    return exact if math.isfinite(exact) else upper


def _inside_fraction(a: InstanceGeometry, b: InstanceGeometry, hulls: dict, j: int, min_fraction: float) -> float:
    """Fraction of a's sample inside b's convex hull."""
    from scipy.spatial import Delaunay

    s = a.sample.astype(np.float64)
    inbox = ((s >= np.array(b.aabb_min) - 1e-6) & (s <= np.array(b.aabb_max) + 1e-6)).all(axis=1)
    if inbox.mean() < min_fraction or b.volume <= 0:  # cannot reach the fraction: no hull test
        return 0.0
    if j not in hulls:
        try:
            hulls[j] = Delaunay(b.sample.astype(np.float64))
        except Exception:  # noqa: BLE001 - a degenerate sample: nothing is inside it
            hulls[j] = None
    if hulls[j] is None:
        return 0.0
    return float((hulls[j].find_simplex(s, tol=1e-6) >= 0).mean())


def compute_relations(
    points_g: list[np.ndarray], geom: list[InstanceGeometry], config: RelationConfig = RelationConfig()
) -> list[Relation]:
    """Every stored relation between the instances (gravity-frame points and geometry, same order)."""
    c = config
    out: list[Relation] = []
    trees: dict = {}
    hulls: dict = {}
    for i, j in _candidates(geom, c.near, max(c.near, c.above_range)):
        start = len(out)
        a, b = geom[i], geom[j]
        box_gap = np.maximum(np.array(a.aabb_min) - b.aabb_max, np.array(b.aabb_min) - a.aabb_max).clip(min=0)
        dist = (
            _min_distance(points_g, geom, trees, i, j, c.near) if float(np.linalg.norm(box_gap)) <= c.near else math.inf
        )
        z_overlap = min(a.aabb_max[2], b.aabb_max[2]) - max(a.aabb_min[2], b.aabb_min[2])
        ov = {(i, j): _overlap(a, b), (j, i): _overlap(b, a)}
        inside = {}
        for s, o in ((i, j), (j, i)):
            gs, go = geom[s], geom[o]
            gap = gs.aabb_min[2] - go.aabb_max[2]
            if gs.volume < go.volume:
                frac = _inside_fraction(gs, go, hulls, o, c.in_fraction)
                inside[s] = frac >= c.in_fraction
                if inside[s]:
                    out.append(Relation(s, o, "in", frac, dist, gap, frac))
            if -c.on_penetration <= gap <= c.on_gap and ov[(s, o)] >= c.on_overlap:
                score = ov[(s, o)] * (1 - 0.5 * max(gap, 0.0) / max(c.on_gap, 1e-9))
                out.append(Relation(s, o, "on", score, dist, gap, ov[(s, o)]))
            if -c.on_penetration <= gap <= c.above_range and ov[(s, o)] > 0:
                score = 1 - 0.5 * max(gap, 0.0) / c.above_range
                out.append(Relation(s, o, "above", score, dist, gap, ov[(s, o)]))
                out.append(Relation(o, s, "below", score, dist, go.aabb_min[2] - gs.aabb_max[2], ov[(o, s)]))
        if dist <= c.near:
            for s, o in ((i, j), (j, i)):
                gap = geom[s].aabb_min[2] - geom[o].aabb_max[2]
                out.append(Relation(s, o, "near", 1 - 0.5 * dist / c.near, dist, gap, ov[(s, o)]))
            if dist <= c.next_to and z_overlap > 0 and max(ov.values()) < 0.1 and not any(inside.values()):
                for s, o in ((i, j), (j, i)):
                    gap = geom[s].aabb_min[2] - geom[o].aabb_max[2]
                    out.append(Relation(s, o, "next_to", 1 - 0.5 * dist / c.next_to, dist, gap, ov[(s, o)]))
        if len(out) > start and not math.isfinite(dist):  # e.g. above from far up: the exact distance anyway
            dist = _min_distance(points_g, geom, trees, i, j, math.inf)
            out[start:] = [dataclasses.replace(r, distance=dist) for r in out[start:]]
    return sorted(out, key=lambda r: (r.relation, r.subject, r.object))


def scan_relations(
    points: np.ndarray,
    instance_points: list[np.ndarray],
    *,
    config: RelationConfig = RelationConfig(),
    capture_up=None,
) -> ScanRelations:
    """Gravity, per-instance geometry and relations of one scan (a pure stage function).

    points: (N, 3) the scan's points (world metres) for the floor plane; instance_points: per instance
    the (P, 3) world points of its mask."""
    import time

    t0 = time.perf_counter()
    gravity = gravity_up(points, capture_up=capture_up)
    rot = gravity_rotation(gravity.up)
    pts_g = [np.asarray(p, dtype=np.float64) @ rot.T for p in instance_points]
    geom = [instance_geometry(p, voxel=config.voxel, max_sample=config.max_sample) for p in pts_g]
    rel = compute_relations(pts_g, geom, config)
    return ScanRelations(gravity, geom, rel, config, time.perf_counter() - t0)
