"""Ingest one scan: masks -> views -> crops -> embeddings -> aggregated instance records.

Stages (each timed in the report):

1. ``views``: visibility of every mask in every usable frame and the top-k (or diverse) views;
2. ``crops``: frames are decoded ONCE each, in scan order, and every mask chosen in a frame is
   cropped from it (SAM: one image encoding per frame, all its masks prompted against it);
3. ``embed``: crops are buffered across masks and frames and encoded ``embed_batch`` at a time by
   every encoder;
4. ``aggregate``: per-view mean over levels, DBSCAN outlier views, per-instance mean.

Nothing here prints; progress goes through ``progress(stage, done, total)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .aggregate import dbscan_inliers, instance_vector, view_vectors
from .crops import CropConfig, crop_frame
from .errors import ConfigError, MaskFileError, Om3dbError
from .masks import mask_files
from .records import IngestReport, IngestResult, InstanceRecord, View
from .views import select_views

__all__ = ["IngestConfig", "IngestPlan", "ReadOptions", "ingest_scan", "plan_ingest", "run_plan"]

Progress = Callable[[str, int, int], None]
SKIP_FRAME_STEP = "frame step"
SKIP_NON_FINITE = "non-finite pose"
SKIP_NON_RIGID = "non-rigid pose"


@dataclass(frozen=True)
class IngestConfig:
    """Ingest settings; defaults are OpenMask3D's (and OpenMask3D++'s for the options it adds)."""

    frame_step: int = 10
    """Use every n-th frame in sorted id order (OpenMask3D's ``frequency``)."""
    vis_threshold: float = 0.2
    """Metres: a point is visible when |depth - z| <= this."""
    top_k: int = 5
    """Views kept per mask."""
    diverse: bool = False
    """OpenMask3D++ diverse views (max-min angle between viewing rays) instead of the top k."""
    diverse_pool: int = 10
    """Diverse views: how many most-visible views are candidates."""
    min_visibility_fraction: float = 0.5
    """Diverse views: candidates need at least this fraction of the best view's visible pixels."""
    crop: CropConfig | None = None
    """Crop settings (levels, expansion, SAM rounds); None: mode "sam" when a SAM predictor is given
    to :func:`ingest_scan`, else "box", other fields at their defaults."""
    outlier_removal: bool = True
    """Drop outlier views with DBSCAN before the instance mean (OpenMask3D++)."""
    dbscan_eps: float = 0.1
    """DBSCAN radius in cosine distance."""
    dbscan_min_samples: int | None = None
    """DBSCAN min_samples; None: floor(views / 2) + 1."""
    outlier_space: str | None = None
    """Vector space whose per-view vectors DBSCAN runs on; None: "siglip" when present, else the first."""
    min_points: int = 1
    """Masks with fewer points are not ingested (listed in the report)."""
    embed_batch: int = 64
    """Crops buffered (across masks and frames) before each encoder call."""
    seed: int = 0
    """Seed of the prompt-point sub-sampling (SAM rounds use ``crop.seed``)."""
    proposals: object | None = None
    """A :class:`om3db.proposals.ProposalConfig` for om3db's own proposer, used when a scan has no mask
    file; None: the proposer's defaults. Recorded with the scan."""
    view_vectors: bool = True
    """Keep per-view vectors so max aggregation can be served; False stores only instance vectors (mean
    aggregation only), ~6x fewer bytes with 5 views. Fixed per database by its first ingest."""
    refine_masks: bool = False
    """MOSS: grow / trim masks from a mask file with the superpoints their 2D masks cover (needs 2D masks:
    ``<scan>/masks2d/`` or a SAM predictor)."""

    def __post_init__(self) -> None:
        for name in ("frame_step", "top_k", "diverse_pool", "min_points", "embed_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"IngestConfig.{name} must be an integer >= 1, got {value!r}")
        if not self.vis_threshold > 0:
            raise ConfigError(f"IngestConfig.vis_threshold must be > 0 metres, got {self.vis_threshold}")
        if self.top_k > 256:
            raise ConfigError(
                f"IngestConfig.top_k must be <= 256 (views the store keeps per instance), got {self.top_k}"
            )
        if self.diverse and self.diverse_pool < self.top_k:
            raise ConfigError(f"IngestConfig.diverse_pool ({self.diverse_pool}) must be >= top_k ({self.top_k})")
        if not 0.0 <= self.min_visibility_fraction <= 1.0:
            raise ConfigError(
                f"IngestConfig.min_visibility_fraction must be in [0, 1], got {self.min_visibility_fraction}"
            )
        if not self.dbscan_eps > 0:
            raise ConfigError(f"IngestConfig.dbscan_eps must be > 0, got {self.dbscan_eps}")
        if self.dbscan_min_samples is not None and (
            not isinstance(self.dbscan_min_samples, int) or self.dbscan_min_samples < 1
        ):
            raise ConfigError(
                f"IngestConfig.dbscan_min_samples must be None or an integer >= 1, got {self.dbscan_min_samples!r}"
            )
        if self.crop is not None and not isinstance(self.crop, CropConfig):
            raise ConfigError(f"IngestConfig.crop must be a CropConfig or None, got {type(self.crop).__name__}")
        if not isinstance(self.view_vectors, bool):
            raise ConfigError(f"IngestConfig.view_vectors must be True or False, got {self.view_vectors!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"IngestConfig.seed must be an integer >= 0, got {self.seed!r}")
        if self.proposals is not None:
            from .proposals import ProposalConfig

            if not isinstance(self.proposals, ProposalConfig):
                raise ConfigError(
                    f"IngestConfig.proposals must be a ProposalConfig or None, got {type(self.proposals).__name__}"
                )

    def resolved_crop(self, has_sam: bool) -> CropConfig:
        """The crop settings an ingest with (or without) a SAM predictor uses."""
        if self.crop is not None:
            return self.crop
        return CropConfig(mode="sam" if has_sam else "box")

    def to_dict(self, has_sam: bool | None = None) -> dict:
        """JSON-able settings (recorded with the scan); ``has_sam`` resolves ``crop`` when it is None."""
        d = dataclasses.asdict(self)
        crop = self.crop if has_sam is None else self.resolved_crop(has_sam)
        d["crop"] = None if crop is None else dataclasses.asdict(crop)
        d["proposals"] = None if self.proposals is None else self.proposals.to_dict()
        return d


def _mask_source_2d(scan, pconfig, sam):
    """The 2D masks the proposer (and MOSS refinement) lift: ``masks2d/`` on disk, else SAM automatic masks."""
    from .proposals import SamAutomaticMasks, default_source

    try:
        return default_source(scan, pconfig)
    except ConfigError as exc:
        if sam is not None:
            return SamAutomaticMasks(sam)
        raise MaskFileError(
            scan.path,
            "the scan has no class-agnostic masks (no <scan>_masks.pt/.npy/.npz) and no "
            f"2D masks for om3db's proposer (no {pconfig.masks2d_folder}/ folder)",
            f"Put a points x masks file in the scan folder, write {pconfig.masks2d_folder}/<frame_id>.png "
            "instance-id maps, pass a SAM checkpoint (automatic 2D masks), or pass masks= to ingest_scan",
        ) from exc


def _proposals_for(scan, config: IngestConfig, sam=None):
    """THE call site for om3db's own proposer (om3db.proposals) when a scan has no mask file.

    Returns (masks (N, M) bool, scores (M,) float32, JSON-able record of the proposer's choice and facts).
    """
    from .proposals import ProposalConfig, propose

    pconfig = config.proposals or ProposalConfig()
    source = _mask_source_2d(scan, pconfig, sam)
    found = propose(scan, config=pconfig, source=source)
    record = {
        "proposer": "om3db.proposals",
        "source": type(source).__name__,
        "config": pconfig.to_dict(),
        "info": found.info,
    }
    return found.masks, np.asarray(found.scores, dtype=np.float32), record


def _refined(scan, masks: np.ndarray, config: IngestConfig, sam=None):
    """MOSS refinement of given masks; returns (masks, JSON-able record)."""
    from .proposals import ProposalConfig, refine_masks

    pconfig = config.proposals or ProposalConfig()
    source = _mask_source_2d(scan, pconfig, sam)
    refined = refine_masks(scan, masks, source=source, config=pconfig)
    changed = int((refined != masks).sum())
    return refined, {
        "refiner": "om3db.proposals.refine_masks",
        "source": type(source).__name__,
        "config": pconfig.to_dict(),
        "points_changed": changed,
    }


@contextlib.contextmanager
def _unreadable_is_a_scan_error(where: Path):
    """A folder or file the scan readers cannot open (permissions, I/O) becomes a ScanError naming it."""
    from .errors import ScanError

    try:
        yield
    except OSError as exc:
        path = Path(exc.filename) if exc.filename else Path(where)
        while path.parent != path and not os.access(path.parent, os.R_OK | os.X_OK):
            path = path.parent  # name the folder that blocks the way, not a file below it
        raise ScanError(path, f"cannot be read ({exc.strerror or exc})", "Check its permissions and the disk") from exc


def check_ingest_request(
    paths_or_root,
    *,
    format: str = "auto",
    dtype: str | None = None,
    models: str | None = None,  # noqa: A002
) -> None:
    """Refuse, before a database is created or a model loaded, an ingest whose scan paths do not exist or
    whose format, dtype or model preset is unknown (the CLI calls this before it creates the database)."""
    from .embed import model_preset
    from .errors import ScanError
    from .hardware import resolve_dtype
    from .scan import check_format

    roots = [paths_or_root] if isinstance(paths_or_root, (str, Path)) else list(paths_or_root)
    for root in roots:
        try:
            Path(root).stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ScanError(root, "folder not found", "Pass a scan folder or a folder of scans") from exc
        except OSError:  # unreadable here (permissions, ...): the scan read names it, after the database's own checks
            pass
    check_format(format)
    if dtype not in (None, "auto"):
        resolve_dtype(dtype, "auto")
    if models is not None:
        model_preset(models)


def input_fingerprint(scan, config: IngestConfig) -> str:
    """What an ingest of ``scan`` with ``config`` reads, as a digest: ``Scan.fingerprint()`` plus, when the
    proposer or MOSS refinement will read 2D masks from the scan's folder, those files' names and bytes
    (so editing ``masks2d/`` re-ingests the scan; a scan whose mask file is used as it is keeps its old
    fingerprint)."""
    base = scan.fingerprint()
    if scan.masks is not None and not config.refine_masks:
        return base
    folder = Path(scan.path) / (config.proposals.masks2d_folder if config.proposals else "masks2d")
    if not folder.is_dir():
        return base
    h = hashlib.sha256(base.encode())
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _skip_reason(reason: str) -> str:
    return SKIP_NON_FINITE if "not finite" in reason else SKIP_NON_RIGID if "not rigid" in reason else reason


def _apply_frame_step(scan, step: int):
    """The scan restricted to every ``step``-th frame id on disk; returns (scan, skipped-by-reason)."""
    skipped = {SKIP_FRAME_STEP: 0, SKIP_NON_FINITE: 0, SKIP_NON_RIGID: 0}
    if scan.frame_step == step:
        kept, dropped = scan.frames, scan.skipped
        skipped[SKIP_FRAME_STEP] = scan.frames_on_disk - len(scan.frames) - len(scan.skipped)
    elif scan.frame_step == 1:
        ids = sorted([f.frame_id for f in scan.frames] + [s.frame_id for s in scan.skipped])
        keep = set(ids[::step])
        kept = tuple(f for f in scan.frames if f.frame_id in keep)
        dropped = tuple(s for s in scan.skipped if s.frame_id in keep)
        skipped[SKIP_FRAME_STEP] = scan.frames_on_disk - len(kept) - len(dropped)
    else:
        raise ConfigError(
            f"scan {scan.name!r} was read with frame_step={scan.frame_step} but the ingest config asks for "
            f"frame_step={step}; read it with frame_step=1 or {step}"
        )
    for s in dropped:
        key = _skip_reason(s.reason)
        skipped[key] = skipped.get(key, 0) + 1
    if not kept:
        raise ConfigError(
            f"scan {scan.name!r}: no usable frame is left with frame_step={step}; use a smaller frame_step"
        )
    return dataclasses.replace(scan, frames=kept, skipped=dropped, frame_step=step), skipped


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - t0
        return now


def _check_encoders(encoders: Mapping[str, object]) -> None:
    if not encoders:
        raise ConfigError(
            "ingest needs at least one encoder, e.g. encoders={'siglip': load_siglip(), 'dinov2': load_dinov2()}"
        )
    for name, enc in encoders.items():
        if not hasattr(enc, "encode_images") or not hasattr(enc, "identity"):
            raise ConfigError(
                f"encoder {name!r} ({type(enc).__name__}) has no encode_images / identity; "
                "load it with om3db.embed.load_siglip / load_dinov2"
            )


def _masks_for(scan, config: IngestConfig, sam, masks: np.ndarray | None):
    """Stage "masks": the scan's class-agnostic masks, from the argument, the scan's mask file or the
    proposer (then MOSS-refined when asked). Returns (masks (N, M) bool, scores (M,) or None, source,
    JSON-able record of the proposer / refiner)."""
    source = "argument" if masks is not None else "scan" if scan.masks is not None else "proposer"
    scores = scan.mask_scores if source == "scan" else None
    record: dict = {}
    if source == "proposer":
        masks, scores, record = _proposals_for(scan, config, sam)
    elif masks is None:
        masks = scan.masks
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[0] != scan.num_points:
        raise MaskFileError(
            scan.path,
            f"masks have shape {masks.shape}, expected ({scan.num_points}, M) for the scan's {scan.num_points} points",
            "Pass a points x masks array in PLY vertex order",
        )
    masks = masks.astype(bool, copy=False)
    if config.refine_masks and source != "proposer":
        masks, record = _refined(scan, masks, config, sam)
    return masks, scores, source, record


def _crops_and_vectors(stepped, sel, active, *, encoders, crop_cfg, config, sam, timer, progress):
    """Stages "crops" and "embed": each frame decoded once, every mask chosen in it cropped from it, crops
    buffered across masks and frames and encoded ``embed_batch`` at a time by every encoder.

    Returns (boxes: (mask j, rank) -> (L, 4) boxes, vectors: space -> (j, rank) -> (L, D), crops made)."""
    levels = crop_cfg.levels
    boxes: dict[tuple[int, int], np.ndarray] = {}
    level_vecs = {name: {} for name in encoders}
    buffer: list[tuple[tuple[int, int], list[np.ndarray]]] = []
    total_crops = sum(len(mv.views) for mv in sel.masks) * levels
    done = 0
    t = time.perf_counter()

    def flush() -> None:
        nonlocal t, done
        t = timer.add("crops", t)
        images = [im for _, ims in buffer for im in ims]
        for name, enc in encoders.items():
            vecs = np.asarray(enc.encode_images(images), dtype=np.float32)
            if vecs.shape != (len(images), enc.identity.dim):
                raise ConfigError(
                    f"encoder {name!r} returned shape {vecs.shape} for {len(images)} crops, "
                    f"expected ({len(images)}, {enc.identity.dim})"
                )
            for k, (key, _) in enumerate(buffer):
                level_vecs[name][key] = vecs[k * levels : (k + 1) * levels]
        done += len(images)
        buffer.clear()
        t = timer.add("embed", t)
        if progress is not None:
            progress("embed", done, total_crops)

    by_frame = sel.by_frame()
    for n, (f, items) in enumerate(by_frame.items()):
        frame = stepped.frames[f]
        image = frame.color()
        prompts = [sel.masks[j].views[r].prompt_points for j, r in items]
        crops = crop_frame(
            image,
            prompts,
            config=crop_cfg,
            sam=sam,
            frame_id=frame.frame_id,
            mask_ids=[int(active[j]) for j, _ in items],
        )
        for (j, r), fc in zip(items, crops, strict=True):
            boxes[(j, r)] = fc.boxes
            buffer.append(((j, r), fc.images))
        del image
        if progress is not None:
            progress("crops", n + 1, len(by_frame))
        if len(buffer) * levels >= config.embed_batch:
            flush()
    if buffer:
        flush()
    timer.add("crops", t)
    return boxes, level_vecs, total_crops


def _aggregate(scan, masks, active, sel, boxes, level_vecs, *, encoders, config, scores, progress):
    """Stage "aggregate": per-view mean over levels, DBSCAN outlier views, per-instance mean, geometry.
    Returns (instances, mask columns no usable frame sees)."""
    outlier_space = config.outlier_space or ("siglip" if "siglip" in encoders else next(iter(encoders)))
    if outlier_space not in encoders:
        raise ConfigError(f"IngestConfig.outlier_space {outlier_space!r} is not one of the encoders {sorted(encoders)}")
    instances: list[InstanceRecord] = []
    without_view: list[int] = []
    for j, mv in enumerate(sel.masks):
        col = int(active[j])
        if not mv.views:
            without_view.append(col)
            continue
        vv = {
            name: view_vectors(np.stack([level_vecs[name][(j, r)] for r in range(len(mv.views))])) for name in encoders
        }
        inl = (
            dbscan_inliers(vv[outlier_space], eps=config.dbscan_eps, min_samples=config.dbscan_min_samples)
            if config.outlier_removal
            else np.ones(len(mv.views), dtype=bool)
        )
        pidx = np.flatnonzero(masks[:, col]).astype(np.int32)
        pts = scan.points[pidx].astype(np.float64)
        views = tuple(View(v.frame_id, v.visible_pixels, boxes[(j, r)], bool(inl[r])) for r, v in enumerate(mv.views))
        instances.append(
            InstanceRecord(
                mask_index=col,
                point_indices=pidx,
                bbox_min=pts.min(axis=0).astype(np.float32),
                bbox_max=pts.max(axis=0).astype(np.float32),
                centroid=pts.mean(axis=0).astype(np.float32),
                score=1.0 if scores is None else float(scores[col]),
                views=views,
                view_vectors=vv if config.view_vectors else {},
                vectors={name: instance_vector(vv[name], inl) for name in encoders},
            )
        )
        if progress is not None:
            progress("aggregate", j + 1, len(sel.masks))
    return instances, without_view


def _relations(scan, instances):
    """Gravity, instance geometry and spatial relations of the stored instances (``om3db.relations``)."""
    from .relations import scan_relations

    up = (getattr(scan, "capture_info", None) or {}).get("up")
    return scan_relations(scan.points, [scan.points[i.point_indices] for i in instances], capture_up=up)


def ingest_scan(
    scan,
    *,
    config: IngestConfig = IngestConfig(),
    encoders: Mapping[str, object],
    sam=None,
    masks: np.ndarray | None = None,
    progress: Progress | None = None,
    fingerprint: str | None = None,
) -> IngestResult:
    """Turn one scan (and its class-agnostic masks) into instance records with per-view and
    per-instance vectors for every encoder (space name -> encoder, e.g. "siglip", "dinov2").

    masks: (N, M) bool, overriding ``scan.masks``; without either, the proposer is asked.
    sam: a SAM predictor (om3db.sam.load_sam) for crop mode "sam".
    fingerprint: ``input_fingerprint(scan, config)`` when the caller has it already (it hashes the PLY,
    the mask file and the 2D masks); None computes it.
    """
    _check_encoders(encoders)
    crop_cfg = config.resolved_crop(sam is not None)
    if crop_cfg.mode == "sam" and sam is None:
        raise ConfigError(
            "crop mode 'sam' needs a SAM predictor: pass sam=om3db.sam.load_sam(checkpoint) or use CropConfig(mode='box')"
        )
    timer = _Timer()
    t = time.perf_counter()
    masks, scores, source, mask_record = _masks_for(scan, config, sam, masks)
    stepped, skipped = _apply_frame_step(scan, config.frame_step)
    sizes = masks.sum(axis=0)
    active = np.flatnonzero(sizes >= config.min_points)
    too_small = np.flatnonzero(sizes < config.min_points).tolist()
    t = timer.add("load", t)

    sel = select_views(
        stepped,
        masks[:, active],
        top_k=config.top_k,
        diverse=config.diverse,
        diverse_pool=config.diverse_pool,
        min_visibility_fraction=config.min_visibility_fraction,
        vis_threshold=config.vis_threshold,
        seed=config.seed,
        progress=progress,
    )
    timer.add("views", t)
    boxes, level_vecs, total_crops = _crops_and_vectors(
        stepped,
        sel,
        active,
        encoders=encoders,
        crop_cfg=crop_cfg,
        config=config,
        sam=sam,
        timer=timer,
        progress=progress,
    )
    t = time.perf_counter()
    instances, without_view = _aggregate(
        scan,
        masks,
        active,
        sel,
        boxes,
        level_vecs,
        encoders=encoders,
        config=config,
        scores=scores,
        progress=progress,
    )
    timer.add("aggregate", t)
    t = time.perf_counter()
    relations = _relations(scan, instances)
    timer.add("relations", t)

    report = IngestReport(
        scan=scan.name,
        frames_on_disk=scan.frames_on_disk,
        frames_used=len(stepped.frames),
        frames_skipped=skipped,
        masks_total=int(masks.shape[1]),
        masks_without_view=without_view,
        seconds_per_stage=timer.seconds,
        crops=total_crops,
        masks_too_small=too_small,
        mask_source=source,
        mask_file=str(scan.mask_path) if source == "scan" and scan.mask_path is not None else None,
        mask_files_ignored=[str(p) for p in mask_files(Path(scan.path)) if p != scan.mask_path],
        source_format=getattr(scan, "source_format", "scannet"),
        depth_source=getattr(scan, "depth_source", "sensor"),
        fused_ply=None if getattr(scan, "fused_ply", None) is None else str(scan.fused_ply),
        fusion=dict(getattr(scan, "fusion", None) or {}),
        capture_info=dict(getattr(scan, "capture_info", None) or {}),
        proposer={k: v for k, v in mask_record.get("info", {}).items() if k != "settings"},
    )
    settings = {**config.to_dict(sam is not None), "mask_source": source, "masks": mask_record}
    return IngestResult(
        scan=scan.name,
        scan_path=os.path.abspath(scan.path),
        fingerprint=fingerprint or input_fingerprint(scan, config),
        settings=settings,
        encoders={name: enc.identity for name, enc in encoders.items()},
        instances=instances,
        report=report,
        num_points=scan.num_points,
        frame_count=scan.frames_on_disk,
        relations=relations,
    )


@dataclass(frozen=True)
class ReadOptions:
    """How scan folders are read (``om3db.scan.read_scan``); recorded with each scan."""

    depth_scale: float = 1000.0
    """Raw uint16 depth units per metre (ScanNet layout)."""
    pose_convention: str = "opencv"
    """Camera axes of the pose files: 'opencv' or 'opengl'."""
    format: str = "auto"
    """Capture format, or 'auto' to recognise it from the folder's contents."""
    pose_scale: float | None = None
    """Metres per pose unit of nerfstudio captures with non-metric (COLMAP) poses; None: metric poses."""

    def __post_init__(self) -> None:
        from .captures.base import check_pose_scale

        check_pose_scale(self.pose_scale)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class IngestPlan:
    """Everything one ingest call decides before any scan work: the scan folders, the settings, the
    loaded encoders and SAM, and the key that says whether a stored scan is up to date."""

    folders: tuple[Path, ...]
    config: IngestConfig
    encoders: Mapping[str, object]
    """Space name -> encoder object (loaded)."""
    sam: object | None
    """A SAM predictor, or None for box crops."""
    key: dict
    """JSON-able: config, encoder identities, SAM and read options. A scan whose fingerprint and key
    are unchanged is skipped."""
    read: ReadOptions = ReadOptions()
    force: bool = False
    """Re-ingest scans even when unchanged."""
    fused_dir: Path | None = None
    """Where point clouds fused for captures without a scene PLY are kept (the database's folder)."""


def _same_name(name: str, first: Path, second: Path) -> str:
    return (
        f"two scans are named {name!r}: {first} and {second}. A database holds one scan per name, so the "
        "second would replace the first: rename one folder, or ingest them into separate databases"
    )


def plan_ingest(
    roots,
    *,
    config: IngestConfig,
    encoders: Mapping[str, object],
    sam=None,
    sam_key: str | None = None,
    read: ReadOptions = ReadOptions(),
    force: bool = False,
    fused_dir: Path | None = None,
) -> IngestPlan:
    """Find the scans at or below ``roots`` (a path or several) and fix the settings of their ingest."""
    from .scan import find_scans

    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    # absolute (not symlink-resolved: a scan is named by its folder): the stored path must not depend on
    # the folder the ingest ran in, and Ray workers may run elsewhere
    with _unreadable_is_a_scan_error(roots[0] if len(roots) == 1 else Path.cwd()):
        folders = tuple(Path(os.path.abspath(p)) for r in roots for p in find_scans(r))
    if not folders:
        raise ConfigError(
            f"no scans (folders with color/ and intrinsic/, or captures) under {', '.join(map(str, roots))}"
        )
    by_name: dict[str, Path] = {}
    for folder in folders:  # a scan is named by its folder (a capture file: its stem); names are unique keys
        name = folder.stem if folder.is_file() else folder.name
        if name in by_name:
            raise ConfigError(_same_name(name, by_name[name], folder))
        by_name[name] = folder
    _check_encoders(encoders)
    key = {
        "config": config.to_dict(has_sam=sam is not None),
        "encoders": {k: dataclasses.asdict(e.identity) for k, e in encoders.items()},
        "sam": sam_key,
        "read": {"depth_scale": read.depth_scale, "pose_convention": read.pose_convention},
    }
    if read.format != "auto":
        key["read"]["format"] = read.format
    if read.pose_scale is not None:
        key["read"]["pose_scale"] = float(read.pose_scale)
    return IngestPlan(folders, config, dict(encoders), sam, key, read, force, fused_dir)


def run_plan(
    plan: IngestPlan,
    *,
    stored: Mapping[str, object],
    write: Callable[[IngestResult, dict], None],
    progress: Callable[[str, str, int, int], None] | None = None,
) -> list:
    """Read each folder of the plan, skip the scans ``stored`` (name -> ``ScanInfo``) already holds
    unchanged, ingest the others and hand each result to ``write(result, settings)`` (one atomic commit
    per scan). Returns one ``IngestOutcome`` per folder, in order.

    An om3db error in one scan stops the run (nothing of that scan is written). It is raised with
    ``committed`` (the scans this run committed before it) and ``not_tried`` (the folders after it) set,
    so the user knows what a rerun will skip and what is still to do."""
    out: list = []
    seen: dict[str, Path] = {}
    for i, folder in enumerate(plan.folders):
        try:
            out.append(_run_one(plan, i, folder, stored=stored, write=write, progress=progress, seen=seen))
        except Om3dbError as exc:
            exc.committed = tuple(o.scan for o in out if o.status == "ingested")
            exc.not_tried = tuple(str(f) for f in plan.folders[i + 1 :])
            raise
    return out


def _run_one(plan: IngestPlan, i: int, folder: Path, *, stored, write, progress, seen: dict[str, Path]):
    """`run_plan` for one folder: its ``IngestOutcome`` ('skipped' or 'ingested', committed by ``write``)."""
    from .results import IngestOutcome
    from .scan import read_scan

    t0 = time.perf_counter()
    with _unreadable_is_a_scan_error(folder):
        scan = read_scan(
            folder,
            frame_step=plan.config.frame_step,
            depth_scale=plan.read.depth_scale,
            depth="auto",
            pose_convention=plan.read.pose_convention,
            format=plan.read.format,
            fused_dir=plan.fused_dir,
            pose_scale=plan.read.pose_scale,
        )
    if scan.name in seen:  # (names the folder scan could not foresee: refused before writing)
        raise ConfigError(_same_name(scan.name, seen[scan.name], folder))
    seen[scan.name] = folder
    if progress is not None:
        progress(scan.name, "scans", i, len(plan.folders))
    fingerprint = input_fingerprint(scan, plan.config)
    old = stored.get(scan.name)
    if (
        not plan.force
        and old is not None
        and old.status == "ready"
        and old.fingerprint == fingerprint
        and old.settings.get("key") == plan.key
    ):
        return IngestOutcome(scan.name, str(folder), "skipped", old.instances, 0.0)
    cb = None if progress is None else (lambda stage, done, total, _n=scan.name: progress(_n, stage, done, total))
    result = ingest_scan(
        scan, config=plan.config, encoders=plan.encoders, sam=plan.sam, progress=cb, fingerprint=fingerprint
    )
    write(result, {"key": plan.key, "ingest": result.settings, "report": dataclasses.asdict(result.report)})
    return IngestOutcome(
        scan.name, str(folder), "ingested", len(result.instances), time.perf_counter() - t0, result.report
    )
