"""ScanNet instance-segmentation AP, computed exactly as ScanNet's ``evaluate_semantic_instance.py``
(the script OpenMask3D and Mask3D ship for ScanNet200).

Per scene, every prediction is compared with the GT instances of its own class; per IoU threshold and
class, GT instances are matched greedily (the first unvisited prediction with IoU > threshold, a second
one for the same GT is a false positive at the lower score), and an unmatched prediction is a false
positive unless more than ``threshold`` of its points lie on void (unlabelled / not evaluated points),
too-small GT regions, or GT ids without an instance. AP comes from the precision/recall curve with the
ScanNet step widths; averages are nan-means over classes (classes without GT are nan).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EvaluationError
from .vocabulary import Vocabulary, scannet200

__all__ = ["ClassAP", "InstanceAPResult", "ScenePredictions", "instance_ap", "IOU_THRESHOLDS"]

# ScanNet: np.append(np.arange(0.5, 0.95, 0.05), 0.25) -> 0.50 ... 0.90 and 0.25 (0.95 is not included)
IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.append(np.arange(0.5, 0.95, 0.05), 0.25))


@dataclass(frozen=True)
class ScenePredictions:
    """Instance predictions of one scene."""

    pred_masks: np.ndarray
    """(N points, M masks) bool, point order of the scene's PLY / GT file."""
    pred_classes: np.ndarray
    """(M,) int class ids (vocabulary ids, e.g. ScanNet200 ids)."""
    pred_scores: np.ndarray
    """(M,) float confidences; higher ranks first."""


@dataclass(frozen=True)
class ClassAP:
    """AP of one evaluated class (nan when no scene has a GT instance of it)."""

    class_id: int
    name: str
    ap: float
    """Mean AP over IoU 0.50:0.90 (ScanNet's 0.50:0.95 range, step 0.05)."""
    ap50: float
    ap25: float
    num_gt: int
    """GT instances of at least ``min_region_size`` points."""
    num_pred: int
    """Predictions kept (at least ``min_region_size`` points)."""


@dataclass(frozen=True)
class InstanceAPResult:
    """Instance segmentation AP over a set of scenes."""

    ap: float
    ap50: float
    ap25: float
    classes: tuple[ClassAP, ...]
    """One entry per evaluated class, vocabulary order."""
    splits: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{split: {"ap", "ap50", "ap25"}}`` nan-means over the split's evaluated classes (ScanNet200: head/common/tail)."""
    scenes: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = IOU_THRESHOLDS
    ap_per_threshold: tuple[float, ...] = ()
    """nan-mean over classes of the AP at each threshold in ``thresholds``."""
    num_predictions: int = 0
    """Predictions evaluated (after the two drops below)."""
    dropped_small: int = 0
    """Predictions with fewer than ``min_region_size`` points (ScanNet skips them)."""
    dropped_not_evaluated: int = 0
    """Predictions of a vocabulary class that is not evaluated (ScanNet200: wall, floor)."""

    @property
    def per_class(self) -> dict[str, ClassAP]:
        """Classes by name."""
        return {c.name: c for c in self.classes}

    def split(self, name: str) -> dict[str, float]:
        """AP / AP50 / AP25 of a split (``"head"``, ``"common"``, ``"tail"``)."""
        return self.splits[name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nan becomes None)."""

        def f(x: float) -> float | None:
            return None if x != x else round(float(x), 6)

        return {
            "ap": f(self.ap),
            "ap50": f(self.ap50),
            "ap25": f(self.ap25),
            "splits": {k: {m: f(v) for m, v in d.items()} for k, d in self.splits.items()},
            "scenes": list(self.scenes),
            "thresholds": [round(t, 2) for t in self.thresholds],
            "ap_per_threshold": [f(v) for v in self.ap_per_threshold],
            "num_predictions": self.num_predictions,
            "dropped_small": self.dropped_small,
            "dropped_not_evaluated": self.dropped_not_evaluated,
            "classes": [
                {
                    "id": c.class_id,
                    "name": c.name,
                    "ap": f(c.ap),
                    "ap50": f(c.ap50),
                    "ap25": f(c.ap25),
                    "num_gt": c.num_gt,
                    "num_pred": c.num_pred,
                }
                for c in self.classes
            ],
        }


def check_prediction_arrays(
    where: str, masks: np.ndarray, classes: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bool masks, int64 classes, float64 scores), refusing values that would be silently reinterpreted:
    masks other than bool / 0 / 1 (a probability or a NaN would count as "in the mask"), class ids that are
    not integers of int64 range, scores that are not finite real numbers (they decide the ranking)."""
    if masks.dtype != bool:
        if not (np.issubdtype(masks.dtype, np.integer) or np.issubdtype(masks.dtype, np.floating)):
            raise EvaluationError(f"{where}: masks has dtype {masks.dtype}; expected bool or 0/1 numbers")
        bad = (masks != 0) & (masks != 1)
        if bad.any():
            raise EvaluationError(
                f"{where}: masks hold {masks[bad].flat[0].item()} ({int(np.count_nonzero(bad))} values other than 0 and 1); "
                "expected binary masks (threshold soft masks before saving them)"
            )
        masks = masks == 1
    if classes.size == 0:  # ([] is float64 to numpy)
        return masks, np.zeros(0, np.int64), np.zeros(0, np.float64)
    if classes.dtype == bool or not np.issubdtype(classes.dtype, np.integer):
        raise EvaluationError(f"{where}: classes has dtype {classes.dtype}; expected integer class ids")
    if classes.dtype == np.uint64 and int(classes.max()) > np.iinfo(np.int64).max:
        raise EvaluationError(f"{where}: class id {int(classes.max())} is out of range; expected vocabulary ids")
    if scores.dtype == bool or not (
        np.issubdtype(scores.dtype, np.integer) or np.issubdtype(scores.dtype, np.floating)
    ):
        raise EvaluationError(f"{where}: scores has dtype {scores.dtype}; expected real numbers (confidences)")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        j = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise EvaluationError(f"{where}: the score of mask {j} is {scores[j]}; expected finite confidences")
    return masks, classes.astype(np.int64), scores


