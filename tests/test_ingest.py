"""Ingest end to end: box crops against GT boxes, the fake colour encoder, the SAM path with tiny
models, the report, and every bad-input path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from om3db.aggregate import max_view_similarity
from om3db.crops import CropConfig
from om3db.errors import ConfigError, MaskFileError
from om3db.ingest import IngestConfig, ingest_scan
from om3db.scan import read_scan
from tests.fakes import FakeColorEncoder
from tests.test_views import _handmade

BOX = CropConfig(mode="box")


@pytest.fixture(scope="module")
def synth_path(tiny_scan_path) -> Path:
    return tiny_scan_path


@pytest.fixture(scope="module")
def box_result(synth_path):
    scan = read_scan(synth_path)
    return ingest_scan(scan, config=IngestConfig(frame_step=2, crop=BOX), encoders={"siglip": FakeColorEncoder()})


def _gt_box(ids: np.ndarray, value: int):
    ys, xs = np.nonzero(ids == value)
    return None if xs.size == 0 else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_box_crops_contain_the_object(box_result, synth_path):
    """Level-0 box vs the GT 2D instance box at colour resolution, on views where nothing else
    (no other object, no image border) touches the object's box."""
    from PIL import Image

    checked = 0
    for inst in box_result.instances:
        for v in inst.views:
            ids = np.asarray(Image.open(synth_path / "gt" / "instance2d" / f"{v.frame_id}.png")).astype(np.int64)
            gt = _gt_box(ids, inst.mask_index + 1)
            assert gt is not None, (inst.mask_index, v.frame_id)
            x0, y0, x1, y1 = gt
            window = ids[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2]
            h, w = ids.shape
            unoccluded = x0 > 0 and y0 > 0 and x1 < w and y1 < h and set(np.unique(window)) <= {0, inst.mask_index + 1}
            if unoccluded:
                assert _iou(v.crop_boxes[0], gt) >= 0.8, (inst.mask_index, v.frame_id, v.crop_boxes[0], gt)
                checked += 1
            lv = np.asarray(v.crop_boxes)
            assert lv.shape == (3, 4) and all(type(x) is int for b in v.crop_boxes for x in b)
            assert np.all(lv[1:, :2] <= lv[:-1, :2]) and np.all(lv[1:, 2:] >= lv[:-1, 2:])  # levels grow
    assert checked >= 5


def test_red_object_nearest_to_text_red(box_result, synth_path):
    from om3db.synth import load_gt

    gt = load_gt(synth_path)
    enc = FakeColorEncoder()
    classes = gt.object_classes
    vecs = np.stack([i.vectors["siglip"] for i in box_result.instances])
    for name in sorted(set(classes)):
        q = enc.encode_texts([f"a {name} in a scene"])[0]
        mean_best = box_result.instances[int(np.argmax(vecs @ q))].mask_index
        assert classes[mean_best] == name
        max_scores = [
            max_view_similarity(q, i.view_vectors["siglip"], np.array([v.inlier for v in i.views]))
            for i in box_result.instances
        ]
        assert classes[box_result.instances[int(np.argmax(max_scores))].mask_index] == name


@pytest.fixture(scope="module")
def red_scan_path(tmp_path_factory) -> Path:
    """A tiny synthetic scan whose objects include a red one (first such seed)."""
    from om3db.synth import build_scene, write_scans

    seed = next(s for s in range(100) if "red" in [o.class_name for o in build_scene(s, "tiny").objects])
    return write_scans(tmp_path_factory.mktemp("red"), scans=1, seed=seed, size="tiny")[0]


def test_vectors_of_the_red_object_are_nearest_to_text_red(red_scan_path):
    from om3db.synth import load_gt

    classes = load_gt(red_scan_path).object_classes
    enc = FakeColorEncoder()
    r = ingest_scan(read_scan(red_scan_path), config=IngestConfig(frame_step=4, crop=BOX), encoders={"siglip": enc})
    q = enc.encode_texts(["red"])[0]
    sims = [float(i.vectors["siglip"] @ q) for i in r.instances]
    best = r.instances[int(np.argmax(sims))]
    assert classes[best.mask_index] == "red"
    assert all(
        max(i.view_vectors["siglip"] @ q) < max(best.view_vectors["siglip"] @ q)
        for i in r.instances
        if classes[i.mask_index] != "red"
    )


