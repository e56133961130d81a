"""Predictions of other systems, read from files (see docs/evaluation.md for the formats).

- ``<scene>.npz`` with ``masks`` (points x masks, 0/1), ``classes`` (class ids) and ``scores``; the
  OpenMask3D in-memory names ``pred_masks`` / ``pred_classes`` / ``pred_scores`` work as well.
- ScanNet benchmark submission: ``<scene>.txt`` with one line per instance
  ``<relative mask file> <class id> <confidence>``, each mask file one 0/1 per point.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..errors import EvaluationError
from .instance import ScenePredictions, check_prediction_arrays

__all__ = ["load_predictions", "load_prediction_file", "save_predictions"]

_KEYS = (("masks", "classes", "scores"), ("pred_masks", "pred_classes", "pred_scores"))


def load_prediction_file(path: str | Path) -> ScenePredictions:
    """One scene's predictions from an ``.npz`` or a ScanNet benchmark ``.txt``."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return _load_npz(path)
    if path.suffix.lower() == ".txt":
        return _load_scannet_txt(path)
    raise EvaluationError(f"{path}: unknown prediction format; expected <scene>.npz or a ScanNet benchmark <scene>.txt")


def load_predictions(path: str | Path) -> dict[str, ScenePredictions]:
    """``{scene: ScenePredictions}`` from a file or a folder of ``<scene>.npz`` / ``<scene>.txt`` files."""
    path = Path(path)
    if path.is_file():
        return {path.stem: load_prediction_file(path)}
    if not path.is_dir():
        raise EvaluationError(f"{path}: predictions not found; give a folder of <scene>.npz or <scene>.txt files")
    files = sorted(path.glob("*.npz")) + sorted(path.glob("*.txt"))
    if not files:
        raise EvaluationError(f"{path}: no <scene>.npz or <scene>.txt prediction files in this folder")
    out: dict[str, ScenePredictions] = {}
    for f in files:
        if f.stem in out:
            raise EvaluationError(f"{f}: scene {f.stem} has both an .npz and a .txt prediction file; keep one")
        out[f.stem] = load_prediction_file(f)
    return out


def save_predictions(path: str | Path, pred: ScenePredictions) -> Path:
    """Write one scene's predictions as ``.npz`` (``masks`` bool, ``classes`` int64, ``scores`` float32)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        masks=np.asarray(pred.pred_masks, dtype=bool),
        classes=np.asarray(pred.pred_classes, dtype=np.int64),
        scores=np.asarray(pred.pred_scores, dtype=np.float32),
    )
    return path


def _load_npz(path: Path) -> ScenePredictions:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            for keys in _KEYS:
                if set(keys) <= names:
                    masks, classes, scores = (np.asarray(data[k]) for k in keys)
                    break
            else:
                raise EvaluationError(
                    f"{path}: arrays {sorted(names)} found; expected masks (points x masks), classes and scores"
                )
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise EvaluationError(f"{path}: not a readable .npz file ({exc}); write it with numpy.savez") from exc
    if masks.ndim != 2:
        raise EvaluationError(f"{path}: masks has shape {masks.shape}; expected (points, masks)")
    if classes.ndim != 1 or scores.ndim != 1 or len(classes) != masks.shape[1] or len(scores) != masks.shape[1]:
        raise EvaluationError(
            f"{path}: {masks.shape[1]} masks but classes {classes.shape} and scores {scores.shape}; give one of each per mask"
        )
    masks, classes, scores = check_prediction_arrays(str(path), masks, classes, scores)
    return ScenePredictions(masks, classes, scores)


def _load_scannet_txt(path: Path) -> ScenePredictions:
    masks, classes, scores = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read prediction file ({exc})") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise EvaluationError(
                f"{path}: line {n} has {len(parts)} fields; expected '<mask file> <class id> <confidence>'"
            )
        try:
            cls, conf = int(parts[1]), float(parts[2])
        except ValueError as exc:
            raise EvaluationError(
                f"{path}: line {n}: class id must be an integer and confidence a number ({exc})"
            ) from exc
        if not np.isfinite(conf):
            raise EvaluationError(f"{path}: line {n}: confidence {parts[2]} is not a finite number")
        if not np.iinfo(np.int64).min <= cls <= np.iinfo(np.int64).max:
            raise EvaluationError(f"{path}: line {n}: class id {parts[1]} is out of range; expected a vocabulary id")
        mask_path = path.parent / parts[0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": refused below instead of printed
                mask = np.loadtxt(mask_path, dtype=np.int64, ndmin=2)
        except (OSError, ValueError) as exc:
            raise EvaluationError(
                f"{mask_path}: cannot read mask (line {n} of {path}); expected one 0/1 per point"
            ) from exc
        if mask.size == 0 or mask.shape[1] != 1 or ((mask != 0) & (mask != 1)).any():
            raise EvaluationError(
                f"{mask_path}: not a mask (line {n} of {path}): "
                + (
                    "empty"
                    if mask.size == 0
                    else f"{mask.shape[1]} columns"
                    if mask.shape[1] != 1
                    else "values other than 0 and 1"
                )
                + "; expected one 0/1 per point"
            )
        mask = mask[:, 0]
        if masks and len(mask) != len(masks[0]):
            raise EvaluationError(f"{mask_path}: {len(mask)} points but earlier masks of {path} have {len(masks[0])}")
        masks.append(mask != 0)
        classes.append(cls)
        scores.append(conf)
    if not masks:  # no instances: the point count is unknown, instance_ap accepts (0,) masks
        return ScenePredictions(np.zeros((0,), bool), np.zeros(0, np.int64), np.zeros(0))
    return ScenePredictions(np.stack(masks, axis=1), np.array(classes, np.int64), np.array(scores))
