"""Cameras, trajectory and raycast rendering (open3d ``RaycastingScene``, pixel-centre rays)."""

from __future__ import annotations

import functools

import numpy as np

from ..camera import Intrinsics
from .scene import _FX_SCANNET, SynthScene, SynthSize, _config, _SizeConfig, build_scene


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
    a, b = np.array(cfg.room) / 2 * cfg.camera_ring
    t = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    phase = rng.uniform(0, 2 * np.pi, 3)
    radial = 1.0 + 0.06 * np.sin(2 * t + phase[0]) + rng.uniform(-0.02, 0.02, n)
    height = 1.45 + 0.2 * np.sin(3 * t + phase[1]) + rng.uniform(-0.03, 0.03, n)
    poses = np.empty((n, 4, 4))
    for i in range(n):
        eye = np.array([a * radial[i] * np.cos(t[i]), b * radial[i] * np.sin(t[i]), height[i]])
        target = np.array([0.4 * np.cos(t[i] * 2 + phase[2]), 0.3 * np.sin(t[i] * 3), 0.3]) + rng.uniform(
            -0.15, 0.15, 3
        )
        poses[i] = np.round(_look_at(eye, target, rng.uniform(-0.05, 0.05)), 9)
    return poses


def _raycaster(scene: SynthScene):
    from .._o3d import open3d

    o3d = open3d()
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(scene.vertices), o3d.core.Tensor(scene.faces.astype(np.uint32)))
    return rc


@functools.lru_cache(maxsize=4)
def _cached_raycaster(seed: int, size: str, index: int):
    return _raycaster(build_scene(seed, size, index))


def _cast(rc, rays: np.ndarray, *, normals: bool = False) -> dict[str, np.ndarray]:
    """Cast (n, 6) float32 rays (origin, direction); t_hit is in units of the direction's length."""
    from .._o3d import open3d

    out = rc.cast_rays(open3d().core.Tensor.from_numpy(np.ascontiguousarray(rays, dtype=np.float32)))
    keys = ("t_hit", "primitive_ids", "primitive_normals") if normals else ("t_hit", "primitive_ids")
    return {k: out[k].numpy() for k in keys}


def _render(
    rc, scene: SynthScene, pose: np.ndarray, intr: Intrinsics, *, normals: bool = False
) -> dict[str, np.ndarray]:
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
