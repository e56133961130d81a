"""Instance AP with the ScanNet protocol: hand-computed cases, ScanNet200 data, prediction files, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from om3db.errors import EvaluationError
from om3db.evaluate import (
    IOU_THRESHOLDS,
    ScenePredictions,
    Vocabulary,
    instance_ap,
    load_gt,
    load_predictions,
    load_vocabulary,
    save_predictions,
    scannet200,
)

VOCAB = Vocabulary(ids=(1, 2), names=("cup", "box"))


def gid(label: int, instance: int) -> int:
    return label * 1000 + instance + 1


def scene(n: int, regions: dict[int, slice]) -> np.ndarray:
    """GT array of n points with the given id per slice (0 elsewhere)."""
    gt = np.zeros(n, dtype=np.int64)
    for value, sl in regions.items():
        gt[sl] = value
    return gt


def preds(n: int, masks: list[slice | np.ndarray], classes: list[int], scores: list[float]) -> dict:
    m = np.zeros((n, len(masks)), dtype=bool)
    for j, sl in enumerate(masks):
        m[sl, j] = True
    return {"pred_masks": m, "pred_classes": np.array(classes), "pred_scores": np.array(scores, dtype=float)}


def class_ap(result, name):
    return result.per_class[name]


# --- the protocol ------------------------------------------------------------------------------


def test_thresholds_are_scannets():
    assert [round(t, 2) for t in IOU_THRESHOLDS] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.25]


def test_perfect_predictions_give_one():
    gt = scene(1000, {gid(1, 0): slice(0, 200), gid(1, 1): slice(200, 400), gid(2, 0): slice(400, 700)})
    p = preds(1000, [slice(0, 200), slice(200, 400), slice(400, 700)], [1, 1, 2], [0.3, 0.2, 0.9])
    r = instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB)
    assert (r.ap, r.ap50, r.ap25) == (1.0, 1.0, 1.0)
    assert class_ap(r, "cup").num_gt == 2 and class_ap(r, "box").num_pred == 1
    assert r.to_dict()["classes"][0] == {
        "id": 1,
        "name": "cup",
        "ap": 1.0,
        "ap50": 1.0,
        "ap25": 1.0,
        "num_gt": 2,
        "num_pred": 1 + 1,
    }


def test_known_mix_of_true_and_false_positives():
    # cup: TP (0.9), FP on the box's points (0.8), TP (0.7). Descending: TP FP TP.
    # PR points at scores >= 0.7, 0.8, 0.9: (P, R) = (2/3, 1), (1/2, 1/2), (1, 1/2), plus (1, 0).
    # ScanNet step widths from recalls [1, 1/2, 1/2, 0]: [1/4, 1/4, 1/4, 1/4] -> AP = (2/3 + 1/2 + 1 + 1) / 4 = 19/24.
    gt = scene(1000, {gid(1, 0): slice(0, 200), gid(1, 1): slice(200, 400), gid(2, 0): slice(400, 700)})
    p = preds(1000, [slice(0, 200), slice(400, 700), slice(200, 400)], [1, 1, 1], [0.9, 0.8, 0.7])
    r = instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB)
    cup = class_ap(r, "cup")
    assert (
        cup.ap == pytest.approx(19 / 24) and cup.ap50 == pytest.approx(19 / 24) and cup.ap25 == pytest.approx(19 / 24)
    )
    assert class_ap(r, "box").ap == 0.0  # GT and no prediction: 0, not nan
    assert r.ap == pytest.approx((19 / 24 + 0) / 2)


def test_false_positive_ranked_first():
    # FP at 0.95 above one TP at 0.5: PR (1/2, 1) and (0, 0) -> AP = 1/2 * 1/2 = 1/4
    gt = scene(600, {gid(1, 0): slice(0, 200), gid(2, 0): slice(200, 400)})
    p = preds(600, [slice(0, 200), slice(200, 400)], [1, 1], [0.5, 0.95])
    assert class_ap(instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB), "cup").ap == pytest.approx(0.25)


@pytest.mark.parametrize(("n_gt", "n_tp", "n_fp"), [(4, 3, 2), (5, 1, 0), (2, 2, 3), (3, 1, 1)])
def test_constant_confidence_ap_is_recall_times_one_plus_precision_over_two(n_gt, n_tp, n_fp):
    n = 200 * (n_gt + n_fp)
    regions = {gid(1, i): slice(200 * i, 200 * (i + 1)) for i in range(n_gt)}
    # false positives lie on box GT (labelled, other class) so they are not ignored
    regions |= {gid(2, i): slice(200 * (n_gt + i), 200 * (n_gt + i + 1)) for i in range(n_fp)}
    masks = [slice(200 * i, 200 * (i + 1)) for i in range(n_tp)] + [
        slice(200 * (n_gt + i), 200 * (n_gt + i + 1)) for i in range(n_fp)
    ]
    p = preds(n, masks, [1] * len(masks), [1.0] * len(masks))
    cup = class_ap(instance_ap({"s": p}, {"s": scene(n, regions)}, vocabulary=VOCAB), "cup")
    recall, precision = n_tp / n_gt, n_tp / (n_tp + n_fp)
    assert cup.ap == pytest.approx(recall * (1 + precision) / 2)


def test_prediction_on_unlabelled_points_is_not_a_false_positive():
    gt = scene(600, {gid(1, 0): slice(0, 200)})
    p = preds(600, [slice(0, 200), slice(300, 500)], [1, 1], [0.5, 0.9])  # second lies on unlabelled points only
    assert instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB).per_class["cup"].ap == 1.0


def test_void_fraction_is_compared_with_each_threshold():
    # the high-scored prediction is 60% unlabelled, 40% box: ignored while threshold < 0.6, a FP (AP 1/4) from 0.6 on
    gt = scene(1000, {gid(1, 0): slice(0, 200), gid(2, 0): slice(500, 700)})
    p = preds(1000, [slice(0, 200), slice(320, 620)], [1, 1], [0.5, 0.9])
    cup = instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB).per_class["cup"]
    assert cup.ap == pytest.approx((2 * 1.0 + 7 * 0.25) / 9)
    assert cup.ap50 == 1.0 and cup.ap25 == 1.0


def test_scannet200_wall_and_floor_are_void():
    v = scannet200()
    chair, wall = v.ids[v.names.index("chair")], v.ids[v.names.index("wall")]
    gt = scene(800, {gid(chair, 0): slice(0, 200), gid(wall, 0): slice(200, 800)})
    p = preds(800, [slice(0, 200), slice(300, 700), slice(200, 800)], [chair, chair, wall], [0.5, 0.9, 0.9])
    r = instance_ap({"s": p}, {"s": gt})
    assert r.per_class["chair"].ap == 1.0 and "wall" not in r.per_class
    assert r.dropped_not_evaluated == 1 and r.num_predictions == 2
    assert r.ap == 1.0  # every other class has no GT: nan, left out of the mean
    assert r.splits["head"]["ap"] == 1.0 and np.isnan(r.splits["tail"]["ap"])
    assert r.to_dict()["splits"]["tail"]["ap"] is None


def test_regions_under_100_points_are_ignored():
    gt = scene(600, {gid(1, 0): slice(0, 200), gid(1, 1): slice(200, 299)})  # second cup has 99 points
    # a 99-point prediction is dropped; a 149-point one over the small cup + 50 unlabelled points is ignored
    p = preds(600, [slice(0, 200), slice(200, 299), slice(200, 349)], [1, 1, 1], [0.5, 0.9, 0.8])
    r = instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB)
    cup = r.per_class["cup"]
    assert (cup.ap, cup.num_gt, cup.num_pred, r.dropped_small) == (1.0, 1, 2, 1)
    # with a lower minimum the small cup is an instance to find and both predictions are kept: the 99-point one
    # matches it (0.9), the 149-point one is a duplicate (IoU 99/149) -> a FP at 0.8: TP FP TP, AP 19/24
    r50 = instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB, min_region_size=50)
    assert r50.per_class["cup"].num_gt == 2 and r50.per_class["cup"].ap50 == pytest.approx(19 / 24)


def test_multi_scan_aggregation_pools_predictions():
    # scene a: TP 0.9. scene b: FP 0.95 on a box, its cup missed. Pooled: PR (1/2, 1/2), (0, 0) -> AP 1/8
    a = scene(400, {gid(1, 0): slice(0, 200)})
    b = scene(600, {gid(1, 0): slice(0, 200), gid(2, 0): slice(200, 400)})
    pa = preds(400, [slice(0, 200)], [1], [0.9])
    pb = preds(600, [slice(200, 400)], [1], [0.95])
    r = instance_ap({"a": pa, "b": pb}, {"a": a, "b": b}, vocabulary=VOCAB)
    assert r.per_class["cup"].ap == pytest.approx(0.125)
    assert r.scenes == ("a", "b") and r.per_class["cup"].num_gt == 2


def test_second_prediction_for_one_gt_is_a_false_positive():
    gt = scene(400, {gid(1, 0): slice(0, 200)})
    p = preds(400, [slice(0, 200), slice(0, 190)], [1, 1], [0.9, 0.8])
    # TP 0.9, FP 0.8 -> PR (1/2, 1), (1, 1) -> widths [0, 1/2, 1/2] -> AP = 1/2 + 1/2 = 1
    assert instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB).per_class["cup"].ap == pytest.approx(1.0)
    p = preds(400, [slice(0, 200), slice(0, 190)], [1, 1], [0.8, 0.9])
    # the better-scored duplicate counts as the TP (ScanNet keeps the max score), the other a FP below it
    assert instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB).per_class["cup"].ap == pytest.approx(1.0)


def test_custom_vocabulary_by_ids_and_names():
    gt = scene(300, {gid(7, 0): slice(0, 150)})
    p = preds(300, [slice(0, 150)], [7], [1.0])
    r = instance_ap({"s": p}, {"s": gt}, class_ids=[7], class_names=["red"])
    assert r.per_class["red"].ap == 1.0 and r.splits == {}


def test_scene_without_predictions():
    gt = scene(300, {gid(1, 0): slice(0, 150)})
    empty = {"pred_masks": np.zeros((300, 0), bool), "pred_classes": [], "pred_scores": []}
    assert instance_ap({"s": empty}, {"s": gt}, vocabulary=VOCAB).per_class["cup"].ap == 0.0


# --- ScanNet200 data ---------------------------------------------------------------------------


def test_scannet200_data():
    v = scannet200()
    assert len(v.names) == 200 and len(set(v.ids)) == 200 and len(set(v.names)) == 200
    assert len(v.evaluated_ids) == 198
    assert {v.name_of(i) for i in set(v.ids) - set(v.evaluated_ids)} == {"wall", "floor"}
    assert v.ids[:5] == (1, 2, 3, 4, 5) and v.names[:5] == ("wall", "chair", "floor", "table", "door")
    assert v.ids[-1] == 1191 and v.names[-1] == "mattress" and v.name_of(1156) == "bathroom counter"
    head, common, tail = (set(v.splits[s]) for s in ("head", "common", "tail"))
    assert (len(head), len(common), len(tail)) == (66, 68, 66)
    assert head | common | tail == set(v.names) and not (head & common or head & tail or common & tail)
    assert len((head | common | tail) - {"wall", "floor"}) == 198
    assert {"wall", "floor"} <= head
    assert load_vocabulary("scannet200") == v


# --- files ---------------------------------------------------------------------------------------


def test_predictions_npz_round_trip_and_scannet_txt(tmp_path):
    gt = scene(300, {gid(1, 0): slice(0, 150)})
    p = ScenePredictions(np.arange(300)[:, None] < 150, np.array([1]), np.array([0.7]))
    save_predictions(tmp_path / "npz" / "scene0.npz", p)
    # ScanNet benchmark submission layout
    (tmp_path / "txt" / "pred_mask").mkdir(parents=True)
    np.savetxt(tmp_path / "txt" / "pred_mask" / "scene1_0.txt", (np.arange(300) < 150).astype(int), fmt="%d")
    (tmp_path / "txt" / "scene1.txt").write_text("pred_mask/scene1_0.txt 1 0.7\n")
    loaded = load_predictions(tmp_path / "npz") | load_predictions(tmp_path / "txt")
    assert sorted(loaded) == ["scene0", "scene1"]
    assert loaded["scene1"].pred_masks.shape == (300, 1) and loaded["scene1"].pred_scores.tolist() == [0.7]
    r = instance_ap(loaded, {"scene0": gt, "scene1": gt}, vocabulary=VOCAB)
    assert r.per_class["cup"].ap == 1.0
    # OpenMask3D's in-memory key names are accepted too
    np.savez(tmp_path / "om3d.npz", pred_masks=np.ones((300, 1), np.float16), pred_classes=[2], pred_scores=[1.0])
    assert load_predictions(tmp_path / "om3d.npz")["om3d"].pred_classes.tolist() == [2]


def test_load_gt_folders(tmp_path):
    np.savetxt(tmp_path / "scene0.txt", [0, 1001, 1001], fmt="%d")
    (tmp_path / "scan1" / "gt").mkdir(parents=True)
    np.savetxt(tmp_path / "scan1" / "gt" / "instances.txt", [2001, 0], fmt="%d")
    (tmp_path / "scan1" / "gt" / "classes.json").write_text(json.dumps([{"id": 2, "name": "red"}]))
    gt = load_gt(tmp_path)
    assert {k: v.tolist() for k, v in gt.items()} == {"scene0": [0, 1001, 1001], "scan1": [2001, 0]}
    assert load_vocabulary(tmp_path / "scan1") == Vocabulary(ids=(2,), names=("red",))
    (tmp_path / "names.txt").write_text("# colours\nred\ngreen\n")
    assert load_vocabulary(tmp_path / "names.txt") == Vocabulary(ids=(1, 2), names=("red", "green"))


# --- bad input -----------------------------------------------------------------------------------


def test_mask_rows_must_match_gt_points():
    gt = scene(300, {gid(1, 0): slice(0, 150)})
    p = preds(299, [slice(0, 150)], [1], [1.0])
    with pytest.raises(
        EvaluationError,
        match=re.escape(
            "scene s: pred_masks has 299 rows but the ground truth has 300 points; masks must be (points x masks) in the GT point order"
        ),
    ):
        instance_ap({"s": p}, {"s": gt}, vocabulary=VOCAB)


def test_unknown_class_id():
    gt = scene(300, {gid(1, 0): slice(0, 150)})
    with pytest.raises(EvaluationError, match=re.escape("scene s: predicted class ids [9] are not in the vocabulary")):
        instance_ap({"s": preds(300, [slice(0, 150)], [9], [1.0])}, {"s": gt}, vocabulary=VOCAB)


def test_other_bad_inputs():
    gt = scene(300, {gid(1, 0): slice(0, 150)})
    p = preds(300, [slice(0, 150)], [1], [1.0])
    with pytest.raises(EvaluationError, match=re.escape("no ground truth for scenes ['t']")):
        instance_ap({"t": p}, {"s": gt}, vocabulary=VOCAB)
    with pytest.raises(
        EvaluationError, match=re.escape("scene s: 1 masks but 2 classes and 1 scores; give one of each per mask")
    ):
        instance_ap({"s": {**p, "pred_classes": [1, 1]}}, {"s": gt}, vocabulary=VOCAB)
    with pytest.raises(EvaluationError, match=re.escape("scene s: predictions lack ['pred_scores']")):
        instance_ap({"s": {"pred_masks": p["pred_masks"], "pred_classes": [1]}}, {"s": gt}, vocabulary=VOCAB)
    with pytest.raises(EvaluationError, match=re.escape("vocabulary has duplicate class ids [1]")):
        Vocabulary(ids=(1, 1), names=("a", "b"))


def test_malformed_prediction_files(tmp_path):
    bad = tmp_path / "scene0.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(bad))}: not a readable \.npz file"):
        load_predictions(tmp_path)
    np.savez(bad, masks=np.ones((3, 2)), classes=[1], scores=[1.0, 1.0])
    with pytest.raises(
        EvaluationError, match=re.escape(f"{bad}: 2 masks but classes (1,) and scores (2,); give one of each per mask")
    ):
        load_predictions(bad)
    np.savez(bad, foo=np.ones(3))
    with pytest.raises(
        EvaluationError,
        match=re.escape(f"{bad}: arrays ['foo'] found; expected masks (points x masks), classes and scores"),
    ):
        load_predictions(bad)
    txt = tmp_path / "scene1.txt"
    txt.write_text("pred_mask/a.txt 1\n")
    with pytest.raises(
        EvaluationError, match=re.escape(f"{txt}: line 1 has 2 fields; expected '<mask file> <class id> <confidence>'")
    ):
        load_predictions(txt)
    with pytest.raises(EvaluationError, match=re.escape(f"{tmp_path / 'nope'}: predictions not found")):
        load_predictions(tmp_path / "nope")


def test_malformed_gt_file(tmp_path):
    f = tmp_path / "scene0.txt"
    f.write_text("1001\nchair\n")
    with pytest.raises(
        EvaluationError, match=rf"^{re.escape(str(f))}: cannot read ground truth .*expected one integer per line$"
    ):
        load_gt(f)
