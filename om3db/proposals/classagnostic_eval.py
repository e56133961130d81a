"""Class-agnostic instance AP of 3D mask proposals (ScanNet benchmark matching, one class).

Follows ScanNet's ``evaluate_semantic_instance.py`` for a single class: GT instances are the
distinct ``label * 1000 + instance + 1`` ids (0 = unlabelled); GT regions under
``min_region_size`` points are ignored; a prediction matching no GT at IoU > threshold is a false
positive unless more than that threshold of it lies on unlabelled / ignored points; per GT only the
highest-scoring match is a true positive. AP is the area under ScanNet's precision-recall curve,
averaged over IoU 0.50:0.95 (AP), and at 0.50 (AP50) and 0.25 (AP25).
"""

from __future__ import annotations

import numpy as np

from ..errors import EvaluationError

__all__ = ["classagnostic_ap", "mask_iou"]

THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(M, G) float64 IoU between (N, M) and (N, G) bool masks."""
    p, g = pred.astype(np.float32), gt.astype(np.float32)
    inter = (p.T @ g).astype(np.float64)
    union = p.sum(0)[:, None] + g.sum(0)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _ap(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    order = np.argsort(y_score, kind="stable")
    ys, yt = y_score[order], y_true[order]
    cum = np.append(np.cumsum(yt), 0)
    _, uniq = np.unique(ys, return_index=True)
    n_ex, n_true = len(ys), (cum[-2] if len(ys) else 0)
    precision = np.zeros(len(uniq) + 1)
    recall = np.zeros(len(uniq) + 1)
    for i, idx in enumerate(uniq):
        c = cum[idx - 1]
        tp = n_true - c
        fp = n_ex - idx - tp
        fn = c + hard_fn
        precision[i] = tp / (tp + fp) if tp + fp > 0 else 0.0
        recall[i] = tp / (tp + fn) if tp + fn > 0 else 0.0
    precision[-1], recall[-1] = 1.0, 0.0
    r = np.concatenate([[recall[0]], recall, [0.0]])
    return float(np.dot(precision, np.convolve(r, [-0.5, 0, 0.5], "valid")))


def classagnostic_ap(
    pred_masks: np.ndarray,
    pred_scores: np.ndarray,
    gt_ids: np.ndarray,
    *,
    min_region_size: int = 100,
    ignore_labels: tuple[int, ...] = (),
) -> dict[str, float]:
    """``{"ap", "ap50", "ap25", "num_gt", "num_pred"}`` for (N, M) bool masks, (M,) scores, (N,) GT ids.

    ignore_labels: semantic labels (``gt_id // 1000``) treated as unlabelled, e.g. ``(1, 2)`` for
    walls and floor when proposals only target objects. AP values are nan when there is no GT.
    """
    masks = np.asarray(pred_masks, dtype=bool)
    scores = np.asarray(pred_scores, dtype=np.float64)
    ids = np.asarray(gt_ids, dtype=np.int64)
    if masks.ndim != 2 or masks.shape[0] != ids.shape[0]:
        raise EvaluationError(f"pred_masks must be (N, M) with N = {ids.shape[0]} GT points, got shape {masks.shape}")
    if scores.shape != (masks.shape[1],):
        raise EvaluationError(f"pred_scores must be ({masks.shape[1]},), got shape {scores.shape}")
    labelled = ids > 0
    if ignore_labels:
        labelled &= ~np.isin(ids // 1000, np.asarray(ignore_labels, dtype=np.int64))
    uniq, counts = np.unique(ids[labelled], return_counts=True)
    valid = uniq[counts >= min_region_size]
    gt = ids[:, None] == valid[None, :]
    ignored = ~np.isin(ids, valid)  # unlabelled, ignored labels, small regions
    iou = mask_iou(masks, gt)
    pred_size = np.maximum(masks.sum(0), 1)
    ignore_frac = (masks & ignored[:, None]).sum(0) / pred_size
    out: dict[str, float] = {"num_gt": float(len(valid)), "num_pred": float(masks.shape[1])}
    aps = {}
    for th in (*THRESHOLDS, 0.25):
        if len(valid) == 0:
            aps[th] = float("nan")
            continue
        y_true, y_score = [], []
        hard_fn = 0
        for g in range(len(valid)):
            matches = np.flatnonzero(iou[:, g] > th)
            if len(matches) == 0:
                hard_fn += 1
                continue
            best = matches[np.argmax(scores[matches])]
            for m in matches:  # duplicates of a matched GT are false positives
                y_true.append(1.0 if m == best else 0.0)
                y_score.append(scores[m])
        matched_any = (iou > th).any(axis=1)
        for m in np.flatnonzero(~matched_any):
            if ignore_frac[m] <= th:
                y_true.append(0.0)
                y_score.append(scores[m])
        aps[th] = _ap(np.asarray(y_true), np.asarray(y_score), hard_fn) if y_true else 0.0
    out["ap"] = float(np.mean([aps[t] for t in THRESHOLDS]))
    out["ap50"] = aps[0.5]
    out["ap25"] = aps[0.25]
    return out
