"""What the viewer draws, as plain arrays: a downsampled scan cloud, heat colours for hits, a camera pose.

Pure numpy (no viser): the page code in :mod:`om3db.viewer.app` hands these to the browser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CloudView:
    """A scan's point cloud as the page shows it."""

    name: str
    """The scan's name."""
    points: np.ndarray
    """(M, 3) float32 world metres: the kept points, M <= max_points."""
    colors: np.ndarray
    """(M, 3) uint8 RGB as scanned."""
    kept: np.ndarray
    """(N,) int32: for each of the scan's N PLY vertices its row in ``points``, -1 when dropped."""


def downsample(name: str, points: np.ndarray, colors: np.ndarray, *, max_points: int, seed: int = 0) -> CloudView:
    """Keep at most ``max_points`` of the scan's points (a fixed random subset, so reloads look the same)."""
    n = len(points)
    if n <= max_points:
        chosen = np.arange(n)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    kept = np.full(n, -1, dtype=np.int32)
    kept[chosen] = np.arange(len(chosen), dtype=np.int32)
    return CloudView(
        name, np.ascontiguousarray(points[chosen], dtype=np.float32), np.ascontiguousarray(colors[chosen]), kept
    )


def heat(t: np.ndarray | float) -> np.ndarray:
    """Heat colour map: t in [0, 1] -> (.., 3) uint8, dark red (0) through orange to bright yellow (1)."""
    t = np.clip(np.asarray(t, dtype=np.float32), 0.0, 1.0)
    r = 180 + 75 * np.minimum(t * 2, 1)
    g = 20 + 235 * t
    b = 20 + 120 * np.maximum(t - 0.7, 0) / 0.3
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def highlight(cloud: CloudView, hits: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Colours with the hits painted: each hit is (point indices into the PLY, score). The rest is dimmed;
    the best score gets the hottest colour, drawn last so it wins where instances overlap."""
    colors = (cloud.colors.astype(np.float32) * 0.45 + 40).astype(np.uint8)
    if not hits:
        return colors
    scores = np.array([s for _, s in hits], dtype=np.float32)
    lo, hi = float(scores.min()), float(scores.max())
    for indices, score in sorted(hits, key=lambda h: h[1]):
        rows = cloud.kept[np.asarray(indices, dtype=np.int64)]
        rows = rows[rows >= 0]
        t = 1.0 if hi - lo < 1e-9 else 0.35 + 0.65 * (score - lo) / (hi - lo)
        colors[rows] = heat(t)
    return colors


def camera_for(bbox_min, bbox_max) -> tuple[np.ndarray, np.ndarray]:
    """(position, look_at) that frames a box: from above and to the side, far enough to see all of it."""
    lo, hi = np.asarray(bbox_min, dtype=np.float64), np.asarray(bbox_max, dtype=np.float64)
    centre = (lo + hi) / 2
    radius = max(float(np.linalg.norm(hi - lo)) / 2, 0.15)
    direction = np.array([1.0, -1.0, 0.9]) / np.linalg.norm([1.0, -1.0, 0.9])
    return centre + direction * max(radius * 5.0, 1.5), centre


def point_size_for(points: np.ndarray) -> float:
    """A point size (metres) that closes the gaps between neighbours: the spacing the points would have
    spread over their bounding box's surface."""
    if len(points) < 2:
        return 0.02
    ext = np.maximum(points.max(axis=0) - points.min(axis=0), 1e-3).astype(np.float64)
    surface = 2 * (ext[0] * ext[1] + ext[1] * ext[2] + ext[0] * ext[2])
    return float(np.clip(1.2 * np.sqrt(surface / len(points)), 0.002, 0.1))