def _as_predictions(scene: str, p: Any, num_points: int, vocab: Vocabulary) -> ScenePredictions:
    if isinstance(p, Mapping):
        missing = [k for k in ("pred_masks", "pred_classes", "pred_scores") if k not in p]
        if missing:
            raise EvaluationError(
                f"scene {scene}: predictions lack {missing}; give pred_masks, pred_classes, pred_scores"
            )
        masks, classes, scores = p["pred_masks"], p["pred_classes"], p["pred_scores"]
    else:
        masks, classes, scores = p.pred_masks, p.pred_classes, p.pred_scores
    masks = np.asarray(masks)
    if masks.ndim == 1 and masks.size == 0:
        masks = masks.reshape(num_points, 0)
    if masks.ndim != 2:
        raise EvaluationError(f"scene {scene}: pred_masks has shape {masks.shape}; expected (points, masks)")
    if masks.shape[0] != num_points:
        raise EvaluationError(
            f"scene {scene}: pred_masks has {masks.shape[0]} rows but the ground truth has {num_points} points; "
            "masks must be (points x masks) in the GT point order"
        )
    classes, scores = np.asarray(classes).reshape(-1), np.asarray(scores).reshape(-1)
    m = masks.shape[1]
    if len(classes) != m or len(scores) != m:
        raise EvaluationError(
            f"scene {scene}: {m} masks but {len(classes)} classes and {len(scores)} scores; give one of each per mask"
        )
    masks, classes, scores = check_prediction_arrays(f"scene {scene}", masks, classes, scores)
    unknown = sorted(set(classes.tolist()) - set(vocab.ids))
    if unknown:
        raise EvaluationError(f"scene {scene}: predicted class ids {unknown[:10]} are not in the vocabulary")
    return ScenePredictions(masks, classes, scores)


