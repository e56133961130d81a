"""Semantic segmentation: labels from instances, export, mIoU and hIoU on hand-built cases."""

from __future__ import annotations

import re

import numpy as np
import pytest

from om3db.errors import EvaluationError
from om3db.evaluate import (
    Vocabulary,
    class_colors,
    load_class_split,
    save_semantic,
    semantic_gt,
    semantic_hiou,
    semantic_labels,
    semantic_miou,
)

NAMES = ("a", "b", "c")
PRED = np.array([0, 0, 1, 1, -1, 2])
GT = np.array([0, 1, 1, 1, 2, -1])
# kept points 0..4. a: TP 1, FP 1 -> 1/2. b: TP 2, FN 1 -> 2/3. c: FN 1 (predicted unlabelled) -> 0; point 5 ignored.


def test_miou_hand_built():
    r = semantic_miou(PRED, GT, class_names=NAMES)
    assert r.iou == pytest.approx((0.5, 2 / 3, 0.0))
    assert r.miou == pytest.approx((0.5 + 2 / 3) / 3) and r.num_points == 5
    assert r.to_dict()["iou"] == {"a": 0.5, "b": 0.666667, "c": 0.0}


def test_miou_accumulates_over_scenes_and_skips_absent_classes():
    r = semantic_miou({"x": PRED[:3], "y": PRED[3:]}, {"x": GT[:3], "y": GT[3:]}, class_names=NAMES)
    assert r.iou == pytest.approx((0.5, 2 / 3, 0.0))
    r = semantic_miou(np.array([0, 0]), np.array([0, 0]), num_classes=3)
    assert r.iou[0] == 1.0 and np.isnan(r.iou[1]) and r.miou == 1.0 and r.to_dict()["iou"]["1"] is None


def test_hiou_hand_built(tmp_path):
    # novel = {b}: base mIoU (1/2 + 0) / 2 = 1/4, novel 2/3 -> hIoU = 2 * 1/4 * 2/3 / (1/4 + 2/3) = 4/11
    r = semantic_hiou(PRED, GT, class_names=NAMES, novel=["b"])
    assert (r.base_miou, r.novel_miou) == pytest.approx((0.25, 2 / 3))
    assert r.hiou == pytest.approx(4 / 11)
    (tmp_path / "novel.json").write_text('["b"]')
    (tmp_path / "novel.txt").write_text("# novel classes\nb\n")
    assert semantic_hiou(PRED, GT, class_names=NAMES, novel=tmp_path / "novel.json").hiou == pytest.approx(4 / 11)
    assert load_class_split(tmp_path / "novel.txt") == ("b",)
    assert semantic_hiou(PRED, GT, class_names=NAMES, novel=["c"]).hiou == 0.0


def test_labels_from_instances_overlap_and_fill():
    # instance 0 (class 2, score 0.9) and instance 1 (class 1, score 0.5) overlap on point 2: the higher score wins
    lab = semantic_labels(6, [np.array([1, 2]), np.array([2, 3])], [2, 1], scores=[0.9, 0.5])
    assert lab.tolist() == [-1, 2, 2, 1, -1, -1]
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [3.4, 0, 0], [-5, 0, 0]])
    filled = semantic_labels(
        6, [np.array([1, 2]), np.array([2, 3])], [2, 1], scores=[0.9, 0.5], fill="nearest", points=pts
    )
    assert filled.tolist() == [2, 2, 2, 1, 1, 2]


def test_semantic_gt_and_export(tmp_path):
    vocab = Vocabulary(ids=(3, 5), names=("red", "blue"))
    assert semantic_gt(np.array([0, 3001, 5002, 7001, 1001]), vocab).tolist() == [-1, 0, 1, -1, -1]
    labels = np.array([0, 1, -1])
    np.testing.assert_array_equal(np.load(save_semantic(tmp_path / "s.npy", labels)), labels)
    pts = np.arange(9, dtype=np.float32).reshape(3, 3)
    ply = save_semantic(tmp_path / "s.ply", labels, points=pts, num_classes=2).read_bytes()
    header, body = ply.split(b"end_header\n")
    assert b"element vertex 3" in header and b"property int label" in header
    rec = np.frombuffer(
        body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"), ("label", "<i4")]
    )
    assert rec["label"].tolist() == [0, 1, -1] and rec["x"].tolist() == [0, 3, 6]
    colors = class_colors(2)
    assert [tuple(rec[k][0] for k in "rgb"), tuple(rec[k][2] for k in "rgb")] == [tuple(colors[0]), (0, 0, 0)]


def test_semantic_bad_inputs(tmp_path):
    with pytest.raises(EvaluationError, match=re.escape("prediction has 2 points but the ground truth has 3")):
        semantic_miou(np.zeros(2), np.zeros(3), num_classes=1)
    with pytest.raises(EvaluationError, match=re.escape("ground truth has class index 3 outside 0..2")):
        semantic_miou(np.zeros(1), np.array([3]), class_names=NAMES)
    with pytest.raises(EvaluationError, match=re.escape("novel classes ['z'] are not in the vocabulary")):
        semantic_hiou(PRED, GT, class_names=NAMES, novel=["z"])
    with pytest.raises(EvaluationError, match=re.escape("fill='nearest' needs the scan points (3, 3); got none")):
        semantic_labels(3, [np.array([0])], [0], fill="nearest")
    with pytest.raises(
        EvaluationError, match=re.escape(f"{tmp_path / 's.ply'}: PLY export needs the scan points (3, 3)")
    ):
        save_semantic(tmp_path / "s.ply", np.zeros(3))
    bad = tmp_path / "novel.json"
    bad.write_text("{not json")
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(bad))}: not valid JSON"):
        load_class_split(bad)