def test_records_and_report(box_result, synth_path):
    from om3db.synth import load_gt

    gt = load_gt(synth_path)
    r = box_result
    assert [i.mask_index for i in r.instances] == list(range(gt.num_objects))
    for inst in r.instances:
        assert np.array_equal(inst.point_indices, np.flatnonzero(gt.masks[:, inst.mask_index]))
        pts = read_scan(synth_path, masks=False).points[inst.point_indices]
        np.testing.assert_allclose(inst.centroid, pts.mean(axis=0), atol=1e-5)
        assert np.array_equal(inst.bbox_min, pts.min(axis=0)) and np.array_equal(inst.bbox_max, pts.max(axis=0))
        assert inst.score == 1.0 and 1 <= len(inst.views) <= 5
        assert [v.visible_pixels for v in inst.views] == sorted((v.visible_pixels for v in inst.views), reverse=True)
        assert inst.view_vectors["siglip"].shape == (len(inst.views), len(FakeColorEncoder().names))
        np.testing.assert_allclose(np.linalg.norm(inst.vectors["siglip"]), 1.0, rtol=1e-5)
    rep = r.report
    assert (rep.frames_on_disk, rep.frames_used) == (20, 10)
    assert rep.frames_skipped == {"frame step": 10, "non-finite pose": 0, "non-rigid pose": 0}
    assert rep.masks_total == gt.num_objects and rep.masks_without_view == [] and rep.masks_too_small == []
    assert rep.crops == 3 * sum(len(i.views) for i in r.instances)
    assert set(rep.seconds_per_stage) == {"load", "views", "crops", "embed", "aggregate", "relations"}
    assert r.encoders["siglip"].model_id == "fake-color"
    assert r.settings["crop"]["mode"] == "box" and r.settings["mask_source"] == "scan"
    json.dumps(r.settings)


def test_report_counts_skipped_frames_and_masks_without_views(tmp_path):
    root = _handmade(tmp_path)
    (root / "pose" / "1.txt").write_text("inf 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    scan = read_scan(root)
    masks = np.concatenate([scan.masks, np.zeros((scan.num_points, 1), bool)], axis=1)  # column 6: empty
    calls: list[tuple[str, int, int]] = []
    enc = FakeColorEncoder()
    r = ingest_scan(
        scan,
        config=IngestConfig(frame_step=1, crop=BOX, embed_batch=2),
        encoders={"siglip": enc},
        masks=masks,
        progress=lambda *a: calls.append(a),
    )
    assert r.report.frames_skipped == {"frame step": 0, "non-finite pose": 1, "non-rigid pose": 0}
    assert (r.report.frames_on_disk, r.report.frames_used) == (3, 2)
    assert r.report.masks_without_view == [2, 3, 4] and r.report.masks_too_small == [6]
    assert [i.mask_index for i in r.instances] == [0, 1, 5]
    assert [v.frame_id for v in r.instances[0].views] == [0, 2]
    assert r.settings["mask_source"] == "argument"
    stages = {c[0] for c in calls}
    assert stages == {"visibility", "crops", "embed", "aggregate"}
    assert ("crops", 2, 2) in calls and ("embed", r.report.crops, r.report.crops) in calls
    assert enc.image_calls >= 2  # embed_batch=2 flushes more than once; each frame decoded once


def test_frame_step_applied_to_a_scan_read_with_step_one(synth_path):
    r = ingest_scan(
        read_scan(synth_path), config=IngestConfig(frame_step=3, crop=BOX), encoders={"siglip": FakeColorEncoder()}
    )
    assert r.report.frames_used == 7 and r.report.frames_skipped["frame step"] == 13
    assert {v.frame_id for i in r.instances for v in i.views} <= set(range(0, 20, 3))


def test_sam_path_end_to_end_one_encoder_call_per_frame(synth_path, tiny_sam_path, tiny_siglip, tiny_dinov2):
    from om3db.sam import load_sam

    sam = load_sam(tiny_sam_path, device="cpu")
    scan = read_scan(synth_path)
    cfg = IngestConfig(frame_step=5, top_k=2)
    r = ingest_scan(scan, config=cfg, encoders={"siglip": tiny_siglip, "dinov2": tiny_dinov2}, sam=sam)
    frames_with_views = {v.frame_id for i in r.instances for v in i.views}
    assert sam.encoder_calls == len(frames_with_views) > 0
    assert r.settings["crop"]["mode"] == "sam"
    for inst in r.instances:
        for space, enc in (("siglip", tiny_siglip), ("dinov2", tiny_dinov2)):
            assert inst.view_vectors[space].shape == (len(inst.views), enc.identity.dim)
            np.testing.assert_allclose(np.linalg.norm(inst.vectors[space]), 1.0, rtol=1e-4)
    assert r.encoders["dinov2"] == tiny_dinov2.identity


def test_bad_inputs(tmp_path, synth_path):
    scan = read_scan(_handmade(tmp_path))
    enc = {"siglip": FakeColorEncoder()}
    with pytest.raises(ConfigError, match="ingest needs at least one encoder"):
        ingest_scan(scan, config=IngestConfig(crop=BOX), encoders={})
    with pytest.raises(ConfigError, match="encoder 'x' \\(object\\) has no encode_images"):
        ingest_scan(scan, config=IngestConfig(crop=BOX), encoders={"x": object()})
    with pytest.raises(ConfigError, match="crop mode 'sam' needs a SAM predictor"):
        ingest_scan(scan, config=IngestConfig(crop=CropConfig(mode="sam"), frame_step=1), encoders=enc)
    bare = read_scan(scan.path, masks=False)
    with pytest.raises(MaskFileError, match=r"hand: the scan has no class-agnostic masks .*pass masks= to ingest_scan"):
        ingest_scan(bare, config=IngestConfig(frame_step=1), encoders=enc)
    with pytest.raises(MaskFileError, match=r"masks have shape \(2, 1\), expected \(8, M\)"):
        ingest_scan(scan, config=IngestConfig(frame_step=1), encoders=enc, masks=np.ones((2, 1)))
    stepped = read_scan(synth_path, frame_step=2)
    with pytest.raises(ConfigError, match="was read with frame_step=2 but the ingest config asks for frame_step=10"):
        ingest_scan(stepped, config=IngestConfig(), encoders=enc)
    with pytest.raises(ConfigError, match="outlier_space 'dinov2' is not one of the encoders"):
        ingest_scan(scan, config=IngestConfig(frame_step=1, outlier_space="dinov2"), encoders=enc)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"frame_step": 0}, "IngestConfig.frame_step must be an integer >= 1, got 0"),
        ({"top_k": 2.5}, "IngestConfig.top_k must be an integer >= 1, got 2.5"),
        ({"vis_threshold": 0}, "IngestConfig.vis_threshold must be > 0 metres"),
        ({"diverse": True, "diverse_pool": 3}, r"IngestConfig.diverse_pool \(3\) must be >= top_k \(5\)"),
        ({"min_visibility_fraction": -0.1}, r"min_visibility_fraction must be in \[0, 1\]"),
        ({"dbscan_eps": 0}, "IngestConfig.dbscan_eps must be > 0"),
        ({"dbscan_min_samples": 0}, "IngestConfig.dbscan_min_samples must be None or an integer >= 1"),
        ({"crop": "box"}, "IngestConfig.crop must be a CropConfig or None, got str"),
        ({"seed": -1}, "IngestConfig.seed must be an integer >= 0"),
        ({"embed_batch": 0}, "IngestConfig.embed_batch must be an integer >= 1"),
    ],
)
def test_config_validation(kw, message):
    with pytest.raises(ConfigError, match=message):
        IngestConfig(**kw)


