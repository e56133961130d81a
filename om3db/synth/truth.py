"""Ground-truth oracles for tests and benchmarks: ``load_gt``, ``gt_point_visibility``, ``render_frame``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..camera import Intrinsics, project
from ..errors import ConfigError, ScanError
from .render import _cached_raycaster, _cast, _render
from .scene import GENERATOR_VERSION, SynthScene, build_scene


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
        raise ScanError(
            root / "gt" / "instances.txt",
            f"{ids.shape[0]} lines for {scene['num_points']} points",
            "Regenerate the scan",
        )
    instance = np.where(ids > 0, ids % 1000 - 1, -1).astype(np.int32)
    masks = instance[:, None] == np.arange(len(objects))[None, :]
    return GroundTruth(root, ids, instance, (ids // 1000).astype(np.int32), classes, masks, objects, scene)


def _scene_of(scan_dir: Path) -> tuple[dict, SynthScene]:
    meta = _read_json(scan_dir / "gt" / "scene.json")
    if meta.get("version") != GENERATOR_VERSION:
        raise ScanError(
            scan_dir / "gt" / "scene.json",
            f"written by generator version {meta.get('version')}, this is {GENERATOR_VERSION}",
            "Regenerate the scan",
        )
    scene = build_scene(meta["seed"], meta["size"], meta["index"])
    if meta.get("mesh_sha256") != scene.digest():
        raise ScanError(
            scan_dir / "gt" / "scene.json",
            "the scene rebuilt from it differs from the one written (other generator code)",
            "Regenerate the scan with this om3db",
        )
    return meta, scene


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


def render_frame(
    scan_dir: str | Path, frame_id: int, *, resolution: Literal["depth", "color"] = "depth"
) -> RenderedFrame:
    """Re-render frame ``frame_id`` of a synthetic scan at depth or colour resolution."""
    root = Path(scan_dir)
    if resolution not in ("depth", "color"):
        raise ConfigError(f"resolution must be 'depth' or 'color', got {resolution!r}")
    meta, scene = _scene_of(root)
    name = "intrinsic_depth.txt" if resolution == "depth" else "intrinsic_color.txt"
    intr = Intrinsics.from_matrix(np.loadtxt(root / "intrinsic" / name), *meta[f"{resolution}_size"])
    r = _render(
        _cached_raycaster(scene.seed, scene.size, scene.index), scene, _pose_of(root, frame_id), intr, normals=True
    )
    return RenderedFrame(r["depth"], r["instance"], r["normal"].astype(np.float32), r["rgb"])