def _scene_matches(scene: str, gt_ids: np.ndarray, pred: ScenePredictions, vocab: Vocabulary, min_region_size: int):
    """ScanNet's ``assign_instances_for_scan``: per class, GT instances and predictions with their overlaps."""
    evaluated = np.array(vocab.evaluated_ids, dtype=np.int64)
    labels = gt_ids // 1000
    void = ~np.isin(labels, evaluated)
    uniq, inverse, counts = np.unique(gt_ids, return_inverse=True, return_counts=True)
    gts: dict[int, list[dict]] = {c: [] for c in vocab.evaluated_ids}
    gt_by_id: dict[int, dict] = {}
    for gid, cnt in zip(uniq.tolist(), counts.tolist(), strict=True):
        if gid == 0 or gid // 1000 not in gts:
            continue
        g = {"instance_id": gid, "vert_count": cnt, "matched_pred": []}
        gts[gid // 1000].append(g)
        gt_by_id[gid] = g
    preds: dict[int, list[dict]] = {c: [] for c in vocab.evaluated_ids}
    small = not_eval = 0
    columns = np.ascontiguousarray(pred.pred_masks.T)  # (M, N): one contiguous row per mask
    for j in range(columns.shape[0]):
        c = int(pred.pred_classes[j])
        if c not in preds:
            not_eval += 1
            continue
        idx = np.flatnonzero(columns[j])
        num = len(idx)
        if num < min_region_size:
            small += 1
            continue
        p = {
            "key": (scene, j),
            "vert_count": num,
            "confidence": float(pred.pred_scores[j]),
            "void_intersection": int(np.count_nonzero(void[idx])),
            "matched_gt": [],
        }
        inter = np.bincount(inverse[idx], minlength=len(uniq))
        for k in np.flatnonzero(inter).tolist():
            g = gt_by_id.get(int(uniq[k]))
            if g is None or g["instance_id"] // 1000 != c:
                continue
            n = int(inter[k])
            g["matched_pred"].append(
                {"key": p["key"], "vert_count": num, "confidence": p["confidence"], "intersection": n}
            )
            p["matched_gt"].append({"instance_id": g["instance_id"], "vert_count": g["vert_count"], "intersection": n})
        preds[c].append(p)
    return gts, preds, small, not_eval


def _ap_from_curve(y_true: np.ndarray, y_score: np.ndarray, hard_false_negatives: int) -> float:
    """ScanNet's AP: precision/recall at each distinct score, integrated with convolution step widths."""
    order = np.argsort(y_score)
    y_score_sorted = y_score[order]
    y_true_sorted = y_true[order]
    cumsum = np.cumsum(y_true_sorted)
    _, unique_indices = np.unique(y_score_sorted, return_index=True)
    num_pr = len(unique_indices) + 1
    num_examples = len(y_score_sorted)
    num_true = cumsum[-1] if len(cumsum) > 0 else 0
    precision = np.zeros(num_pr)
    recall = np.zeros(num_pr)
    cumsum = np.append(cumsum, 0)
    for i, idx in enumerate(unique_indices):
        below = cumsum[idx - 1]  # idx 0 reads the appended 0
        tp = num_true - below
        fp = num_examples - idx - tp
        fn = below + hard_false_negatives
        precision[i] = tp / (tp + fp)
        recall[i] = tp / (tp + fn)
    precision[-1] = 1.0
    recall[-1] = 0.0
    r = np.append(np.append(recall[0], recall), 0.0)
    step_widths = np.convolve(r, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, step_widths))


def _class_ap(scenes: list[tuple[list[dict], list[dict]]], th: float, min_region_size: int) -> float:
    """ScanNet's ``evaluate_matches`` for one class and one IoU threshold."""
    visited: set = set()
    y_true: list[float] = []
    y_score: list[float] = []
    hard_fn = 0
    has_gt = has_pred = False
    for gt_list, pred_list in scenes:
        gt_list = [g for g in gt_list if g["instance_id"] >= 1000 and g["vert_count"] >= min_region_size]
        has_gt |= bool(gt_list)
        has_pred |= bool(pred_list)
        cur_true = [1.0] * len(gt_list)
        cur_score = [-np.inf] * len(gt_list)
        cur_match = [False] * len(gt_list)
        for gi, g in enumerate(gt_list):
            found = False
            for p in g["matched_pred"]:
                if p["key"] in visited:
                    continue
                iou = p["intersection"] / (g["vert_count"] + p["vert_count"] - p["intersection"])
                if iou > th:
                    if cur_match[gi]:  # second prediction for this GT: the lower score is a false positive
                        lo, hi = min(cur_score[gi], p["confidence"]), max(cur_score[gi], p["confidence"])
                        cur_score[gi] = hi
                        cur_true.append(0.0)
                        cur_score.append(lo)
                        cur_match.append(True)
                    else:
                        found = True
                        cur_match[gi] = True
                        cur_score[gi] = p["confidence"]
                        visited.add(p["key"])
            if not found:
                hard_fn += 1
        y_true += [t for t, m in zip(cur_true, cur_match, strict=True) if m]
        y_score += [s for s, m in zip(cur_score, cur_match, strict=True) if m]
        for p in pred_list:
            if any(
                m["intersection"] / (m["vert_count"] + p["vert_count"] - m["intersection"]) > th
                for m in p["matched_gt"]
            ):
                continue
            ignore = p["void_intersection"]
            for m in p["matched_gt"]:
                if m["instance_id"] < 1000 or m["vert_count"] < min_region_size:
                    ignore += m["intersection"]
            if ignore / p["vert_count"] <= th:
                y_true.append(0.0)
                y_score.append(p["confidence"])
    if has_gt and has_pred:
        return _ap_from_curve(np.asarray(y_true), np.asarray(y_score), hard_fn)
    return 0.0 if has_gt else float("nan")


def _nanmean(values) -> float:
    a = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(a)) if a.size and not np.isnan(a).all() else float("nan")


