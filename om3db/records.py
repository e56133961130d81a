"""Records exchanged between ingest and the store: what one scan's ingest produces."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["EncoderIdentity", "ViewRecord", "InstanceRecord", "IngestReport", "IngestResult"]


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
class ViewRecord:
    """One chosen view of an instance."""

    frame_id: int
    visible_pixels: int
    """Distinct depth pixels covered by the instance's visible points in this frame."""
    crop_boxes: np.ndarray = field(repr=False)
    """(L, 4) int32 crop boxes per level, colour pixels, x0, y0, x1, y1 with x1/y1 exclusive."""
    inlier: bool = True
    """False when DBSCAN marked this view an outlier (it is kept but not used in the mean)."""


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
    views: tuple[ViewRecord, ...]
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
