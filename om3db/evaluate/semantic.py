"""Semantic segmentation from instance labels: per-point labels, export (.npy / PLY), mIoU and hIoU.

Labels are vocabulary indices ``0 .. C-1``; ``-1`` is unlabelled (ignored in the GT, a miss in the prediction).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import EvaluationError
from ..ply import write_ply
from .vocabulary import Vocabulary

__all__ = [
    "SemanticResult",
    "HIoUResult",
    "semantic_labels",
    "semantic_labels_from_db_labels",
    "semantic_gt",
    "save_semantic",
    "class_colors",
    "semantic_miou",
    "semantic_hiou",
    "load_class_split",
]

UNLABELLED = -1
Fill = Literal["none", "nearest"]


def semantic_labels(
    num_points: int,
    point_indices: Sequence[np.ndarray],
    class_indices: Sequence[int],
    *,
    scores: Sequence[float] | None = None,
    fill: Fill = "none",
    points: np.ndarray | None = None,
) -> np.ndarray:
    """(num_points,) int64 class index per point from instance masks.

    Overlapping instances: the higher score wins (all equal: the later instance). Points in no
    instance stay ``-1`` (``fill="none"``) or take the class of the nearest labelled point
    (``fill="nearest"``, needs ``points`` (N, 3), scipy cKDTree).
    """
    if len(point_indices) != len(class_indices) or (scores is not None and len(scores) != len(class_indices)):
        raise EvaluationError(
            f"{len(point_indices)} instances but {len(class_indices)} classes"
            + ("" if scores is None else f" and {len(scores)} scores")
            + "; give one per instance"
        )
    if fill not in ("none", "nearest"):
        raise EvaluationError(f"unknown fill {fill!r}; choose 'none' or 'nearest'")
    out = np.full(num_points, UNLABELLED, dtype=np.int64)
    order = (
        np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
        if scores is not None
        else range(len(class_indices))
    )
    for j in order:
        idx = np.asarray(point_indices[j], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= num_points):
            raise EvaluationError(f"instance {j} has point indices outside 0..{num_points - 1}")
        out[idx] = int(class_indices[j])
    if fill == "nearest":
        if points is None or len(points) != num_points:
            raise EvaluationError(
                f"fill='nearest' needs the scan points ({num_points}, 3); got "
                + ("none" if points is None else f"{np.asarray(points).shape}")
            )
        labelled = out >= 0
        if labelled.any() and not labelled.all():
            from scipy.spatial import cKDTree

            pts = np.asarray(points, dtype=np.float64)
            _, nn = cKDTree(pts[labelled]).query(pts[~labelled])
            out[~labelled] = out[labelled][nn]
    return out


def semantic_labels_from_db_labels(
    labels: Iterable[Any], num_points: int, *, fill: Fill = "none", points: np.ndarray | None = None
) -> np.ndarray:
    """Per-point labels from ``db.label`` output (``label_index``, ``score``, ``point_indices``)."""
    labels = list(labels)
    return semantic_labels(
        num_points,
        [lab.point_indices for lab in labels],
        [int(lab.label_index) for lab in labels],
        scores=[float(lab.score) for lab in labels],
        fill=fill,
        points=points,
    )


def semantic_gt(gt_ids: np.ndarray, vocabulary: Vocabulary) -> np.ndarray:
    """GT ids (``label*1000 + instance + 1``) -> (N,) vocabulary index, -1 where unlabelled or not in it."""
    labels = np.asarray(gt_ids, dtype=np.int64) // 1000
    lut = {cid: i for i, cid in enumerate(vocabulary.ids)}
    out = np.full(labels.shape, UNLABELLED, dtype=np.int64)
    for cid, i in lut.items():
        out[labels == cid] = i
    return out


def class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 distinct colours (golden-ratio hues), deterministic."""
    import colorsys

    return np.array(
        [
            [int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)]
            for i in range(num_classes)
        ],
        dtype=np.uint8,
    ).reshape(num_classes, 3)


