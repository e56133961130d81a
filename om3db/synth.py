"""Synthetic RGB-D scans in the ScanNet / OpenMask3D layout, with exact ground truth.

A scene is a room (floor + four walls, no ceiling) holding objects of several shapes whose class
is their colour name. It is a function of ``(seed, size, index)`` only (:func:`build_scene`), so
the ground-truth oracles (:func:`gt_point_visibility`, :func:`render_frame`) rebuild it from
``gt/scene.json`` and raycast it with open3d, the same way the frames were rendered.
Layout and formats: docs/synthetic.md.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from .camera import Intrinsics, project
from .errors import ConfigError, ScanError

__all__ = [
    "PALETTE",
    "CLASSES",
    "SynthObject",
    "SynthScene",
    "GroundTruth",
    "build_scene",
    "camera_poses",
    "write_scans",
    "load_gt",
    "gt_point_visibility",
    "RenderedFrame",
    "render_frame",
]

SynthSize = Literal["tiny", "scannet"]
Progress = Callable[[str, int, int], None]
GENERATOR_VERSION = 1

# Well-separated named colours (the object classes); greys are kept for the room.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (250, 135, 20),
    "yellow": (240, 220, 30),
    "lime": (150, 235, 40),
    "green": (30, 170, 60),
    "cyan": (30, 210, 225),
    "blue": (40, 70, 235),
    "purple": (130, 50, 210),
    "magenta": (225, 40, 215),
    "pink": (245, 80, 150),
}
ROOM_RGB = {"wall": (200, 200, 196), "floor": (120, 118, 115)}
CLASSES: tuple[str, ...] = ("wall", "floor", *PALETTE)
"""Class vocabulary; class id = position + 1 (wall 1, floor 2 as in ScanNet)."""
SHAPES = ("box", "sphere", "cylinder", "cone")
_SUN = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
_FILL = np.array([-0.8, 0.4, 0.2]) / np.linalg.norm([-0.8, 0.4, 0.2])


@dataclass(frozen=True)
class _SizeConfig:
    room: tuple[float, float]
    wall_height: float
    room_spacing: float
    object_spacing: float
    num_objects: int
    scale: tuple[float, float]
    frames: int
    depth_size: tuple[int, int]
    color_size: tuple[int, int]
    color_ext: str
    id_width: int


# ScanNet's cameras: depth 640x480 (fx = fy = 577.87), colour 1296x968 (different aspect ratio).
_FX_SCANNET = 577.87
_SIZES: dict[str, _SizeConfig] = {
    "tiny": _SizeConfig((4.0, 3.5), 2.4, 0.05, 0.02, 7, (0.8, 1.0), 20, (160, 120), (324, 242), ".png", 0),
    "scannet": _SizeConfig((7.0, 6.0), 2.6, 0.03, 0.015, 38, (0.7, 1.0), 250, (640, 480), (1296, 968), ".jpg", 6),
}


@dataclass(frozen=True)
class SynthObject:
    """One object of a synthetic scene (instance ``index``; its class is its colour name)."""

    index: int
    class_name: str
    shape: str
    """box | sphere | cylinder | cone."""
    size: tuple[float, float, float]
    """Metres: box (x, y, z) extents; sphere (2r, 2r, 2r); cylinder / cone (2r, 2r, height)."""
    rgb: tuple[int, int, int]
    center: tuple[float, float]
    """(x, y) of the footprint centre, world metres."""
    base_z: float
    """Height of the surface it stands on (0 on the floor)."""
    yaw: float
    """Rotation about +z in radians (boxes only)."""
    support: int
    """Object index it stands on, or -1 for the floor."""


@dataclass(frozen=True)
class SynthScene:
    """A rebuilt scene: the mesh exactly as written to the PLY (vertices in file order)."""

    seed: int
    size: str
    index: int
    room: tuple[float, float, float]
    """Room extents (x, y, wall height) in metres; the floor spans [-x/2, x/2] x [-y/2, y/2] at z = 0."""
    objects: tuple[SynthObject, ...]
    vertices: np.ndarray = field(repr=False)
    """(N, 3) float32 world metres, z up: the PLY vertices in file order (the scene points)."""
    colors: np.ndarray = field(repr=False)
    """(N, 3) uint8 RGB per vertex (the flat surface colour)."""
    faces: np.ndarray = field(repr=False)
    """(F, 3) int32 triangle vertex indices."""
    vertex_instance: np.ndarray = field(repr=False)
    """(N,) int32: objects 0..K-1, floor K, walls K+1..K+4."""
    face_instance: np.ndarray = field(repr=False)
    """(F,) int32 instance of each triangle (same numbering)."""
    face_colors: np.ndarray = field(repr=False)
    """(F, 3) uint8 colour of each triangle in the frames: its surface colour, Lambertian-shaded
    (flat per triangle, two directional lights, hue preserved)."""
    instance_class: tuple[str, ...]
    """Class name per instance number (objects, floor, four walls)."""

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def name(self) -> str:
        return f"synth_{self.seed}_{self.index}"


def _config(size: str) -> _SizeConfig:
    if size not in _SIZES:
        raise ConfigError(f"synthetic scan size must be one of {sorted(_SIZES)}, got {size!r}")
    return _SIZES[size]


# ---------------------------------------------------------------- meshing


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
    return _grid(_n(np.linalg.norm(e1), spacing), _n(np.linalg.norm(e2), spacing), lambda u, v: o + u[:, None] * e1 + v[:, None] * e2)


def _object_parts(obj: SynthObject, s: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Surface pieces of an object (no bottom: it rests on its support)."""
    sx, sy, sz = obj.size
    cx, cy = obj.center
    z0 = obj.base_z
    if obj.shape == "box":
        c, sn = np.cos(obj.yaw), np.sin(obj.yaw)
        ex, ey, ez = np.array([c, sn, 0.0]) * sx, np.array([-sn, c, 0.0]) * sy, np.array([0.0, 0.0, sz])
        o = np.array([cx, cy, z0]) - ex / 2 - ey / 2
        return [_plane(o, ex, ez, s), _plane(o + ey, ex, ez, s), _plane(o, ey, ez, s), _plane(o + ex, ey, ez, s), _plane(o + ez, ex, ey, s)]
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
        cap = lambda u, v: np.stack([cx + r * (1 - v) * ring(u)[0], cy + r * (1 - v) * ring(u)[1], np.full_like(u, z0 + sz)], -1)  # noqa: E731
        return [_grid(nu, _n(sz, s), side, wrap_u=True), _grid(nu, _n(r, s), cap, wrap_u=True)]
    cone = lambda u, v: np.stack([cx + r * (1 - v) * ring(u)[0], cy + r * (1 - v) * ring(u)[1], z0 + sz * v], -1)  # noqa: E731
    return [_grid(nu, _n(np.hypot(r, sz), s), cone, wrap_u=True)]


