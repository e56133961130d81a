"""Object crops per (mask, view): SAM-refined (OpenMask3D) or the box of the projected points; 3 levels.

Boxes are colour-image pixels ``(x0, y0, x1, y1)`` with x1 / y1 exclusive, int32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from om3db.errors import ConfigError

__all__ = ["CropConfig", "FrameCrops", "crop_boxes", "points_box", "mask_box", "crop_frame", "prompt_rounds"]


@dataclass(frozen=True)
class CropConfig:
    """How crops are cut (OpenMask3D defaults)."""

    mode: Literal["sam", "box"] = "sam"
    """"sam": SAM-refined mask box (OpenMask3D); "box": box of the projected visible points (fast, no SAM)."""
    levels: int = 3
    """Crop levels per view; level l grows the level-0 box by l expansion steps."""
    expand: float = 0.1
    """Expansion step as a fraction of the level-0 box width / height (int(expand * w) px per level)."""
    sam_rounds: int = 10
    """SAM prompting rounds per (mask, view); the highest predicted-IoU round wins."""
    sam_points: int = 5
    """Random positive points per round, drawn from the mask's projected visible points."""
    seed: int = 0
    """Base seed; each (frame, mask) gets its own stream derived from (seed, frame_id, mask_id)."""
    box_dilation: float = 0.0
    """Box mode: grow each side by box_dilation x the mean point spacing sqrt(box area / points), as MOSS
    dilates sparse projections by their density (0 = the tight box of the points)."""
    min_box_size: int = 2
    """Level-0 boxes narrower / shorter than this many px are grown around their centre (clipped)."""

    def __post_init__(self) -> None:
        if self.mode not in ("sam", "box"):
            raise ConfigError(f"crop mode must be 'sam' or 'box', got {self.mode!r}")
        for name in ("levels", "sam_rounds", "sam_points", "min_box_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"CropConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.expand < 0 or self.box_dilation < 0:
            raise ConfigError(
                f"CropConfig.expand and box_dilation must be >= 0, got {self.expand}, {self.box_dilation}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"CropConfig.seed must be an integer >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class FrameCrops:
    """The crops of one mask in one frame."""

    mask_id: int
    """Id of the mask these crops belong to (position in the prompt list unless ids were given)."""
    boxes: np.ndarray = field(repr=False)
    """(L, 4) int32 crop boxes, colour px, x0, y0, x1, y1 (x1 / y1 exclusive); row 0 is the tight box."""
    images: list[np.ndarray] = field(repr=False)
    """L crops, (h_l, w_l, 3) uint8 RGB, cut from the frame with boxes[l]."""
    sam_iou: float | None = None
    """SAM's predicted IoU of the chosen mask (None in box mode)."""
    mask_pixels: int | None = None
    """Pixels of the chosen SAM mask (None in box mode); 0 means SAM gave nothing and the points' box was used."""


def crop_boxes(box0, width: int, height: int, levels: int = 3, expand: float = 0.1) -> np.ndarray:
    """(levels, 4) int32 boxes: level 0 = ``box0``; level l grows each side by int(expand*w)*l horizontally and
    int(expand*h)*l vertically (w = x1 - x0, h = y1 - y0 of box0), clipped to the width x height image."""
    x0, y0, x1, y1 = (int(v) for v in box0)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ConfigError(f"crop box {(x0, y0, x1, y1)} is empty or outside the {width}x{height} image")
    if levels < 1:
        raise ConfigError(f"crop levels must be >= 1, got {levels}")
    step = np.arange(levels)
    dx, dy = int(expand * (x1 - x0)) * step, int(expand * (y1 - y0)) * step
    boxes = np.stack(
        [np.maximum(0, x0 - dx), np.maximum(0, y0 - dy), np.minimum(width, x1 + dx), np.minimum(height, y1 + dy)],
        axis=1,
    )
    return boxes.astype(np.int32)


def _fit(box, width: int, height: int, min_size: int) -> tuple[int, int, int, int]:
    """Clip a box to the image and grow it around its centre to at least min_size px per side."""
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 - x0 < min_size:
        c = (x0 + x1) // 2
        x0, x1 = max(0, c - min_size // 2), min(width, c - min_size // 2 + min_size)
    if y1 - y0 < min_size:
        c = (y0 + y1) // 2
        y0, y1 = max(0, c - min_size // 2), min(height, c - min_size // 2 + min_size)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def points_box(
    points: np.ndarray, width: int, height: int, *, dilation: float = 0.0, min_size: int = 1
) -> tuple[int, int, int, int]:
    """Box of (P, 2) float px points (x, y): floor(min) .. floor(max) + 1, optionally dilated by density."""
    pts = np.asarray(points, dtype=np.float64)
    x0, y0 = np.floor(pts.min(axis=0))
    x1, y1 = np.floor(pts.max(axis=0)) + 1
    if dilation > 0:
        spacing = np.sqrt((x1 - x0) * (y1 - y0) / len(pts))
        grow = int(round(dilation * spacing))
        x0, y0, x1, y1 = x0 - grow, y0 - grow, x1 + grow, y1 + grow
    return _fit((x0, y0, x1, y1), width, height, min_size)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (x0, y0, x1, y1) box of a (H, W) bool mask, x1 / y1 exclusive; None when the mask is empty."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def prompt_rounds(
    points: np.ndarray, *, rounds: int, per_round: int, seed: int, frame_id: int, mask_id: int
) -> np.ndarray:
    """(rounds, per_round, 2) prompt points drawn from (P, 2) points, reproducible from (seed, frame, mask).

    Without replacement within a round when P >= per_round, with replacement otherwise.
    """
    rng = np.random.default_rng([seed, frame_id, mask_id])
    n = len(points)
    idx = np.stack([rng.choice(n, size=per_round, replace=n < per_round) for _ in range(rounds)])
    return np.asarray(points, dtype=np.float64)[idx]


def _check_inputs(image: np.ndarray, prompts: Sequence[np.ndarray], mask_ids) -> list[int]:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise ConfigError(
            f"frame image must be an (H, W, 3) uint8 array, got {getattr(image, 'shape', None)} "
            f"{getattr(image, 'dtype', type(image).__name__)}"
        )
    ids = list(range(len(prompts))) if mask_ids is None else [int(i) for i in mask_ids]
    if len(ids) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompt sets but {len(ids)} mask ids")
    for i, p in zip(ids, prompts, strict=True):
        arr = np.asarray(p)
        if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0 or not np.isfinite(arr).all():
            raise ConfigError(
                f"prompts of mask {i} must be a non-empty (P, 2) finite array of (x, y) px, got shape {arr.shape}"
            )
    return ids


def crop_frame(
    image: np.ndarray,
    prompts: Sequence[np.ndarray],
    *,
    config: CropConfig = CropConfig(),
    sam=None,
    frame_id: int = 0,
    mask_ids: Sequence[int] | None = None,
) -> list[FrameCrops]:
    """Crops of every mask chosen in one frame, one `FrameCrops` per prompt set, in order.

    ``prompts[i]``: (P_i, 2) float colour px (x, y), the mask's projected visible points.
    SAM mode encodes the frame once and decodes every mask's rounds in batched decoder calls.
    """
    ids = _check_inputs(image, prompts, mask_ids)
    h, w = image.shape[:2]
    if config.mode == "sam" and sam is None:
        raise ConfigError(
            "crop mode 'sam' needs a SAM predictor (om3db.sam.load_sam(checkpoint)); or use CropConfig(mode='box')"
        )
    if not prompts:
        return []
    boxes0, ious, pixels = [], [None] * len(ids), [None] * len(ids)
    if config.mode == "box":
        boxes0 = [points_box(p, w, h, dilation=config.box_dilation, min_size=config.min_box_size) for p in prompts]
    else:
        rounds = np.stack(
            [
                prompt_rounds(
                    p,
                    rounds=config.sam_rounds,
                    per_round=config.sam_points,
                    seed=config.seed,
                    frame_id=frame_id,
                    mask_id=i,
                )
                for i, p in zip(ids, prompts, strict=True)
            ]
        )
        sam.set_image(image)
        masks, best_iou, _ = sam.predict_best(rounds, np.ones(rounds.shape[:3], dtype=np.int64))
        for k, p in enumerate(prompts):
            box = mask_box(masks[k])
            boxes0.append(
                _fit(box, w, h, config.min_box_size)
                if box is not None
                else points_box(p, w, h, min_size=config.min_box_size)
            )
            ious[k], pixels[k] = float(best_iou[k]), int(masks[k].sum())
    out = []
    for k, i in enumerate(ids):
        boxes = crop_boxes(boxes0[k], w, h, config.levels, config.expand)
        crops = [image[y0:y1, x0:x1].copy() for x0, y0, x1, y1 in boxes]
        out.append(FrameCrops(mask_id=i, boxes=boxes, images=crops, sam_iou=ious[k], mask_pixels=pixels[k]))
    return out
