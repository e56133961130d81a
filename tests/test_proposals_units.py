"""Proposal stages in isolation: superpoints, 2D mask sources, rendering, AP, degenerate scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from om3db.camera import Intrinsics
from om3db.errors import ConfigError, EvaluationError, ScanError
from om3db.proposals import (
    DiskMasks,
    ProposalConfig,
    SamAutomaticMasks,
    SuperpointConfig,
    classagnostic_ap,
    propose,
    superpoints,
)
from om3db.proposals.masks2d import mask_nms, paint_masks, point_grid
from om3db.proposals.render import DepthRenderer
from om3db.scan import read_scan
from tests.fakes import write_scan


def _plane(n: int, origin, e1, e2, spacing: float = 0.02) -> np.ndarray:
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return (
        np.asarray(origin) + a.reshape(-1, 1) * spacing * np.asarray(e1) + b.reshape(-1, 1) * spacing * np.asarray(e2)
    ).astype(np.float32)


def _purity(sp: np.ndarray, part: np.ndarray) -> bool:
    """No superpoint holds points of two parts."""
    return all(len(np.unique(part[sp == s])) == 1 for s in np.unique(sp))


# ------------------------------------------------------------------ superpoints


def test_two_coloured_coplanar_planes_are_split_by_colour():
    left = _plane(20, (0, 0, 0), (1, 0, 0), (0, 1, 0))
    right = _plane(20, (0.4, 0, 0), (1, 0, 0), (0, 1, 0))
    pts = np.concatenate([left, right])
    cols = np.concatenate([np.tile([220, 30, 30], (400, 1)), np.tile([30, 30, 220], (400, 1))]).astype(np.uint8)
    sp = superpoints(pts, cols, config=SuperpointConfig(min_size=10))
    assert sp.dtype == np.int32 and sp.shape == (800,)
    assert _purity(sp, np.repeat([0, 1], 400))


def test_perpendicular_planes_of_one_colour_are_split_by_normals():
    floor = _plane(20, (0, 0, 0), (1, 0, 0), (0, 1, 0))
    wall = _plane(20, (0, 0, 0.02), (0, 0, 1), (0, 1, 0)) + np.float32([-0.0001, 0, 0])
    pts = np.concatenate([floor, wall])
    cols = np.full((800, 3), 128, np.uint8)
    sp = superpoints(pts, cols, config=SuperpointConfig(min_size=10))
    part = np.repeat([0, 1], 400)
    # the crease itself is ambiguous: require the bulk of each plane to be pure
    majority = [np.bincount(part[sp == s]).max() / (sp == s).sum() for s in np.unique(sp)]
    assert min(majority) > 0.85 and len(np.unique(sp)) >= 2


def test_one_flat_plane_stays_one_segment_or_a_few_with_colour_noise():
    pts = _plane(25, (0, 0, 0), (1, 0, 0), (0, 1, 0))
    assert np.unique(superpoints(pts, np.full((len(pts), 3), 128, np.uint8))).tolist() == [0]
    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 2, (len(pts), 3)), 0, 255).astype(np.uint8)
    sizes = np.bincount(superpoints(pts, noisy))
    assert len(sizes) <= 10 and sizes.min() >= SuperpointConfig().min_size


def test_superpoints_on_a_mesh_use_its_faces():
    from om3db._o3d import open3d

    o3d = open3d()
    mesh = o3d.geometry.TriangleMesh.create_box(1, 1, 1).subdivide_midpoint(3)
    pts = np.asarray(mesh.vertices, dtype=np.float32)
    sp = superpoints(pts, np.full((len(pts), 3), 100, np.uint8), mesh=mesh, config=SuperpointConfig(min_size=5))
    assert len(np.unique(sp)) >= 6  # at least one per face of the cube


def test_superpoint_inputs_are_validated():
    with pytest.raises(ConfigError, match="k_threshold must be > 0"):
        SuperpointConfig(k_threshold=0)
    with pytest.raises(ConfigError, match="min_size must be >= 1"):
        SuperpointConfig(min_size=0)
    with pytest.raises(ConfigError, match=r"points must be \(N, 3\)"):
        superpoints(np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="colors shape"):
        superpoints(np.zeros((4, 3)), np.zeros((3, 3), np.uint8))
    assert superpoints(np.zeros((0, 3))).shape == (0,)
    assert superpoints(np.zeros((1, 3))).tolist() == [0]


# ------------------------------------------------------------------ a hand-made scan: a wall and a box


W, H = 64, 48
K = np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])


def _wall_scan(tmp_path: Path, *, behind: bool = False) -> Path:
    """A 2 m wall seen by three identity-ish cameras; wall points in a grid. ``behind``: points behind the cameras."""
    xs, ys = np.meshgrid(np.linspace(-1.0, 1.0, 60), np.linspace(-0.7, 0.7, 45))
    z = -2.0 if behind else 2.0
    pts = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], axis=1)
    poses = []
    for dx in (0.0, 0.05, -0.05):
        p = np.eye(4)
        p[0, 3] = dx
        poses.append(p)
    depths = [np.full((H, W), 2.0) for _ in poses]
    cols = np.where((pts[:, 0] > 0)[:, None], [200, 40, 40], [40, 40, 200]).astype(np.uint8)
    return write_scan(tmp_path / "wall", points=pts, depths=depths, poses=poses, k_depth=K, point_colors=cols)


def _write_masks(root: Path, maps: list[np.ndarray]) -> None:
    (root / "masks2d").mkdir(exist_ok=True)
    for i, m in enumerate(maps):
        Image.fromarray(m.astype(np.uint16)).save(root / "masks2d" / f"{i}.png")


def _halves() -> np.ndarray:
    m = np.zeros((H, W), np.uint16)
    m[:, W // 2 + 1 :] = 7
    m[:, : W // 2 - 1] = 3
    return m


def test_handmade_wall_two_halves_become_two_instances(tmp_path):
    root = _wall_scan(tmp_path)
    _write_masks(root, [_halves()] * 3)
    scan = read_scan(root)
    props = propose(scan, config=ProposalConfig(superpoints=SuperpointConfig(min_size=5)))
    assert props.num_masks == 2
    right = scan.points[:, 0] > 0.05
    left = scan.points[:, 0] < -0.05
    for side in (left, right):
        assert max((props.masks[side, j].mean()) for j in range(2)) > 0.95


def test_a_frame_with_no_masks_is_counted_and_tolerated(tmp_path):
    root = _wall_scan(tmp_path)
    _write_masks(root, [_halves(), np.zeros((H, W)), _halves()])
    props = propose(read_scan(root), config=ProposalConfig(superpoints=SuperpointConfig(min_size=5)))
    assert props.info["frames_without_masks"] == 1 and props.num_masks == 2


def test_no_masks_anywhere_gives_zero_proposals_with_a_reason(tmp_path):
    root = _wall_scan(tmp_path)
    _write_masks(root, [np.zeros((H, W))] * 3)
    props = propose(read_scan(root))
    assert props.masks.shape == (60 * 45, 0) and props.scores.shape == (0,)
    assert "gave no mask in any frame" in props.info["empty_reason"]


def test_a_one_pixel_mask_gives_no_instance(tmp_path):
    root = _wall_scan(tmp_path)
    one = np.zeros((H, W))
    one[20, 20] = 5
    _write_masks(root, [one] * 3)
    props = propose(read_scan(root))
    assert props.num_masks == 0
    assert "min_points" in props.info["empty_reason"]


def test_a_scan_where_nothing_is_visible_gives_zero_proposals_with_a_reason(tmp_path):
    root = _wall_scan(tmp_path, behind=True)
    _write_masks(root, [_halves()] * 3)
    props = propose(read_scan(root))
    assert props.num_masks == 0 and props.info["frames_without_visible_points"] == 3
    assert "no scene point is visible in any frame" in props.info["empty_reason"]


# ------------------------------------------------------------------ DiskMasks errors


def test_disk_masks_errors_name_the_file(tmp_path):
    root = _wall_scan(tmp_path)
    scan = read_scan(root)
    (root / "masks2d").mkdir()
    src = DiskMasks()
    # missing file: no masks, or an error when asked
    assert not src.masks(scan, scan.frames[0]).any()
    with pytest.raises(ScanError, match=r"masks2d/0\.png: 2D mask file is missing"):
        DiskMasks(missing_ok=False).masks(scan, scan.frames[0])
    (root / "masks2d" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ScanError, match=r"masks2d/0\.png: not a readable image"):
        src.masks(scan, scan.frames[0])
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "masks2d" / "0.png")
    with pytest.raises(
        ScanError, match=r"0\.png: 2D mask must be a single-channel integer image, got shape \(48, 64, 3\)"
    ):
        src.masks(scan, scan.frames[0])
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(root / "masks2d" / "0.png")
    with pytest.raises(
        ScanError, match=r"0\.png: 2D mask size 10x10 matches neither the colour \(64x48\) nor the depth"
    ):
        src.masks(scan, scan.frames[0])
    Image.fromarray(np.full((H, W), 9, np.uint16)).save(root / "masks2d" / "000001.png")
    m = src.masks(scan, scan.frames[1])  # zero-padded names are found
    assert m.dtype == np.int32 and (m == 9).all()


# ------------------------------------------------------------------ SAM automatic masks with a fake predictor


class FakeGridPredictor:
    """Fake SAM: the image's left and right halves are the objects; a prompt gets its half (duplicates galore)."""

    def __init__(self) -> None:
        self.set_image_calls = 0
        self.prompts = 0
        self.shape = (0, 0)

    def set_image(self, image: np.ndarray) -> None:
        self.set_image_calls += 1
        self.shape = image.shape[:2]

    def predict_batch(self, point_coords, point_labels, *, chunk: int = 64):
        h, w = self.shape
        masks = np.zeros((len(point_coords), h, w), bool)
        for i, (x, _y) in enumerate(point_coords[:, 0]):
            if x < w / 2:
                masks[i, :, : w // 2] = True
            else:
                masks[i, :, w // 2 :] = True
        self.prompts += len(point_coords)
        iou = np.where(point_coords[:, 0, 1] < h / 8, 0.5, 0.95).astype(np.float32)  # top row: low quality
        return masks, iou


def test_sam_automatic_masks_encode_once_per_frame_and_deduplicate(tmp_path):
    scan = read_scan(_wall_scan(tmp_path))
    pred = FakeGridPredictor()
    src = SamAutomaticMasks(pred, points_per_side=4)
    m = src.masks(scan, scan.frames[0])
    assert pred.set_image_calls == 1 and pred.prompts == 16
    assert m.shape == (H, W) and m.dtype == np.int32
    assert len(np.unique(m)) == 2 and m[0, 0] != m[0, -1] and (m > 0).all()
    props = propose(scan, source=src, config=ProposalConfig(superpoints=SuperpointConfig(min_size=5)))
    assert (
        pred.set_image_calls == 1 + len(scan.frames)
        and props.num_masks == 2
        and props.info["source"] == "sam-automatic"
    )


def test_mask_nms_and_paint():
    a = np.zeros((3, 4, 4), bool)
    a[0, :2] = True
    a[1, :2] = True
    a[1, 2, 0] = True  # near-duplicate of 0
    a[2, 2:] = True
    keep = mask_nms(a, np.array([0.9, 0.95, 0.8]), 0.7)
    assert keep.tolist() == [1, 2]
    painted = paint_masks(a[keep], np.array([0.95, 0.8]))
    assert painted[0, 0] == 1 and painted[3, 3] == 2
    g = point_grid(40, 20, 2)
    assert g.tolist() == [[10.0, 5.0], [30.0, 5.0], [10.0, 15.0], [30.0, 15.0]]
    with pytest.raises(ConfigError, match="points_per_side must be >= 1"):
        SamAutomaticMasks(FakeGridPredictor(), points_per_side=0)


# ------------------------------------------------------------------ rendering


def test_point_splat_and_mesh_rendering_give_plane_depth():
    intr = Intrinsics(40.0, 40.0, 15.5, 11.5, 32, 24)
    xs, ys = np.meshgrid(np.linspace(-2, 2, 200), np.linspace(-2, 2, 200))
    plane = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 3.0)], axis=1)
    d = DepthRenderer(plane).render(np.eye(4), intr)
    assert d.shape == (24, 32) and (d > 0).all() and np.allclose(d, 3.0, atol=1e-4)
    verts = np.array([[-5, -5, 2], [5, -5, 2], [5, 5, 2], [-5, 5, 2]], np.float32)
    dm = DepthRenderer(verts, np.array([[0, 1, 2], [0, 2, 3]])).render(np.eye(4), intr)
    assert np.allclose(dm, 2.0, atol=1e-5)  # z-depth, not ray length, at the corners too
    behind = DepthRenderer(verts * np.float32([1, 1, -1])).render(np.eye(4), intr)
    assert not behind.any()
    with pytest.raises(ConfigError, match="finite 4x4"):
        DepthRenderer(verts).render(np.full((4, 4), np.nan), intr)


