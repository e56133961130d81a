"""Synthetic scans: the reader's camera model reproduces the rendered frames exactly, and the
ground-truth files agree with each other, with the scene and with the OpenMask3D formats."""

from __future__ import annotations

import colorsys
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from om3db.camera import project
from om3db.errors import ConfigError, ScanError
from om3db.masks import load_masks
from om3db.scan import read_scan
from om3db.synth import (
    CLASSES,
    PALETTE,
    ROOM_RGB,
    build_scene,
    camera_poses,
    gt_point_visibility,
    load_gt,
    render_frame,
    write_scans,
)

MM = 1e-3


def _neighbourhood(img: np.ndarray, u0: np.ndarray, v0: np.ndarray) -> np.ndarray:
    """(n, 4, ...) values of the 2x2 pixels whose centres surround each sub-pixel location."""
    return np.stack([img[v0, u0], img[v0, u0 + 1], img[v0 + 1, u0], img[v0 + 1, u0 + 1]], axis=1)


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray, u0: np.ndarray, v0: np.ndarray) -> np.ndarray:
    fu, fv = u - u0, v - v0
    w = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], axis=1)
    return np.sum(_neighbourhood(img, u0, v0) * w, axis=1)


def _checkable(scan, frame, gt, vis):
    """Visible points whose 2x2 depth neighbourhood lies on the point's own instance, one plane."""
    u, v, z = project(scan.points, frame.world_to_camera, scan.depth_intrinsics)
    idx = np.flatnonzero(vis)
    u0, v0 = np.floor(u[idx]).astype(int), np.floor(v[idx]).astype(int)
    h, w = scan.depth_intrinsics.height, scan.depth_intrinsics.width
    ok = (u0 >= 0) & (v0 >= 0) & (u0 + 1 < w) & (v0 + 1 < h)
    idx, u0, v0 = idx[ok], u0[ok], v0[ok]
    ref = render_frame(scan.path, frame.frame_id)
    same_inst = (_neighbourhood(ref.instance, u0, v0) == gt.instance[idx][:, None]).all(axis=1)
    normals = _neighbourhood(ref.normal, u0, v0)
    coplanar = (np.abs(np.einsum("nkc,nc->nk", normals, normals[:, 0])) > 1 - 1e-5).all(axis=1)
    return idx, u0, v0, u, v, z, same_inst, coplanar


@pytest.mark.parametrize("which", [0, 1])
def test_round_trip_depth_is_exact_with_the_readers_camera_model(synth_root, which):
    """Every visible point on a flat patch reprojects onto depth that matches its camera z within 1 mm.

    Excluded: neighbourhoods touching another instance or a miss (depth jumps) and creases (box edges,
    facets of curved objects), where interpolation is not exact. Inverse depth is interpolated since it
    is affine in pixel coordinates on a plane; plain depth is checked where the patch is not steep.
    """
    path = synth_root / f"synth_0_{which}"
    scan, gt = read_scan(path), load_gt(path)
    checked = visible = 0
    for frame in scan.frames:
        vis = gt_point_visibility(path, frame.frame_id)
        idx, u0, v0, u, v, z, same_inst, coplanar = _checkable(scan, frame, gt, vis)
        keep = same_inst & coplanar
        idx, u0, v0 = idx[keep], u0[keep], v0[keep]
        depth = frame.depth()
        assert (_neighbourhood(depth, u0, v0) > 0).all()
        inv = 1.0 / _bilinear(1.0 / depth, u[idx], v[idx], u0, v0)
        err = np.abs(inv - z[idx])
        assert err.max() <= MM, (
            f"frame {frame.frame_id}: {np.sum(err > MM)} points off by up to {err.max() * 1000:.2f} mm"
        )
        flat = np.ptp(_neighbourhood(depth, u0, v0), axis=1) < 0.03
        err_lin = np.abs(_bilinear(depth, u[idx], v[idx], u0, v0)[flat] - z[idx][flat])
        assert err_lin.max() <= MM
        checked += idx.size
        visible += int(vis.sum())
    assert checked > 0.5 * visible, (checked, visible)
    assert checked > 40_000


