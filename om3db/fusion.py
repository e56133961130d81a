"""A scene point cloud for captures that have none: TSDF fusion of the RGB-D frames (open3d).

The fused mesh (marching cubes over a truncated signed distance field) is written once as a PLY and
reused: its vertices are the scan's points, so mask indices keep referring to the same points. The file
is ``<fused_dir>/<name>.<key>.ply`` where ``key`` hashes the capture's content and the fusion settings;
a sidecar ``.json`` records how it was made. Vertices are sorted (z, y, x) and faces sorted after extraction so the
same input always gives the same file, whatever order open3d's parallel extraction produced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .camera import Intrinsics, project
from .errors import ConfigError, ScanError
from .ply import check_ply
from .ply import write_ply as _write_ply

__all__ = [
    "FusionConfig",
    "FusedCloud",
    "fuse",
    "fused_scene_ply",
    "default_fused_dir",
    "depth_residuals",
    "write_ply",
    "mesh_as_ply",
    "colors_from_frames",
    "scaled_ply",
]

FUSION_VERSION = 2
"""Bumped when the fusion code changes its output: a new version never reuses an older cached file."""
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FusionConfig:
    """How a scene point cloud is fused from a capture's RGB-D frames."""

    voxel_size: float = 0.02
    """TSDF voxel edge in metres (1-2 cm: finer costs memory and time, coarser loses small objects)."""
    trunc_voxels: float = 4.0
    """Truncation distance of the signed distance field, in voxels."""
    depth_min: float = 0.1
    """Metres: closer depth pixels are ignored."""
    depth_max: float = 5.0
    """Metres: farther depth pixels are ignored (phone LiDAR is unreliable beyond ~5 m)."""
    frame_step: int | None = None
    """Fuse every n-th frame (in id order, over all frames on disk); None: the smallest step that fuses at
    most :attr:`max_frames` frames. Independent of ``read_scan``'s frame_step, so the fused points do not
    change when a scan is re-ingested with another frame step."""
    max_frames: int = 300
    """With ``frame_step=None``: at most this many frames are fused."""
    min_weight: float = 1.0
    """Voxels observed by fewer than this many frames' (weighted) depth are not surfaced."""
    block_count: int = 20000
    """Initial voxel-block capacity of open3d's hash map (it grows when needed)."""

    def __post_init__(self) -> None:
        for name in ("voxel_size", "trunc_voxels", "depth_max", "min_weight"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"FusionConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.depth_min < self.depth_max:
            raise ConfigError(
                f"FusionConfig.depth_min must be >= 0 and below depth_max ({self.depth_max}), got {self.depth_min}"
            )
        if self.frame_step is not None and (not isinstance(self.frame_step, int) or self.frame_step < 1):
            raise ConfigError(f"FusionConfig.frame_step must be None or an integer >= 1, got {self.frame_step!r}")
        for name in ("max_frames", "block_count"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"FusionConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")

    def step_for(self, num_frames: int) -> int:
        """The frame step used for a capture of ``num_frames`` frames."""
        if self.frame_step is not None:
            return self.frame_step
        return max(1, math.ceil(num_frames / self.max_frames))

    def pick_indices(self, num_frames: int) -> list[int]:
        """Positions (in id order) of the frames to fuse."""
        return list(range(0, num_frames, self.step_for(num_frames)))

    def pick_ids(self, ids: Sequence[int]) -> list[int]:
        """The frame ids to fuse out of all ``ids`` (sorted)."""
        return [ids[i] for i in self.pick_indices(len(ids))]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FusedCloud:
    """A fused scene surface: a triangle mesh whose vertices are the scene points."""

    vertices: np.ndarray = field(repr=False)
    """(N, 3) float32 world metres, sorted by (z, y, x)."""
    colors: np.ndarray = field(repr=False)
    """(N, 3) uint8 RGB (the TSDF-averaged frame colours)."""
    faces: np.ndarray = field(repr=False)
    """(F, 3) int32 vertex indices."""
    info: dict = field(default_factory=dict)
    """Settings, frames fused, counts, seconds."""


def default_fused_dir() -> Path:
    """Where fused clouds go when ``read_scan`` gets no ``fused_dir``: ``$OM3DB_FUSED_DIR``, else
    ``$XDG_CACHE_HOME/om3db/fused``, else ``~/.cache/om3db/fused``."""
    env = os.environ.get("OM3DB_FUSED_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "om3db" / "fused"


def _clean_depth(d: np.ndarray, config: FusionConfig) -> np.ndarray:
    d = np.asarray(d, dtype=np.float32)
    bad = ~np.isfinite(d) | (d < config.depth_min) | (d > config.depth_max)
    if bad.any():
        d = d.copy()
        d[bad] = 0.0
    return np.ascontiguousarray(d)


def _half_pixel(intr: Intrinsics) -> np.ndarray:
    k = intr.matrix.copy()
    k[0, 2] += 0.5
    k[1, 2] += 0.5
    return k


def _canonical_faces(faces: np.ndarray) -> np.ndarray:
    """Faces in a fixed order: each rotated (orientation kept) to start at its smallest index, rows sorted."""
    if len(faces) == 0:
        return faces
    shift = np.argmin(faces, axis=1)
    idx = (shift[:, None] + np.arange(3)[None, :]) % 3
    f = np.take_along_axis(faces, idx, axis=1)
    return f[np.lexsort((f[:, 2], f[:, 1], f[:, 0]))]


def fuse(
    frames: Sequence,
    depth_intr: Intrinsics,
    color_intr: Intrinsics,
    *,
    config: FusionConfig = FusionConfig(),
    progress: Progress | None = None,
) -> FusedCloud:
    """TSDF-integrate ``frames`` (their ``depth()``, ``color()`` and camera-to-world ``pose``) and extract
    the surface. Colour may have another resolution than depth (each has its own camera)."""
    from ._o3d import open3d

    if not frames:
        raise ConfigError("fuse: no frames to fuse")
    o3d = open3d()
    t0 = time.perf_counter()
    f32 = o3d.core.float32
    vbg = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(f32, f32, f32),
        attr_channels=((1), (1), (3)),
        voxel_size=float(config.voxel_size),
        block_resolution=8,
        block_count=int(config.block_count),
        device=o3d.core.Device("CPU:0"),
    )
    # open3d's integration truncates the projected pixel coordinate (int(u)) where om3db's convention (pixel
    # centres at integers) rounds: shifting the principal point by half a pixel makes int(u + 0.5) = round(u).
    # Without it surfaces come out ~8 mm off on exact synthetic depth (0.2 mm with it).
    k_depth = o3d.core.Tensor(_half_pixel(depth_intr))
    k_color = o3d.core.Tensor(_half_pixel(color_intr))
    trunc = float(config.trunc_voxels)
    empty = 0
    for i, f in enumerate(frames):
        d = _clean_depth(f.depth(), config)
        if d.shape != (depth_intr.height, depth_intr.width):
            raise ScanError(
                f.depth_path or f.color_path,
                f"depth is {d.shape[1]}x{d.shape[0]}, the depth camera is {depth_intr.width}x{depth_intr.height}",
                "All depth maps of a capture must share one resolution",
            )
        if not d.any():
            empty += 1
            continue
        c = np.ascontiguousarray(f.color(), dtype=np.float32) / np.float32(255.0)
        extrinsic = o3d.core.Tensor(np.linalg.inv(f.pose))
        dimg = o3d.t.geometry.Image(o3d.core.Tensor(d))
        cimg = o3d.t.geometry.Image(o3d.core.Tensor(c))
        blocks = vbg.compute_unique_block_coordinates(dimg, k_depth, extrinsic, 1.0, config.depth_max, trunc)
        vbg.integrate(blocks, dimg, cimg, k_depth, k_color, extrinsic, 1.0, config.depth_max, trunc)
        if progress is not None:
            progress("fuse", i + 1, len(frames))
    t1 = time.perf_counter()
    no_surface = ScanError(
        getattr(frames[0], "color_path", "."),
        f"fusing {len(frames)} frames gave no surface ({empty} had no depth in "
        f"[{config.depth_min}, {config.depth_max}] m)",
        "Check the depth units and poses, or widen FusionConfig.depth_min / depth_max",
    )
    if empty == len(frames):  # open3d's extraction fails on an empty grid ("Input number of keys should > 0")
        raise no_surface
    mesh = vbg.extract_triangle_mesh(weight_threshold=float(config.min_weight))
    verts = mesh.vertex.positions.numpy().astype(np.float32) if "positions" in mesh.vertex else np.zeros((0, 3))
    if len(verts) == 0:
        raise no_surface
    cols = mesh.vertex.colors.numpy() if "colors" in mesh.vertex else np.zeros_like(verts)
    faces = mesh.triangle.indices.numpy().astype(np.int64)
    order = np.lexsort((verts[:, 0], verts[:, 1], verts[:, 2]))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    verts, cols, faces = verts[order], cols[order], _canonical_faces(rank[faces])
    colors = np.clip(np.rint(cols * 255.0), 0, 255).astype(np.uint8)
    info = {
        "kind": "tsdf",
        "version": FUSION_VERSION,
        "settings": config.to_dict(),
        "frames_fused": len(frames) - empty,
        "frames_without_depth": empty,
        "frame_ids": [int(f.frame_id) for f in frames],
        "points": int(len(verts)),
        "faces": int(len(faces)),
        "seconds": {"integrate": round(t1 - t0, 3), "extract": round(time.perf_counter() - t1, 3)},
    }
    return FusedCloud(verts, colors, faces.astype(np.int32), info)


def write_ply(path: str | Path, vertices: np.ndarray, colors: np.ndarray, faces: np.ndarray | None = None) -> None:
    """Binary little-endian PLY (float xyz, uchar rgb, optional int triangles), vertices in the given order."""
    faces = None if faces is None or not len(faces) else np.asarray(faces)
    _write_ply(path, vertices, colors, faces=faces, comment="om3db")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _publish(path: Path, write: Callable[[Path], None], info: dict) -> None:
    """Write ``path`` (and its ``.json`` sidecar) atomically: readers never see a half-written cloud."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        path.with_suffix(".json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fused_scene_ply(
    frames: Sequence,
    depth_intr: Intrinsics,
    color_intr: Intrinsics,
    *,
    config: FusionConfig,
    fused_dir: str | Path | None,
    name: str,
    digest: str,
    progress: Progress | None = None,
) -> tuple[Path, dict]:
    """The fused PLY of a capture: reused from ``fused_dir`` when the same capture content (``digest``)
    was fused with the same settings, else fused now and written there. Returns (path, info)."""
    folder = Path(fused_dir) if fused_dir is not None else default_fused_dir()
    key = _key(
        FUSION_VERSION,
        digest,
        config.to_dict(),
        [int(f.frame_id) for f in frames],
        asdict(depth_intr),
        asdict(color_intr),
    )
    path = folder / f"{name}.{key}.ply"
    if path.is_file():
        info = {"kind": "tsdf", "cached": True, "key": key}
        side = path.with_suffix(".json")
        if side.is_file():
            try:
                info = {**json.loads(side.read_text()), "cached": True}
            except (OSError, json.JSONDecodeError):
                pass
        return path, info
    if not frames:
        raise ScanError(name, "no usable frame to fuse", "Check the capture's poses")
    cloud = fuse(frames, depth_intr, color_intr, config=config, progress=progress)
    info = {**cloud.info, "key": key, "digest": digest, "cached": False}
    _publish(path, lambda p: write_ply(p, cloud.vertices, cloud.colors, cloud.faces), info)
    return path, info


def scannet_digest(
    root: Path, pose_paths: Sequence[Path], k_color, k_depth, depth_scale: float, pose_convention: str
) -> str:
    """Content digest of a ScanNet-layout scan for the fusion cache (poses, intrinsics, depth sizes)."""
    h = hashlib.sha256(b"om3db-capture:scannet")
    h.update(f"{depth_scale}:{pose_convention}".encode())
    for m in (k_color, k_depth):
        if m is not None:
            h.update(np.ascontiguousarray(m).tobytes())
    for p in pose_paths:
        h.update(p.name.encode() + p.read_bytes())
        for sub in ("depth",):
            d = root / sub / (p.stem + ".png")
            if d.is_file():
                h.update(f"{d.name}:{d.stat().st_size}".encode())
    return h.hexdigest()


_MAX_OBJ_INDEX = 2**31 - 1


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices (file order), per-vertex colours (``v x y z r g b``; else zeros) and fan-triangulated faces
    of a Wavefront OBJ."""
    verts, cols, faces = [], [], []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise ScanError(path, f"cannot be read ({exc})", "Re-export the mesh") from exc
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "v":
                if len(parts) < 4:  # a cut or damaged record: numpy would fail on the ragged list
                    raise ValueError("a vertex needs x y z")
                verts.append([float(x) for x in parts[1:4]])
                rgb = [float(x) for x in parts[4:7]]
                cols.append(rgb if len(rgb) == 3 else [0.0, 0.0, 0.0])
            elif parts[0] == "f":
                idx = [int(p.split("/")[0]) for p in parts[1:]]
                # OBJ counts vertices from 1 (negative: back from the last one); 0 or past int32 is damage
                if any(i == 0 or abs(i) > _MAX_OBJ_INDEX for i in idx):
                    raise ValueError("vertex index out of range")
                idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
        except (ValueError, IndexError) as exc:
            raise ScanError(path, f"line {n} is not a valid OBJ record ({line[:60]!r})", "Re-export the mesh") from exc
    if not verts:
        raise ScanError(path, "mesh has no vertices", "Re-export the mesh")
    v = np.asarray(verts, dtype=np.float32)
    if not np.isfinite(v).all():
        raise ScanError(path, "mesh has non-finite vertex coordinates", "Re-export the mesh")
    c = np.asarray(cols, dtype=np.float64)
    if not np.isfinite(c).all():
        raise ScanError(path, "mesh has non-finite vertex colours", "Re-export the mesh")
    c = c * 255.0 if c.size and c.max() <= 1.0 else c
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ScanError(path, "a face refers to a vertex that does not exist", "Re-export the mesh")
    return v, np.clip(np.rint(c), 0, 255).astype(np.uint8), f.astype(np.int32)


COLOUR_VIEWS = 60
"""At most this many frames (evenly spaced) colour the vertices of a mesh that has no colours."""


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N, 3) unit area-weighted vertex normals (zero for a vertex on no face)."""
    v = vertices.astype(np.float64)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)


def colors_from_frames(
    vertices: np.ndarray,
    faces: np.ndarray,
    frames: Sequence,
    color_intr: Intrinsics,
    *,
    max_views: int = COLOUR_VIEWS,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Colour mesh vertices from the RGB frames that see them.

    Each vertex is projected into up to ``max_views`` frames (evenly spaced); it is seen in a frame when
    it is in the image, in front of the camera and not occluded: the ray from the camera centre to it
    first hits the mesh (open3d RaycastingScene) no closer than 1 mm + 0.2 % of its distance. Its colour
    is the mean of the pixels it projects to (nearest pixel), weighted by |cos| of the angle between its
    normal and the ray, so grazing views (silhouettes, where the pixel may show what lies behind) count
    little. Returns (N, 3) uint8 colours (0 where unseen), (N,) bool seen, and the number of views used.
    """
    from ._o3d import open3d

    o3d = open3d()
    verts = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n = len(verts)
    if not len(frames) or not len(faces):
        return np.zeros((n, 3), np.uint8), np.zeros(n, bool), 0
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    normals = _vertex_normals(verts, faces)
    step = max(1, math.ceil(len(frames) / max_views))
    views = list(frames)[::step]
    sums = np.zeros((n, 3), np.float64)
    weights = np.zeros(n, np.float64)
    w, h = color_intr.width, color_intr.height
    for i, f in enumerate(views):
        u, v, z = project(verts, np.linalg.inv(f.pose), color_intr)
        px, py = np.rint(u), np.rint(v)
        idx = np.flatnonzero((z > 1e-6) & (px >= 0) & (px < w) & (py >= 0) & (py < h))
        if len(idx):
            centre = f.pose[:3, 3]
            ray = verts[idx] - centre
            dist = np.linalg.norm(ray, axis=1)
            ray /= dist[:, None]
            rays = np.concatenate([np.broadcast_to(centre, ray.shape), ray], axis=1).astype(np.float32)
            t_hit = rc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().astype(np.float64)
            vis = t_hit >= dist - (1e-3 + 2e-3 * dist)
            idx, ray = idx[vis], ray[vis]
            wt = np.abs(np.einsum("ij,ij->i", normals[idx], ray))
            img = f.color()
            if img.shape[:2] != (h, w):
                raise ScanError(
                    f.color_path, f"colour is {img.shape[1]}x{img.shape[0]}, the camera is {w}x{h}", "Re-export"
                )
            sums[idx] += wt[:, None] * img[py[idx].astype(np.int64), px[idx].astype(np.int64)]
            weights[idx] += wt
        if progress is not None:
            progress("colour", i + 1, len(views))
    seen = weights > 0
    colors = np.zeros((n, 3), np.uint8)
    colors[seen] = np.clip(np.rint(sums[seen] / weights[seen, None]), 0, 255).astype(np.uint8)
    return colors, seen, len(views)


