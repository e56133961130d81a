"""2D instance masks per frame: an interface and two sources (files on disk, SAM automatic masks).

A source returns, for one frame, an (h, w) int32 map of 2D instance ids (0 = no instance) at the
colour or the depth resolution of the scan; ids only need to be consistent within one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, ScanError

__all__ = ["MaskSource2D", "DiskMasks", "SamAutomaticMasks", "point_grid", "mask_nms", "paint_masks"]


@runtime_checkable
class MaskSource2D(Protocol):
    """Something that gives a 2D instance-id map per frame."""

    name: str
    """Short identifier recorded with the scan's ingest settings (e.g. "disk:masks2d")."""

    def masks(self, scan, frame) -> np.ndarray:
        """(h, w) int32 instance ids for ``frame`` at colour or depth resolution; 0 = no instance."""
        ...


_DISK_FIX = "Write one single-channel PNG per frame holding an integer instance id per pixel (0 = none)"


@dataclass(frozen=True)
class DiskMasks:
    """Reads ``<scan>/<folder>/<frame_id>.png`` (also zero-padded names): an instance id per pixel."""

    folder: str = "masks2d"
    """Sub-folder of the scan holding the PNGs."""
    missing_ok: bool = True
    """A frame without a file has no masks (all zeros); False raises ScanError instead."""

    @property
    def name(self) -> str:
        return f"disk:{self.folder}"

    def _path(self, scan, frame_id: int) -> Path | None:
        root = Path(scan.path) / self.folder
        found = sorted(
            p for p in root.glob(f"*{frame_id}.png") if p.stem.isdigit() and int(p.stem) == frame_id and p.is_file()
        )
        if len(found) > 1:  # 5.png and 005.png: which one is meant is not known
            raise ScanError(
                found[1],
                f"2D masks of frame {frame_id} appear twice (also {found[0].name})",
                "Keep one file per frame id",
            )
        return found[0] if found else None

    def masks(self, scan, frame) -> np.ndarray:
        from ..images import DECODE_ERRORS, open_image

        root = Path(scan.path) / self.folder
        path = self._path(scan, frame.frame_id)
        intr_c, intr_d = scan.color_intrinsics, scan.depth_intrinsics
        if path is None:
            if not self.missing_ok:
                raise ScanError(root / f"{frame.frame_id}.png", "2D mask file is missing", _DISK_FIX)
            return np.zeros((intr_d.height, intr_d.width), dtype=np.int32)
        with open_image(path, fix=_DISK_FIX) as img:  # size checked from the header before decoding
            try:
                arr = np.asarray(img)
            except DECODE_ERRORS as exc:
                raise ScanError(path, f"not a readable image ({exc})", _DISK_FIX) from exc
        if arr.ndim != 2 or arr.dtype.kind not in "iub":
            raise ScanError(
                path,
                f"2D mask must be a single-channel integer image, got shape {arr.shape} dtype {arr.dtype}",
                _DISK_FIX,
            )
        sizes = {(intr_c.height, intr_c.width), (intr_d.height, intr_d.width)}
        if arr.shape not in sizes:
            raise ScanError(
                path,
                f"2D mask size {arr.shape[1]}x{arr.shape[0]} matches neither the colour "
                f"({intr_c.width}x{intr_c.height}) nor the depth ({intr_d.width}x{intr_d.height}) frames",
                _DISK_FIX,
            )
        return arr.astype(np.int32)


def point_grid(width: int, height: int, points_per_side: int) -> np.ndarray:
    """(P*P, 2) float64 pixel (x, y) prompts on a regular grid (segment-anything's ``build_point_grid``)."""
    off = 1.0 / (2 * points_per_side)
    t = np.linspace(off, 1 - off, points_per_side)
    xs, ys = np.meshgrid(t * width, t * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of masks kept by greedy NMS on mask IoU, highest score first (numpy, no torchvision)."""
    order = np.argsort(-scores, kind="stable")
    flat = masks.reshape(masks.shape[0], -1)
    area = flat.sum(axis=1)
    keep: list[int] = []
    for i in order:
        if area[i] == 0:
            continue
        if keep:
            inter = (flat[keep] & flat[i]).sum(axis=1)
            iou = inter / (area[keep] + area[i] - inter)
            if iou.max() > iou_threshold:
                continue
        keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)


def paint_masks(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(H, W) int32 id map from overlapping (M, H, W) masks: higher scores paint last (win overlaps); id = index + 1."""
    out = np.zeros(masks.shape[1:], dtype=np.int32)
    for i in np.argsort(scores, kind="stable"):
        out[masks[i]] = i + 1
    return out


@dataclass
class SamAutomaticMasks:
    """segment-anything style automatic masks: a grid of point prompts against ONE encoding per frame.

    ``predictor`` is an :class:`om3db.sam.SamPredictor` (or anything with ``set_image(rgb)`` and
    ``predict_batch(coords (B, P, 2), labels (B, P)) -> (masks (B, H, W) bool, iou (B,))``).
    """

    predictor: object
    points_per_side: int = 16
    """Grid of prompts per frame (segment-anything uses 32; 16 is 4x cheaper for the decoder)."""
    pred_iou_threshold: float = 0.8
    """Masks whose predicted IoU is below this are dropped (segment-anything: 0.88)."""
    nms_threshold: float = 0.7
    """Mask-IoU above which the lower-scoring of two masks is dropped (segment-anything: 0.7 on boxes)."""
    min_area: int = 64
    """Masks with fewer pixels are dropped."""
    batch: int = 64
    """Prompts per decoder call."""
    name: str = "sam-automatic"

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise ConfigError(f"SamAutomaticMasks.points_per_side must be >= 1, got {self.points_per_side}")
        if not 0 < self.nms_threshold <= 1:
            raise ConfigError(f"SamAutomaticMasks.nms_threshold must be in (0, 1], got {self.nms_threshold}")

    def masks(self, scan, frame) -> np.ndarray:
        image = frame.color()
        h, w = image.shape[:2]
        self.predictor.set_image(image)
        grid = point_grid(w, h, self.points_per_side)
        masks, iou = self.predictor.predict_batch(
            grid[:, None, :], np.ones((len(grid), 1), dtype=np.int64), chunk=self.batch
        )
        masks = np.asarray(masks, dtype=bool)
        iou = np.asarray(iou, dtype=np.float32)
        ok = (iou >= self.pred_iou_threshold) & (masks.reshape(len(masks), -1).sum(axis=1) >= self.min_area)
        masks, iou = masks[ok], iou[ok]
        if len(masks) == 0:
            return np.zeros((h, w), dtype=np.int32)
        keep = mask_nms(masks, iou, self.nms_threshold)
        return paint_masks(masks[keep], iou[keep])
