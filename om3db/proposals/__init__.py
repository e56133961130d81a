"""Training-free class-agnostic 3D instance proposals: superpoints + 2D masks lifted to 3D.

``propose(scan)`` is what ingest calls when a scan has no mask file:

1. superpoints of the scene (:mod:`.superpoints`, graph segmentation on normals + colours);
2. per frame, the visible points and the 2D instance each falls in (:mod:`.observe`), from a
   :class:`MaskSource2D` (masks on disk, or SAM automatic masks) and sensor or rendered depth;
3. superpoints split at 2D boundaries, voted, and merged across frames into instances (:mod:`.lift`).

``refine_masks`` is the MOSS step for masks that came from a file. Parameters and their reasons:
docs/proposals.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ConfigError, ScanError
from .classagnostic_eval import classagnostic_ap
from .lift import LiftConfig, LiftResult, lift
from .masks2d import DiskMasks, MaskSource2D, SamAutomaticMasks
from .observe import Observations, observe
from .refine import RefineConfig, refine_with_observations
from .superpoints import SuperpointConfig, superpoints

__all__ = [
    "ProposalConfig",
    "Proposals",
    "propose",
    "refine_masks",
    "scan_superpoints",
    "default_source",
    "MaskSource2D",
    "DiskMasks",
    "SamAutomaticMasks",
    "SuperpointConfig",
    "LiftConfig",
    "RefineConfig",
    "classagnostic_ap",
    "superpoints",
]

Progress = Callable[[str, int, int], None]
DepthChoice = Literal["auto", "sensor", "rendered"]


@dataclass(frozen=True)
class ProposalConfig:
    """Settings of the training-free proposer (recorded with the scan by ingest)."""

    superpoints: SuperpointConfig = SuperpointConfig()
    """Graph segmentation parameters."""
    lift: LiftConfig = LiftConfig()
    """Splitting, voting and merging parameters."""
    refine: RefineConfig = RefineConfig()
    """MOSS refinement parameters (used by :func:`refine_masks`)."""
    vis_threshold: float = 0.05
    """|depth - z| in metres for a point to take the 2D label at its pixel. Tighter than view
    selection's 0.2 m: a point up to 20 cm behind an object would otherwise take that object's mask."""
    depth: DepthChoice = "auto"
    """"sensor" reads depth/, "rendered" renders depth from the PLY, "auto" renders only when the
    scan has no sensor depth."""
    masks2d_folder: str = "masks2d"
    """Scan sub-folder read by the default 2D source (:class:`DiskMasks`)."""
    use_mesh: bool = True
    """Use the PLY's faces (when it has any) as the superpoint graph; else a kNN graph."""

    def __post_init__(self) -> None:
        if not self.vis_threshold > 0:
            raise ConfigError(f"ProposalConfig.vis_threshold must be > 0 metres, got {self.vis_threshold}")
        if self.depth not in ("auto", "sensor", "rendered"):
            raise ConfigError(f"ProposalConfig.depth must be 'auto', 'sensor' or 'rendered', got {self.depth!r}")

    def to_dict(self) -> dict:
        """Plain JSON-able settings."""
        return asdict(self)


@dataclass(frozen=True)
class Proposals:
    """Class-agnostic 3D instance proposals of one scan."""

    masks: np.ndarray = field(repr=False)
    """(N, M) bool, PLY point order."""
    scores: np.ndarray = field(repr=False)
    """(M,) float32 confidence in [0, 1]."""
    info: dict = field(default_factory=dict)
    """JSON-able facts: source, settings, superpoint / split counts, frame counts, seconds per stage."""
    superpoints: np.ndarray | None = field(default=None, repr=False)
    """(N,) int32 superpoint ids after boundary splits."""

    @property
    def num_masks(self) -> int:
        return int(self.masks.shape[1])


def default_source(scan, config: ProposalConfig = ProposalConfig()) -> MaskSource2D:
    """``DiskMasks`` when the scan has ``<masks2d_folder>/``; otherwise ConfigError naming the fix."""
    folder = Path(scan.path) / config.masks2d_folder
    if folder.is_dir():
        return DiskMasks(config.masks2d_folder)
    raise ConfigError(
        f"scan {scan.name!r} has no 2D masks ({folder} is missing) and no 2D mask source was given: "
        f"write one instance-id PNG per frame to {folder}/<frame_id>.png, or pass "
        "source=SamAutomaticMasks(load_sam(CHECKPOINT))"
    )


