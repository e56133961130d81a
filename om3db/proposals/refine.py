"""MOSS-style refinement of given 3D masks with 2D masks over superpoints.

For each 3D mask and frame: the 2D instance holding most of the mask's visible points is "its"
2D mask in that frame (when it holds at least ``match_fraction`` of them). A superpoint visible in
that frame votes "in" when the majority of its visible points fall in that 2D mask, "out"
otherwise. A superpoint is in the refined mask when it votes "in" in at least ``keep_rate`` of
the frames where the mask has a 2D mask and the superpoint is visible: the mask grows by
superpoints its 2D masks cover and loses those they never cover. Superpoints never seen together
with the mask keep their original membership (majority of their points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .observe import Observations

__all__ = ["RefineConfig", "refine_with_observations"]


@dataclass(frozen=True)
class RefineConfig:
    """Parameters of 2D-prior mask refinement."""

    match_fraction: float = 0.5
    """Share of a 3D mask's visible points one 2D instance must hold to be its 2D mask in a frame."""
    min_visible_points: int = 5
    """A mask (or superpoint) with fewer visible points in a frame gives no evidence there."""
    keep_rate: float = 0.5
    """Share of "in" votes a superpoint needs to be in the refined mask."""

    def __post_init__(self) -> None:
        for name in ("match_fraction", "keep_rate"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(f"RefineConfig.{name} must be in (0, 1], got {v}")
        if self.min_visible_points < 1:
            raise ConfigError(f"RefineConfig.min_visible_points must be >= 1, got {self.min_visible_points}")


def refine_with_observations(
    masks: np.ndarray, sp: np.ndarray, obs: Observations, config: RefineConfig = RefineConfig()
) -> np.ndarray:
    """(N, M) bool refined masks from (N, M) bool masks, (N,) superpoints and per-frame observations."""
    m_in = np.asarray(masks, dtype=bool)
    n, m_count = m_in.shape
    s_count = int(sp.max(initial=-1)) + 1
    sp_size = np.bincount(sp, minlength=s_count)
    # original membership per superpoint: majority of its points
    frac = (
        np.stack([np.bincount(sp, weights=m_in[:, j], minlength=s_count) for j in range(m_count)], axis=1)
        if m_count
        else np.zeros((s_count, 0))
    )
    base = frac > 0.5 * sp_size[:, None]
    votes_in = np.zeros((s_count, m_count), dtype=np.int32)
    votes_all = np.zeros((s_count, m_count), dtype=np.int32)
    for fo in obs.frames:
        if len(fo.points) == 0 or not fo.labels.any():
            continue
        vs = sp[fo.points]
        n_vis = np.bincount(vs, minlength=s_count)
        sp_seen = n_vis >= config.min_visible_points
        for j in range(m_count):
            lab = fo.labels[m_in[fo.points, j]]
            if len(lab) < config.min_visible_points:
                continue
            vals, cnt = np.unique(lab, return_counts=True)
            k = int(np.argmax(cnt))
            if vals[k] == 0 or cnt[k] < config.match_fraction * len(lab):
                continue
            inside = np.bincount(vs[fo.labels == vals[k]], minlength=s_count)
            votes_all[sp_seen, j] += 1
            votes_in[sp_seen & (inside > 0.5 * n_vis), j] += 1
    rate = np.divide(votes_in, votes_all, out=np.zeros(votes_in.shape), where=votes_all > 0)
    keep = np.where(votes_all > 0, rate >= config.keep_rate, base)
    return keep[sp] if m_count else np.zeros((n, 0), dtype=bool)
