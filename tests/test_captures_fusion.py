"""No PLY needed: the fused scene cloud lies on the true surface, is deterministic and cached, and ingesting a
capture finds the same objects as ingesting the ScanNet-layout original (IoU >= 0.5 on the fused points)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from om3db.crops import CropConfig
from om3db.fusion import FusionConfig, depth_residuals
from om3db.ingest import IngestConfig, ingest_scan
from om3db.scan import read_scan
from om3db.synth import build_scene, load_gt
from tests.fakes import FakeColorEncoder
from tests.test_captures import write_nerfstudio, write_record3d


@pytest.fixture(scope="module")
def synth_masks2d(tmp_path_factory) -> Path:
    """A tiny synthetic scan with GT 2D instance maps (what a perfect 2D segmenter would give)."""
    from om3db.synth import write_scans

    return write_scans(tmp_path_factory.mktemp("synth2d"), scans=1, seed=0, masks2d=True)[0]


@pytest.fixture(scope="module")
def nerfstudio_capture(synth_masks2d, tmp_path_factory) -> Path:
    return write_nerfstudio(synth_masks2d, tmp_path_factory.mktemp("ns") / "capture")


@pytest.fixture(scope="module")
def fused_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fused")


@pytest.fixture(scope="module")
def fused_scan(nerfstudio_capture, fused_dir):
    return read_scan(nerfstudio_capture, fused_dir=fused_dir, masks=False)


def _raycaster(scan_dir: Path):
    from om3db._o3d import open3d

    o3d = open3d()
    gt = load_gt(scan_dir)
    scene = build_scene(gt.scene["seed"], gt.scene["size"], gt.scene["index"])
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(scene.vertices), o3d.core.Tensor(scene.faces.astype(np.uint32)))
    return o3d, rc, scene


def gt_instance_of_points(scan_dir: Path, points: np.ndarray, max_dist: float = 0.02) -> np.ndarray:
    """(N,) GT instance of each point: that of the nearest true surface within ``max_dist``, else -1."""
    o3d, rc, scene = _raycaster(scan_dir)
    ans = rc.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
    near = np.linalg.norm(ans["points"].numpy() - points, axis=1) <= max_dist
    return np.where(near, scene.face_instance[ans["primitive_ids"].numpy()], -1)


def test_fused_points_lie_on_the_true_surface(fused_scan, synth_masks2d):
    o3d, rc, scene = _raycaster(synth_masks2d)
    dist = rc.compute_distance(o3d.core.Tensor(fused_scan.points)).numpy()
    assert np.median(dist) < 0.001 and np.percentile(dist, 90) < 0.005
    # every object is there: most of its mesh vertices have a fused point within 2 cm
    from scipy.spatial import cKDTree

    d, _ = cKDTree(fused_scan.points).query(scene.vertices)
    for k in range(scene.num_objects):
        assert (d[scene.vertex_instance == k] < 0.02).mean() > 0.8, k
    res = depth_residuals(fused_scan.points, fused_scan.frames[::4], fused_scan.depth_intrinsics)
    assert np.median(res) < 0.002


def test_fusion_is_deterministic_cached_and_keyed_by_settings(nerfstudio_capture, fused_scan, fused_dir, tmp_path):
    assert fused_scan.fused_ply is not None and fused_scan.fused_ply.parent == fused_dir
    assert fused_scan.ply_path == fused_scan.fused_ply and fused_scan.fusion["kind"] == "tsdf"
    again = read_scan(nerfstudio_capture, fused_dir=fused_dir, masks=False, frame_step=5)
    assert again.fused_ply == fused_scan.fused_ply and again.fusion["cached"] is True  # frame_step does not matter
    elsewhere = read_scan(nerfstudio_capture, fused_dir=tmp_path / "other", masks=False)
    assert elsewhere.fused_ply.read_bytes() == fused_scan.fused_ply.read_bytes()  # same input, same file
    coarse = read_scan(nerfstudio_capture, fused_dir=fused_dir, masks=False, fusion=FusionConfig(voxel_size=0.04))
    assert coarse.fused_ply != fused_scan.fused_ply and coarse.num_points < fused_scan.num_points / 2
    assert coarse.fingerprint() != fused_scan.fingerprint()
    sidecar = fused_scan.fused_ply.with_suffix(".json")
    assert sidecar.is_file()


def test_fusion_honours_frame_step_and_depth_range(nerfstudio_capture, fused_dir):
    few = read_scan(nerfstudio_capture, fused_dir=fused_dir, masks=False, fusion=FusionConfig(frame_step=10))
    assert few.fusion["frame_ids"] == [0, 10]
    near = read_scan(nerfstudio_capture, fused_dir=fused_dir, masks=False, fusion=FusionConfig(depth_max=1.5))
    z = np.array([f.pose[:3, 3] for f in near.frames])
    assert np.min(np.linalg.norm(near.points[:, None, :] - z[None], axis=2), axis=1).max() < 1.5 + 0.1


def test_scannet_layout_without_ply_is_fused(synth_masks2d, tmp_path):
    scan_dir = tmp_path / "scene_noply"
    shutil.copytree(synth_masks2d, scan_dir, ignore=shutil.ignore_patterns("*.ply", "*_masks.pt", "gt"))
    scan = read_scan(scan_dir, fused_dir=tmp_path / "fused")
    assert scan.source_format == "scannet" and scan.fused_ply is not None and scan.masks is None
    assert scan.fused_ply.parent == tmp_path / "fused" and scan.num_points > 100_000


def _object_ious(instances, gt_inst: np.ndarray, num_objects: int) -> list[float]:
    """Best IoU on the fused points of each GT object against the instances."""
    best = []
    for k in range(num_objects):
        obj = gt_inst == k
        ious = [0.0]
        for inst in instances:
            m = np.zeros(len(gt_inst), bool)
            m[inst.point_indices] = True
            ious.append((m & obj).sum() / (m | obj).sum())
        best.append(max(ious))
    return best


_CFG = IngestConfig(frame_step=2, crop=CropConfig(mode="box"))


def test_ingesting_a_capture_finds_the_objects_of_the_original(synth_masks2d, fused_scan):
    """The ScanNet original ingests its GT masks; the capture (no PLY, no mask file) ingests the proposer's
    instances on its fused points: every GT object is matched at IoU >= 0.5 there, and the fake colour
    encoder finds the same object for each colour word in both."""
    enc = FakeColorEncoder()
    original = ingest_scan(read_scan(synth_masks2d), config=_CFG, encoders={"siglip": enc})
    capture = ingest_scan(fused_scan, config=_CFG, encoders={"siglip": enc})
    assert capture.settings["mask_source"] == "proposer"
    gt = load_gt(synth_masks2d)
    gt_inst = gt_instance_of_points(synth_masks2d, fused_scan.points)
    ious = _object_ious(capture.instances, gt_inst, gt.num_objects)
    assert min(ious) >= 0.5, ious
    for name in sorted(set(gt.object_classes)):
        q = enc.encode_texts([f"a {name} in a scene"])[0]
        top_o = max(original.instances, key=lambda i: float(i.vectors["siglip"] @ q))
        top_c = max(capture.instances, key=lambda i: float(i.vectors["siglip"] @ q))
        assert gt.object_classes[top_o.mask_index] == name
        labels = np.bincount(gt_inst[top_c.point_indices] + 1, minlength=gt.num_objects + 2)[1 : gt.num_objects + 1]
        assert gt.object_classes[int(np.argmax(labels))] == name


def test_record3d_capture_proposals_match_the_objects(synth_masks2d, tmp_path):
    """A .r3d is a file (no masks2d/ beside its frames): its proposals come from an explicit 2D source."""
    from om3db.proposals import DiskMasks, propose

    r3d = write_record3d(synth_masks2d, tmp_path / "room.r3d", low_confidence_band=False)
    scan = read_scan(r3d, fused_dir=tmp_path / "fused", masks=False)

    class OriginalMasks(DiskMasks):
        def _path(self, _scan, frame_id):
            return super()._path(type("S", (), {"path": synth_masks2d})(), frame_id)

    props = propose(scan, source=OriginalMasks())
    result = ingest_scan(scan, config=_CFG, encoders={"siglip": FakeColorEncoder()}, masks=props.masks)
    gt = load_gt(synth_masks2d)
    ious = _object_ious(result.instances, gt_instance_of_points(synth_masks2d, scan.points), gt.num_objects)
    assert min(ious) >= 0.5, ious
