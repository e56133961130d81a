"""Gravity (the up axis of a scan) and per-instance geometry in the gravity frame.

The gravity frame: a rotation taking the scan's up vector to +z (its yaw about z is arbitrary; every
measure om3db derives from it is yaw-invariant), no translation. All lengths in metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

__all__ = ["Gravity", "InstanceGeometry", "gravity_up", "gravity_rotation", "instance_geometry", "polygon_area"]


@dataclass(frozen=True)
class Gravity:
    """A scan's up axis and where it came from."""

    up: tuple[float, float, float]
    """Unit vector, world frame."""
    source: str
    """'capture' (the capture states it), 'floor' (RANSAC floor plane) or 'default' (+z assumed: no floor found)."""
    floor_inliers: int = 0
    """Points on the floor plane found (source 'floor')."""


def gravity_up(
    points: np.ndarray,
    *,
    capture_up=None,
    tolerance: float = 0.02,
    iterations: int = 300,
    max_tilt_deg: float = 50.0,
    seed: int = 0,
) -> Gravity:
    """The up axis: ``capture_up`` when given, else the normal of the dominant floor plane (RANSAC).

    A floor candidate is a plane within ``max_tilt_deg`` of +z (ScanNet-like captures are roughly z-up)
    with almost every point above it; the one with most inliers (within ``tolerance`` m) wins and is
    refined by least squares. No such plane: +z ('default').
    """
    if capture_up is not None:
        up = np.asarray(capture_up, dtype=np.float64).reshape(-1)
        if up.shape != (3,) or not np.isfinite(up).all() or np.linalg.norm(up) < 1e-9:
            raise ConfigError(f"capture up axis must be a finite non-zero 3-vector, got {capture_up!r}")
        return Gravity(tuple(map(float, up / np.linalg.norm(up))), "capture")
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) < 50:
        return Gravity((0.0, 0.0, 1.0), "default")
    rng = np.random.default_rng(seed)
    sub = pts if len(pts) <= 20000 else pts[rng.choice(len(pts), 20000, replace=False)]
    cos_max = np.cos(np.radians(max_tilt_deg))
    tri = sub[rng.integers(0, len(sub), (iterations, 3))]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-9
    normals, tri = normals[ok] / norms[ok, None], tri[ok]
    normals *= np.where(normals[:, 2] < 0, -1.0, 1.0)[:, None]
    keep = normals[:, 2] >= cos_max
    best, best_n, best_d = 0, None, 0.0
    for n, p in zip(normals[keep], tri[keep, 0], strict=True):
        d = sub @ n - p @ n
        inl = int((np.abs(d) <= tolerance).sum())
        below = float((d < -5 * tolerance).mean())
        if inl > best and below < 0.05 and inl >= 0.05 * len(sub):
            best, best_n, best_d = inl, n, float(p @ n)
    if best_n is None:
        return Gravity((0.0, 0.0, 1.0), "default")
    n, d = best_n, best_d
    for tol in (tolerance, tolerance / 4):  # refit, then again on the points closest to the refined plane
        on = np.abs(pts @ n - d) <= tol
        centre = pts[on].mean(axis=0)
        fit = np.linalg.svd(pts[on] - centre, full_matrices=False)[2][2]
        n = fit if fit @ best_n > 0 else -fit
        d = float(centre @ n)
    return Gravity(tuple(map(float, n / np.linalg.norm(n))), "floor", int(on.sum()))


def gravity_rotation(up) -> np.ndarray:
    """(3, 3) rotation R with R @ up = +z (the shortest rotation)."""
    u = np.asarray(up, dtype=np.float64)
    u = u / np.linalg.norm(u)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(u, z), float(u @ z)
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


@dataclass(frozen=True)
class InstanceGeometry:
    """One instance in its scan's gravity frame (metres)."""

    aabb_min: tuple[float, float, float]
    aabb_max: tuple[float, float, float]
    """Axis-aligned box in the gravity frame; z range = (aabb_min[2], aabb_max[2])."""
    yaw: float
    """Yaw (radians about up) of the smallest-area footprint rectangle."""
    obb_center: tuple[float, float, float]
    obb_extent: tuple[float, float, float]
    """The yaw-oriented box: centre and full extents along its own axes (x, y rotated by yaw; z up)."""
    footprint: np.ndarray = field(repr=False)
    """(H, 2) float32 convex hull of the points projected on the floor plane, counter-clockwise."""
    footprint_area: float
    volume: float
    """Volume of the 3D convex hull (0 for flat instances)."""
    sample: np.ndarray = field(repr=False)
    """(S, 3) float32 voxel sample of the instance's points (one real point per voxel)."""
    voxel: float = 0.0
    """Voxel size of the sample: every point lies within ``voxel * sqrt(3)`` of a sample point."""

    @property
    def z_range(self) -> tuple[float, float]:
        return self.aabb_min[2], self.aabb_max[2]


