"""The synthetic scene: palette, sizes, object layout and the room + objects mesh (``build_scene``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import ConfigError
from .mesh import footprint_radius, inside_footprint, object_parts, room_parts

SynthSize = Literal["tiny", "scannet"]
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
    object_region: float
    """Objects stand within this fraction of the room's half extents."""
    camera_ring: float
    """The camera loop runs at this fraction of the room's half extents."""


# ScanNet's cameras: depth 640x480 (fx = fy = 577.87), colour 1296x968 (different aspect ratio).
_FX_SCANNET = 577.87
_SIZES: dict[str, _SizeConfig] = {
    "tiny": _SizeConfig((5.0, 4.4), 2.4, 0.05, 0.02, 7, (0.8, 1.0), 20, (160, 120), (324, 242), ".png", 0, 0.34, 0.85),
    "scannet": _SizeConfig(
        (7.0, 6.0), 2.6, 0.03, 0.015, 38, (0.7, 1.0), 250, (640, 480), (1296, 968), ".jpg", 6, 0.55, 0.8
    ),
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

    def digest(self) -> str:
        """sha256 of the mesh (vertices, faces, instances): detects a scan written by other generator code."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.vertices, self.faces, self.vertex_instance, self.face_instance):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def _config(size: str) -> _SizeConfig:
    if size not in _SIZES:
        raise ConfigError(f"synthetic scan size must be one of {sorted(_SIZES)}, got {size!r}")
    return _SIZES[size]


# ---------------------------------------------------------------- layout


def _random_size(rng: np.random.Generator, shape: str, scale: float) -> tuple[float, float, float]:
    if shape == "box":
        return tuple(float(x) for x in np.round(scale * rng.uniform([0.2, 0.2, 0.12], [0.6, 0.6, 0.7]), 3))
    if shape == "sphere":
        d = round(float(scale * rng.uniform(0.16, 0.45)), 3)
        return (d, d, d)
    d = round(float(scale * rng.uniform(0.14, 0.45)), 3)
    return (d, d, round(float(scale * rng.uniform(0.15, 0.7)), 3))


def _layout(cfg: _SizeConfig, rng: np.random.Generator) -> list[SynthObject]:
    half = np.array(cfg.room) / 2 * cfg.object_region  # objects stay well inside the camera loop
    colours = list(PALETTE)
    if cfg.num_objects <= len(colours):
        names = [colours[i] for i in rng.permutation(len(colours))[: cfg.num_objects]]
    else:  # several instances per class, like ScanNet
        names = [colours[i] for i in rng.integers(0, len(colours), cfg.num_objects)]
        names[: len(colours)] = colours
        names = [names[i] for i in rng.permutation(len(names))]
    placed: list[SynthObject] = []
    for k, name in enumerate(names):
        # the first object is a box so something can stand on it; then random shapes
        shape = "box" if k == 0 else SHAPES[int(rng.integers(0, len(SHAPES)))]
        scale = float(rng.uniform(*cfg.scale))
        for _attempt in range(200):
            size = _random_size(rng, shape, scale)
            rf = footprint_radius(shape, size)
            boxes = [o for o in placed if o.shape == "box" and o.support == -1 and min(o.size[:2]) / 2 > rf + 0.02]
            boxes = [b for b in boxes if not any(o.support == b.index for o in placed)]
            if boxes and shape != "box" and rng.uniform() < 0.35:
                b = boxes[int(rng.integers(0, len(boxes)))]
                slack = min(b.size[:2]) / 2 - rf - 0.01
                cx, cy = np.asarray(b.center) + rng.uniform(-slack, slack, 2) * 0.5
                obj = SynthObject(
                    k,
                    name,
                    shape,
                    size,
                    PALETTE[name],
                    (round(float(cx), 4), round(float(cy), 4)),
                    b.base_z + b.size[2],
                    0.0,
                    b.index,
                )
                break
            cx, cy = rng.uniform(-half + rf, half - rf)
            if all(
                np.hypot(cx - o.center[0], cy - o.center[1]) > rf + footprint_radius(o.shape, o.size) + 0.04
                for o in placed
                if o.support == -1
            ):
                yaw = round(float(rng.uniform(0, np.pi)), 4) if shape == "box" else 0.0
                obj = SynthObject(
                    k, name, shape, size, PALETTE[name], (round(float(cx), 4), round(float(cy), 4)), 0.0, yaw, -1
                )
                break
            scale *= 0.97
        else:
            continue
        placed.append(
            SynthObject(
                len(placed), obj.class_name, obj.shape, obj.size, obj.rgb, obj.center, obj.base_z, obj.yaw, obj.support
            )
        )
    return placed


@functools.lru_cache(maxsize=4)
def build_scene(seed: int, size: SynthSize = "tiny", index: int = 0) -> SynthScene:
    """The scene of scan ``index`` for ``seed`` and ``size``: deterministic, no rendering."""
    cfg = _config(size)
    rng = np.random.default_rng([int(seed), int(index), list(_SIZES).index(size)])
    objects = _layout(cfg, rng)
    k = len(objects)
    floor, walls = room_parts(*cfg.room, cfg.wall_height, cfg.room_spacing)
    parts = [(i, p) for i, o in enumerate(objects) for p in object_parts(o, cfg.object_spacing)]
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
        near = np.hypot(*(flat_xy - np.asarray(o.center)).T) < footprint_radius(o.shape, o.size)
        cand = flat[near & (flat_inst == support) & (np.abs(flat_z - o.base_z) < 1e-6)]
        inside = inside_footprint(o, v_all[f_all[cand].ravel(), :2]).reshape(-1, 3).all(axis=1)
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
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    shade = 0.45 + 0.35 * np.abs(normal @ _SUN) + 0.2 * np.abs(normal @ _FILL)
    face_rgb = np.clip(np.rint(inst_rgb[f_inst].astype(np.float64) * shade[:, None]), 0, 255).astype(np.uint8)
    arrays = {
        "vertices": v_all.astype(np.float32), "colors": inst_rgb[v_part], "faces": f_all.astype(np.int32),
        "vertex_instance": v_part, "face_instance": f_inst.astype(np.int32), "face_colors": face_rgb,
    }  # fmt: skip
    for a in arrays.values():
        a.setflags(write=False)  # the scene is cached and shared
    return SynthScene(
        seed=int(seed), size=size, index=int(index), room=(*cfg.room, cfg.wall_height), objects=tuple(objects),
        instance_class=inst_class, **arrays,
    )  # fmt: skip
