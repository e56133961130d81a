"""Issue 21's last gaps against exact truth: nerfstudio poses in non-metric units read with ``pose_scale``
(with depth, and without depth rendered from the scaled PLY); 3D Scanner App mesh vertices coloured from
the frames; the up axis of ARKit worlds (Record3D, 3D Scanner App) stored as the scan's gravity, with
relations equal to the ScanNet-layout original's; Record3D JPGs through the image size guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import om3db
from om3db.errors import ConfigError, ScanError
from om3db.scan import read_scan
from om3db.synth import build_scene
from tests.fakes import FakeColorEncoder
from tests.test_captures import arkit_world, write_nerfstudio, write_record3d, write_scanner3d

UNIT = 2.5
"""Metres per pose unit of the non-metric nerfstudio captures (poses and PLY divided by it)."""


def _scene(src: Path):
    gt = json.loads((src / "gt" / "scene.json").read_text())
    return build_scene(gt["seed"], gt["size"], gt["index"])


@pytest.fixture(scope="module")
def truth(tiny_scan_path):
    return read_scan(tiny_scan_path)


@pytest.fixture(scope="module")
def fused_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fused")


# ------------------------------------------------------------------ nerfstudio pose_scale


def _same_poses(scan, truth, tol: float = 1e-5) -> None:
    by_id = {f.frame_id: f for f in truth.frames}
    assert [f.frame_id for f in scan.frames] == sorted(by_id)
    for f in scan.frames:
        assert np.abs(f.pose - by_id[f.frame_id].pose).max() < tol, f.frame_id


def test_nerfstudio_with_depth_and_non_metric_poses(tiny_scan_path, truth, tmp_path, fused_dir):
    ns = write_nerfstudio(tiny_scan_path, tmp_path / "ns", pose_unit=UNIT, ply=True)
    raw = read_scan(ns, masks=False)  # without the scale the poses are read as they are: off by UNIT
    assert np.abs(raw.frames[3].pose[:3, 3] * UNIT - truth.frames[3].pose[:3, 3]).max() < 1e-5
    scan = read_scan(ns, masks=False, pose_scale=UNIT, fused_dir=fused_dir)
    _same_poses(scan, truth)
    assert scan.depth_source == "sensor" and scan.capture_info["pose_scale"] == UNIT
    assert np.array_equal(scan.frames[0].depth(), truth.frames[0].depth())  # depth has its own units
    assert scan.fusion["kind"] == "scaled" and scan.ply_path.parent == fused_dir
    assert np.abs(scan.points - truth.points).max() < 1e-5  # the PLY scaled too, vertex order kept
    assert np.array_equal(scan.colors, truth.colors)
    assert "up" not in scan.capture_info  # nerfstudio defines no gravity
    assert scan.fingerprint() != raw.fingerprint()


def test_nerfstudio_without_depth_renders_from_the_scaled_ply(tiny_scan_path, truth, tmp_path, fused_dir):
    ns = write_nerfstudio(tiny_scan_path, tmp_path / "colmap", pose_unit=UNIT, ply=True, depth=False)
    scan = read_scan(ns, masks=False, pose_scale=UNIT, depth="auto", fused_dir=fused_dir)
    _same_poses(scan, truth)
    assert scan.depth_source == "rendered" and scan.frames[0].rendered_depth
    assert np.abs(scan.points - truth.points).max() < 1e-5
    scene = _scene(tiny_scan_path)
    assert np.array_equal(np.asarray(scan.mesh().triangles), scene.faces)  # faces kept: depth from the mesh
    # the depth is the true mesh's, seen from the true poses (rendered the same way from the synthetic scene)
    from om3db.proposals.render import DepthRenderer

    true_mesh = DepthRenderer(scene.vertices, scene.faces)
    by_id = {f.frame_id: f for f in truth.frames}
    for f in scan.frames[::7]:
        d, t = f.depth(), true_mesh.render(by_id[f.frame_id].pose, scan.depth_intrinsics)
        assert (d > 0).mean() > 0.5 and np.array_equal(d > 0, t > 0) and np.abs(d - t).max() < 1e-4, f.frame_id
    again = read_scan(ns, masks=False, pose_scale=UNIT, depth="auto", fused_dir=fused_dir)
    assert again.ply_path == scan.ply_path and again.fusion["cached"] is True


def test_nerfstudio_without_depth_and_a_point_cloud_renders_splats(tiny_scan_path, truth, tmp_path, fused_dir):
    ns = write_nerfstudio(tiny_scan_path, tmp_path / "sparse", pose_unit=UNIT, ply=True, depth=False, ply_faces=False)
    scan = read_scan(ns, masks=False, pose_scale=UNIT, depth="auto", fused_dir=fused_dir)
    _same_poses(scan, truth)
    assert np.abs(scan.points - truth.points).max() < 1e-5 and np.array_equal(scan.colors, truth.colors)
    assert len(scan.mesh().triangles) == 0 and scan.depth_source == "rendered"
    from om3db.proposals.render import DepthRenderer

    true_points = DepthRenderer(_scene(tiny_scan_path).vertices)  # the true vertices splatted the same way
    by_id = {f.frame_id: f for f in truth.frames}
    for f in scan.frames[::7]:
        d, t = f.depth(), true_points.render(by_id[f.frame_id].pose, scan.depth_intrinsics)
        assert (d > 0).mean() > 0.5 and (np.abs(d - t) < 1e-4).mean() > 0.99, f.frame_id


def test_nerfstudio_scale_one_states_metric_poses(tiny_scan_path, truth, tmp_path, fused_dir):
    ns = write_nerfstudio(tiny_scan_path, tmp_path / "metric", ply=True, depth=False)
    scan = read_scan(ns, masks=False, pose_scale=1, depth="auto", fused_dir=fused_dir)
    _same_poses(scan, truth)
    assert scan.ply_path == ns / "sparse_pc.ply" and np.array_equal(scan.points, truth.points)


def test_nerfstudio_without_depth_is_refused_without_a_scale(tiny_scan_path, tmp_path):
    ns = write_nerfstudio(tiny_scan_path, tmp_path / "colmap", pose_unit=UNIT, ply=True, depth=False)
    with pytest.raises(ScanError) as err:
        read_scan(ns, depth="auto")
    assert str(err.value) == (
        f"{ns / 'transforms.json'}: frames have no depth_file_path: the poses' scale is unknown (COLMAP poses are "
        "not metric) and om3db does not guess it. Pass pose_scale = metres per pose unit (CLI --pose-scale; 1 when "
        "the poses and ply_file_path are already in metres) to render depth from ply_file_path, or export the "
        "capture with depth maps"
    )
    with pytest.raises(ScanError, match="has no sensor depth. Pass depth='rendered'"):
        read_scan(ns, pose_scale=UNIT, depth="sensor")


def test_nerfstudio_without_depth_or_ply_has_nothing_to_render(tiny_scan_path, tmp_path):
    ns = write_nerfstudio(tiny_scan_path, tmp_path / "bare", pose_unit=UNIT, depth=False)
    for scale in (None, UNIT):  # a scale does not help: there is nothing to render depth from
        with pytest.raises(ScanError) as err:
            read_scan(ns, depth="auto", pose_scale=scale)
        assert err.value.path == ns / "transforms.json"
        assert "frames have no depth_file_path and there is no ply_file_path: om3db has nothing to measure" in str(
            err.value
        )
        assert str(err.value).endswith(
            "or add the scene mesh / point cloud as ply_file_path and pass pose_scale (metres per pose unit; CLI "
            "--pose-scale)"
        )


@pytest.mark.parametrize("bad", [0, -2.0, float("nan"), float("inf"), "two", True, [1.0]])
def test_bad_pose_scale_is_a_config_error_naming_the_option(tiny_scan_path, tmp_path, bad):
    ns = write_nerfstudio(tiny_scan_path, tmp_path / "ns", pose_unit=UNIT, depth=False, ply=True)
    with pytest.raises(ConfigError, match=r"^pose_scale \(--pose-scale\) must be a .*number.*got "):
        read_scan(ns, pose_scale=bad)
    from om3db.captures.base import ReadOptions
    from om3db.ingest import ReadOptions as IngestReadOptions

    for options in (ReadOptions, IngestReadOptions):
        with pytest.raises(ConfigError, match=r"^pose_scale \(--pose-scale\)"):
            options(pose_scale=bad)


def test_pose_scale_with_a_metric_format_is_refused(tiny_scan_path, tmp_path):
    r3d = write_record3d(tiny_scan_path, tmp_path / "room.r3d")
    with pytest.raises(ConfigError, match="pose_scale=2.5 applies to nerfstudio captures .* the record3d format's"):
        read_scan(r3d, pose_scale=UNIT)


def test_cli_convert_and_ingest_take_pose_scale(tiny_scan_path, tmp_path, capsys):
    from om3db_cli.main import main

    ns = write_nerfstudio(tiny_scan_path, tmp_path / "colmap", pose_unit=UNIT, ply=True, depth=False)
    fused = ["--fused-dir", str(tmp_path / "fused")]
    assert main(["convert", str(ns), str(tmp_path / "bad"), "--pose-scale", "nan", *fused]) == 1
    err = capsys.readouterr().err
    assert err == "Error: --pose-scale nan: must be a finite number of metres per pose unit > 0\n"
    assert not (tmp_path / "bad").exists()
    assert main(["convert", str(ns), str(tmp_path / "out"), "--pose-scale", str(UNIT), "--json", *fused]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["depth"] == "none" and out["source_format"] == "nerfstudio"
    converted, truth = read_scan(tmp_path / "out", depth="auto"), read_scan(tiny_scan_path)
    _same_poses(converted, truth)
    assert np.abs(converted.points - truth.points).max() < 1e-5
    # ingest: a bad scale is refused before the database exists
    db = tmp_path / "db"
    assert main(["ingest", str(ns), "--db", str(db), "--pose-scale", "-1", "--siglip", "x"]) == 1
    assert "Error: pose_scale (--pose-scale) must be a finite number > 0" in capsys.readouterr().err
    assert not db.exists()


def test_database_ingest_stores_the_scale_and_rereads_with_it(tiny_scan_path, tmp_path):
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig

    ns = write_nerfstudio(tiny_scan_path, tmp_path / "scans" / "colmap", pose_unit=UNIT, ply=True, depth=False)
    shutil.copy(tiny_scan_path / f"{tiny_scan_path.name}_masks.pt", ns / "colmap_masks.pt")  # indexes the PLY
    cfg = IngestConfig(frame_step=4, crop=CropConfig(mode="box"))
    with om3db.connect(tmp_path / "db") as db:
        out = db.ingest(ns, config=cfg, siglip=FakeColorEncoder(), dinov2=False, pose_scale=UNIT)
        assert out[0].status == "ingested" and out[0].report.source_format == "nerfstudio"
        info = db.scans()[0]
        assert info.settings["key"]["read"]["pose_scale"] == UNIT
        inst = db.instances("colmap")[0]
        truth = read_scan(tiny_scan_path)
        assert np.allclose(inst.centroid, truth.points[inst.point_indices].mean(axis=0), atol=1e-4)
        files = db.export(db.search("a red object", k=1), tmp_path / "exported")  # re-reads with the scale
        assert any(p.name == "colmap_hits.ply" for p in files)
        again = db.ingest(ns, config=cfg, siglip=FakeColorEncoder(), dinov2=False, pose_scale=UNIT)
        assert again[0].status == "skipped"


# ------------------------------------------------------------------ 3D Scanner App colours


def test_scanner3d_mesh_points_are_coloured_from_the_frames(tiny_scan_path, tmp_path):
    cap = write_scanner3d(tiny_scan_path, tmp_path / "scan3d")
    scan = read_scan(cap, depth="auto", masks=False, fused_dir=tmp_path / "fused")
    scene = _scene(tiny_scan_path)
    assert scan.fusion["colours"] == "frames" and scan.fusion["colour_views"] == len(scan.frames)
    seen = scan.colors.any(axis=1)
    assert scan.fusion["points_coloured"] == int(seen.sum())
    # the frames show each face in its shaded colour: a seen vertex's colour lies within the colours of the
    # faces around it (up to JPEG noise and silhouette pixels)
    fc = scene.face_colors.astype(int)
    lo = np.full((len(scene.vertices), 3), 255)
    hi = np.zeros((len(scene.vertices), 3), int)
    for k in range(3):
        np.minimum.at(lo, scene.faces[:, k], fc)
        np.maximum.at(hi, scene.faces[:, k], fc)
    c = scan.colors.astype(int)
    err = (np.maximum(lo - c, 0) + np.maximum(c - hi, 0)).max(axis=1)[seen]
    assert np.median(err) <= 2 and np.percentile(err, 90) <= 8, np.percentile(err, [50, 90])
    # every object is seen and has its own colour (chromaticity nearest to its class colour's)
    flat = np.array([scene.colors[scene.vertex_instance == k][0] for k in range(scene.num_objects)], float)
    chroma = flat / flat.sum(axis=1, keepdims=True)
    for k in range(scene.num_objects):
        mine = scene.vertex_instance == k
        assert seen[mine].mean() > 0.8, k
        mean = scan.colors[mine & seen].mean(axis=0)
        assert np.argmin(np.linalg.norm(chroma - mean / mean.sum(), axis=1)) == k
    # unseen vertices (the walls' outer sides, undersides) stay black; the floor is seen
    assert seen[scene.vertex_instance == scene.num_objects].mean() > 0.95


def test_scanner3d_colours_are_cached_and_keyed_by_the_frames(tiny_scan_path, tmp_path):
    cap = write_scanner3d(tiny_scan_path, tmp_path / "scan3d")
    first = read_scan(cap, depth="auto", masks=False, fused_dir=tmp_path / "fused")
    again = read_scan(cap, depth="auto", masks=False, fused_dir=tmp_path / "fused")
    assert again.ply_path == first.ply_path and again.fusion["cached"] and again.fusion["colours"] == "frames"
    assert np.array_equal(again.colors, first.colors)
    (cap / "frame_00003.jpg").write_bytes((cap / "frame_00003.jpg").read_bytes() + b"\0")  # another frame file
    changed = read_scan(cap, depth="auto", masks=False, fused_dir=tmp_path / "fused")
    assert changed.ply_path != first.ply_path and not changed.fusion["cached"]


def test_obj_with_vertex_colours_keeps_them(tiny_scan_path, tmp_path):
    cap = write_scanner3d(tiny_scan_path, tmp_path / "scan3d")
    obj = cap / "export.obj"
    lines = obj.read_text().splitlines()
    lines = [ln + " 1 0 0" if ln.startswith("v ") else ln for ln in lines]  # every vertex red (0..1 floats)
    obj.write_text("\n".join(lines) + "\n")
    scan = read_scan(cap, depth="auto", masks=False, fused_dir=tmp_path / "fused")
    assert scan.fusion["colours"] == "obj" and (scan.colors == [255, 0, 0]).all()


# ------------------------------------------------------------------ up axis from the capture


def _gt_objects_of(points_world: np.ndarray, scene, max_dist: float = 0.02) -> np.ndarray:
    """(N,) object index of each point (synthetic world) from its nearest true surface, -1 off the objects."""
    from om3db._o3d import open3d

    o3d = open3d()
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(scene.vertices), o3d.core.Tensor(scene.faces.astype(np.uint32)))
    ans = rc.compute_closest_points(o3d.core.Tensor(points_world.astype(np.float32)))
    near = np.linalg.norm(ans["points"].numpy() - points_world, axis=1) <= max_dist
    inst = scene.face_instance[ans["primitive_ids"].numpy()]
    return np.where(near & (inst < scene.num_objects), inst, -1)


def _triples(rel, exclude=("near", "next_to")) -> set:
    return {(int(r.subject), int(r.object), r.relation) for r in rel.relations if r.relation not in exclude}


def test_record3d_states_the_arkit_up_axis_and_relations_match_the_original(tiny_scan_path, truth, tmp_path):
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig, ingest_scan
    from om3db.relations import scan_relations

    world = arkit_world()
    r3d = write_record3d(tiny_scan_path, tmp_path / "room.r3d", world=world, low_confidence_band=False)
    scan = read_scan(r3d, fused_dir=tmp_path / "fused", masks=False)
    assert scan.capture_info["up"] == [0.0, 1.0, 0.0]
    by_id = {f.frame_id: f for f in truth.frames}
    for f in scan.frames:  # the poses are in the ARKit world
        assert np.abs(f.pose - world @ by_id[f.frame_id].pose).max() < 1e-5
    assert np.allclose(world[:3, :3] @ [0, 0, 1], scan.capture_info["up"])  # the original's up, moved
    # the same objects on the fused points (found from the true surface) and on the original's points
    scene = _scene(tiny_scan_path)
    inv = np.linalg.inv(world)
    gt = _gt_objects_of(scan.points.astype(np.float64) @ inv[:3, :3].T + inv[:3, 3], scene)
    objs = range(scene.num_objects)
    captured = scan_relations(scan.points, [scan.points[gt == k] for k in objs], capture_up=scan.capture_info["up"])
    original = scan_relations(truth.points, [truth.points[scene.vertex_instance == k] for k in objs])
    assert captured.gravity.source == "capture" and captured.gravity.up == (0.0, 1.0, 0.0)
    assert original.gravity.source == "floor"
    assert _triples(captured) == _triples(original) and any(t[2] == "on" for t in _triples(original))
    # ingest uses it: the relations it builds take the capture's up axis
    masks = np.stack([gt == k for k in objs], axis=1)
    cfg = IngestConfig(frame_step=4, crop=CropConfig(mode="box"))
    result = ingest_scan(scan, config=cfg, encoders={"siglip": FakeColorEncoder()}, masks=masks)
    assert result.relations.gravity.source == "capture" and result.relations.gravity.up == (0.0, 1.0, 0.0)
    assert result.report.capture_info["up"] == [0.0, 1.0, 0.0]


def test_stored_gravity_of_an_arkit_capture_and_its_relations(tiny_scan_path, tmp_path):
    """A 3D Scanner App capture in an ARKit world (its mesh = the original's vertices moved, so the original's
    GT masks index it) and the ScanNet original in one database: the capture's gravity is stored with source
    'capture' and the ARKit up vector, the original's from its floor, and their relations are the same."""
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig

    root = tmp_path / "scans"
    shutil.copytree(tiny_scan_path, root / "original", ignore=shutil.ignore_patterns("gt"))
    (root / "original" / f"{tiny_scan_path.name}_masks.pt").rename(root / "original" / "original_masks.pt")
    (root / "original" / f"{tiny_scan_path.name}.ply").rename(root / "original" / "original.ply")
    cap = write_scanner3d(tiny_scan_path, root / "phone", world=arkit_world())
    shutil.copy(root / "original" / "original_masks.pt", cap / "phone_masks.pt")
    cfg = IngestConfig(frame_step=4, crop=CropConfig(mode="box"))
    with om3db.connect(tmp_path / "db") as db:
        out = db.ingest(root, config=cfg, siglip=FakeColorEncoder(), dinov2=False)
        assert {o.scan: o.status for o in out} == {"original": "ingested", "phone": "ingested"}
        g = db.gravity("phone")
        assert g["source"] == "capture" and np.allclose(g["up"], (0.0, 1.0, 0.0))
        assert db.gravity("original")["source"] == "floor"

        def triples(scan):
            mask = {i.id: i.mask_index for i in db.instances(scan)}
            rows = db.relations(scan)
            return {(mask[r["subject_id"]], mask[r["object_id"]], r["relation"]) for r in rows}

        assert triples("phone") == triples("original") and triples("phone")
    # reindex rebuilds the relations with the capture's up axis too
    import sqlite3

    with sqlite3.connect(tmp_path / "db" / "om3db.sqlite") as conn:
        for table in ("relations", "instance_geometry", "scan_gravity"):
            conn.execute(f"DELETE FROM {table}")
    with om3db.connect(tmp_path / "db") as db:
        db.reindex()
        assert db.gravity("phone")["source"] == "capture"


# ------------------------------------------------------------------ Record3D JPGs through the size guard


def test_record3d_jpg_larger_than_the_image_limit_is_named(tiny_scan_path, tmp_path, monkeypatch):
    import om3db.images

    r3d = write_record3d(tiny_scan_path, tmp_path / "room.r3d")
    monkeypatch.setattr(om3db.images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ScanError) as err:
        read_scan(r3d, masks=False)
    assert err.value.path == Path(f"{r3d}/rgbd/0.jpg")
    assert "more than om3db's limit of 100" in str(err.value)
    assert str(err.value).endswith("raise the limit with OM3DB_MAX_IMAGE_PIXELS if it is really meant")
    monkeypatch.setattr(om3db.images, "MAX_IMAGE_PIXELS", 64_000_000)
    scan = read_scan(r3d, masks=False, check_all_images=False, fused_dir=tmp_path / "fused")
    monkeypatch.setattr(om3db.images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ScanError, match=r"rgbd/5\.jpg: image is \d+x\d+ pixels, more than om3db's limit of 100"):
        scan.frame(5).color()  # decoding a frame later goes through the guard too