# ------------------------------------------------------------------ class-agnostic AP


def test_classagnostic_ap_exact_cases():
    gt = np.repeat([0, 1001, 1002, 2003, 3004], [50, 200, 150, 120, 40])  # 3004 is under 100 points
    n = len(gt)
    perfect = np.stack([gt == 1001, gt == 1002, gt == 2003], axis=1)
    res = classagnostic_ap(perfect, np.array([0.9, 0.8, 0.7]), gt)
    assert res["num_gt"] == 3 and res["ap"] == pytest.approx(1.0) and res["ap50"] == pytest.approx(1.0)
    # a prediction on the small (ignored) region or unlabelled points is not a false positive
    extra = np.concatenate([perfect, (gt == 3004)[:, None], (gt == 0)[:, None]], axis=1)
    assert classagnostic_ap(extra, np.array([0.9, 0.8, 0.7, 0.99, 0.99]), gt)["ap50"] == pytest.approx(1.0)
    # one GT missed: recall 2/3 at precision 1
    assert classagnostic_ap(perfect[:, :2], np.array([0.9, 0.8]), gt)["ap50"] == pytest.approx(2 / 3)
    # ignoring label 2 leaves two GT
    assert classagnostic_ap(perfect[:, :2], np.array([0.9, 0.8]), gt, ignore_labels=(2,))["num_gt"] == 2
    # a duplicate with the higher score steals the match only once; the other is a false positive
    dup = np.concatenate([perfect, perfect[:, :1]], axis=1)
    r = classagnostic_ap(dup, np.array([0.9, 0.8, 0.7, 0.1]), gt)
    assert r["ap50"] < 1.0 and r["ap50"] > 0.9
    # half-overlapping prediction: counts at 0.25, not at 0.5
    half = (gt == 1001) & (np.arange(n) < 150)
    half |= gt == 1002
    r = classagnostic_ap(half[:, None], np.array([1.0]), np.where(gt == 1002, 0, gt))
    assert r["ap25"] > 0 and r["ap50"] == 0.0
    assert classagnostic_ap(np.zeros((n, 0), bool), np.zeros(0), gt)["ap50"] == 0.0
    assert np.isnan(classagnostic_ap(perfect, np.ones(3), np.zeros(n, np.int64))["ap"])


def test_classagnostic_ap_rejects_mismatched_inputs():
    with pytest.raises(EvaluationError, match=r"pred_masks must be \(N, M\) with N = 5 GT points, got shape \(4, 2\)"):
        classagnostic_ap(np.zeros((4, 2), bool), np.zeros(2), np.zeros(5))
    with pytest.raises(EvaluationError, match=r"pred_scores must be \(2,\), got shape \(3,\)"):
        classagnostic_ap(np.zeros((5, 2), bool), np.zeros(3), np.zeros(5))