def mesh_as_ply(
    mesh_path: Path,
    *,
    fused_dir: str | Path | None,
    name: str,
    frames: Sequence = (),
    color_intr: Intrinsics | None = None,
    digest: str | None = None,
    progress: Progress | None = None,
) -> tuple[Path, dict]:
    """A capture's OBJ mesh written once as a PLY (same vertex order) in ``fused_dir``; returns (path, info).

    An OBJ without vertex colours (3D Scanner App's) gets its vertices coloured from ``frames`` (their
    camera ``color_intr``) by :func:`colors_from_frames`; ``digest`` (the capture's content) keys that.
    """
    folder = Path(fused_dir) if fused_dir is not None else default_fused_dir()
    by_frames = bool(len(frames)) and color_intr is not None
    parts = [FUSION_VERSION, "obj", hashlib.sha256(mesh_path.read_bytes()).hexdigest()]
    if by_frames:
        parts += ["colour-v1", digest, COLOUR_VIEWS, [int(f.frame_id) for f in frames], asdict(color_intr)]
    key = _key(*parts)
    path = folder / f"{name}.mesh-{key}.ply"
    info = {"kind": "mesh", "source": str(mesh_path), "key": key}
    if path.is_file():
        side = path.with_suffix(".json")
        try:
            info = {**json.loads(side.read_text()), **info}
        except (OSError, json.JSONDecodeError):
            pass
        return path, {**info, "cached": True}
    v, c, f = read_obj(mesh_path)
    info = {**info, "points": int(len(v)), "faces": int(len(f)), "colours": "obj" if c.any() else "none"}
    if not c.any() and by_frames:
        c, seen, views = colors_from_frames(v, f, frames, color_intr, progress=progress)
        info.update(colours="frames", colour_views=views, points_coloured=int(seen.sum()))
    info["cached"] = False
    _publish(path, lambda p: write_ply(p, v, c, f), info)
    return path, info