def _room_parts(x: float, y: float, h: float, s: float):
    x0, y0 = -x / 2, -y / 2
    ez = (0, 0, h)
    walls = [
        _plane((x0, y0, 0), (x, 0, 0), ez, s),
        _plane((x0, -y0, 0), (x, 0, 0), ez, s),
        _plane((x0, y0, 0), (0, y, 0), ez, s),
        _plane((-x0, y0, 0), (0, y, 0), ez, s),
    ]
    return _plane((x0, y0, 0), (x, 0, 0), (0, y, 0), s), walls


def _inside_footprint(obj: SynthObject, xy: np.ndarray, margin: float = 1e-3) -> np.ndarray:
    d = xy - np.asarray(obj.center)
    if obj.shape == "box":
        c, sn = np.cos(obj.yaw), np.sin(obj.yaw)
        lx, ly = d @ np.array([c, sn]), d @ np.array([-sn, c])
        return (np.abs(lx) < obj.size[0] / 2 - margin) & (np.abs(ly) < obj.size[1] / 2 - margin)
    if obj.shape == "sphere":
        return np.zeros(len(xy), dtype=bool)  # touches its support at one point only
    return np.hypot(d[:, 0], d[:, 1]) < obj.size[0] / 2 - margin


# ---------------------------------------------------------------- layout


def _footprint_radius(shape: str, size) -> float:
    return float(np.hypot(size[0], size[1]) / 2) if shape == "box" else size[0] / 2


