"""Superpoints: a Felzenszwalb-Huttenlocher graph segmentation of scene points on normals and colours.

The ScanNet "segmentator" idea: a graph over the mesh edges (or a k-nearest-neighbour graph when
the scan has no faces), edge weight = normal dissimilarity ``1 - |n_a . n_b|`` plus
``color_weight`` times the RGB distance (colours in [0, 1], divided by sqrt(3) so it lies in
[0, 1]). Edges are sorted once; two components join when the edge weight is no larger than both
components' internal threshold ``Int(C) + k / |C|``; a second pass merges components smaller than
``min_size`` into a neighbour. Superpoints are the unit that 2D masks vote on and that merging moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["SuperpointConfig", "superpoints", "estimate_normals", "graph_edges"]


@dataclass(frozen=True)
class SuperpointConfig:
    """Parameters of the superpoint graph segmentation."""

    k_threshold: float = 0.02
    """Felzenszwalb's k: larger gives bigger segments (ScanNet's segmentator uses 0.01 on normals only)."""
    min_size: int = 20
    """Components with fewer points are merged into a neighbour (ScanNet: 20 vertices)."""
    color_weight: float = 0.5
    """Weight of the RGB distance in the edge weight relative to the normal term (0 = normals only)."""
    knn: int = 8
    """Neighbours per point for the graph and for normal estimation when the scan has no faces."""

    def __post_init__(self) -> None:
        if not self.k_threshold > 0:
            raise ConfigError(f"SuperpointConfig.k_threshold must be > 0, got {self.k_threshold}")
        if self.min_size < 1:
            raise ConfigError(f"SuperpointConfig.min_size must be >= 1, got {self.min_size}")
        if self.color_weight < 0:
            raise ConfigError(f"SuperpointConfig.color_weight must be >= 0, got {self.color_weight}")
        if self.knn < 2:
            raise ConfigError(f"SuperpointConfig.knn must be >= 2, got {self.knn}")


def _knn(points: np.ndarray, k: int) -> np.ndarray:
    """(N, k) int64 indices of each point's k nearest other points (fewer points: padded with self)."""
    from scipy.spatial import cKDTree

    n = points.shape[0]
    kk = min(k + 1, n)
    _, idx = cKDTree(points).query(points, k=kk, workers=-1)
    idx = np.asarray(idx, dtype=np.int64).reshape(n, kk)[:, 1:]
    if idx.shape[1] < k:
        idx = np.concatenate([idx, np.repeat(np.arange(n)[:, None], k - idx.shape[1], axis=1)], axis=1)
    return idx


def estimate_normals(points: np.ndarray, *, knn: int = 8) -> np.ndarray:
    """(N, 3) float32 unit normals: smallest-eigenvalue direction of each point's neighbourhood (PCA)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[0] < 3:
        return np.tile(np.array([0, 0, 1], dtype=np.float32), (pts.shape[0], 1))
    nb = _knn(pts, knn)
    nbh = np.concatenate([pts[:, None, :], pts[nb]], axis=1)
    centred = nbh - nbh.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", centred, centred)
    _, vecs = np.linalg.eigh(cov)
    normals = vecs[:, :, 0]
    return (normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def graph_edges(
    num_points: int, *, points: np.ndarray | None = None, triangles: np.ndarray | None = None, knn: int = 8
) -> np.ndarray:
    """(E, 2) int64 undirected edges (a < b), unique: mesh edges when ``triangles`` is given, else kNN."""
    if triangles is not None and len(triangles):
        t = np.asarray(triangles, dtype=np.int64)
        e = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])
    else:
        nb = _knn(np.asarray(points, dtype=np.float64), knn)
        e = np.stack([np.repeat(np.arange(num_points, dtype=np.int64), nb.shape[1]), nb.reshape(-1)], axis=1)
    e = np.sort(e, axis=1)
    e = e[e[:, 0] != e[:, 1]]
    return np.unique(e, axis=0) if len(e) else e.reshape(0, 2)


def _segment(n: int, edges: np.ndarray, weights: np.ndarray, k: float, min_size: int) -> np.ndarray:
    order = np.argsort(weights, kind="stable")
    ea = edges[order, 0].tolist()
    eb = edges[order, 1].tolist()
    ws = weights[order].tolist()
    parent = list(range(n))
    size = [1] * n
    thresh = [k] * n

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, w in zip(ea, eb, ws, strict=True):
        ra, rb = find(a), find(b)
        if ra != rb and w <= thresh[ra] and w <= thresh[rb]:
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            thresh[ra] = w + k / size[ra]
    # Small components join their cheapest neighbour (edges are still in increasing weight order).
    for a, b in zip(ea, eb, strict=True):
        ra, rb = find(a), find(b)
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
    roots = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int32)


def superpoints(
    points: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    normals: np.ndarray | None = None,
    mesh=None,
    config: SuperpointConfig = SuperpointConfig(),
) -> np.ndarray:
    """Superpoint id (N,) int32, ids 0..S-1, for (N, 3) points with (N, 3) uint8 ``colors``.

    ``mesh``: an open3d TriangleMesh whose vertices are ``points`` (its faces give the graph and
    its vertex normals the normals); without faces a kNN graph and PCA normals are used.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ConfigError(f"superpoints: points must be (N, 3), got shape {pts.shape}")
    n = pts.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    triangles = None
    if mesh is not None and mesh.has_triangles():
        if len(mesh.vertices) != n:
            raise ConfigError(f"superpoints: mesh has {len(mesh.vertices)} vertices but {n} points were given")
        triangles = np.asarray(mesh.triangles)
        if normals is None:
            mesh.compute_vertex_normals()
            normals = np.asarray(mesh.vertex_normals)
    if normals is None:
        normals = estimate_normals(pts, knn=config.knn)
    normals = np.asarray(normals, dtype=np.float64)
    if normals.shape != pts.shape:
        raise ConfigError(f"superpoints: normals shape {normals.shape} does not match points {pts.shape}")
    edges = graph_edges(n, points=pts, triangles=triangles, knn=config.knn)
    if len(edges) == 0:
        return np.arange(n, dtype=np.int32)
    a, b = edges[:, 0], edges[:, 1]
    w = 1.0 - np.abs(np.einsum("ij,ij->i", normals[a], normals[b]))
    if colors is not None and config.color_weight > 0:
        c = np.asarray(colors, dtype=np.float64) / 255.0
        if c.shape != pts.shape:
            raise ConfigError(f"superpoints: colors shape {c.shape} does not match points {pts.shape}")
        w = w + config.color_weight * np.linalg.norm(c[a] - c[b], axis=1) / np.sqrt(3.0)
    return _segment(n, edges, w, config.k_threshold, config.min_size)