def scaled_ply(ply_path: Path, scale: float, *, fused_dir: str | Path | None, name: str) -> tuple[Path, dict]:
    """A copy of ``ply_path`` with every vertex multiplied by ``scale`` (vertex order, colours and faces
    kept), written once in ``fused_dir``; returns (path, info). How nerfstudio's ``pose_scale`` reaches
    its ``ply_file_path``."""
    from ._o3d import open3d

    folder = Path(fused_dir) if fused_dir is not None else default_fused_dir()
    key = _key(FUSION_VERSION, "scaled", hashlib.sha256(ply_path.read_bytes()).hexdigest(), repr(float(scale)))
    path = folder / f"{name}.scaled-{key}.ply"
    info = {"kind": "scaled", "source": str(ply_path), "scale": float(scale), "key": key}
    if path.is_file():
        return path, {**info, "cached": True}
    check_ply(ply_path)  # open3d pads a truncated PLY with zeros
    o3d = open3d()
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh = o3d.io.read_triangle_mesh(str(ply_path))
    v = np.asarray(mesh.vertices, dtype=np.float64)
    if len(v) == 0:  # a point cloud without faces is read as a point cloud
        pcd = o3d.io.read_point_cloud(str(ply_path), format="ply")
        v, cols, faces = np.asarray(pcd.points, np.float64), (pcd.colors if pcd.has_colors() else None), None
    else:
        cols = mesh.vertex_colors if mesh.has_vertex_colors() else None
        faces = np.asarray(mesh.triangles, dtype=np.int32)
    if len(v) == 0:
        raise ScanError(ply_path, "PLY has no vertices or cannot be parsed", "Fix ply_file_path")
    c = np.clip(np.rint(np.asarray(cols) * 255.0), 0, 255).astype(np.uint8) if cols is not None else None
    info = {**info, "points": int(len(v)), "cached": False}
    pts = (v * float(scale)).astype(np.float32)
    _publish(path, lambda p: _write_ply(p, pts, c, faces=faces if faces is not None and len(faces) else None), info)
    return path, info