def _random_size(rng: np.random.Generator, shape: str, scale: float) -> tuple[float, float, float]:
    if shape == "box":
        return tuple(float(x) for x in np.round(scale * rng.uniform([0.2, 0.2, 0.12], [0.6, 0.6, 0.7]), 3))
    if shape == "sphere":
        d = round(float(scale * rng.uniform(0.16, 0.45)), 3)
        return (d, d, d)
    d = round(float(scale * rng.uniform(0.14, 0.45)), 3)
    return (d, d, round(float(scale * rng.uniform(0.15, 0.7)), 3))


def _layout(cfg: _SizeConfig, rng: np.random.Generator) -> list[SynthObject]:
    half = np.array(cfg.room) / 2 * 0.55  # objects stay well inside the camera loop
    colours = list(PALETTE)
    if cfg.num_objects <= len(colours):
        names = [colours[i] for i in rng.permutation(len(colours))[: cfg.num_objects]]
    else:  # several instances per class, like ScanNet
        names = [colours[i] for i in rng.integers(0, len(colours), cfg.num_objects)]
        names[: len(colours)] = colours
        names = [names[i] for i in rng.permutation(len(names))]
    placed: list[SynthObject] = []
    for k, name in enumerate(names):
        # the first object is a box so something can stand on it; then shapes cycle with randomness
        shape = "box" if k == 0 else SHAPES[int(rng.integers(0, len(SHAPES)))]
        scale = float(rng.uniform(*cfg.scale))
        for _attempt in range(200):
            size = _random_size(rng, shape, scale)
            rf = _footprint_radius(shape, size)
            boxes = [o for o in placed if o.shape == "box" and o.support == -1 and min(o.size[:2]) / 2 > rf + 0.02]
            boxes = [b for b in boxes if not any(o.support == b.index for o in placed)]
            if boxes and shape != "box" and rng.uniform() < 0.35:
                b = boxes[int(rng.integers(0, len(boxes)))]
                slack = min(b.size[:2]) / 2 - rf - 0.01
                cx, cy = np.asarray(b.center) + rng.uniform(-slack, slack, 2) * 0.5
                obj = SynthObject(k, name, shape, size, PALETTE[name], (round(cx, 4), round(cy, 4)), b.base_z + b.size[2], 0.0, b.index)
                break
            cx, cy = rng.uniform(-half + rf, half - rf)
            if all(np.hypot(cx - o.center[0], cy - o.center[1]) > rf + _footprint_radius(o.shape, o.size) + 0.04 for o in placed if o.support == -1):
                yaw = round(float(rng.uniform(0, np.pi)), 4) if shape == "box" else 0.0
                obj = SynthObject(k, name, shape, size, PALETTE[name], (round(float(cx), 4), round(float(cy), 4)), 0.0, yaw, -1)
                break
            scale *= 0.97
        else:
            continue
        placed.append(SynthObject(len(placed), obj.class_name, obj.shape, obj.size, obj.rgb, obj.center, obj.base_z, obj.yaw, obj.support))
    return placed


