"""Visibility of class-agnostic 3D masks in the frames of a scan, and view selection per mask.

Facts (docs/architecture.md, "Pipeline facts": OpenMask3D's ``PointProjector`` with its bugs fixed):

- every scene point is projected with the depth camera ``K·[R|t]`` (world-to-camera = inverse pose);
  its pixel is ``(round(u), round(v))`` (pixel centres sit at integer coordinates, see
  :mod:`om3db.camera`; OpenMask3D truncates, which shifts every point by up to one pixel);
- a point is visible in a frame when that pixel is inside the depth image, ``z > 0`` (OpenMask3D
  forgets this), the depth there is measured (``> 0``) and ``|depth - z| <= vis_threshold`` metres;
- a mask's score in a frame is the number of *distinct* depth pixels covered by its visible points.

OpenMask3D builds a ``views x masks x H x W`` boolean array for the last step (~16 GB on a ScanNet
scene). Here, per frame: only the points inside some mask are projected (into reused buffers); each
visible point learns one representative point of its depth pixel (scatter + gather into a pixel-sized
scratch array); representatives add 1 to each of their masks (a bincount, or a per-mask reduceat
when masks overlap); only memberships a pixel's representative lacks (objects meeting on one pixel)
go through a sort/unique of (mask, pixel) keys. Memory O(points + memberships), time O(memberships).
The next depth PNGs are decoded in a background thread meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .camera import Intrinsics
from .errors import ConfigError, MaskFileError
from .records import View

__all__ = [
    "MaskMembership",
    "Visibility",
    "MaskViews",
    "ViewSelection",
    "compute_visibility",
    "select_views",
    "visible_points_in_frame",
    "project_points",
    "pixel_keys",
]

Progress = Callable[[str, int, int], None]
PROMPT_CAP = 1024
"""Most prompt points kept per (mask, view); the four extreme points are always among them."""


@dataclass(frozen=True)
class MaskMembership:
    """Sparse (CSR) view of an (N, M) bool mask matrix: point -> the masks containing it."""

    indptr: np.ndarray = field(repr=False)
    """(N + 1,) int64; the masks of point p are ``indices[indptr[p]:indptr[p + 1]]``."""
    indices: np.ndarray = field(repr=False)
    """(nnz,) int32 mask columns, sorted per point."""
    num_masks: int
    dense: np.ndarray = field(repr=False)
    """(N, M) bool, the matrix itself (not a copy): O(1) "is point p in mask j" for shared pixels."""
    label: np.ndarray | None = field(default=None, repr=False)
    """(N,) int64 ``1 + mask`` of each point, 0 for none, when no point is in two masks (GT
    instances); None otherwise."""
    by_mask: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    """When masks overlap (None with :attr:`label`): the transposed CSR, ``(indptr (M + 1,) int64,
    points (nnz,) int64)``, the points of mask j being ``points[indptr[j]:indptr[j + 1]]``, sorted."""

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> MaskMembership:
        masks = np.ascontiguousarray(np.asarray(masks).astype(bool, copy=False))  # flat (point * M + mask) look-ups
        # row-major: sorted by point, then mask; a 1-D flatnonzero is ~5x faster than a 2-D nonzero
        pts, cols = np.divmod(np.flatnonzero(masks.reshape(-1)), max(masks.shape[1], 1))
        per_point = np.bincount(pts, minlength=masks.shape[0])
        indptr = np.zeros(masks.shape[0] + 1, dtype=np.int64)
        np.cumsum(per_point, out=indptr[1:])
        if per_point.size == 0 or per_point.max() <= 1:
            label = np.zeros(masks.shape[0], dtype=np.int64)
            label[pts] = cols + 1
            return cls(indptr, cols.astype(np.int32), int(masks.shape[1]), masks, label)
        order = np.argsort(
            cols.astype(np.int16) if masks.shape[1] < 2**15 else cols, kind="stable"
        )  # int16: radix sort
        by_mask_ptr = np.zeros(masks.shape[1] + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=masks.shape[1]), out=by_mask_ptr[1:])
        return cls(indptr, cols.astype(np.int32), int(masks.shape[1]), masks, None, (by_mask_ptr, pts[order]))

    def sum_per_mask(self, flag: np.ndarray) -> np.ndarray:
        """(M,) int64: for an (N,) uint8 per-point vector, its sum over each mask's points (overlapping masks only)."""
        ptr, points = self.by_mask
        per_membership = flag.take(points)
        out = np.zeros(self.num_masks, dtype=np.int64)
        nonempty = ptr[1:] > ptr[:-1]  # reduceat needs strictly increasing starts: empty masks skipped
        if nonempty.any():
            out[nonempty] = np.add.reduceat(per_membership, ptr[:-1][nonempty], dtype=np.int64)
        return out

    def expand(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For (P,) point indices, every (position in ``points``, mask) membership pair, both int64."""
        starts = self.indptr[points]
        lengths = self.indptr[points + 1] - starts
        total = int(lengths.sum())
        owner = np.repeat(np.arange(points.shape[0], dtype=np.int64), lengths)
        # position of each membership inside its point's slice, then offset by the slice start
        offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owner, self.indices[starts[owner] + offsets].astype(np.int64)


@dataclass(frozen=True)
class Visibility:
    """Per (frame, mask) visible-pixel counts of a scan, plus what view selection needs afterwards."""

    frame_ids: np.ndarray = field(repr=False)
    """(F,) int64 ids of the scan's usable frames, in ``scan.frames`` order."""
    counts: np.ndarray = field(repr=False)
    """(F, M) int32 distinct depth pixels covered by mask m's visible points in frame f."""
    visible_points: tuple[np.ndarray, ...] = field(repr=False)
    """Per frame, (P_f,) int32 sorted indices of the visible points that belong to at least one mask."""
    camera_centres: np.ndarray = field(repr=False)
    """(F, 3) float64 camera centres in world metres."""


@dataclass(frozen=True)
class MaskViews:
    mask_index: int
    views: tuple[View, ...]
    """Best first; empty when no frame sees the mask."""


@dataclass(frozen=True)
class ViewSelection:
    """The result of :func:`select_views`."""

    visibility: Visibility = field(repr=False)
    masks: tuple[MaskViews, ...]
    """One entry per mask column, in column order."""

    def by_frame(self) -> dict[int, list[tuple[int, int]]]:
        """frame index -> [(mask index, rank of the view for that mask)], frames in scan order."""
        out: dict[int, list[tuple[int, int]]] = {}
        for mv in self.masks:
            for rank, v in enumerate(mv.views):
                out.setdefault(v.frame_index, []).append((mv.mask_index, rank))
        return dict(sorted(out.items()))


def _check_masks(scan, masks: np.ndarray | None) -> np.ndarray:
    m = scan.masks if masks is None else masks
    if m is None:
        raise MaskFileError(
            scan.path, "the scan has no class-agnostic masks", "Pass masks= or put <scan>_masks.pt in the scan folder"
        )
    m = np.asarray(m)
    if m.ndim != 2 or m.shape[0] != scan.num_points:
        raise MaskFileError(
            scan.path,
            f"masks have shape {m.shape}, expected ({scan.num_points}, M) for the scan's {scan.num_points} points",
            "Pass a points x masks array in PLY vertex order",
        )
    return m.astype(bool, copy=False)


def project_points(
    points: np.ndarray, world_to_camera: np.ndarray, intr: Intrinsics
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`om3db.camera.project` (float64 ``u``, ``v``, ``z``) but element-wise instead of a
    BLAS matmul: an (N, 3) @ (3, 3) product spends more time in thread hand-off than in arithmetic."""
    u, v, z = _Projector(points).project(world_to_camera, intr)
    return u, v, z  # rows of a buffer no one else holds


class _Projector:
    """Projects a fixed point set into frame after frame, reusing its scratch buffers.

    The arithmetic is exactly :func:`project_points`' (same operations in the same order, float64),
    so the bits agree with it; buffers only save the allocations and page faults of ~30 temporaries
    per frame, and the points are stored as three contiguous rows instead of strided columns.
    """

    def __init__(self, points: np.ndarray) -> None:
        p = np.asarray(points, dtype=np.float64)
        self.xyz = np.ascontiguousarray(p.T)  # (3, N)
        n = p.shape[0]
        self._buf = np.empty((5, n), dtype=np.float64)
        self._ok = np.empty((2, n), dtype=bool)
        self._pix = np.empty(n, dtype=np.int64)
        self._depth = np.empty(n, dtype=np.float32)

    def project(self, world_to_camera: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N,) float64 ``u``, ``v``, ``z`` (views into the scratch buffers: valid until the next call)."""
        x, y, zw = self.xyz
        u, v, z, tmp = self._buf[0], self._buf[1], self._buf[2], self._buf[3]
        r, t = world_to_camera[:3, :3], world_to_camera[:3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            for row, out in ((2, z), (0, u), (1, v)):
                # ((r0 * x + r1 * y) + r2 * z) + t, as project_points evaluates it
                np.multiply(r[row, 0], x, out=out)
                np.multiply(r[row, 1], y, out=tmp)
                out += tmp
                np.multiply(r[row, 2], zw, out=tmp)
                out += tmp
                out += t[row]
            for out, f, c in ((u, intr.fx, intr.cx), (v, intr.fy, intr.cy)):
                np.multiply(f, out, out=out)
                np.divide(out, z, out=out)
                out += c
        return u, v, z

    def visible(
        self, world_to_camera: np.ndarray, depth: np.ndarray, intr: Intrinsics, vis_threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices (P,) int64 of the visible points and their flat depth pixel ``v * W + u`` (P,) int64.

        Works on all N points to the end and selects once: one ``flatnonzero`` and two ``take``s
        cost a third of selecting twice with boolean masks. Points outside the image look up pixel
        0 and are dropped by ``inside`` afterwards.
        """
        u, v, z = self.project(world_to_camera, intr)
        h, w = depth.shape
        ok, tmp = self._ok[0], self._ok[1]
        flat, diff = self._buf[3], self._buf[4]
        with np.errstate(invalid="ignore"):  # z = 0 gives nan / inf: every comparison below is False
            np.rint(u, out=u)
            np.rint(v, out=v)
            np.greater(z, 0, out=ok)
            for arr, lim in ((u, w), (v, h)):
                np.greater_equal(arr, 0, out=tmp)
                ok &= tmp
                np.less(arr, lim, out=tmp)
                ok &= tmp
            np.multiply(v, w, out=flat)  # exact: integers far below 2**53
            flat += u
            np.logical_not(ok, out=tmp)
            np.copyto(flat, 0.0, where=tmp)
            pix = self._pix
            np.copyto(pix, flat, casting="unsafe")
            d = np.take(depth.reshape(-1), pix, out=self._depth if depth.dtype == np.float32 else None)
            np.subtract(d, z, out=diff)  # float32 depth promoted exactly, as ``d - z`` does
            np.abs(diff, out=diff)
            np.less_equal(diff, vis_threshold, out=tmp)
            ok &= tmp
            np.greater(d, 0, out=tmp)
            ok &= tmp
        idx = np.flatnonzero(ok)
        return idx, pix.take(idx)


def visible_points_in_frame(
    points: np.ndarray, world_to_camera: np.ndarray, depth: np.ndarray, intr: Intrinsics, vis_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (P,) int64 into ``points`` of the visible ones and their flat depth pixel ``v * W + u`` (P,) int64."""
    return _Projector(points).visible(world_to_camera, depth, intr, vis_threshold)


def pixel_keys(num_pixels: int, owner: np.ndarray, mask_ids: np.ndarray, pix: np.ndarray) -> np.ndarray:
    """Distinct (mask, pixel) keys ``mask * num_pixels + pixel`` (sorted int64)."""
    keys = mask_ids * num_pixels + pix[owner]
    keys.sort()  # a plain sort + neighbour test beats np.unique's hashing here
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if keys.size else keys


def mask_pixel_counts(
    member: MaskMembership, idx: np.ndarray, pix: np.ndarray, num_pixels: int, scratch: np.ndarray | None = None
) -> np.ndarray:
    """(M,) int64 distinct pixels per mask covered by visible points ``idx`` landing on ``pix``.

    O(points), no sort in the common case: every point is told one *representative* point of its
    pixel (a scatter into a pixel-sized scratch array, then a gather; whichever write wins is fine).
    A representative adds 1 to each of its masks. Another point's membership of mask j is already
    counted when the representative is in j too; only memberships of masks the representative lacks
    (rare: different objects meeting on one pixel) go through the (mask, pixel) sort / unique.
    ``scratch``: an int64 array of at least ``num_pixels`` to reuse between frames (its contents
    never matter: only entries written in this call are read).
    """
    if scratch is None or scratch.shape[0] < num_pixels:
        scratch = np.empty(num_pixels, dtype=np.int64)
    ar = np.arange(idx.shape[0], dtype=np.int64)
    scratch[pix] = ar
    rep = scratch[pix]
    if member.label is not None:  # one mask per point at most: lab = 1 + mask, 0 = none
        lab = member.label[idx]
        counts = np.bincount(lab * (rep == ar), minlength=member.num_masks + 1)[1:]  # non-representatives -> bin 0
        other = np.flatnonzero(lab != lab[rep])
        keys = pixel_keys(num_pixels, other, lab[other], pix)
        return counts + np.bincount(keys // num_pixels, minlength=member.num_masks + 1)[1:]
    is_rep = rep == ar
    flag = np.zeros(member.dense.shape[0], dtype=np.uint8)
    flag[idx[is_rep]] = 1
    counts = member.sum_per_mask(flag)
    others = np.flatnonzero(~is_rep)
    owner, mids = member.expand(idx[others])
    rep_point = idx[rep[others[owner]]]
    lacks = np.flatnonzero(~member.dense.reshape(-1).take(rep_point * member.num_masks + mids))
    if lacks.size:
        keys = pixel_keys(num_pixels, others[owner[lacks]], mids[lacks], pix)
        counts += np.bincount(keys // num_pixels, minlength=member.num_masks)
    return counts


def _depths(frames, prefetch: int):
    """Each frame's depth in order; with ``prefetch`` > 0, the next frames' PNGs are decoded in a
    background thread meanwhile (Pillow's decoder releases the GIL). Rendered depth (open3d) stays
    on the calling thread."""
    if prefetch <= 0 or any(getattr(f, "depth_renderer", None) is not None for f in frames):
        for f in frames:
            yield f.depth()
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="om3db-depth") as pool:
        pending: deque = deque()
        try:
            for f in frames:
                pending.append(pool.submit(f.depth))
                if len(pending) > prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def compute_visibility(
    scan,
    masks: np.ndarray | None = None,
    *,
    vis_threshold: float = 0.2,
    prefetch: int = 2,
    progress: Progress | None = None,
) -> Visibility:
    """Visible-pixel counts of every mask in every usable frame of ``scan`` (decodes each depth once).

    prefetch: frames whose depth PNG is decoded ahead in one background thread (0: none).
    """
    if not vis_threshold > 0:
        raise ConfigError(f"vis_threshold must be > 0 metres, got {vis_threshold}")
    m = _check_masks(scan, masks)
    member = MaskMembership.from_dense(m)
    # only points inside some mask can score: project those alone (often a third of the scene)
    in_mask = np.flatnonzero(member.indptr[1:] > member.indptr[:-1])
    projector = _Projector(scan.points[in_mask])
    intr = scan.depth_intrinsics
    frames = scan.frames
    counts = np.zeros((len(frames), member.num_masks), dtype=np.int32)
    visible: list[np.ndarray] = []
    centres = np.zeros((len(frames), 3), dtype=np.float64)
    scratch = np.empty(0, dtype=np.int64)
    for i, (frame, depth) in enumerate(zip(frames, _depths(frames, prefetch), strict=True)):
        if depth.shape != (intr.height, intr.width):
            intr = intr.scaled_to(depth.shape[1], depth.shape[0])
        if scratch.shape[0] < depth.size:
            scratch = np.empty(depth.size, dtype=np.int64)
        sub, pix = projector.visible(frame.world_to_camera, depth, intr, vis_threshold)
        idx = in_mask[sub]
        counts[i] = mask_pixel_counts(member, idx, pix, depth.size, scratch)
        visible.append(idx.astype(np.int32))
        centres[i] = frame.pose[:3, 3]
        if progress is not None:
            progress("visibility", i + 1, len(frames))
    return Visibility(np.array([f.frame_id for f in frames], dtype=np.int64), counts, tuple(visible), centres)


def _top_views(counts_m: np.ndarray, top_k: int) -> np.ndarray:
    """Frame indices of the ``top_k`` most visible frames (ties: earlier frame first), zero dropped."""
    order = np.argsort(-counts_m, kind="stable")[:top_k]
    return order[counts_m[order] > 0]


def _diverse_views(
    counts_m: np.ndarray, centres: np.ndarray, centroid: np.ndarray, top_k: int, pool: int, min_fraction: float
) -> np.ndarray:
    """Most visible view first, then greedily the pool view with the largest minimum angle between
    its viewing ray (centroid - camera centre) and those of the views already chosen."""
    cand = _top_views(counts_m, pool)
    if cand.size == 0:
        return cand
    cand = cand[counts_m[cand] >= min_fraction * counts_m[cand[0]]]
    rays = centroid[None, :] - centres[cand]
    rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-12)
    chosen = [0]
    min_angle = np.full(cand.size, np.inf)
    while len(chosen) < min(top_k, cand.size):
        cos = np.clip(rays @ rays[chosen[-1]], -1.0, 1.0)
        min_angle = np.minimum(min_angle, np.arccos(cos))
        min_angle[chosen] = -1.0
        chosen.append(int(np.argmax(min_angle)))  # ties: the more visible candidate
    return cand[np.array(chosen)]


def _colour_pixels(
    points_world: np.ndarray, world_to_camera: np.ndarray, intr: Intrinsics
) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) int32 rounded colour pixels (x, y) clipped to the image, and (P,) bool "in front"."""
    u, v, z = project_points(points_world, world_to_camera, intr)
    front = (z > 0) & np.isfinite(u) & np.isfinite(v)
    xy = np.zeros((u.shape[0], 2), dtype=np.int32)
    xy[front, 0] = np.clip(np.rint(u[front]), 0, intr.width - 1)
    xy[front, 1] = np.clip(np.rint(v[front]), 0, intr.height - 1)
    return xy, front


def _prompts(xy: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Box of (P, 2) colour pixels and a seeded sub-sample of at most PROMPT_CAP that keeps the extremes."""
    if xy.shape[0] == 0:  # cannot happen for a visible point; keep the type honest
        return np.zeros((0, 2), np.int32), np.zeros(4, np.int32)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    box = np.array([lo[0], lo[1], hi[0] + 1, hi[1] + 1], dtype=np.int32)
    if xy.shape[0] > PROMPT_CAP:
        extremes = np.unique(np.concatenate([xy.argmin(axis=0), xy.argmax(axis=0)]))
        keep = np.zeros(xy.shape[0], dtype=bool)
        keep[extremes] = True
        rest = np.flatnonzero(~keep)
        keep[rng.choice(rest, PROMPT_CAP - extremes.size, replace=False)] = True
        xy = xy[keep]
    return xy, box


def select_views(
    scan,
    masks: np.ndarray | None = None,
    *,
    top_k: int = 5,
    diverse: bool = False,
    diverse_pool: int = 10,
    min_visibility_fraction: float = 0.5,
    vis_threshold: float = 0.2,
    seed: int = 0,
    visibility: Visibility | None = None,
    progress: Progress | None = None,
) -> ViewSelection:
    """Choose up to ``top_k`` views per mask (best first), with prompt points and boxes in colour pixels.

    diverse: OpenMask3D++'s diverse views among the ``diverse_pool`` most visible frames, restricted
    to frames with at least ``min_visibility_fraction`` of the best frame's visible pixels.
    visibility: a precomputed :func:`compute_visibility` result (else computed here).
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if diverse and diverse_pool < top_k:
        raise ConfigError(f"diverse_pool ({diverse_pool}) must be >= top_k ({top_k})")
    if not 0.0 <= min_visibility_fraction <= 1.0:
        raise ConfigError(f"min_visibility_fraction must be in [0, 1], got {min_visibility_fraction}")
    m = _check_masks(scan, masks)
    vis = (
        visibility
        if visibility is not None
        else compute_visibility(scan, m, vis_threshold=vis_threshold, progress=progress)
    )
    if vis.counts.shape != (len(scan.frames), m.shape[1]):
        raise ConfigError(
            f"visibility counts have shape {vis.counts.shape}, expected ({len(scan.frames)}, {m.shape[1]}) for scan {scan.name!r}"
        )
    chosen: list[np.ndarray] = []
    for j in range(m.shape[1]):
        if diverse:
            centroid = scan.points[m[:, j]].astype(np.float64).mean(axis=0) if m[:, j].any() else np.zeros(3)
            chosen.append(
                _diverse_views(
                    vis.counts[:, j], vis.camera_centres, centroid, top_k, diverse_pool, min_visibility_fraction
                )
            )
        else:
            chosen.append(_top_views(vis.counts[:, j], top_k))

    # Prompt points: per frame, the mask's visible points projected with the colour camera.
    rng = np.random.default_rng(seed)
    views: dict[tuple[int, int], View] = {}
    wanted: dict[int, list[int]] = {}
    for j, fr in enumerate(chosen):
        for f in fr:
            wanted.setdefault(int(f), []).append(j)
    cintr = scan.color_intrinsics
    for f in sorted(wanted):
        frame = scan.frames[f]
        vis_pts = vis.visible_points[f]
        xy_all, front = _colour_pixels(scan.points[vis_pts], frame.world_to_camera, cintr)  # once per frame
        for j in wanted[f]:
            xy, box = _prompts(xy_all[m[vis_pts, j] & front], rng)
            views[(j, f)] = View(frame.frame_id, int(vis.counts[f, j]), frame_index=f, prompt_points=xy, box=box)
    out = tuple(MaskViews(j, tuple(views[(j, int(f))] for f in fr)) for j, fr in enumerate(chosen))
    return ViewSelection(vis, out)