def _has_sensor_depth(scan) -> bool:
    first = scan.frames[0]
    return getattr(first, "depth_path", None) is not None and not getattr(first, "rendered_depth", False)


def _depth_mode(scan, config: ProposalConfig) -> str:
    if config.depth == "auto":
        return "sensor" if _has_sensor_depth(scan) else "rendered"
    return config.depth


def scan_superpoints(scan, config: ProposalConfig = ProposalConfig()) -> np.ndarray:
    """(N,) int32 superpoints of the scan (its PLY faces as the graph when ``config.use_mesh``)."""
    mesh = None
    if config.use_mesh:
        from .._o3d import open3d

        o3d = open3d()
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            mesh = scan.mesh()
        if not mesh.has_triangles():
            mesh = None
        elif len(mesh.vertices) != scan.num_points:
            raise ScanError(
                scan.ply_path,
                f"mesh has {len(mesh.vertices)} vertices but the scan has {scan.num_points} points",
                "The PLY's vertices must be the scene points",
            )
    return superpoints(scan.points, scan.colors, mesh=mesh, config=config.superpoints)


def _observe(scan, source, config: ProposalConfig, progress: Progress | None) -> tuple[Observations, str]:
    mode = _depth_mode(scan, config)
    return observe(scan, source, vis_threshold=config.vis_threshold, depth=mode, progress=progress), mode


def propose(
    scan,
    *,
    config: ProposalConfig = ProposalConfig(),
    source: MaskSource2D | None = None,
    progress: Progress | None = None,
) -> Proposals:
    """Class-agnostic 3D instances of ``scan`` from superpoints and the 2D masks of ``source``.

    A scan where no point is visible in any frame, or whose frames hold no 2D masks, gives zero
    proposals with ``info["empty_reason"]`` saying why.
    """
    if not isinstance(config, ProposalConfig):
        raise ConfigError(f"config must be a ProposalConfig, got {type(config).__name__}")
    src = source if source is not None else default_source(scan, config)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    sp = scan_superpoints(scan, config)
    seconds["superpoints"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    obs, mode = _observe(scan, src, config, progress)
    seconds["observe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res: LiftResult = lift(scan.points, sp, obs, config.lift)
    seconds["lift"] = time.perf_counter() - t0
    info = {
        "method": "superpoints+2d-lift",
        "source": getattr(src, "name", type(src).__name__),
        "depth": mode,
        "settings": config.to_dict(),
        "num_superpoints": int(sp.max(initial=-1)) + 1,
        "num_splits": res.num_splits,
        "frames": len(obs.frames),
        "frames_without_masks": obs.frames_without_masks,
        "frames_without_visible_points": obs.frames_without_visible_points,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    if res.masks.shape[1] == 0:
        if obs.frames_without_visible_points == len(obs.frames):
            info["empty_reason"] = "no scene point is visible in any frame (check poses, depth and intrinsics)"
        elif obs.frames_without_masks == len(obs.frames):
            info["empty_reason"] = f"the 2D source {info['source']!r} gave no mask in any frame"
        else:
            info["empty_reason"] = "no lifted instance passed min_points / min_views / min_label_rate"
    return Proposals(res.masks, res.scores, info, res.superpoints)


def refine_masks(
    scan,
    masks: np.ndarray,
    *,
    source: MaskSource2D | None = None,
    superpoints: np.ndarray | None = None,
    config: ProposalConfig = ProposalConfig(),
) -> np.ndarray:
    """MOSS: (N, M) bool masks grown / trimmed with the superpoints their 2D masks cover."""
    m = np.asarray(masks)
    if m.ndim != 2 or m.shape[0] != scan.num_points:
        raise ConfigError(
            f"refine_masks: masks must be ({scan.num_points}, M) for scan {scan.name!r}, got shape {m.shape}"
        )
    sp = scan_superpoints(scan, config) if superpoints is None else np.asarray(superpoints, dtype=np.int32)
    if sp.shape != (scan.num_points,):
        raise ConfigError(f"refine_masks: superpoints must be ({scan.num_points},), got shape {sp.shape}")
    src = source if source is not None else default_source(scan, config)
    obs, _ = _observe(scan, src, config, None)
    return refine_with_observations(m.astype(bool), sp, obs, config.refine)