def instance_ap(
    preds: Mapping[str, Any],
    gt: Mapping[str, np.ndarray],
    *,
    vocabulary: Vocabulary | None = None,
    class_ids: list[int] | tuple[int, ...] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    min_region_size: int = 100,
    thresholds: tuple[float, ...] = IOU_THRESHOLDS,
) -> InstanceAPResult:
    """Instance segmentation AP of ``preds`` against ``gt`` with the ScanNet protocol.

    ``preds[scene]``: a mapping with ``pred_masks`` (points x masks), ``pred_classes`` (class ids) and
    ``pred_scores``, or a :class:`ScenePredictions`. ``gt[scene]``: (points,) ids ``label*1000 + instance + 1``
    (0 unlabelled). Every scene of ``preds`` must have GT; GT scenes without predictions are not evaluated.
    The vocabulary defaults to ScanNet200 (198 evaluated classes); or give ``vocabulary`` or
    ``class_ids`` + ``class_names`` (all evaluated). ``thresholds`` must contain 0.5 and 0.25.
    """
    vocab = _resolve_vocabulary(vocabulary, class_ids, class_names)
    if not any(np.isclose(t, 0.5) for t in thresholds) or not any(np.isclose(t, 0.25) for t in thresholds):
        raise EvaluationError(f"IoU thresholds {thresholds} must include 0.5 and 0.25")
    if min_region_size < 0:
        raise EvaluationError(f"min_region_size must be >= 0, got {min_region_size}")
    missing = sorted(set(preds) - set(gt))
    if missing:
        raise EvaluationError(
            f"no ground truth for scenes {missing[:10]}; add <scene>.txt files or drop those predictions"
        )
    per_class: dict[int, list[tuple[list[dict], list[dict]]]] = {c: [] for c in vocab.evaluated_ids}
    small = not_eval = 0
    scenes = sorted(preds)
    for scene in scenes:
        gt_ids = np.asarray(gt[scene]).reshape(-1).astype(np.int64)
        p = _as_predictions(scene, preds[scene], len(gt_ids), vocab)
        g, pr, s, n = _scene_matches(scene, gt_ids, p, vocab, min_region_size)
        small += s
        not_eval += n
        for c in vocab.evaluated_ids:
            per_class[c].append((g[c], pr[c]))
    thresholds = tuple(float(t) for t in thresholds)
    i50 = [i for i, t in enumerate(thresholds) if np.isclose(t, 0.5)]
    i25 = [i for i, t in enumerate(thresholds) if np.isclose(t, 0.25)]
    i_all = [i for i, t in enumerate(thresholds) if not np.isclose(t, 0.25)]
    table = np.array([[_class_ap(per_class[c], t, min_region_size) for t in thresholds] for c in vocab.evaluated_ids])
    classes = []
    for row, c in zip(table, vocab.evaluated_ids, strict=True):
        num_gt = sum(
            1 for gl, _ in per_class[c] for g in gl if g["instance_id"] >= 1000 and g["vert_count"] >= min_region_size
        )
        num_pred = sum(len(pl) for _, pl in per_class[c])
        classes.append(
            ClassAP(c, vocab.name_of(c), _nanmean(row[i_all]), _nanmean(row[i50]), _nanmean(row[i25]), num_gt, num_pred)
        )
    splits = {}
    for split, names in vocab.splits.items():
        members = [x for x in classes if x.name in set(names)]
        splits[split] = {k: _nanmean([getattr(x, k) for x in members]) for k in ("ap", "ap50", "ap25")}
    return InstanceAPResult(
        ap=_nanmean(table[:, i_all]),
        ap50=_nanmean(table[:, i50]),
        ap25=_nanmean(table[:, i25]),
        classes=tuple(classes),
        splits=splits,
        scenes=tuple(scenes),
        thresholds=thresholds,
        ap_per_threshold=tuple(_nanmean(table[:, i]) for i in range(len(thresholds))),
        num_predictions=sum(x.num_pred for x in classes),
        dropped_small=small,
        dropped_not_evaluated=not_eval,
    )


def _resolve_vocabulary(vocabulary, class_ids, class_names) -> Vocabulary:
    if vocabulary is not None:
        if class_ids is not None or class_names is not None:
            raise EvaluationError("give either vocabulary or class_ids/class_names, not both")
        return vocabulary
    if class_ids is None and class_names is None:
        return scannet200()
    if class_names is None:
        class_names = [str(i) for i in class_ids]
    if class_ids is None:
        return Vocabulary.from_names(list(class_names))
    return Vocabulary(ids=tuple(int(i) for i in class_ids), names=tuple(class_names))