def test_round_trip_colour_camera_lands_on_the_points_object(tiny_scan_path):
    """Visible object points reproject (colour intrinsics = depth intrinsics scaled per axis) onto
    their own object in the colour-resolution instance map."""
    scan, gt = read_scan(tiny_scan_path), load_gt(tiny_scan_path)
    cw, ch = scan.color_intrinsics.width, scan.color_intrinsics.height
    assert (cw, ch) == (324, 242) and (scan.depth_intrinsics.width, scan.depth_intrinsics.height) == (160, 120)
    inner = total = mismatched = 0
    for frame in scan.frames:
        vis = gt_point_visibility(tiny_scan_path, frame.frame_id) & (gt.instance < gt.num_objects)
        idx, _, _, _, _, _, same_inst, _ = _checkable(scan, frame, gt, vis)
        inner_depth = np.zeros_like(vis)
        inner_depth[idx[same_inst]] = True  # its 2x2 depth neighbourhood is all its own object
        u, v, _ = project(scan.points[vis], frame.world_to_camera, scan.color_intrinsics)
        obj = gt.instance[vis] + 1
        inst_map = np.asarray(Image.open(tiny_scan_path / "gt" / "instance2d" / f"{frame.frame_id}.png"))
        assert inst_map.shape == (ch, cw) and inst_map.dtype == np.uint16
        cu, cv = np.clip(np.floor(u + 0.5).astype(int), 0, cw - 1), np.clip(np.floor(v + 0.5).astype(int), 0, ch - 1)
        hit = (inst_map[cv, cu] == obj)[inner_depth[vis]]
        total += hit.size
        mismatched += int((~hit).sum())
        # away from silhouettes (2x2 colour neighbourhood of one value) the map must be the point's object
        u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
        ok = (u0 >= 0) & (v0 >= 0) & (u0 + 1 < cw) & (v0 + 1 < ch) & inner_depth[vis]
        nb = _neighbourhood(inst_map, u0[ok], v0[ok])
        uniform = (nb == nb[:, :1]).all(axis=1)
        np.testing.assert_array_equal(nb[uniform, 0], obj[ok][uniform])
        inner += int(uniform.sum())
    assert inner > 0.6 * total
    assert mismatched < 0.005 * total  # only points on a silhouette at colour resolution


def test_depth_instance_map_matches_the_rendered_scene(tiny_scan_path):
    scan, gt = read_scan(tiny_scan_path), load_gt(tiny_scan_path)
    frame = scan.frames[3]
    ref = render_frame(tiny_scan_path, frame.frame_id)
    inst_map = np.asarray(Image.open(tiny_scan_path / "gt" / "instance2d_depth" / f"{frame.frame_id}.png"))
    expected = np.where((ref.instance >= 0) & (ref.instance < gt.num_objects), ref.instance + 1, 0)
    np.testing.assert_array_equal(inst_map, expected)
    depth = frame.depth()
    np.testing.assert_array_equal(depth == 0, ~np.isfinite(ref.depth))
    hit = np.isfinite(ref.depth)
    assert np.abs(depth[hit] - ref.depth[hit]).max() <= 0.5 * MM + 1e-6  # uint16 millimetres


def test_ground_truth_files_agree(tiny_scan_path, tiny_scan):
    gt = load_gt(tiny_scan_path)
    k = gt.num_objects
    assert 6 <= k <= 8
    assert len(set(gt.object_classes)) == k  # tiny: one instance per colour
    assert gt.gt_ids.shape == (tiny_scan.num_points,)
    # OpenMask3D / ScanNet GT format
    np.testing.assert_array_equal(gt.gt_ids, gt.labels.astype(np.int64) * 1000 + gt.instance + 1)
    assert gt.class_names == {i + 1: n for i, n in enumerate(CLASSES)}
    assert gt.class_names[1] == "wall" and gt.class_names[2] == "floor"
    names = np.array([gt.class_names[label] for label in gt.labels])
    assert set(names[gt.instance == k]) == {"floor"}
    assert set(names[gt.instance > k]) == {"wall"} and set(gt.instance[gt.instance > k]) == {k + 1, k + 2, k + 3, k + 4}
    assert (gt.instance >= 0).all()
    # masks: the .pt file (read by the scan reader), instances.txt and objects.json agree
    masks, _ = load_masks(tiny_scan_path / "synth_0_0_masks.pt", num_points=tiny_scan.num_points)
    np.testing.assert_array_equal(masks, gt.masks)
    np.testing.assert_array_equal(tiny_scan.masks, gt.masks)
    assert not gt.masks[gt.instance >= k].any()
    for i, o in enumerate(gt.objects):
        pts = tiny_scan.points[gt.masks[:, i]]
        assert o["instance"] == i and o["num_points"] == len(pts) > 200
        assert names[gt.masks[:, i]][0] == o["class_name"] and o["gt_id"] == gt.gt_ids[gt.masks[:, i]][0]
        assert tuple(o["rgb"]) == PALETTE[o["class_name"]]
        assert (tiny_scan.colors[gt.masks[:, i]] == o["rgb"]).all()
        np.testing.assert_allclose(o["centroid"], pts.mean(0), atol=1e-4)
        np.testing.assert_allclose(o["bbox_min"], pts.min(0), atol=1e-4)
        np.testing.assert_allclose(o["bbox_max"], pts.max(0), atol=1e-4)
    assert (tiny_scan.colors[gt.instance == k] == ROOM_RGB["floor"]).all()
    assert (tiny_scan.colors[gt.instance > k] == ROOM_RGB["wall"]).all()
    # points are not grouped by instance in the file
    assert np.count_nonzero(np.diff(gt.instance)) > tiny_scan.num_points // 2