def save_semantic(
    path: str | Path, labels: np.ndarray, *, points: np.ndarray | None = None, num_classes: int | None = None
) -> Path:
    """Write per-point labels: ``.npy`` (int64 array) or ``.ply`` (points coloured per class, unlabelled black,
    plus an int ``label`` vertex property)."""
    path = Path(path)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if path.suffix.lower() not in (".npy", ".ply"):
        raise EvaluationError(f"{path}: unknown export format; use .npy or .ply")
    if path.suffix.lower() == ".ply" and (points is None or np.asarray(points).shape != (len(labels), 3)):
        raise EvaluationError(f"{path}: PLY export needs the scan points ({len(labels)}, 3)")
    if path.is_dir():
        raise EvaluationError(f"{path}: is a folder; move it away or export elsewhere")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _write_semantic(path, labels, points, num_classes)
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot write the labels ({exc.strerror or exc}); export elsewhere") from None


def _write_semantic(path: Path, labels: np.ndarray, points, num_classes) -> Path:
    if path.suffix.lower() == ".npy":
        np.save(path, labels)
        return path
    n_cls = int(num_classes if num_classes is not None else labels.max(initial=-1) + 1)
    colors = np.zeros((len(labels), 3), dtype=np.uint8)
    ok = labels >= 0
    colors[ok] = class_colors(max(n_cls, 1))[labels[ok] % max(n_cls, 1)]
    write_ply(path, points, colors, extra={"label": np.asarray(labels, dtype=np.int32)})
    return path


@dataclass(frozen=True)
class SemanticResult:
    """Semantic segmentation IoU over a vocabulary, accumulated over all points of all scenes."""

    miou: float
    """nan-mean of per-class IoU (a class with no GT and no prediction is nan)."""
    iou: tuple[float, ...]
    """(C,) IoU = TP / (TP + FP + FN) per class index."""
    class_names: tuple[str, ...]
    num_points: int
    """GT-labelled points evaluated."""

    @property
    def per_class(self) -> dict[str, float]:
        """IoU by class name."""
        return dict(zip(self.class_names, self.iou, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nan becomes None)."""
        f = lambda x: None if x != x else round(float(x), 6)  # noqa: E731
        return {
            "miou": f(self.miou),
            "num_points": self.num_points,
            "iou": {n: f(v) for n, v in self.per_class.items()},
        }


@dataclass(frozen=True)
class HIoUResult:
    """Base / novel split: hIoU = harmonic mean of base mIoU and novel mIoU."""

    hiou: float
    base_miou: float
    novel_miou: float
    semantic: SemanticResult
    novel: tuple[str, ...]

    @property
    def miou(self) -> float:
        """mIoU over all classes."""
        return self.semantic.miou

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nan becomes None)."""
        f = lambda x: None if x != x else round(float(x), 6)  # noqa: E731
        return {
            "hiou": f(self.hiou),
            "base_miou": f(self.base_miou),
            "novel_miou": f(self.novel_miou),
            "novel": list(self.novel),
            **self.semantic.to_dict(),
        }


def _pairs(pred, gt) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if isinstance(pred, Mapping) != isinstance(gt, Mapping):
        raise EvaluationError("give predictions and ground truth both as arrays or both as {scene: array} mappings")
    if not isinstance(pred, Mapping):
        pred, gt = {"": pred}, {"": gt}
    missing = sorted(set(pred) ^ set(gt))
    if missing:
        raise EvaluationError(f"scenes {missing[:10]} are in only one of predictions and ground truth")
    out = []
    for s in sorted(gt):
        p, g = np.asarray(pred[s]).reshape(-1), np.asarray(gt[s]).reshape(-1)
        if len(p) != len(g):
            where = f"scene {s}: " if s else ""
            raise EvaluationError(f"{where}prediction has {len(p)} points but the ground truth has {len(g)}")
        out.append((s, p.astype(np.int64), g.astype(np.int64)))
    return out


def semantic_miou(
    pred_labels: np.ndarray | Mapping[str, np.ndarray],
    gt_labels: np.ndarray | Mapping[str, np.ndarray],
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore: int = UNLABELLED,
) -> SemanticResult:
    """mIoU of per-point class indices (arrays or ``{scene: array}``); GT points equal to ``ignore`` are skipped.

    Give ``num_classes`` or ``class_names`` (a :class:`Vocabulary`'s names).
    """
    if class_names is None and num_classes is None:
        raise EvaluationError("give num_classes or class_names")
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(int(num_classes)))
    c = len(names)
    if num_classes is not None and int(num_classes) != c:
        raise EvaluationError(f"num_classes {num_classes} but {c} class names")
    conf = np.zeros((c, c), dtype=np.int64)
    missed = np.zeros(c, dtype=np.int64)  # GT points predicted unlabelled / out of vocabulary: false negatives
    n = 0
    for s, p, g in _pairs(pred_labels, gt_labels):
        keep = g != ignore
        bad = keep & ((g < 0) | (g >= c))
        if bad.any():
            raise EvaluationError(
                f"{'scene ' + s + ': ' if s else ''}ground truth has class index {int(g[bad][0])} outside 0..{c - 1}"
            )
        p, g = p[keep], g[keep]
        n += len(g)
        valid = (p >= 0) & (p < c)
        conf += np.bincount(g[valid] * c + p[valid], minlength=c * c).reshape(c, c)
        missed += np.bincount(g[~valid], minlength=c)
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(axis=0) - np.diag(conf)
    fn = conf.sum(axis=1) - np.diag(conf) + missed
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    miou = float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan")
    return SemanticResult(miou, tuple(float(x) for x in iou), names, n)