def _hull2d(xy: np.ndarray) -> np.ndarray:
    """Convex hull of 2D points, counter-clockwise (fewer than 3 rows when degenerate)."""
    from scipy.spatial import ConvexHull

    pts = np.asarray(xy, dtype=np.float64)
    if len(pts) < 3:
        return pts
    try:
        return pts[ConvexHull(pts).vertices]  # 2D hulls come counter-clockwise
    except Exception:  # noqa: BLE001 - collinear points: qhull refuses them
        return pts[:0]


def polygon_area(poly: np.ndarray) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def voxel_sample(points: np.ndarray, voxel: float, max_points: int) -> tuple[np.ndarray, float]:
    """One real point per voxel (the first in order), coarsening the voxel until at most ``max_points``."""
    pts = np.asarray(points, dtype=np.float64)
    size = voxel
    origin = pts.min(axis=0)
    while True:
        cells = np.floor((pts - origin) / size).astype(np.int64)
        keys = (cells[:, 0] << 42) | (cells[:, 1] << 21) | cells[:, 2]  # 21 bits per axis: 2M voxels a side
        _, first = np.unique(keys, return_index=True)
        if len(first) <= max_points:
            return pts[np.sort(first)].astype(np.float32), size
        size *= max(1.2, (len(first) / max_points) ** 0.5)


def instance_geometry(points_g: np.ndarray, *, voxel: float = 0.02, max_sample: int = 512) -> InstanceGeometry:
    """Geometry of one instance from its (P, 3) points already in the gravity frame."""
    pts = np.asarray(points_g, dtype=np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if not len(pts):
        raise ConfigError("an instance has no finite points: its geometry cannot be computed")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    sample, used = voxel_sample(pts, voxel, max_sample)
    hull = _hull2d(np.concatenate([sample[:, :2], pts[[pts[:, 0].argmin(), pts[:, 0].argmax(),
                                                       pts[:, 1].argmin(), pts[:, 1].argmax()], :2]]))  # fmt: skip
    if len(hull) < 3:  # a line or a point: its bounding rectangle, a hair wide
        e = 1e-4
        hull = np.array(
            [[lo[0] - e, lo[1] - e], [hi[0] + e, lo[1] - e], [hi[0] + e, hi[1] + e], [lo[0] - e, hi[1] + e]]
        )
    yaw, ext2, ctr2, best = 0.0, hi[:2] - lo[:2], (hi[:2] + lo[:2]) / 2, np.inf
    for a, b in zip(hull, np.roll(hull, -1, axis=0), strict=True):
        t = np.arctan2(b[1] - a[1], b[0] - a[0])
        c, s = np.cos(t), np.sin(t)
        r = hull @ np.array([[c, -s], [s, c]])  # coordinates along (edge, normal)
        rlo, rhi = r.min(axis=0), r.max(axis=0)
        area = float(np.prod(rhi - rlo))
        if area < best - 1e-12:
            best, yaw, ext2 = area, float(np.mod(t, np.pi / 2)), rhi - rlo
            mid = (rlo + rhi) / 2
            ctr2 = np.array([[c, -s], [s, c]]) @ mid
    volume = 0.0
    if len(sample) >= 4 and min(hi - lo) > 1e-4:
        try:
            from scipy.spatial import ConvexHull

            volume = float(ConvexHull(sample.astype(np.float64)).volume)
        except Exception:  # noqa: BLE001 - qhull refuses degenerate (flat) sets: volume 0
            volume = 0.0
    return InstanceGeometry(
        aabb_min=tuple(map(float, lo)),
        aabb_max=tuple(map(float, hi)),
        yaw=yaw,
        obb_center=(float(ctr2[0]), float(ctr2[1]), float((lo[2] + hi[2]) / 2)),
        obb_extent=(float(ext2[0]), float(ext2[1]), float(hi[2] - lo[2])),
        footprint=hull.astype(np.float32),
        footprint_area=polygon_area(hull),
        volume=volume,
        sample=sample,
        voxel=used,
    )
