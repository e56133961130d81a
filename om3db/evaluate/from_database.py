"""Predictions from an om3db database: each instance of a scan labelled against a vocabulary.

``db.label(scan, names, template=..., aggregation=...)`` returns one ``Label(instance_id, label,
label_index, score, point_indices)`` per instance. Two scoring protocols turn labels into ranked
predictions: ``"constant"`` gives every prediction confidence 1.0 (OpenMask3D's published protocol),
``"similarity"`` uses the label's text-similarity score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, EvaluationError
from ..query import DEFAULT_TEMPLATE, check_template
from .instance import InstanceAPResult, ScenePredictions, instance_ap
from .vocabulary import Vocabulary, load_gt, load_gt_file, load_vocabulary

__all__ = [
    "DatabaseEvaluation",
    "SemanticReport",
    "evaluate_database",
    "semantic_from_database",
    "predictions_from_labels",
    "label_scan",
    "resolve_gt",
]

Protocol = Literal["constant", "similarity"]
Aggregation = Literal["mean", "max"]
PROTOCOLS = ("constant", "similarity")
AGGREGATIONS = ("mean", "max")


@dataclass(frozen=True)
class DatabaseEvaluation:
    """Instance AP of a database under each (scoring protocol, aggregation) pair."""

    results: dict[str, InstanceAPResult]
    """Keyed ``"<protocol>/<aggregation>"``, e.g. ``"constant/mean"``."""
    template: str
    vocabulary_size: int
    scenes: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    """Anything the user should know (e.g. scans with no instances)."""

    def result(self, protocol: str, aggregation: str) -> InstanceAPResult:
        """The result of one protocol / aggregation pair."""
        return self.results[f"{protocol}/{aggregation}"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "template": self.template,
            "vocabulary_size": self.vocabulary_size,
            "scenes": list(self.scenes),
            "notes": list(self.notes),
            "results": {k: v.to_dict() for k, v in self.results.items()},
        }


def resolve_gt(gt: Mapping[str, Any] | str | Path) -> dict[str, np.ndarray]:
    """GT as ``{scene: (N,) int64}`` from a mapping of arrays / paths, or a folder (see :func:`load_gt`)."""
    if isinstance(gt, (str, Path)):
        return load_gt(gt)
    out = {}
    for scene, value in gt.items():
        if isinstance(value, (str, Path)):
            p = Path(value)
            out[scene] = load_gt_file(p / "gt" / "instances.txt" if p.is_dir() else p)
        else:
            out[scene] = np.asarray(value).reshape(-1).astype(np.int64)
    return out


def predictions_from_labels(
    labels: Iterable[Any], vocabulary: Vocabulary, num_points: int, *, protocol: str, scene: str = ""
) -> ScenePredictions:
    """Turn ``db.label`` output into (points x instances) predictions with class ids of ``vocabulary``."""
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown scoring protocol {protocol!r}; choose one of {PROTOCOLS}")
    labels = list(labels)
    masks = np.zeros((num_points, len(labels)), dtype=bool)
    classes = np.zeros(len(labels), dtype=np.int64)
    scores = np.ones(len(labels), dtype=np.float64)
    for j, lab in enumerate(labels):
        idx = np.asarray(lab.point_indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= num_points):
            raise EvaluationError(
                f"scan {scene}: instance {lab.instance_id} has point indices up to {int(idx.max())} but the ground truth "
                f"has {num_points} points; the GT file must follow the scan's PLY vertex order"
            )
        masks[idx, j] = True
        classes[j] = vocabulary.ids[int(lab.label_index)]
        if protocol == "similarity":
            scores[j] = float(lab.score)
    return ScenePredictions(masks, classes, scores)


def label_scan(db: Any, scan: str, vocabulary: Vocabulary, *, template: str, aggregation: str) -> list[Any]:
    """``db.label`` for one scan against all vocabulary names."""
    if aggregation not in AGGREGATIONS:
        raise EvaluationError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
    return list(db.label(scan, list(vocabulary.names), template=template, aggregation=aggregation))


def _scan_point_counts(db: Any) -> dict[str, int]:
    counts = {}
    try:
        infos = db.scans()
    except Exception:  # noqa: BLE001 - the point count check is a courtesy, GT length decides
        return counts
    for info in infos:
        name, n = getattr(info, "name", None), getattr(info, "num_points", None)
        if name is not None and n is not None:
            counts[str(name)] = int(n)
    return counts


def _check_point_counts(db: Any, gt_ids: Mapping[str, np.ndarray]) -> None:
    counts = _scan_point_counts(db)
    for scene, ids in gt_ids.items():
        n = counts.get(scene)
        if n is not None and n != len(ids):
            raise EvaluationError(
                f"scan {scene}: the database has {n} points but the ground truth has {len(ids)}; "
                "use the GT file of this scan's PLY"
            )


def check_export_dir(export: str | Path) -> Path:
    """The folder semantic labels are exported to: new, or an existing folder (refused before any work)."""
    export = Path(export)
    existing = next((p for p in (export, *export.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        if existing == export:
            raise EvaluationError(f"{export}: exists and is not a folder; give a folder to export the labels into")
        raise EvaluationError(f"{export}: cannot create the export folder ({existing} is a file); give a folder path")
    return export


def evaluate_database(
    db: Any,
    gt: Mapping[str, Any] | str | Path,
    vocabulary: Vocabulary | str | Path = "scannet200",
    *,
    template: str = DEFAULT_TEMPLATE,
    protocols: tuple[str, ...] = PROTOCOLS,
    aggregations: tuple[str, ...] = AGGREGATIONS,
    min_region_size: int = 100,
    progress: Callable[[str, str, int, int], None] | None = None,
) -> DatabaseEvaluation:
    """Label every GT scene's instances in ``db`` and compute instance AP per protocol and aggregation.

    ``gt`` maps scan names to GT id arrays or files (or is a folder, see :func:`load_gt`); every GT scene
    must be a scan in the database with the same point count. ``progress(scene, "label", done, total)``
    is called after each scene is labelled (total: scenes x aggregations).
    """
    vocab = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
    try:
        check_template(template)
    except ConfigError as exc:
        raise EvaluationError(f"prompt template {template!r}: {exc}") from exc
    for p in protocols:
        if p not in PROTOCOLS:
            raise EvaluationError(f"unknown scoring protocol {p!r}; choose one of {PROTOCOLS}")
    gt_ids = resolve_gt(gt)
    if not gt_ids:
        raise EvaluationError("no ground-truth scenes given")
    _check_point_counts(db, gt_ids)
    results: dict[str, InstanceAPResult] = {}
    notes = []
    done, total = 0, len(aggregations) * len(gt_ids)
    for agg in aggregations:
        labels = {}
        for s in sorted(gt_ids):
            labels[s] = label_scan(db, s, vocab, template=template, aggregation=agg)
            done += 1
            if progress is not None:
                progress(s, "label", done, total)
        if agg == aggregations[0]:
            notes += [f"scan {s} has no instances" for s, lab in labels.items() if not lab]
        for proto in protocols:
            preds = {
                s: predictions_from_labels(lab, vocab, len(gt_ids[s]), protocol=proto, scene=s)
                for s, lab in labels.items()
            }
            results[f"{proto}/{agg}"] = instance_ap(preds, gt_ids, vocabulary=vocab, min_region_size=min_region_size)
    return DatabaseEvaluation(results, template, len(vocab.names), tuple(sorted(gt_ids)), tuple(notes))


@dataclass(frozen=True)
class SemanticReport:
    """Semantic segmentation of a database's scans against GT."""

    result: Any
    """:class:`~om3db.evaluate.semantic.SemanticResult`, or :class:`~om3db.evaluate.semantic.HIoUResult` with a novel split."""
    exported: tuple[str, ...] = ()
    """Files written (one per scan) when an export folder was given."""
    predicted: Mapping[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Per scene, the (N,) predicted class index per point (-1 unlabelled): for plots (om3db.plots)."""
    truth: Mapping[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Per scene, the (N,) GT class index per point (-1 void)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**self.result.to_dict(), "exported": list(self.exported)}


def semantic_from_database(
    db: Any,
    gt: Mapping[str, Any] | str | Path,
    vocabulary: Vocabulary | str | Path = "scannet200",
    *,
    template: str = DEFAULT_TEMPLATE,
    aggregation: str = "mean",
    fill: str = "none",
    novel: Iterable[str] | str | Path | None = None,
    export: str | Path | None = None,
    export_format: str = "npy",
    progress: Callable[[str, str, int, int], None] | None = None,
) -> SemanticReport:
    """Per-point labels of every GT scene from the database's instance labels, mIoU (and hIoU with ``novel``)
    over all vocabulary classes; optionally written to ``export/<scene>.<npy|ply>``.

    ``fill="nearest"`` and PLY export read the scan's points (PLY vertices) from the path the scan was ingested from.
    """
    from .semantic import (
        novel_classes,
        save_semantic,
        semantic_gt,
        semantic_hiou,
        semantic_labels_from_db_labels,
        semantic_miou,
    )

    vocab = vocabulary if isinstance(vocabulary, Vocabulary) else load_vocabulary(vocabulary)
    if export_format not in ("npy", "ply"):
        raise EvaluationError(f"unknown export format {export_format!r}; choose 'npy' or 'ply'")
    if fill not in ("none", "nearest"):
        raise EvaluationError(f"unknown fill {fill!r}; choose 'none' or 'nearest'")
    if aggregation not in AGGREGATIONS:
        raise EvaluationError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
    if export is not None:
        check_export_dir(export)
    if novel is not None:  # a bad split is refused before any scan is labelled
        novel = novel_classes(novel, vocab.names)
    gt_ids = resolve_gt(gt)
    if not gt_ids:
        raise EvaluationError("no ground-truth scenes given")
    _check_point_counts(db, gt_ids)
    need_points = fill == "nearest" or (export is not None and export_format == "ply")
    paths = {}
    if need_points:
        paths = {str(i.name): i.path for i in db.scans()}
    pred, truth, points_of, written = {}, {}, {}, []
    for scene in sorted(gt_ids):
        n = len(gt_ids[scene])
        points_of[scene] = _scan_points(scene, paths, n) if need_points else None
        labels = label_scan(db, scene, vocab, template=template, aggregation=aggregation)
        pred[scene] = semantic_labels_from_db_labels(labels, n, fill=fill, points=points_of[scene])
        truth[scene] = semantic_gt(gt_ids[scene], vocab)
        if progress is not None:
            progress(scene, "label", len(pred), len(gt_ids))
    if novel is None:
        result = semantic_miou(pred, truth, class_names=vocab.names)
    else:
        result = semantic_hiou(pred, truth, class_names=vocab.names, novel=novel)
    if export is not None:  # only once everything is computed: a refused evaluation writes nothing
        for scene in sorted(pred):
            out = Path(export) / f"{scene}.{export_format}"
            labels = pred[scene]
            written.append(str(save_semantic(out, labels, points=points_of[scene], num_classes=len(vocab.names))))
    return SemanticReport(result, tuple(written), predicted=pred, truth=truth)


def _scan_points(scene: str, paths: dict[str, str], num_points: int) -> np.ndarray:
    from ..scan import read_scan

    if scene not in paths:
        raise EvaluationError(f"scan {scene}: not in the database; ingest it first or drop its GT file")
    pts = read_scan(paths[scene], masks=False).points
    if len(pts) != num_points:
        raise EvaluationError(f"scan {scene}: the PLY has {len(pts)} points but the ground truth has {num_points}")
    return pts