def load_class_split(path: str | Path) -> tuple[str, ...]:
    """Novel class names from a JSON list or a text file (one name per line, ``#`` comments)."""
    from .vocabulary import _read_text

    path = Path(path)
    if path.is_dir():
        raise EvaluationError(f"{path}: is a folder; give the class split as a JSON list or a text file of names")
    text = _read_text(path, "class split", "a JSON list or one class name per line")
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise EvaluationError(f"{path}: not valid JSON ({exc}); expected a list of class names") from exc
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise EvaluationError(f"{path}: expected a JSON list of class names")
        names = tuple(names)
    else:
        names = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not names:
        raise EvaluationError(f"{path}: the class split holds no class names; give at least one novel class")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvaluationError(f"{path}: the class split names {dup[:10]} more than once; list each class once")
    return names


def novel_classes(novel: Iterable[str] | str | Path, class_names: Sequence[str]) -> tuple[str, ...]:
    """The novel class names (given, or read from a split file), each a name of the vocabulary."""
    names = load_class_split(novel) if isinstance(novel, (str, Path)) else tuple(novel)
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise EvaluationError(f"novel classes {unknown[:10]} are not in the vocabulary")
    return names


def semantic_hiou(
    pred_labels: np.ndarray | Mapping[str, np.ndarray],
    gt_labels: np.ndarray | Mapping[str, np.ndarray],
    *,
    class_names: Sequence[str],
    novel: Iterable[str] | str | Path,
    ignore: int = UNLABELLED,
) -> HIoUResult:
    """mIoU over base and novel classes and their harmonic mean (hIoU). ``novel``: names or a split file."""
    novel_names = novel_classes(novel, class_names)
    res = semantic_miou(pred_labels, gt_labels, class_names=class_names, ignore=ignore)
    iou = np.array(res.iou)
    is_novel = np.array([n in set(novel_names) for n in res.class_names])
    if not is_novel.any() or is_novel.all():
        raise EvaluationError("the novel split must hold some but not all vocabulary classes")
    base = float(np.nanmean(iou[~is_novel])) if not np.isnan(iou[~is_novel]).all() else float("nan")
    nov = float(np.nanmean(iou[is_novel])) if not np.isnan(iou[is_novel]).all() else float("nan")
    h = 2 * base * nov / (base + nov) if base + nov > 0 else (0.0 if base == base and nov == nov else float("nan"))
    return HIoUResult(h, base, nov, res, tuple(novel_names))