@functools.lru_cache(maxsize=4)
def build_scene(seed: int, size: SynthSize = "tiny", index: int = 0) -> SynthScene:
    """The scene of scan ``index`` for ``seed`` and ``size``: deterministic, no rendering."""
    cfg = _config(size)
    rng = np.random.default_rng([int(seed), int(index), list(_SIZES).index(size)])
    objects = _layout(cfg, rng)
    k = len(objects)
    floor, walls = _room_parts(*cfg.room, cfg.wall_height, cfg.room_spacing)
    parts = [(i, p) for i, o in enumerate(objects) for p in _object_parts(o, cfg.object_spacing)]
    parts += [(k, floor)] + [(k + 1 + j, w) for j, w in enumerate(walls)]
    verts, faces, finst, offset = [], [], [], 0
    for inst, (v, f) in parts:
        verts.append(v)
        faces.append(f + offset)
        finst.append(np.full(len(f), inst, dtype=np.int32))
        offset += len(v)
    v_all = np.concatenate(verts)
    v_part = np.concatenate([np.full(len(v), inst, dtype=np.int32) for inst, (v, _) in parts])
    f_all, f_inst = np.concatenate(faces), np.concatenate(finst)
    # Merge coincident vertices (box edges, poles, room corners): the first part listed keeps it.
    q = np.round(v_all * 1e5).astype(np.int64) + (1 << 20)  # 10 um cells, 21 bits per axis (|x| < 10 m)
    _, first, inverse = np.unique((q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2], return_index=True, return_inverse=True)
    f_all = inverse.ravel()[f_all]
    v_all, v_part = v_all[first], v_part[first]
    keep = (f_all[:, 0] != f_all[:, 1]) & (f_all[:, 1] != f_all[:, 2]) & (f_all[:, 0] != f_all[:, 2])
    # Drop the surface hidden under flat-bottomed objects (faces wholly inside the footprint).
    fz = v_all[f_all, 2]
    flat = np.flatnonzero(np.ptp(fz, axis=1) < 1e-6)
    flat_z, flat_inst, flat_xy = fz[flat, 0], f_inst[flat], v_all[f_all[flat], :2].mean(axis=1)
    for o in objects:
        support = k if o.support == -1 else o.support
        near = np.hypot(*(flat_xy - np.asarray(o.center)).T) < _footprint_radius(o.shape, o.size)
        cand = flat[near & (flat_inst == support) & (np.abs(flat_z - o.base_z) < 1e-6)]
        inside = _inside_footprint(o, v_all[f_all[cand].ravel(), :2]).reshape(-1, 3).all(axis=1)
        keep[cand[inside]] = False
    f_all, f_inst = f_all[keep], f_inst[keep]
    used = np.zeros(len(v_all), dtype=bool)
    used[f_all.ravel()] = True
    remap = np.cumsum(used) - 1
    v_all, v_part, f_all = v_all[used], v_part[used], remap[f_all]
    # Shuffle the vertex order so nothing downstream relies on grouping.
    perm = np.random.default_rng([int(seed), int(index), 7]).permutation(len(v_all))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    v_all, v_part, f_all = v_all[perm], v_part[perm], inv[f_all]
    inst_class = tuple([o.class_name for o in objects] + ["floor"] + ["wall"] * 4)
    inst_rgb = np.array([o.rgb for o in objects] + [ROOM_RGB["floor"]] + [ROOM_RGB["wall"]] * 4, dtype=np.uint8)
    normal = np.cross(v_all[f_all[:, 1]] - v_all[f_all[:, 0]], v_all[f_all[:, 2]] - v_all[f_all[:, 0]])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    shade = 0.45 + 0.35 * np.abs(normal @ _SUN) + 0.2 * np.abs(normal @ _FILL)
    face_rgb = np.clip(np.rint(inst_rgb[f_inst].astype(np.float64) * shade[:, None]), 0, 255).astype(np.uint8)
    return SynthScene(
        seed=int(seed), size=size, index=int(index), room=(*cfg.room, cfg.wall_height), objects=tuple(objects),
        vertices=v_all.astype(np.float32), colors=inst_rgb[v_part], faces=f_all.astype(np.int32),
        vertex_instance=v_part, face_instance=f_inst.astype(np.int32), face_colors=face_rgb, instance_class=inst_class,
    )  # fmt: skip


# ---------------------------------------------------------------- cameras and rendering


def _depth_intrinsics(cfg: _SizeConfig) -> Intrinsics:
    w, h = cfg.depth_size
    f = _FX_SCANNET * w / 640.0
    return Intrinsics(round(f, 6), round(f, 6), (w - 1) / 2, (h - 1) / 2, w, h)


def _color_intrinsics(cfg: _SizeConfig) -> Intrinsics:
    d = _depth_intrinsics(cfg)
    s = d.scaled_to(*cfg.color_size)
    return Intrinsics(*(round(x, 6) for x in (s.fx, s.fy, s.cx, s.cy)), s.width, s.height)


