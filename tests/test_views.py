"""Visibility and view selection: hand-built cases with exact answers, the OpenMask3D-style
reference, and agreement with the synthetic generator's ground-truth visibility."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from om3db.camera import Intrinsics
from om3db.errors import ConfigError, MaskFileError
from om3db.scan import read_scan
from om3db.views import (
    PROMPT_CAP,
    MaskMembership,
    Visibility,
    compute_visibility,
    select_views,
    visible_points_in_frame,
)
from tests.fakes import write_scan

REPO = Path(__file__).resolve().parents[1]
W, H = 40, 30
K = np.array([[30.0, 0, 20.0], [0, 30.0, 15.0], [0, 0, 1]])


def _bench():
    spec = importlib.util.spec_from_file_location("bench_views", REPO / "benchmarks" / "bench_views.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _at(u: float, v: float, z: float) -> list[float]:
    """World point (identity camera) that projects to pixel (u, v) at camera depth z."""
    return [(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z]


def _handmade(tmp_path: Path) -> Path:
    """Three identity-pose frames looking at a wall 2 m away; masks with known visible pixels.

    mask 0: three pixels (5..7, 5) plus a second point on pixel (5, 5)     -> 3 pixels in frame 0
    mask 1: pixel (10, 10) at z = 2.15 (0.15 m off the wall)               -> 1 pixel at threshold 0.2
    mask 2: pixel (20, 20) where the depth is 0 (no measurement)           -> never
    mask 3: a point just behind the camera projecting onto depth 0.1 m     -> never (z > 0 check)
    mask 4: a point projecting outside the image                           -> never
    mask 5: masks 0 and 1 together (overlapping masks)                     -> 4 pixels
    frame 1: all depth 0. frame 2: like frame 0 but no depth at (5, 5).
    """
    pts = [
        _at(5, 5, 2.0),
        _at(6, 5, 2.0),
        _at(7, 5, 2.0),
        _at(5.3, 4.8, 2.0),
        _at(10, 10, 2.15),
        _at(20, 20, 2.0),
        [0.01, 0.0, -0.05],
        _at(45, 5, 2.0),
    ]
    masks = np.zeros((len(pts), 6), bool)
    masks[0:4, 0] = True
    masks[4, 1] = True
    masks[5, 2] = True
    masks[6, 3] = True
    masks[7, 4] = True
    masks[0:5, 5] = True
    d0 = np.full((H, W), 2.0)
    d0[20, 20] = 0.0
    # the behind-camera point (x=0.01, z=-0.05) lands on u = 30*0.01/-0.05 + 20 = 14, v = 15
    d0[15, 14] = 0.1
    d2 = d0.copy()
    d2[5, 5] = 0.0
    return write_scan(
        tmp_path / "hand",
        points=np.array(pts),
        depths=[d0, np.zeros((H, W)), d2],
        poses=[np.eye(4)] * 3,
        k_depth=K,
        masks=masks,
    )


@pytest.fixture
def hand_scan(tmp_path):
    return read_scan(_handmade(tmp_path))


def test_counts_are_distinct_visible_depth_pixels(hand_scan):
    vis = compute_visibility(hand_scan)
    assert vis.counts.dtype == np.int32
    assert vis.counts.tolist() == [[3, 1, 0, 0, 0, 4], [0, 0, 0, 0, 0, 0], [2, 1, 0, 0, 0, 3]]
    assert vis.frame_ids.tolist() == [0, 1, 2]
    assert vis.visible_points[0].tolist() == [0, 1, 2, 3, 4]
    assert vis.visible_points[1].tolist() == []


def test_vis_threshold(hand_scan):
    assert compute_visibility(hand_scan, vis_threshold=0.1).counts[0].tolist() == [3, 0, 0, 0, 0, 3]
    assert compute_visibility(hand_scan, vis_threshold=0.16).counts[0].tolist() == [3, 1, 0, 0, 0, 4]


def test_point_behind_camera_never_counts():
    intr = Intrinsics.from_matrix(K, W, H)
    depth = np.full((H, W), 0.1, np.float32)
    behind = np.array([[0.01, 0.0, -0.05]])  # |0.1 - (-0.05)| = 0.15 <= 0.2: only z > 0 rejects it
    idx, _ = visible_points_in_frame(behind, np.eye(4), depth, intr, 0.2)
    assert idx.size == 0
    idx, pix = visible_points_in_frame(np.array([[0.0, 0.0, 0.1]]), np.eye(4), depth, intr, 0.2)
    assert idx.tolist() == [0] and pix.tolist() == [15 * W + 20]


def test_depth_zero_never_counts():
    intr = Intrinsics.from_matrix(K, W, H)
    idx, _ = visible_points_in_frame(np.array([_at(3, 3, 0.1)]), np.eye(4), np.zeros((H, W), np.float32), intr, 0.2)
    assert idx.size == 0


def test_pixel_is_rounded_not_truncated():
    intr = Intrinsics.from_matrix(K, W, H)
    _, pix = visible_points_in_frame(
        np.array([_at(5.6, 7.4, 2.0)]), np.eye(4), np.full((H, W), 2.0, np.float32), intr, 0.2
    )
    assert pix.tolist() == [7 * W + 6]


def test_project_points_matches_camera_project():
    from om3db.camera import project
    from om3db.views import project_points

    rng = np.random.default_rng(1)
    pts = rng.normal(size=(500, 3)) * 3
    pose = np.eye(4)
    pose[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * np.array([1, 1, 1])
    pose[:3, :3] *= np.sign(np.linalg.det(pose[:3, :3]))
    pose[:3, 3] = [0.3, -1, 2]
    intr = Intrinsics.from_matrix(K, W, H)
    for a, b in zip(project_points(pts, pose, intr), project(pts, pose, intr), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)


def test_membership_expand_matches_dense():
    rng = np.random.default_rng(3)
    dense = rng.random((50, 7)) < 0.3
    mem = MaskMembership.from_dense(dense)
    pts = np.array([3, 0, 49, 3, 17])
    owner, mids = mem.expand(pts)
    got = sorted(zip(owner.tolist(), mids.tolist(), strict=True))
    want = sorted((i, j) for i, p in enumerate(pts) for j in np.flatnonzero(dense[p]))
    assert got == want


def test_sum_per_mask_with_empty_masks():
    rng = np.random.default_rng(4)
    dense = rng.random((60, 6)) < 0.5
    dense[:, [0, 3, 5]] = False  # empty masks first, in the middle and last
    mem = MaskMembership.from_dense(dense)
    assert mem.label is None
    flag = rng.integers(0, 2, size=60).astype(np.uint8)
    assert mem.sum_per_mask(flag).tolist() == (flag.astype(int) @ dense).tolist()


def test_mask_pixel_counts_with_many_shared_pixels():
    from om3db.views import mask_pixel_counts

    rng = np.random.default_rng(7)
    dense = rng.random((400, 9)) < 0.4
    mem = MaskMembership.from_dense(dense)
    idx = rng.choice(400, 300, replace=False)
    pix = rng.integers(0, 50, size=300)  # 300 points on 50 pixels: most pixels shared
    want = [len({int(p) for i, p in zip(idx, pix, strict=True) if dense[i, j]}) for j in range(9)]
    assert mem.label is None  # overlapping masks: the membership path
    assert mask_pixel_counts(mem, idx, pix, 50).tolist() == want
    dirty = rng.integers(-5, 10**6, size=64)  # a reused scratch's old contents never matter
    assert mask_pixel_counts(mem, idx, pix, 50, dirty).tolist() == want


def test_mask_pixel_counts_one_mask_per_point():
    from om3db.views import mask_pixel_counts

    rng = np.random.default_rng(8)
    owner = rng.integers(-1, 6, size=500)  # GT-like: each point in at most one mask (-1: none)
    dense = np.zeros((500, 6), bool)
    dense[np.flatnonzero(owner >= 0), owner[owner >= 0]] = True
    mem = MaskMembership.from_dense(dense)
    assert mem.label.tolist() == (owner + 1).tolist()
    idx = rng.choice(500, 400, replace=False)
    pix = rng.integers(0, 60, size=400)  # objects meet on shared pixels; so do points in no mask
    want = [len({int(p) for i, p in zip(idx, pix, strict=True) if dense[i, j]}) for j in range(6)]
    assert mask_pixel_counts(mem, idx, pix, 60).tolist() == want
    assert mask_pixel_counts(mem, idx, pix, 60, np.full(60, 10**9)).tolist() == want
    assert mask_pixel_counts(mem, idx[:0], pix[:0], 60).tolist() == [0] * 6


def test_prefetch_gives_the_same_counts_and_raises_on_a_corrupt_depth(synth_scan):
    from om3db.errors import ScanError

    path, scan = synth_scan
    a, b = compute_visibility(scan, prefetch=0), compute_visibility(scan, prefetch=3)
    assert np.array_equal(a.counts, b.counts)
    assert all(np.array_equal(x, y) for x, y in zip(a.visible_points, b.visible_points, strict=True))
    bad = dataclasses.replace(scan.frames[2], depth_path=path / "not-there" / "2.png")
    frames = [*scan.frames[:2], bad, *scan.frames[3:]]
    with pytest.raises(ScanError, match="2.png"):
        compute_visibility(dataclasses.replace(scan, frames=frames), prefetch=2)


def test_top_k_best_first_zero_views_dropped(hand_scan):
    sel = select_views(hand_scan, top_k=5)
    assert [v.frame_id for v in sel.masks[0].views] == [0, 2]
    assert [v.visible_pixels for v in sel.masks[0].views] == [3, 2]
    assert [v.frame_id for v in sel.masks[1].views] == [0, 2]  # tie: earlier frame first
    for j in (2, 3, 4):
        assert sel.masks[j].views == ()
    assert [v.frame_id for v in select_views(hand_scan, top_k=1).masks[5].views] == [0]
    assert sel.by_frame() == {0: [(0, 0), (1, 0), (5, 0)], 2: [(0, 1), (1, 1), (5, 1)]}


def test_prompt_points_and_box_in_colour_pixels(tmp_path):
    # colour at twice the depth resolution: prompts are projected with the colour camera
    k_col = K * np.array([[2], [2], [1]])
    rng = np.random.default_rng(0)
    uv = rng.uniform([8, 6], [30, 22], size=(3000, 2))
    pts = np.array([_at(u, v, 2.0) for u, v in uv])
    masks = np.ones((len(pts), 1), bool)
    root = write_scan(
        tmp_path / "many",
        points=pts,
        depths=[np.full((H, W), 2.0)],
        poses=[np.eye(4)],
        k_depth=K,
        k_color=k_col,
        colors=[np.zeros((2 * H, 2 * W, 3), np.uint8)],
        masks=masks,
    )
    scan = read_scan(root)
    view = select_views(scan, seed=1).masks[0].views[0]
    xy_all = np.rint(uv * 2 + 0.0).astype(int)  # colour pixel = 2 * depth pixel coordinate (cx, cy scale too)
    assert view.prompt_points.shape == (PROMPT_CAP, 2) and view.prompt_points.dtype == np.int32
    assert view.box.tolist() == [xy_all[:, 0].min(), xy_all[:, 1].min(), xy_all[:, 0].max() + 1, xy_all[:, 1].max() + 1]
    pp = view.prompt_points
    assert pp[:, 0].min() == view.box[0] and pp[:, 0].max() == view.box[2] - 1
    assert pp[:, 1].min() == view.box[1] and pp[:, 1].max() == view.box[3] - 1
    again = select_views(scan, seed=1).masks[0].views[0]
    assert np.array_equal(again.prompt_points, pp)


def test_diverse_views_spread_out(hand_scan):
    """Six frames around the mask centroid; visibility falls while the angle grows."""
    scan = dataclasses.replace(hand_scan, frames=hand_scan.frames[:1] * 6)
    masks = np.zeros((hand_scan.num_points, 1), bool)
    masks[0:4, 0] = True
    centroid = hand_scan.points[masks[:, 0]].astype(np.float64).mean(axis=0)
    angles = np.radians([0, 5, 10, 90, 180, 270])
    centres = centroid + 3.0 * np.stack([np.sin(angles), np.zeros(6), -np.cos(angles)], axis=1)
    counts = np.array([[100], [99], [98], [80], [60], [30]], np.int32)
    vis = Visibility(np.arange(6), counts, tuple(np.arange(4, dtype=np.int32) for _ in range(6)), centres)

    def pick(**kw):
        return [v.frame_index for v in select_views(scan, masks, top_k=3, visibility=vis, **kw).masks[0].views]

    assert pick() == [0, 1, 2]
    assert pick(diverse=True, min_visibility_fraction=0.5) == [0, 4, 3]
    assert pick(diverse=True, min_visibility_fraction=0.7) == [0, 3, 2]
    assert pick(diverse=True, min_visibility_fraction=0.0, diverse_pool=6) == [0, 4, 3]  # 270 deg ties 90, less visible


def test_fast_equals_reference_on_handmade(hand_scan):
    ref = _bench().reference_counts(hand_scan, hand_scan.masks)
    assert np.array_equal(ref, compute_visibility(hand_scan).counts)


def test_bad_inputs(hand_scan, tmp_path):
    bare = dataclasses.replace(hand_scan, masks=None)
    with pytest.raises(MaskFileError, match=r"hand: the scan has no class-agnostic masks\. Pass masks="):
        compute_visibility(bare)
    with pytest.raises(MaskFileError, match=r"masks have shape \(3, 2\), expected \(8, M\)"):
        select_views(hand_scan, np.zeros((3, 2), bool))
    with pytest.raises(ConfigError, match="vis_threshold must be > 0"):
        compute_visibility(hand_scan, vis_threshold=0)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        select_views(hand_scan, top_k=0)
    with pytest.raises(ConfigError, match=r"diverse_pool \(3\) must be >= top_k \(5\)"):
        select_views(hand_scan, diverse=True, diverse_pool=3)
    with pytest.raises(ConfigError, match=r"min_visibility_fraction must be in \[0, 1\]"):
        select_views(hand_scan, min_visibility_fraction=1.5)
    vis = compute_visibility(hand_scan)
    with pytest.raises(ConfigError, match=r"visibility counts have shape \(3, 6\), expected \(3, 2\)"):
        select_views(hand_scan, hand_scan.masks[:, :2], visibility=vis)


# ------------------------------------------------------------------ synthetic scan with exact GT


@pytest.fixture(scope="module")
def synth_scan(tiny_scan_path):
    return tiny_scan_path, read_scan(tiny_scan_path)


def _gt_pixel_counts(path: Path, scan, k: int) -> np.ndarray:
    """(F, K) pixels of each object in the GT instance map at depth resolution (value = object + 1)."""
    from PIL import Image

    out = np.zeros((len(scan.frames), k), np.int64)
    for i, f in enumerate(scan.frames):
        ids = np.asarray(Image.open(path / "gt" / "instance2d_depth" / f.depth_path.name)).astype(np.int64)
        out[i] = np.bincount(ids.ravel(), minlength=k + 1)[1 : k + 1]
    return out


def test_views_agree_with_gt_visibility(synth_scan):
    from scipy.stats import spearmanr

    from om3db.camera import project
    from om3db.synth import gt_point_visibility, load_gt

    path, scan = synth_scan
    gt = load_gt(path)
    k = gt.num_objects
    sel = select_views(scan, gt.masks, top_k=5)
    counts = sel.visibility.counts
    gt_pix = _gt_pixel_counts(path, scan, k)
    # pixel counts and point-footprint counts are not linear (points are sparser than far pixels): ranks
    assert spearmanr(counts.ravel(), gt_pix.ravel())[0] > 0.9
    assert not np.any((counts > 0) & (gt_pix == 0)), "a frame where GT shows no pixel of the object scored > 0"
    for j in range(k):
        chosen = [v.frame_index for v in sel.masks[j].views]
        assert len(chosen) == 5
        assert chosen[0] in np.argsort(-gt_pix[:, j], kind="stable")[:3].tolist()
        assert np.all(gt_pix[chosen, j] > 0)
    # the same measure over GT-visible points (first surface hit, no depth tolerance)
    intr = scan.depth_intrinsics
    for i in (0, len(scan.frames) // 2):
        truth = gt_point_visibility(path, scan.frames[i].frame_id)
        u, v, _ = project(scan.points, scan.frames[i].world_to_camera, intr)
        for j in range(k):
            t = truth & gt.masks[:, j]
            exact = np.unique(np.rint(v[t]).astype(int) * intr.width + np.rint(u[t]).astype(int)).size
            assert abs(int(counts[i, j]) - exact) <= max(10, 0.25 * exact), (i, j, counts[i, j], exact)


def test_fast_equals_reference_on_synthetic_scan(synth_scan):
    _, scan = synth_scan
    bench = _bench()
    ref = bench.reference_counts(scan, scan.masks)
    vis = compute_visibility(scan)
    assert np.array_equal(ref, vis.counts)
    assert bench.reference_top_k(ref, 5) == [
        [v.frame_index for v in mv.views] for mv in select_views(scan, visibility=vis).masks
    ]
