"""Training-free proposals end to end: synthetic scans with GT 2D maps, rendered depth, the real capture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from om3db.errors import ConfigError
from om3db.proposals import DiskMasks, ProposalConfig, classagnostic_ap, propose, refine_masks, scan_superpoints
from om3db.proposals.classagnostic_eval import mask_iou
from om3db.proposals.observe import observe
from om3db.scan import read_scan
from om3db.synth import load_gt

OBJECTS_ONLY = (1, 2)  # walls and floor: the GT 2D maps give them id 0, so they are not proposed


def _scan_copy(src: Path, dst: Path, *, depth: bool = True, masks2d: str | None = "gt/instance2d") -> Path:
    """A scan folder of symlinks to ``src`` (no mask file), optionally without depth/ and with masks2d/."""
    dst.mkdir(parents=True)
    for name in ("color", "pose", "intrinsic", f"{src.name}.ply", "gt") + (("depth",) if depth else ()):
        (dst / (f"{dst.name}.ply" if name.endswith(".ply") else name)).symlink_to(src / name)
    if masks2d is not None:
        (dst / "masks2d").symlink_to(src / masks2d)
    return dst


@pytest.fixture(scope="module")
def gt_scan(tiny_scan_path, tmp_path_factory) -> Path:
    return _scan_copy(tiny_scan_path, tmp_path_factory.mktemp("prop") / "gtmasks")


@pytest.fixture(scope="module")
def gt_proposals(gt_scan):
    scan = read_scan(gt_scan)
    return scan, propose(scan)


def test_synthetic_gt_2d_masks_give_ap50_at_least_0_9(gt_proposals, tiny_scan_path):
    scan, props = gt_proposals
    assert scan.masks is None
    gt = load_gt(tiny_scan_path)
    res = classagnostic_ap(props.masks, props.scores, gt.gt_ids, ignore_labels=OBJECTS_ONLY)
    assert res["num_gt"] == gt.num_objects
    assert res["ap50"] >= 0.9 and res["ap25"] >= 0.9
    assert props.masks.dtype == bool and props.masks.shape[0] == scan.num_points
    assert props.scores.dtype == np.float32 and np.all((props.scores > 0) & (props.scores <= 1))
    info = props.info
    assert info["source"] == "disk:masks2d" and info["depth"] == "sensor"
    assert info["frames"] == len(scan.frames) and info["settings"]["vis_threshold"] == 0.05
    # every GT object is one proposal with IoU >= 0.9
    assert mask_iou(props.masks, gt.masks).max(axis=0).min() >= 0.9


def test_depth_resolution_masks_work_too(tiny_scan_path, tmp_path):
    scan = read_scan(_scan_copy(tiny_scan_path, tmp_path / "s", masks2d="gt/instance2d_depth"))
    props = propose(scan)
    res = classagnostic_ap(props.masks, props.scores, load_gt(tiny_scan_path).gt_ids, ignore_labels=OBJECTS_ONLY)
    assert res["ap50"] >= 0.9


def test_without_sensor_depth_rendered_depth_gives_ap50_at_least_0_85(tiny_scan_path, tmp_path):
    folder = _scan_copy(tiny_scan_path, tmp_path / "nodepth", depth=False)
    with pytest.raises(Exception, match="depth: folder is missing"):
        read_scan(folder)
    scan = read_scan(folder, depth="auto")
    assert scan.depth_source == "rendered" and scan.frames[0].rendered_depth and scan.frames[0].depth_path is None
    c = scan.color_intrinsics
    assert (scan.depth_intrinsics.width, scan.depth_intrinsics.height) == (c.width // 2, c.height // 2)
    props = propose(scan)
    assert props.info["depth"] == "rendered"
    res = classagnostic_ap(props.masks, props.scores, load_gt(tiny_scan_path).gt_ids, ignore_labels=OBJECTS_ONLY)
    assert res["ap50"] >= 0.85
    # the same scan read with sensor depth, lifted with depth rendered by the proposer
    sensor = read_scan(_scan_copy(tiny_scan_path, tmp_path / "withdepth"))
    forced = propose(sensor, config=ProposalConfig(depth="rendered"))
    assert forced.info["depth"] == "rendered"
    assert (
        classagnostic_ap(forced.masks, forced.scores, load_gt(tiny_scan_path).gt_ids, ignore_labels=OBJECTS_ONLY)[
            "ap50"
        ]
        >= 0.85
    )


def test_rendered_depth_matches_sensor_depth_on_synthetic_mesh(tiny_scan_path):
    sensor = read_scan(tiny_scan_path, masks=False)
    rendered = read_scan(tiny_scan_path, masks=False, depth="rendered")
    assert rendered.depth_source == "rendered" and rendered.depth_intrinsics == sensor.depth_intrinsics
    d_s, d_r = sensor.frames[3].depth(), rendered.frames[3].depth()
    both = (d_s > 0) & (d_r > 0)
    assert both.mean() > 0.9
    assert np.median(np.abs(d_s[both] - d_r[both])) < 0.01  # the PNG stores millimetres
    assert rendered.fingerprint() != sensor.fingerprint()


def test_read_scan_rejects_unknown_depth_mode(tiny_scan_path):
    with pytest.raises(ConfigError, match="depth must be 'sensor', 'rendered' or 'auto', got 'lidar'"):
        read_scan(tiny_scan_path, depth="lidar")


def test_labelfusion_capture_both_labelled_objects_are_instances(labelfusion_path):
    scan = read_scan(labelfusion_path)
    props = propose(scan, source=DiskMasks("label"))
    # points the labels cover: those that project inside each label (DESIGN visibility, 0.2 m)
    obs = observe(scan, DiskMasks("label"), vis_threshold=0.2)
    for value in (48, 132):
        covered = np.zeros(scan.num_points, dtype=bool)
        for fo in obs.frames:
            covered[fo.points[fo.labels == value]] = True
        assert covered.sum() > 1000
        assert mask_iou(props.masks, covered[:, None]).max() >= 0.5, value


def test_refine_masks_repairs_corrupted_gt_masks(gt_proposals, tiny_scan_path, gt_scan):
    scan, props = gt_proposals
    gt = load_gt(tiny_scan_path).masks
    rng = np.random.default_rng(0)
    sp = scan_superpoints(scan)
    bad = gt.copy()
    for j in range(gt.shape[1]):  # drop ~half of each object's superpoints, add a patch of floor
        ids = np.unique(sp[gt[:, j]])
        bad[np.isin(sp, rng.choice(ids, size=len(ids) // 2, replace=False)), j] = False
        floor = np.flatnonzero(~gt.any(axis=1))
        bad[floor[np.argsort(np.linalg.norm(scan.points[floor] - scan.points[gt[:, j]].mean(0), axis=1))[:100]], j] = (
            True
        )
    refined = refine_masks(scan, bad, superpoints=sp)
    assert refined.shape == gt.shape and refined.dtype == bool
    before = np.diag(mask_iou(bad, gt))
    after = np.diag(mask_iou(refined, gt))
    assert after.mean() > before.mean() + 0.2
    assert after.min() >= 0.85


def test_refine_masks_rejects_wrong_shapes(gt_proposals):
    scan, _ = gt_proposals
    with pytest.raises(ConfigError, match=rf"masks must be \({scan.num_points}, M\)"):
        refine_masks(scan, np.zeros((5, 2), bool))
    with pytest.raises(ConfigError, match=rf"superpoints must be \({scan.num_points},\)"):
        refine_masks(scan, np.zeros((scan.num_points, 1), bool), superpoints=np.zeros(3, np.int32))


def test_scan_without_2d_masks_needs_a_source(tiny_scan_path, tmp_path):
    scan = read_scan(_scan_copy(tiny_scan_path, tmp_path / "nomasks", masks2d=None))
    with pytest.raises(ConfigError, match=r"has no 2D masks \(.*masks2d is missing\).*SamAutomaticMasks"):
        propose(scan)


def test_proposal_config_is_validated():
    with pytest.raises(ConfigError, match="vis_threshold must be > 0"):
        ProposalConfig(vis_threshold=0)
    with pytest.raises(ConfigError, match="depth must be 'auto', 'sensor' or 'rendered'"):
        ProposalConfig(depth="lidar")
    with pytest.raises(ConfigError, match="config must be a ProposalConfig"):
        propose(object(), config={"depth": "auto"})


def test_ingest_uses_the_proposer_when_a_scan_has_no_mask_file(gt_proposals, tiny_scan_path):
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig, ingest_scan
    from tests.fakes import FakeColorEncoder

    scan, props = gt_proposals
    result = ingest_scan(
        scan, config=IngestConfig(frame_step=4, crop=CropConfig(mode="box")), encoders={"siglip": FakeColorEncoder()}
    )
    assert result.settings["mask_source"] == "proposer"
    gt = load_gt(tiny_scan_path).masks
    got = np.zeros((scan.num_points, len(result.instances)), dtype=bool)
    for j, inst in enumerate(result.instances):
        got[inst.point_indices, j] = True
    assert len(result.instances) == gt.shape[1]
    assert mask_iou(got, gt).max(axis=0).min() >= 0.9