def _look_at(eye: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    c, s = np.cos(roll), np.sin(roll)
    r, d = c * r + s * d, -s * r + c * d
    pose = np.eye(4)
    pose[:3, :3] = np.stack([r, d, f], axis=1)
    pose[:3, 3] = eye
    return pose


def camera_poses(seed: int, size: SynthSize = "tiny", index: int = 0) -> np.ndarray:
    """(F, 4, 4) float64 camera-to-world poses (OpenCV axes) as written to ``pose/<id>.txt``.

    One loop around the room inside the walls at 1.2-1.7 m height, looking toward the room's
    centre with jitter. Values are rounded to the precision written to disk.
    """
    cfg = _config(size)
    rng = np.random.default_rng([int(seed), int(index), 11])
    n = cfg.frames
    a, b = np.array(cfg.room) / 2 * 0.8
    t = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    phase = rng.uniform(0, 2 * np.pi, 3)
    radial = 1.0 + 0.06 * np.sin(2 * t + phase[0]) + rng.uniform(-0.02, 0.02, n)
    height = 1.45 + 0.2 * np.sin(3 * t + phase[1]) + rng.uniform(-0.03, 0.03, n)
    poses = np.empty((n, 4, 4))
    for i in range(n):
        eye = np.array([a * radial[i] * np.cos(t[i]), b * radial[i] * np.sin(t[i]), height[i]])
        target = np.array([0.4 * np.cos(t[i] * 2 + phase[2]), 0.3 * np.sin(t[i] * 3), 0.3]) + rng.uniform(-0.15, 0.15, 3)
        poses[i] = np.round(_look_at(eye, target, rng.uniform(-0.05, 0.05)), 9)
    return poses


def _raycaster(scene: SynthScene):
    from ._o3d import open3d  # noqa: PLC0415

    o3d = open3d()
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(scene.vertices), o3d.core.Tensor(scene.faces.astype(np.uint32)))
    return rc


@functools.lru_cache(maxsize=4)
def _cached_raycaster(seed: int, size: str, index: int):
    return _raycaster(build_scene(seed, size, index))


def _cast(rc, rays: np.ndarray, *, normals: bool = False) -> dict[str, np.ndarray]:
    """Cast (n, 6) float32 rays (origin, direction); t_hit is in units of the direction's length."""
    from ._o3d import open3d  # noqa: PLC0415

    out = rc.cast_rays(open3d().core.Tensor.from_numpy(np.ascontiguousarray(rays, dtype=np.float32)))
    keys = ("t_hit", "primitive_ids", "primitive_normals") if normals else ("t_hit", "primitive_ids")
    return {k: out[k].numpy() for k in keys}


def _render(rc, scene: SynthScene, pose: np.ndarray, intr: Intrinsics, *, normals: bool = False) -> dict[str, np.ndarray]:
    """Pixel-centre rays: z-depth (inf on a miss), instance (-1 on a miss), shaded RGB (black on a miss)."""
    w, h = intr.width, intr.height
    x = ((np.arange(w) - intr.cx) / intr.fx).astype(np.float32)
    y = ((np.arange(h) - intr.cy) / intr.fy).astype(np.float32)
    r = pose[:3, :3].astype(np.float32)
    rays = np.empty((h, w, 6), dtype=np.float32)
    rays[..., :3] = pose[:3, 3]
    # direction = R @ (x, y, 1): camera z = 1, so t_hit is the z-depth
    rays[..., 3:] = x[None, :, None] * r[:, 0] + (y[:, None] * r[None, :, 1] + r[:, 2])[:, None, :]
    rays = rays.reshape(-1, 6)
    hit = _cast(rc, rays, normals=normals)
    nf = len(scene.faces)
    prim = np.minimum(hit["primitive_ids"], nf)  # a miss (INVALID_ID) maps to the sentinel row
    out = {
        "depth": hit["t_hit"].reshape(h, w),
        "instance": np.append(scene.face_instance, -1)[prim].reshape(h, w),
        "rgb": np.concatenate([scene.face_colors, np.zeros((1, 3), np.uint8)])[prim].reshape(h, w, 3),
    }
    if normals:
        out["normal"] = np.where((prim < nf)[:, None], hit["primitive_normals"], 0).reshape(h, w, 3)
    return out


# ---------------------------------------------------------------- writing


def _fmt_matrix(m: np.ndarray) -> str:
    return "\n".join(" ".join(f"{x:.9f}".rstrip("0").rstrip(".") if x != 0 else "0" for x in row) for row in m) + "\n"


