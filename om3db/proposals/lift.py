"""Lift per-frame 2D instances onto superpoints and merge superpoints across frames into 3D instances.

1. Split (OVSeg3R): when, in some frame, a superpoint's visible points fall in two or more 2D
   instances (each holding at least ``split_min_fraction`` of them and ``split_min_points``), the
   superpoint is cut: each of its points goes to the part of its nearest visible point.
2. Vote: in each frame a superpoint takes the 2D instance holding a strict majority
   (``majority``) of its visible points, if that instance is not 0 and it has at least
   ``min_visible_points`` visible points.
3. Merge (MaskClustering-style, on 2D masks rather than superpoint pairs): each 2D mask "claims"
   the superpoints that voted for it. Masks of two frames join when the points they both claim are
   at least ``merge_threshold`` of the larger of (mask A's claimed points visible in B's frame,
   mask B's claimed points visible in A's frame); clusters are the connected components. Because
   the test is on whole masks, one superpoint that flips between two objects across frames cannot
   chain them together (a superpoint-pair graph does exactly that).
4. Each superpoint goes to the cluster whose masks claim it most often; it is kept when that count
   is at least ``min_label_rate`` of the frames in which it votes. Instances are the clusters'
   superpoints; those under ``min_points`` points or ``min_views`` frames are dropped.

Score of an instance: point-weighted mean claim rate of its superpoints times
``min(1, views / full_support_views)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .observe import Observations

__all__ = ["LiftConfig", "LiftResult", "split_superpoints", "lift"]


@dataclass(frozen=True)
class LiftConfig:
    """Parameters of lifting and merging (see docs/proposals.md for why these values)."""

    split_min_fraction: float = 0.2
    """A 2D instance must hold this share of a superpoint's visible points to cut it off."""
    split_min_points: int = 10
    """... and at least this many of them."""
    split_on_unlabelled: bool = True
    """Treat "no instance" (id 0) as a side of a boundary too (right for GT / dense 2D maps)."""
    majority: float = 0.5
    """Share of a superpoint's visible points one 2D instance needs to claim it in a frame."""
    min_visible_points: int = 3
    """Superpoints with fewer visible points in a frame do not vote in that frame."""
    merge_threshold: float = 0.5
    """Shared claimed points / mutually visible claimed points needed to join two frames' masks."""
    min_label_rate: float = 0.3
    """Share of its voting frames in which a superpoint must be claimed by its cluster to be kept."""
    min_points: int = 50
    """Instances with fewer points are dropped."""
    min_views: int = 1
    """Instances supported by fewer frames are dropped."""
    full_support_views: int = 3
    """Views at which the view-support factor of the score reaches 1."""

    def __post_init__(self) -> None:
        for name in ("split_min_fraction", "majority", "merge_threshold", "min_label_rate"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"LiftConfig.{name} must be in [0, 1], got {v}")
        for name in ("split_min_points", "min_visible_points", "min_points", "min_views", "full_support_views"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LiftConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class LiftResult:
    """3D instances over the scene points."""

    masks: np.ndarray = field(repr=False)
    """(N, M) bool instance masks."""
    scores: np.ndarray = field(repr=False)
    """(M,) float32 confidence in [0, 1]."""
    superpoints: np.ndarray = field(repr=False)
    """(N,) int32 superpoint ids after boundary splits."""
    views: np.ndarray = field(repr=False)
    """(M,) int32 frames in which the instance's superpoints took a 2D instance."""
    num_splits: int = 0


def _pair_counts(sp: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (superpoint, label) pairs and their counts for visible points."""
    key = (sp.astype(np.int64) << 32) | (labels.astype(np.int64) & 0xFFFFFFFF)
    uk, cnt = np.unique(key, return_counts=True)
    return (uk >> 32).astype(np.int64), (uk & 0xFFFFFFFF).astype(np.int64), cnt


def split_superpoints(
    points: np.ndarray, sp: np.ndarray, obs: Observations, config: LiftConfig
) -> tuple[np.ndarray, int]:
    """Cut superpoints that straddle a 2D instance boundary; returns new ids (N,) int32 and the number of cuts."""
    from scipy.spatial import cKDTree

    sp = sp.astype(np.int64).copy()
    next_id = int(sp.max(initial=-1)) + 1
    cuts = 0
    for fo in obs.frames:
        if len(fo.points) == 0:
            continue
        vs = sp[fo.points]
        s_ids, labs, cnt = _pair_counts(vs, fo.labels)
        n_vis = np.bincount(vs, minlength=next_id)[s_ids]
        big = (cnt >= config.split_min_points) & (cnt >= config.split_min_fraction * n_vis)
        if not config.split_on_unlabelled:
            big &= labs != 0
        cand, per = np.unique(s_ids[big], return_counts=True)
        for s in cand[per >= 2]:
            keep_labels = labs[big & (s_ids == s)]
            sel = (vs == s) & np.isin(fo.labels, keep_labels)
            seeds, seed_lab = fo.points[sel], fo.labels[sel]
            members = np.flatnonzero(sp == s)
            _, nn = cKDTree(points[seeds]).query(points[members], k=1)
            part = seed_lab[nn]
            for j, lab in enumerate(np.unique(part)):
                if j == 0:
                    continue  # the first part keeps the old id
                sp[members[part == lab]] = next_id
                next_id += 1
                cuts += 1
    _, dense = np.unique(sp, return_inverse=True)
    return dense.astype(np.int32), cuts


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def lift(points: np.ndarray, sp: np.ndarray, obs: Observations, config: LiftConfig = LiftConfig()) -> LiftResult:
    """3D instances from per-frame 2D observations and (N,) int32 superpoints."""
    from scipy.sparse import csr_matrix

    n = points.shape[0]
    sp, cuts = split_superpoints(points, sp, obs, config)
    s_count = int(sp.max(initial=-1)) + 1
    sp_size = np.bincount(sp, minlength=s_count).astype(np.float64)
    claim_sp, claim_mask, mask_frame, vis_sp, vis_frame = [], [], [], [], []
    n_masks = 0
    for f, fo in enumerate(obs.frames):
        if len(fo.points) == 0:
            continue
        vs = sp[fo.points]
        s_ids, labs, cnt = _pair_counts(vs, fo.labels)
        n_vis = np.bincount(vs, minlength=s_count)
        votes = n_vis[s_ids] >= config.min_visible_points
        voters = np.unique(s_ids[votes])
        vis_sp.append(voters)
        vis_frame.append(np.full(len(voters), f, dtype=np.int64))
        # the largest (superpoint, label) count per superpoint: pairs are sorted by superpoint
        order = np.lexsort((-cnt, s_ids))
        first = np.ones(len(order), dtype=bool)
        first[1:] = s_ids[order][1:] != s_ids[order][:-1]
        top = order[first]
        win = votes[top] & (labs[top] != 0) & (cnt[top] > config.majority * n_vis[s_ids[top]])
        _, g = np.unique(labs[top][win], return_inverse=True)
        claim_sp.append(s_ids[top][win])
        claim_mask.append(g + n_masks)
        k = int(g.max(initial=-1)) + 1
        mask_frame.append(np.full(k, f, dtype=np.int64))
        n_masks += k
    nf = max(len(obs.frames), 1)
    if n_masks == 0:
        return LiftResult(np.zeros((n, 0), dtype=bool), np.zeros(0, np.float32), sp, np.zeros(0, np.int32), cuts)
    cs, cm = np.concatenate(claim_sp), np.concatenate(claim_mask)
    frame_of = np.concatenate(mask_frame)
    claims = csr_matrix((np.ones(len(cs)), (cm, cs)), shape=(n_masks, s_count))
    vs_all, vf_all = np.concatenate(vis_sp), np.concatenate(vis_frame)
    visible = csr_matrix((np.ones(len(vs_all)), (vf_all, vs_all)), shape=(nf, s_count))
    seen = np.asarray(visible.sum(axis=0)).ravel()

    # Mask graph: masks of two frames join when they claim the same points, measured on the
    # superpoints both frames see (point-weighted, symmetric: the larger of the two denominators).
    weighted = claims.multiply(sp_size[None, :]).tocsr()
    inter = (weighted @ claims.T).tocoo()
    seen_by = (weighted @ visible.T).toarray()  # (masks, frames) claimed points visible in each frame
    a, b, t = inter.row, inter.col, inter.data
    upper = a < b
    a, b, t = a[upper], b[upper], t[upper]
    denom = np.maximum(seen_by[a, frame_of[b]], seen_by[b, frame_of[a]])
    join = t >= config.merge_threshold * np.maximum(denom, 1e-9)
    comp = _components(n_masks, a[join], b[join])
    n_comp = int(comp.max()) + 1
    # each superpoint goes to the cluster whose masks claim it most often
    member = csr_matrix((np.ones(n_masks), (comp, np.arange(n_masks))), shape=(n_comp, n_masks))
    votes = (member @ claims).tocsc()
    best = np.asarray(votes.argmax(axis=0)).ravel()
    best_count = np.asarray(votes.max(axis=0).toarray()).ravel()
    rate = np.divide(best_count, seen, out=np.zeros(s_count), where=seen > 0)
    keep_sp = (best_count > 0) & (rate >= config.min_label_rate)

    masks, scores, views = [], [], []
    for c in np.unique(best[keep_sp]):
        members = np.flatnonzero(keep_sp & (best == c))
        m = np.isin(sp, members)
        npts = int(m.sum())
        nviews = len(np.unique(frame_of[comp == c]))
        if npts < config.min_points or nviews < config.min_views:
            continue
        w = sp_size[members]
        score = float((rate[members] * w).sum() / w.sum()) * min(1.0, nviews / config.full_support_views)
        masks.append(m)
        scores.append(min(score, 1.0))
        views.append(nviews)
    mask_arr = np.stack(masks, axis=1) if masks else np.zeros((n, 0), dtype=bool)
    return LiftResult(mask_arr, np.asarray(scores, np.float32), sp, np.asarray(views, np.int32), cuts)