def test_scene_json_rebuilds_the_ply_exactly(tiny_scan_path, tiny_scan):
    meta = json.loads((tiny_scan_path / "gt" / "scene.json").read_text())
    assert (meta["seed"], meta["size"], meta["index"]) == (0, "tiny", 0)
    scene = build_scene(meta["seed"], meta["size"], meta["index"])
    np.testing.assert_array_equal(scene.vertices, tiny_scan.points)
    np.testing.assert_array_equal(scene.colors, tiny_scan.colors)
    mesh = tiny_scan.mesh()
    np.testing.assert_array_equal(np.asarray(mesh.triangles), scene.faces)
    poses = camera_poses(0, "tiny", 0)
    for frame, pose in zip(tiny_scan.frames, poses, strict=True):
        np.testing.assert_allclose(frame.pose, pose, atol=1e-12)


def test_palette_is_well_separated_and_distinct_from_the_room():
    hues = sorted(colorsys.rgb_to_hsv(*(np.array(c) / 255))[0] * 360 for c in PALETTE.values())
    gaps = np.diff(hues + [hues[0] + 360])
    assert gaps.min() >= 20
    for c in PALETTE.values():
        assert colorsys.rgb_to_hsv(*(np.array(c) / 255))[1] > 0.6  # saturated: never confused with grey
    for grey in ROOM_RGB.values():
        assert colorsys.rgb_to_hsv(*(np.array(grey) / 255))[1] < 0.05


def test_frames_layout_and_naming(tiny_scan_path, tiny_scan):
    assert [f.frame_id for f in tiny_scan.frames] == list(range(20))
    assert sorted(p.name for p in (tiny_scan_path / "pose").iterdir())[:3] == ["0.txt", "1.txt", "10.txt"]  # unpadded
    k_c = np.loadtxt(tiny_scan_path / "intrinsic" / "intrinsic_color.txt")
    k_d = np.loadtxt(tiny_scan_path / "intrinsic" / "intrinsic_depth.txt")
    assert k_c.shape == k_d.shape == (4, 4)
    np.testing.assert_allclose(k_c[0, [0, 2]], k_d[0, [0, 2]] * 324 / 160, atol=1e-6)
    np.testing.assert_allclose(k_c[1, [1, 2]], k_d[1, [1, 2]] * 242 / 120, atol=1e-6)
    heights = np.array([f.pose[2, 3] for f in tiny_scan.frames])
    assert heights.min() >= 1.15 and heights.max() <= 1.75
    forward = np.array([f.pose[:3, 2] for f in tiny_scan.frames])
    to_centre = -np.array([f.pose[:3, 3] for f in tiny_scan.frames])
    assert (np.sum(forward * to_centre, axis=1) > 0).all()  # looking into the room
    assert not tiny_scan.skipped


def test_some_object_is_partly_occluded_by_another(tiny_scan_path, tiny_scan):
    gt = load_gt(tiny_scan_path)
    partly = 0
    for frame in tiny_scan.frames:
        vis = gt_point_visibility(tiny_scan_path, frame.frame_id)
        ref = render_frame(tiny_scan_path, frame.frame_id)
        u, v, z = project(tiny_scan.points, frame.world_to_camera, tiny_scan.depth_intrinsics)
        with np.errstate(invalid="ignore"):
            cu, cv = np.floor(u + 0.5), np.floor(v + 0.5)
            inside = (z > 0) & (cu >= 0) & (cu < 160) & (cv >= 0) & (cv < 120)
        hidden_by = np.full(len(z), -1)
        hidden_by[inside] = ref.instance[cv[inside].astype(int), cu[inside].astype(int)]
        for i in range(gt.num_objects):
            own = gt.masks[:, i]
            behind_other = own & inside & ~vis & (hidden_by >= 0) & (hidden_by < gt.num_objects) & (hidden_by != i)
            if vis[own].any() and behind_other.sum() > 20:
                partly += 1
    assert partly >= 5


