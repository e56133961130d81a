"""Records exchanged between ingest and the store: what one scan's ingest produces."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["EncoderIdentity", "View", "Geometry", "InstanceRecord", "IngestReport", "IngestResult"]


@dataclass(frozen=True)
class EncoderIdentity:
    """Who made a vector: stored with every vector space; queries with another identity are refused."""

    model_id: str
    """Hub id or local directory the weights were loaded from."""
    revision: str
    """Hub revision, or ``sha256:<16 hex>`` of the weights file for a local directory."""
    dim: int
    """Vector dimension."""
    normalization: str = "l2"
    """How vectors are normalised ("l2": unit length)."""
    preprocessing: str = ""
    """Image preprocessing / feature recipe (e.g. "384px bicubic, mean/std 0.5" or "cls+meanpatch")."""

    def describe(self) -> str:
        return f"{self.model_id}@{self.revision} (dim {self.dim}, {self.normalization}, {self.preprocessing})"


@dataclass(frozen=True)
class View:
    """One view of an instance: chosen by view selection, given crop boxes by ingest, stored, read back.

    The one view type of om3db. View selection fills ``frame_index``, ``prompt_points`` and ``box``
    (what cropping needs); ingest adds ``crop_boxes`` and ``inlier``; the store keeps frame id, visible
    pixels, crop boxes and inlier (the other three are not stored and are None on views read back).
    """

    frame_id: int
    visible_pixels: int
    """Distinct depth pixels covered by the instance's visible points in this frame."""
    crop_boxes: tuple[tuple[int, int, int, int], ...] = ()
    """Crop box per level, colour pixels, (x0, y0, x1, y1) with x1/y1 exclusive (empty before cropping)."""
    inlier: bool = True
    """False when DBSCAN marked this view an outlier (it is kept but not used in the mean)."""
    frame_index: int | None = field(default=None, compare=False)
    """Position of the frame in ``scan.frames`` (view selection only)."""
    prompt_points: np.ndarray | None = field(default=None, repr=False, compare=False)
    """(P, 2) int32 colour-pixel (x, y) of visible mask points: SAM prompts (view selection only)."""
    box: np.ndarray | None = field(default=None, repr=False, compare=False)
    """(4,) int32 box of all visible mask points in colour pixels, x1/y1 exclusive (view selection only)."""

    def __post_init__(self) -> None:
        boxes = self.crop_boxes
        if not (isinstance(boxes, tuple) and all(type(b) is tuple for b in boxes)):  # normalise arrays / lists
            rows = np.asarray(boxes, dtype=np.int64).reshape(-1, 4).tolist()
            object.__setattr__(self, "crop_boxes", tuple(tuple(int(x) for x in b) for b in rows))

    def to_dict(self) -> dict:
        """The stored fields, JSON-able."""
        return {
            "frame_id": int(self.frame_id),
            "visible_pixels": int(self.visible_pixels),
            "crop_boxes": [list(b) for b in self.crop_boxes],
            "inlier": bool(self.inlier),
        }


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """Where an instance is: shared by stored instances and search hits. World metres."""

    point_count: int
    """Points of the scan's PLY in the instance's mask."""
    bbox_min: tuple[float, float, float]
    """Axis-aligned box corner (xmin, ymin, zmin)."""
    bbox_max: tuple[float, float, float]
    """Axis-aligned box corner (xmax, ymax, zmax)."""
    centroid: tuple[float, float, float]
    """Mean of the instance's points."""


@dataclass(frozen=True)
class InstanceRecord:
    """One instance of a scan, ready to store."""

    mask_index: int
    """Column of the scan's masks this instance came from."""
    point_indices: np.ndarray = field(repr=False)
    """(P,) int32 sorted indices into the scan's PLY vertices."""
    bbox_min: np.ndarray = field(repr=False)
    """(3,) float32 world metres."""
    bbox_max: np.ndarray = field(repr=False)
    centroid: np.ndarray = field(repr=False)
    score: float
    """Proposal confidence (1.0 when the mask file has none)."""
    views: tuple[View, ...]
    """Chosen views, best first."""
    view_vectors: dict[str, np.ndarray] = field(repr=False)
    """Space name ("siglip", "dinov2") -> (V, D) float32 unit vectors, row i for views[i]."""
    vectors: dict[str, np.ndarray] = field(repr=False)
    """Space name -> (D,) float32 unit instance vector (mean over inlier views, renormalised)."""


@dataclass(frozen=True)
class IngestReport:
    """What an ingest of one scan did and skipped."""

    scan: str
    frames_on_disk: int
    frames_used: int
    frames_skipped: dict[str, int]
    """Reason -> count (frame step, non-finite pose, non-rigid pose)."""
    masks_total: int
    masks_without_view: list[int]
    """Mask indices that no usable frame sees; they are not stored."""
    seconds_per_stage: dict[str, float]
    crops: int = 0
    masks_too_small: list[int] = field(default_factory=list)
    """Mask indices with fewer points than the ingest's ``min_points``; they are not stored."""
    mask_source: str = "scan"
    """Where the masks came from: 'scan' (its mask file), 'argument' or 'proposer'."""
    mask_file: str | None = None
    """The mask file used (source 'scan')."""
    mask_files_ignored: list[str] = field(default_factory=list)
    """Other ``*_masks.*`` files in the scan folder, not used (the one used is ``mask_file``)."""
    source_format: str = "scannet"
    """The capture format read (``om3db.captures.FORMATS``)."""
    depth_source: str = "sensor"
    """'sensor' (depth images) or 'rendered' (from the scene mesh / points)."""
    fused_ply: str | None = None
    """The scene point cloud om3db fused from the RGB-D frames (captures without one), else None."""
    fusion: dict = field(default_factory=dict)
    """How it was fused (kind, voxel settings, frames, points, cached or not)."""
    capture_info: dict = field(default_factory=dict)
    """The capture's conventions as read: pose convention, depth units, intrinsics source."""
    proposer: dict = field(default_factory=dict)
    """Source 'proposer': what om3db's proposer found (superpoints, frames without 2D masks, seconds and,
    when it proposed nothing, ``empty_reason``); else empty."""

    def empty_reason(self) -> str | None:
        """Why the scan stored no instance, in words; None when it stored at least one."""
        dropped = set(self.masks_without_view) | set(self.masks_too_small)
        if self.masks_total > len(dropped):
            return None
        if self.masks_total == 0:
            reason = self.proposer.get("empty_reason") if self.mask_source == "proposer" else None
            return reason or f"the masks ({self.mask_source}) have no column"
        parts = []
        if self.masks_without_view:
            parts.append(f"{len(self.masks_without_view)} seen by no usable frame")
        if self.masks_too_small:
            parts.append(f"{len(self.masks_too_small)} under min_points")
        return f"all {self.masks_total} masks were dropped: " + ", ".join(parts)


@dataclass(frozen=True)
class IngestResult:
    """Everything the store needs to commit one scan atomically."""

    scan: str
    scan_path: str
    fingerprint: str
    settings: dict
    """JSON-able ingest settings (config + proposer choice) recorded with the scan."""
    encoders: dict[str, EncoderIdentity]
    """Space name -> identity of the encoder that filled it."""
    instances: list[InstanceRecord]
    report: IngestReport
    num_points: int
    frame_count: int
    relations: object = field(default=None, repr=False)
    """``om3db.relations.ScanRelations``: gravity, instance geometry and relations (None: not computed)."""