def test_config_defaults_are_openmask3d_and_json_able():
    c = IngestConfig()
    assert (c.frame_step, c.vis_threshold, c.top_k, c.diverse, c.dbscan_eps, c.outlier_removal) == (
        10,
        0.2,
        5,
        False,
        0.1,
        True,
    )
    assert c.to_dict(has_sam=False)["crop"]["mode"] == "box" and c.to_dict(has_sam=True)["crop"]["mode"] == "sam"
    assert c.to_dict()["crop"] is None
    json.dumps(c.to_dict(True))


def test_scan_paths_are_stored_absolute_whatever_the_working_folder(tmp_path, monkeypatch, synth_path):
    """A scan ingested by a relative path (or as '.') is stored with its absolute folder, so export, reindex and
    the viewer read it from any working folder; the name is the folder's, not ''."""
    import shutil

    import om3db

    shutil.copytree(synth_path, tmp_path / "scans" / synth_path.name)
    monkeypatch.chdir(tmp_path)
    enc = FakeColorEncoder()
    with om3db.connect(tmp_path / "db") as db:
        (a,) = db.ingest("scans", siglip=enc, dinov2=False)
        monkeypatch.chdir(tmp_path / "scans" / synth_path.name)
        (b,) = db.ingest(".", siglip=enc, dinov2=False, force=True)
        monkeypatch.chdir(tmp_path.parent)
        (info,) = db.scans()
        shown = db.instance(db.search(text="red", k=1)[0].instance_id)
    expected = str(tmp_path / "scans" / synth_path.name)
    assert a.scan == b.scan == synth_path.name
    assert a.path == b.path == info.path == shown.scan_path == expected
