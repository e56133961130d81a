"""Aggregation of crop embeddings into per-view and per-instance vectors (OpenMask3D / ++).

- per view: mean of its crop-level embeddings, renormalised;
- outlier views (OpenMask3D++): DBSCAN on the per-view vectors with cosine distance, eps 0.1,
  min_samples floor(n_valid / 2) + 1; noise views are dropped, and when every view is noise all
  are kept;
- per instance: mean of the inlier view vectors, renormalised (OpenMask3D's "mean");
- OpenMask3D++'s "max" is the maximum over (inlier) views of the per-view similarity to the query,
  served at query time from the stored per-view vectors.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

__all__ = ["normalize", "view_vectors", "dbscan_inliers", "instance_vector", "max_view_similarity"]


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """L2-normalise along ``axis`` (float32); zero vectors stay zero."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def view_vectors(level_vecs: np.ndarray) -> np.ndarray:
    """(V, L, D) crop-level embeddings -> (V, D) float32 unit per-view vectors (mean over levels)."""
    a = np.asarray(level_vecs, dtype=np.float32)
    if a.ndim != 3:
        raise ConfigError(f"level embeddings must be (views, levels, dim), got shape {a.shape}")
    return normalize(a.mean(axis=1))


def dbscan_inliers(view_vecs: np.ndarray, *, eps: float = 0.1, min_samples: int | None = None) -> np.ndarray:
    """(V,) bool: views that DBSCAN (cosine distance) does not mark as noise.

    ``min_samples`` defaults to floor(V / 2) + 1 (a majority of views must agree). All-noise keeps
    every view. With fewer than 3 views DBSCAN can only answer all-core or all-noise, so every view
    is kept without running it.
    """
    v = np.asarray(view_vecs, dtype=np.float32)
    if v.ndim != 2:
        raise ConfigError(f"view vectors must be (views, dim), got shape {v.shape}")
    if not eps > 0:
        raise ConfigError(f"DBSCAN eps must be > 0, got {eps}")
    if min_samples is not None and min_samples < 1:
        raise ConfigError(f"DBSCAN min_samples must be >= 1, got {min_samples}")
    n = v.shape[0]
    if n < 3:
        return np.ones(n, dtype=bool)
    from sklearn.cluster import DBSCAN

    ms = n // 2 + 1 if min_samples is None else min_samples
    labels = DBSCAN(eps=eps, min_samples=ms, metric="cosine").fit(v).labels_
    keep = labels != -1
    return keep if keep.any() else np.ones(n, dtype=bool)


def instance_vector(view_vecs: np.ndarray, inliers: np.ndarray | None = None) -> np.ndarray:
    """(D,) float32 unit mean of the inlier view vectors (all views when ``inliers`` is None)."""
    v = np.asarray(view_vecs, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ConfigError(f"an instance vector needs at least one view vector, got shape {v.shape}")
    if inliers is not None:
        v = v[_mask(inliers, v.shape[0])]
    return normalize(v.mean(axis=0))


def max_view_similarity(query: np.ndarray, view_vecs: np.ndarray, inliers: np.ndarray | None = None) -> float:
    """Max over (inlier) views of the cosine similarity between ``query`` (D,) and each view vector."""
    v = np.asarray(view_vecs, dtype=np.float32)
    q = normalize(np.asarray(query, dtype=np.float32).reshape(-1))
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] != q.shape[0]:
        raise ConfigError(f"view vectors of shape {v.shape} do not match a query of dim {q.shape[0]}")
    if inliers is not None:
        v = v[_mask(inliers, v.shape[0])]
    return float((normalize(v) @ q).max())


def _mask(inliers: np.ndarray, n: int) -> np.ndarray:
    m = np.asarray(inliers, dtype=bool)
    if m.shape != (n,):
        raise ConfigError(f"inlier flags have shape {m.shape}, expected ({n},)")
    if not m.any():
        raise ConfigError("inlier flags select no view")
    return m