def _write_ply(path: Path, verts: np.ndarray, colors: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY like ScanNet's ``_vh_clean_2.ply`` (float xyz, uchar rgb, int faces)."""
    head = (
        f"ply\nformat binary_little_endian 1.0\ncomment om3db synthetic scan\nelement vertex {len(verts)}\n"
        "property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    vdt = np.dtype([("p", "<f4", 3), ("c", "u1", 3)])
    va = np.empty(len(verts), vdt)
    va["p"], va["c"] = verts, colors
    fdt = np.dtype([("n", "u1"), ("i", "<i4", 3)])
    fa = np.empty(len(faces), fdt)
    fa["n"], fa["i"] = 3, faces
    with open(path, "wb") as fh:
        fh.write(head.encode("ascii"))
        fh.write(va.tobytes())
        fh.write(fa.tobytes())


def _save_png(path: Path, arr: np.ndarray, **kw) -> None:
    from PIL import Image  # noqa: PLC0415

    Image.fromarray(arr).save(path, **kw)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_scans(
    out: str | Path,
    *,
    scans: int = 2,
    seed: int = 0,
    size: SynthSize = "tiny",
    masks: bool = True,
    progress: Progress | None = None,
) -> list[Path]:
    """Write ``scans`` synthetic scans ``out/synth_<seed>_<i>``; same seed, same bytes.

    progress: called as ``progress("synth", frames_done, frames_total)`` after each frame.
    Returns the scan folders.
    """
    cfg = _config(size)
    if scans < 1:
        raise ConfigError(f"scans must be >= 1, got {scans}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScanError(out, "exists and is not a folder", "Pass a folder to write the scans into")
    total, done = scans * cfg.frames, 0
    paths = []
    for index in range(scans):
        scene = build_scene(seed, size, index)
        root = out / scene.name
        _write_scene_files(root, scene, cfg, masks)
        rc = _raycaster(scene)
        d_intr, c_intr = _depth_intrinsics(cfg), _color_intrinsics(cfg)
        # instance -> instance2d value: object i -> i + 1; room and misses (-1) -> 0
        to_map = np.zeros(len(scene.instance_class) + 1, dtype=np.uint16)
        to_map[1 : scene.num_objects + 1] = np.arange(1, scene.num_objects + 1)
        for fid, pose in enumerate(camera_poses(seed, size, index)):
            stem = f"{fid:0{cfg.id_width}d}" if cfg.id_width else str(fid)
            text = _fmt_matrix(pose)
            (root / "pose" / f"{stem}.txt").write_text(text)
            pose = np.array([[float(x) for x in row.split()] for row in text.splitlines()])  # exactly what readers see
            col = _render(rc, scene, pose, c_intr)
            dep = _render(rc, scene, pose, d_intr)
            depth_mm = np.where(np.isfinite(dep["depth"]), np.rint(dep["depth"] * 1000.0), 0).clip(0, 65535).astype(np.uint16)
            _save_png(root / "depth" / f"{stem}.png", depth_mm)
            if cfg.color_ext == ".jpg":
                _save_png(root / "color" / f"{stem}.jpg", col["rgb"], quality=90)
            else:
                _save_png(root / "color" / f"{stem}.png", col["rgb"])
            for folder, r in (("instance2d", col), ("instance2d_depth", dep)):
                _save_png(root / "gt" / folder / f"{stem}.png", to_map[r["instance"] + 1])
            done += 1
            if progress is not None:
                progress("synth", done, total)
        paths.append(root)
    return paths


def _write_scene_files(root: Path, scene: SynthScene, cfg: _SizeConfig, masks: bool) -> None:
    for sub in ("color", "depth", "pose", "intrinsic", "gt/instance2d", "gt/instance2d_depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    d_intr, c_intr = _depth_intrinsics(cfg), _color_intrinsics(cfg)
    for name, intr in (("intrinsic_color.txt", c_intr), ("intrinsic_depth.txt", d_intr)):
        m = np.eye(4)
        m[:3, :3] = intr.matrix
        (root / "intrinsic" / name).write_text(_fmt_matrix(m))
    _write_ply(root / f"{scene.name}.ply", scene.vertices, scene.colors, scene.faces)
    k = scene.num_objects
    labels = np.array([CLASSES.index(c) + 1 for c in scene.instance_class], dtype=np.int64)
    gt_ids = labels[scene.vertex_instance] * 1000 + scene.vertex_instance + 1
    (root / "gt" / "instances.txt").write_text("\n".join(map(str, gt_ids.tolist())) + "\n")
    _write_json(root / "gt" / "classes.json", [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)])
    objs = []
    for o in scene.objects:
        pts = scene.vertices[scene.vertex_instance == o.index].astype(np.float64)
        objs.append({
            "instance": o.index, "class_name": o.class_name, "label": CLASSES.index(o.class_name) + 1,
            "gt_id": int(gt_ids[scene.vertex_instance == o.index][0]), "shape": o.shape, "size": list(o.size),
            "rgb": list(o.rgb), "num_points": len(pts), "centroid": np.round(pts.mean(0), 5).tolist(),
            "bbox_min": np.round(pts.min(0), 5).tolist(), "bbox_max": np.round(pts.max(0), 5).tolist(),
            "support": "floor" if o.support == -1 else o.support, "yaw": o.yaw,
        })  # fmt: skip
    _write_json(root / "gt" / "objects.json", objs)
    _write_json(root / "gt" / "scene.json", {
        "generator": "om3db.synth", "version": GENERATOR_VERSION, "seed": scene.seed, "size": scene.size,
        "index": scene.index, "name": scene.name, "num_points": len(scene.vertices), "num_faces": len(scene.faces),
        "num_objects": k, "room": list(scene.room), "frames": cfg.frames, "depth_size": list(cfg.depth_size),
        "color_size": list(cfg.color_size), "depth_scale": 1000.0, "instances": list(scene.instance_class),
    })  # fmt: skip
    if masks:
        from .masks import save_masks  # noqa: PLC0415

        save_masks(root / f"{scene.name}_masks.pt", scene.vertex_instance[:, None] == np.arange(k)[None, :])


# ---------------------------------------------------------------- ground-truth oracles


@dataclass(frozen=True)
class GroundTruth:
    """Per-point ground truth of a synthetic scan (PLY vertex order)."""

    scan_dir: Path
    gt_ids: np.ndarray = field(repr=False)
    """(N,) int64 ``label * 1000 + instance + 1`` (OpenMask3D / ScanNet GT format; 0 unlabelled)."""
    instance: np.ndarray = field(repr=False)
    """(N,) int32 instance number: objects 0..K-1, floor K, walls K+1..; -1 unlabelled."""
    labels: np.ndarray = field(repr=False)
    """(N,) int32 class id into :attr:`class_names` (0 unlabelled)."""
    class_names: dict[int, str]
    """Class id -> name (``gt/classes.json``)."""
    masks: np.ndarray = field(repr=False)
    """(N, K) bool: column i = object i."""
    objects: tuple[dict, ...]
    """``gt/objects.json`` entries, index i = object i."""
    scene: dict
    """``gt/scene.json``."""

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def object_classes(self) -> list[str]:
        """Class name of each object."""
        return [o["class_name"] for o in self.objects]


def _read_json(path: Path):
    if not path.is_file():
        raise ScanError(path, "ground-truth file is missing", "Regenerate the scan with `om3db synth`")
    return json.loads(path.read_text())


def load_gt(scan_dir: str | Path) -> GroundTruth:
    """Read ``<scan>/gt/`` of a synthetic scan."""
    root = Path(scan_dir)
    scene = _read_json(root / "gt" / "scene.json")
    classes = {int(c["id"]): c["name"] for c in _read_json(root / "gt" / "classes.json")}
    objects = tuple(_read_json(root / "gt" / "objects.json"))
    ids = np.loadtxt(root / "gt" / "instances.txt", dtype=np.int64, ndmin=1)
    if ids.shape[0] != scene["num_points"]:
        raise ScanError(root / "gt" / "instances.txt", f"{ids.shape[0]} lines for {scene['num_points']} points", "Regenerate the scan")
    instance = np.where(ids > 0, ids % 1000 - 1, -1).astype(np.int32)
    masks = instance[:, None] == np.arange(len(objects))[None, :]
    return GroundTruth(root, ids, instance, (ids // 1000).astype(np.int32), classes, masks, objects, scene)


def _scene_of(scan_dir: Path) -> tuple[dict, SynthScene]:
    meta = _read_json(scan_dir / "gt" / "scene.json")
    if meta.get("version") != GENERATOR_VERSION:
        raise ScanError(scan_dir / "gt" / "scene.json", f"written by generator version {meta.get('version')}, this is {GENERATOR_VERSION}", "Regenerate the scan")
    return meta, build_scene(meta["seed"], meta["size"], meta["index"])


def _pose_of(scan_dir: Path, frame_id: int) -> np.ndarray:
    for p in (scan_dir / "pose").glob("*.txt"):
        if p.stem.isdigit() and int(p.stem) == frame_id:
            return np.loadtxt(p, dtype=np.float64)
    raise ScanError(scan_dir / "pose", f"no pose for frame {frame_id}", "Pass a frame id the scan has")


def gt_point_visibility(scan_dir: str | Path, frame_id: int, *, rel_tol: float = 1e-4) -> np.ndarray:
    """(N,) bool: PLY points truly visible in depth frame ``frame_id``.

    Visible = in front of the camera, projecting inside the depth image (``round(u), round(v)``),
    and the first surface hit on the ray from the camera centre toward the point is the point
    itself (hit distance >= (1 - rel_tol) x point distance). Raycasts the scene rebuilt from
    ``gt/scene.json``; independent of the rendered depth.
    """
    root = Path(scan_dir)
    meta, scene = _scene_of(root)
    pose = _pose_of(root, frame_id)
    k = np.loadtxt(root / "intrinsic" / "intrinsic_depth.txt")
    intr = Intrinsics.from_matrix(k, *meta["depth_size"])
    pts = scene.vertices.astype(np.float64)
    u, v, z = project(pts, np.linalg.inv(pose), intr)
    with np.errstate(invalid="ignore"):
        cu, cv = np.floor(u + 0.5), np.floor(v + 0.5)
        cand = (z > 0) & (cu >= 0) & (cu < intr.width) & (cv >= 0) & (cv < intr.height)
    vis = np.zeros(len(pts), dtype=bool)
    idx = np.flatnonzero(cand)
    if idx.size:
        origin = pose[:3, 3]
        rays = np.concatenate([np.broadcast_to(origin, (idx.size, 3)), pts[idx] - origin], axis=1)
        hit = _cast(_cached_raycaster(scene.seed, scene.size, scene.index), rays)
        vis[idx] = hit["t_hit"] >= 1.0 - rel_tol  # direction length = point distance, so t = 1 at the point
    return vis


@dataclass(frozen=True)
class RenderedFrame:
    """A frame re-rendered from the rebuilt scene through each pixel centre (ground truth)."""

    depth: np.ndarray = field(repr=False)
    """(h, w) float32 z-depth in metres, unquantised; inf where the ray misses."""
    instance: np.ndarray = field(repr=False)
    """(h, w) int32 instance of the first hit: objects 0..K-1, floor K, walls K+1..; -1 on a miss."""
    normal: np.ndarray = field(repr=False)
    """(h, w, 3) float32 unit normal of the hit triangle (sign arbitrary); 0 on a miss."""
    rgb: np.ndarray = field(repr=False)
    """(h, w, 3) uint8 shaded colour, as written (before JPEG compression); black on a miss."""


def render_frame(scan_dir: str | Path, frame_id: int, *, resolution: Literal["depth", "color"] = "depth") -> RenderedFrame:
    """Re-render frame ``frame_id`` of a synthetic scan at depth or colour resolution."""
    root = Path(scan_dir)
    if resolution not in ("depth", "color"):
        raise ConfigError(f"resolution must be 'depth' or 'color', got {resolution!r}")
    meta, scene = _scene_of(root)
    name = "intrinsic_depth.txt" if resolution == "depth" else "intrinsic_color.txt"
    intr = Intrinsics.from_matrix(np.loadtxt(root / "intrinsic" / name), *meta[f"{resolution}_size"])
    r = _render(_cached_raycaster(scene.seed, scene.size, scene.index), scene, _pose_of(root, frame_id), intr, normals=True)
    return RenderedFrame(r["depth"], r["instance"], r["normal"].astype(np.float32), r["rgb"])
