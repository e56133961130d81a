"""Evaluation: ScanNet200 open-vocabulary instance AP and semantic mIoU / hIoU (see docs/evaluation.md).

- :func:`instance_ap`: ScanNet instance AP of predictions (points x masks, class ids, scores) against
  per-point GT ids ``label*1000 + instance + 1``.
- :func:`evaluate_database`: label a database's instances against a vocabulary and report AP under
  the constant-confidence and similarity scoring protocols, for mean and max aggregation.
- :func:`load_predictions`: other systems' predictions from ``.npz`` / ScanNet benchmark files.
- :func:`semantic_labels`, :func:`save_semantic`, :func:`semantic_miou`, :func:`semantic_hiou`.
"""

from __future__ import annotations

from .files import load_prediction_file, load_predictions, save_predictions
from .from_database import (
    DatabaseEvaluation,
    SemanticReport,
    evaluate_database,
    label_scan,
    predictions_from_labels,
    resolve_gt,
    semantic_from_database,
)
from .instance import IOU_THRESHOLDS, ClassAP, InstanceAPResult, ScenePredictions, instance_ap
from .semantic import (
    HIoUResult,
    SemanticResult,
    class_colors,
    load_class_split,
    save_semantic,
    semantic_gt,
    semantic_hiou,
    semantic_labels,
    semantic_labels_from_db_labels,
    semantic_miou,
)
from .vocabulary import Vocabulary, load_gt, load_gt_file, load_vocabulary, scannet200

__all__ = [
    "IOU_THRESHOLDS",
    "ClassAP",
    "DatabaseEvaluation",
    "HIoUResult",
    "InstanceAPResult",
    "ScenePredictions",
    "SemanticReport",
    "SemanticResult",
    "Vocabulary",
    "class_colors",
    "evaluate_database",
    "instance_ap",
    "label_scan",
    "load_class_split",
    "load_gt",
    "load_gt_file",
    "load_prediction_file",
    "load_predictions",
    "load_vocabulary",
    "predictions_from_labels",
    "resolve_gt",
    "save_predictions",
    "save_semantic",
    "scannet200",
    "semantic_gt",
    "semantic_hiou",
    "semantic_labels",
    "semantic_labels_from_db_labels",
    "semantic_from_database",
    "semantic_miou",
]
