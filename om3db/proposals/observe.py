"""Per frame: which scene points are visible, and which 2D instance each one falls in.

Visibility follows DESIGN §3 (as :func:`om3db.views.visible_points_in_frame`): the point projects
inside the depth image, z > 0, depth there is measured and |depth - z| <= ``vis_threshold``. The 2D
instance of a visible point is read at its pixel in the mask map, which may be at depth or colour
resolution (the colour intrinsics are rescaled per axis to the map's size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..camera import project
from ..errors import ConfigError, ScanError
from ..views import visible_points_in_frame

__all__ = ["FrameObservation", "Observations", "observe"]

DepthMode = Literal["sensor", "rendered"]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FrameObservation:
    """The visible points of one frame and their 2D instance ids."""

    frame_id: int
    points: np.ndarray = field(repr=False)
    """(P,) int32 indices of the visible scene points."""
    labels: np.ndarray = field(repr=False)
    """(P,) int32 2D instance id at each visible point's pixel (0 = no instance)."""


@dataclass(frozen=True)
class Observations:
    """All frames' observations of a scan, and counts for the report."""

    frames: tuple[FrameObservation, ...]
    frames_without_masks: int
    """Frames whose 2D map has no instance at all."""
    frames_without_visible_points: int
    """Frames where no scene point passes the depth test."""


def _labels_at(
    points: np.ndarray, idx: np.ndarray, pix: np.ndarray, frame, scan, depth_shape: tuple[int, int], ids: np.ndarray
) -> np.ndarray:
    if ids.shape == depth_shape:
        return ids.reshape(-1)[pix]
    h, w = ids.shape
    intr = scan.color_intrinsics.scaled_to(w, h)
    u, v, _ = project(points[idx], frame.world_to_camera, intr)
    ui = np.clip(np.rint(u).astype(np.int64), 0, w - 1)
    vi = np.clip(np.rint(v).astype(np.int64), 0, h - 1)
    return ids[vi, ui]


def observe(
    scan,
    source,
    *,
    vis_threshold: float = 0.2,
    depth: DepthMode = "sensor",
    renderer=None,
    progress: Progress | None = None,
) -> Observations:
    """Observe every usable frame of ``scan`` through the 2D mask ``source``.

    ``depth="rendered"`` renders depth from the scan's mesh / points instead of reading sensor depth
    (``renderer`` defaults to :func:`om3db.proposals.render.renderer_for_scan`).
    """
    if not vis_threshold > 0:
        raise ConfigError(f"vis_threshold must be > 0 metres, got {vis_threshold}")
    if depth not in ("sensor", "rendered"):
        raise ConfigError(f"depth must be 'sensor' or 'rendered', got {depth!r}")
    if depth == "rendered" and renderer is None:
        from .render import renderer_for_scan

        renderer = renderer_for_scan(scan)
    intr = scan.depth_intrinsics
    out: list[FrameObservation] = []
    no_masks = no_visible = 0
    for i, frame in enumerate(scan.frames):
        d = renderer.render(frame.pose, intr) if depth == "rendered" else frame.depth()
        fintr = intr if d.shape == (intr.height, intr.width) else intr.scaled_to(d.shape[1], d.shape[0])
        idx, pix = visible_points_in_frame(scan.points, frame.world_to_camera, d, fintr, vis_threshold)
        ids = np.asarray(source.masks(scan, frame))
        if ids.ndim != 2:
            raise ScanError(
                scan.path,
                f"2D mask source {getattr(source, 'name', source)!r} returned shape {ids.shape} "
                f"for frame {frame.frame_id}",
                "A 2D mask map must be (h, w) integer ids",
            )
        if not ids.any():
            no_masks += 1
        if len(idx) == 0:
            no_visible += 1
        labels = _labels_at(scan.points, idx, pix, frame, scan, d.shape, ids) if len(idx) else np.zeros(0, np.int32)
        out.append(FrameObservation(frame.frame_id, idx.astype(np.int32), labels.astype(np.int32)))
        if progress is not None:
            progress("observe", i + 1, len(scan.frames))
    return Observations(tuple(out), no_masks, no_visible)