def test_visibility_rejects_points_behind_the_camera_and_outside_the_image(tiny_scan_path, tiny_scan):
    frame = tiny_scan.frames[0]
    vis = gt_point_visibility(tiny_scan_path, frame.frame_id)
    u, v, z = project(tiny_scan.points, frame.world_to_camera, tiny_scan.depth_intrinsics)
    assert vis.dtype == bool and vis.shape == (tiny_scan.num_points,)
    assert 0.05 < vis.mean() < 0.6
    assert (z[vis] > 0).all()
    assert (np.floor(u[vis] + 0.5) >= 0).all() and (np.floor(u[vis] + 0.5) < 160).all()
    assert not vis[z <= 0].any()


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_and_other_seeds_differ(tmp_path, tiny_scan_path):
    calls = []
    write_scans(tmp_path / "again", scans=1, seed=0, masks=False)  # replaced by the next run, same name
    (path,) = write_scans(tmp_path / "again", scans=1, seed=0, progress=lambda *a: calls.append(a))
    assert path.name == "synth_0_0"
    assert _hashes(path) == _hashes(tiny_scan_path)
    assert calls[-1] == ("synth", 20, 20) and len(calls) == 20
    other = build_scene(1, "tiny", 0)
    same = build_scene(0, "tiny", 0)
    assert other.vertices.shape != same.vertices.shape or not np.array_equal(other.vertices, same.vertices)
    second = build_scene(0, "tiny", 1)
    assert not np.array_equal(second.vertices[:100], same.vertices[:100])


def test_scannet_size_matches_a_scannet_scan_in_scale():
    scene = build_scene(0, "scannet", 0)
    assert scene.num_objects >= 30
    assert len(scene.vertices) >= 100_000
    classes = [o.class_name for o in scene.objects]
    assert max(classes.count(c) for c in set(classes)) >= 3  # several instances per class
    assert {o.shape for o in scene.objects} == {"box", "sphere", "cylinder", "cone"}
    assert any(o.support >= 0 for o in scene.objects)  # something stands on something
    assert (np.bincount(scene.vertex_instance)[: scene.num_objects] > 100).all()
    poses = camera_poses(0, "scannet", 0)
    assert poses.shape == (250, 4, 4)
    assert 1.15 <= poses[:, 2, 3].min() and poses[:, 2, 3].max() <= 1.75


def test_cli_writes_a_scan_that_reads(tmp_path, capsys):
    from om3db_cli.main import main

    assert main(["synth", str(tmp_path), "--scans", "1", "--seed", "3"]) == 0
    assert "synth_3_0" in capsys.readouterr().out
    scan = read_scan(tmp_path / "synth_3_0")
    assert len(scan.frames) == 20 and scan.masks is not None
    assert scan.masks.shape[1] == load_gt(tmp_path / "synth_3_0").num_objects


def test_bad_options_and_inputs_raise_typed_errors(tmp_path, tiny_scan_path):
    with pytest.raises(ConfigError, match=r"synthetic scan size must be one of \['scannet', 'tiny'\], got 'huge'"):
        write_scans(tmp_path, size="huge")
    with pytest.raises(ConfigError, match="scans must be >= 1, got 0"):
        write_scans(tmp_path, scans=0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ScanError, match="afile: exists and is not a folder. Pass a folder"):
        write_scans(tmp_path / "afile", scans=1)
    (tmp_path / "synth_0_0").mkdir()
    (tmp_path / "synth_0_0" / "notes.txt").write_text("mine")
    with pytest.raises(
        ScanError, match=r"synth_0_0: exists and is not a synthetic scan \(no gt/scene.json\). Remove it or write"
    ):
        write_scans(tmp_path, scans=1)
    assert (tmp_path / "synth_0_0" / "notes.txt").read_text() == "mine"
    with pytest.raises(
        ScanError, match=r"scene.json: ground-truth file is missing. Regenerate the scan with `om3db synth`"
    ):
        load_gt(tmp_path)
    with pytest.raises(ScanError, match="pose: no pose for frame 999. Pass a frame id the scan has"):
        gt_point_visibility(tiny_scan_path, 999)
    with pytest.raises(ConfigError, match="resolution must be 'depth' or 'color', got 'rgb'"):
        render_frame(tiny_scan_path, 0, resolution="rgb")


def test_stale_ground_truth_is_refused(tmp_path, tiny_scan_path):
    import shutil

    scan = tmp_path / "synth_0_0"
    shutil.copytree(tiny_scan_path, scan)
    meta = json.loads((scan / "gt" / "scene.json").read_text())
    meta["version"] = 0
    (scan / "gt" / "scene.json").write_text(json.dumps(meta))
    with pytest.raises(ScanError, match="written by generator version 0, this is 1. Regenerate the scan"):
        gt_point_visibility(scan, 0)
    meta["version"] = 1
    meta["mesh_sha256"] = "0" * 64
    (scan / "gt" / "scene.json").write_text(json.dumps(meta))
    with pytest.raises(
        ScanError,
        match=r"scene.json: the scene rebuilt from it differs from the one written \(other generator code\). Regenerate",
    ):
        render_frame(scan, 0)
    (scan / "gt" / "instances.txt").write_text("1001\n")
    with pytest.raises(ScanError, match="instances.txt: 1 lines for .* points. Regenerate the scan"):
        load_gt(scan)
