"""Finely tessellated surfaces whose vertices are the scene points (grids, boxes, round shapes, room)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .scene import SynthObject


def _grid(nu: int, nv: int, fn, *, wrap_u: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Vertices fn(u, v) on an nu x nv grid (u in [0, 1) when wrapped, else [0, 1]; v in [0, 1])."""
    u = np.arange(nu) / (nu if wrap_u else nu - 1)
    v = np.linspace(0.0, 1.0, nv)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    verts = fn(uu.ravel(), vv.ravel())
    idx = np.arange(nu * nv).reshape(nu, nv)
    if wrap_u:
        idx = np.concatenate([idx, idx[:1]], axis=0)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return verts, faces


def _n(length: float, spacing: float) -> int:
    return max(2, int(np.ceil(length / spacing)) + 1)


def _plane(origin, e1, e2, spacing: float):
    o, e1, e2 = (np.asarray(x, dtype=np.float64) for x in (origin, e1, e2))
    return _grid(
        _n(np.linalg.norm(e1), spacing),
        _n(np.linalg.norm(e2), spacing),
        lambda u, v: o + u[:, None] * e1 + v[:, None] * e2,
    )


def object_parts(obj: SynthObject, s: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Surface pieces of an object (no bottom: it rests on its support)."""
    sx, sy, sz = obj.size
    cx, cy = obj.center
    z0 = obj.base_z
    if obj.shape == "box":
        c, sn = np.cos(obj.yaw), np.sin(obj.yaw)
        ex, ey, ez = np.array([c, sn, 0.0]) * sx, np.array([-sn, c, 0.0]) * sy, np.array([0.0, 0.0, sz])
        o = np.array([cx, cy, z0]) - ex / 2 - ey / 2
        return [
            _plane(o, ex, ez, s),
            _plane(o + ey, ex, ez, s),
            _plane(o, ey, ez, s),
            _plane(o + ex, ey, ez, s),
            _plane(o + ez, ex, ey, s),
        ]
    r = sx / 2
    nu = max(8, int(np.ceil(2 * np.pi * r / s)))
    ring = lambda u: (np.cos(2 * np.pi * u), np.sin(2 * np.pi * u))  # noqa: E731
    if obj.shape == "sphere":

        def fn(u, v):
            cu, su = ring(u)
            th = np.pi * v
            return np.stack([cx + r * np.sin(th) * cu, cy + r * np.sin(th) * su, z0 + r - r * np.cos(th)], -1)

        return [_grid(nu, _n(np.pi * r, s), fn, wrap_u=True)]
    if obj.shape == "cylinder":
        side = lambda u, v: np.stack([cx + r * ring(u)[0], cy + r * ring(u)[1], z0 + sz * v], -1)  # noqa: E731
        cap = lambda u, v: np.stack(
            [cx + r * (1 - v) * ring(u)[0], cy + r * (1 - v) * ring(u)[1], np.full_like(u, z0 + sz)], -1
        )  # noqa: E731
        return [_grid(nu, _n(sz, s), side, wrap_u=True), _grid(nu, _n(r, s), cap, wrap_u=True)]
    cone = lambda u, v: np.stack([cx + r * (1 - v) * ring(u)[0], cy + r * (1 - v) * ring(u)[1], z0 + sz * v], -1)  # noqa: E731
    return [_grid(nu, _n(np.hypot(r, sz), s), cone, wrap_u=True)]


def room_parts(x: float, y: float, h: float, s: float):
    x0, y0 = -x / 2, -y / 2
    ez = (0, 0, h)
    walls = [
        _plane((x0, y0, 0), (x, 0, 0), ez, s),
        _plane((x0, -y0, 0), (x, 0, 0), ez, s),
        _plane((x0, y0, 0), (0, y, 0), ez, s),
        _plane((-x0, y0, 0), (0, y, 0), ez, s),
    ]
    return _plane((x0, y0, 0), (x, 0, 0), (0, y, 0), s), walls


def inside_footprint(obj: SynthObject, xy: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    d = xy - np.asarray(obj.center)
    if obj.shape == "box":
        c, sn = np.cos(obj.yaw), np.sin(obj.yaw)
        lx, ly = d @ np.array([c, sn]), d @ np.array([-sn, c])
        return (np.abs(lx) < obj.size[0] / 2 - margin) & (np.abs(ly) < obj.size[1] / 2 - margin)
    if obj.shape == "sphere":
        return np.zeros(len(xy), dtype=bool)  # touches its support at one point only
    return np.hypot(d[:, 0], d[:, 1]) < obj.size[0] / 2 - margin


def footprint_radius(shape: str, size) -> float:
    return float(np.hypot(size[0], size[1]) / 2) if shape == "box" else size[0] / 2