def depth_residuals(
    points: np.ndarray, frames: Sequence, depth_intr: Intrinsics, *, max_residual: float = 0.05
) -> np.ndarray:
    """|sensor depth - point depth| in metres for every point seen in every frame: how well fused points
    reproject into the frames. The depth is interpolated bilinearly at the point's sub-pixel position
    from its four neighbours, which must all be measured and within ``max_residual`` of each other (no
    depth edge); residuals above ``max_residual`` (occluded points) are left out."""
    out = []
    w, h = depth_intr.width, depth_intr.height
    for f in frames:
        d = f.depth()
        u, v, z = project(points, f.world_to_camera, depth_intr)
        ok = (z > 0) & (u >= 0) & (u < w - 1) & (v >= 0) & (v < h - 1)
        u, v, z = u[ok], v[ok], z[ok]
        u0, v0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        a, b = u - u0, v - v0
        n = np.stack([d[v0, u0], d[v0, u0 + 1], d[v0 + 1, u0], d[v0 + 1, u0 + 1]])
        good = (n > 0).all(axis=0) & (np.ptp(n, axis=0) <= max_residual)
        wts = np.stack([(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b])
        r = np.abs((n * wts).sum(axis=0) - z)[good]
        out.append(r[r <= max_residual])
    return np.concatenate(out) if out else np.zeros(0)
