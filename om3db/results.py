"""What the database hands back: search hits, stored instances, scans, labels, ingest outcomes.

Small frozen dataclasses with ``to_dict()`` (JSON-able). ``Hit`` and ``Instance`` share their geometry
fields through :class:`om3db.records.Geometry`; views are :class:`om3db.records.View`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .records import Geometry, IngestReport, View

__all__ = ["Hit", "Instance", "ScanInfo", "Label", "IngestOutcome"]


def _geometry_dict(g: Geometry) -> dict:
    return {
        "point_count": int(g.point_count),
        "bbox_min": list(g.bbox_min),
        "bbox_max": list(g.bbox_max),
        "centroid": list(g.centroid),
    }


@dataclass(frozen=True)
class Hit(Geometry):
    """One search result (geometry fields from :class:`Geometry`)."""

    instance_id: int
    scan: str
    score: float
    """Cosine similarity to the query (mean: instance vector; max: best view)."""
    frame_id: int | None
    """Best view: the best-matching view (max aggregation) or the most visible one (mean)."""
    crop_box: tuple[int, int, int, int] | None
    """Level-0 crop box of that view, colour pixels (x0, y0, x1, y1), x1/y1 exclusive."""
    point_indices: np.ndarray | None = field(default=None, repr=False, compare=False)
    """(P,) int32 indices into the scan's PLY vertices, when asked for (``with_points``)."""

    def to_dict(self) -> dict:
        return {
            "instance_id": int(self.instance_id),
            "scan": self.scan,
            "score": float(self.score),
            **_geometry_dict(self),
            "frame_id": self.frame_id,
            "crop_box": None if self.crop_box is None else list(self.crop_box),
            "point_indices": None if self.point_indices is None else self.point_indices.tolist(),
        }


@dataclass(frozen=True)
class Instance(Geometry):
    """One stored instance with its geometry and views (geometry fields from :class:`Geometry`)."""

    id: int
    scan: str
    scan_path: str
    mask_index: int
    """Column of the scan's masks it came from."""
    score: float
    """Proposal confidence."""
    views: tuple[View, ...]
    """Chosen views, best first."""
    point_indices: np.ndarray | None = field(default=None, repr=False, compare=False)
    """(P,) int32 indices into the scan's PLY vertices (file order); None when not read."""

    def to_dict(self) -> dict:
        return {
            "id": int(self.id),
            "scan": self.scan,
            "scan_path": self.scan_path,
            "mask_index": int(self.mask_index),
            "score": float(self.score),
            **_geometry_dict(self),
            "views": [v.to_dict() for v in self.views],
            "point_indices": None if self.point_indices is None else self.point_indices.tolist(),
        }


@dataclass(frozen=True)
class ScanInfo:
    """One scan as the database holds it."""

    name: str
    path: str
    fingerprint: str
    """sha256 of the scan's inputs; an unchanged fingerprint and settings skip a re-ingest."""
    status: str
    """'ready' (the only status written; see ``store.models.ScanRow.status``)."""
    instances: int
    frame_count: int
    num_points: int
    settings: dict = field(repr=False)
    """{"key": what decides a re-ingest, "ingest": the ingest settings, "report": the ingest report}."""
    updated_at: str = ""

    @property
    def masks(self) -> str:
        """Where its masks came from: the mask file's name (and how many others were ignored), or the
        proposer."""
        report = (self.settings or {}).get("report") or {}
        if report.get("mask_file"):
            ignored = report.get("mask_files_ignored") or []
            return Path(report["mask_file"]).name + (f" (ignored: {len(ignored)} other)" if ignored else "")
        return report.get("mask_source") or (self.settings or {}).get("ingest", {}).get("mask_source", "?")

    @property
    def source_format(self) -> str:
        """The capture format it was read as ('scannet', 'nerfstudio', 'record3d', ...)."""
        report = (self.settings or {}).get("report") or {}
        return report.get("source_format", "scannet")

    @property
    def fused_ply(self) -> str | None:
        """The point cloud om3db fused for it (a capture without one), else None."""
        return ((self.settings or {}).get("report") or {}).get("fused_ply")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "masks": self.masks, "format": self.source_format}


@dataclass(frozen=True)
class Label:
    """An instance's best class from a vocabulary."""

    instance_id: int
    label: str
    label_index: int
    score: float
    point_indices: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class IngestOutcome:
    """What ``Database.ingest`` did with one scan."""

    scan: str
    path: str
    status: str
    """'ingested' | 'skipped' (fingerprint and settings unchanged) | 'failed' (Ray ingest: the scan's task
    failed after its retries; ``error`` says why, nothing of it was written)."""
    instances: int
    seconds: float
    report: IngestReport | None = None
    error: str | None = None
    """Why a 'failed' scan failed (exception type and message)."""
    compute: dict | None = None
    """Ingested scans: the dtype and device each model ran in, and why (``om3db.embed.compute_settings``)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
