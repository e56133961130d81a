"""``om3db convert``: the real capture goes through convert and back unchanged; captures of other formats
convert to ScanNet folders that read back as the capture; bad input leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from om3db_cli.main import main

from om3db.captures.convert import convert_capture
from om3db.errors import ScanError
from om3db.scan import read_scan
from tests.test_captures import write_nerfstudio, write_record3d


def _same_scan(a, b, *, pose_tol: float = 0.0, colour_exact: bool = True) -> None:
    assert np.array_equal(a.points, b.points) and np.array_equal(a.colors, b.colors)
    assert a.color_intrinsics == b.color_intrinsics and a.depth_intrinsics == b.depth_intrinsics
    assert [f.frame_id for f in a.frames] == [f.frame_id for f in b.frames]
    for fa, fb in zip(a.frames, b.frames, strict=True):
        assert np.abs(fa.pose - fb.pose).max() <= pose_tol
        assert np.array_equal(fa.depth(), fb.depth())
        if colour_exact:
            assert np.array_equal(fa.color(), fb.color())
        else:
            assert np.abs(fa.color().astype(int) - fb.color()).mean() < 3.0


def test_real_capture_converts_and_back_unchanged(labelfusion_path, tmp_path):
    out = convert_capture(labelfusion_path, tmp_path / "lf")
    assert out.source_format == "scannet" and out.frames_written == 15 and out.fused_ply is None
    _same_scan(read_scan(labelfusion_path), read_scan(out.path))
    for sub in ("color", "depth"):  # already ScanNet form: copied byte for byte
        for p in (labelfusion_path / sub).iterdir():
            assert (out.path / sub / p.name).read_bytes() == p.read_bytes()
    assert (out.path / "lf.ply").read_bytes() == (labelfusion_path / "labelfusion_fused_even.ply").read_bytes()
    # and once more through a capture format: the real frames as nerfstudio, converted back
    ns = write_nerfstudio(labelfusion_path, tmp_path / "lf_ns", depth_unit=1e-3, ply=True)
    back = convert_capture(ns, tmp_path / "lf_back")
    assert back.source_format == "nerfstudio"
    _same_scan(read_scan(labelfusion_path), read_scan(back.path))


def test_record3d_converts_to_a_scannet_folder(tiny_scan_path, tmp_path):
    r3d = write_record3d(tiny_scan_path, tmp_path / "room.r3d", low_confidence_band=False)
    out = convert_capture(r3d, tmp_path / "room", fused_dir=tmp_path / "fused")
    assert out.source_format == "record3d" and out.fused_ply is not None and out.depth == "sensor"
    capture = read_scan(r3d, fused_dir=tmp_path / "fused", masks=False)
    converted = read_scan(out.path)
    assert converted.source_format == "scannet" and converted.fused_ply is None  # the fused cloud is its PLY now
    _same_scan(capture, converted, pose_tol=1e-12)  # poses written with 17 digits read back bit for bit
    truth = read_scan(tiny_scan_path)
    for f, t in zip(converted.frames, truth.frames, strict=True):
        assert np.abs(f.pose - t.pose).max() < 1e-5 and np.array_equal(f.depth(), t.depth())  # mm survive
    prov = json.loads((out.path / "om3db_convert.json").read_text())
    assert prov["source_format"] == "record3d" and prov["fusion"]["kind"] == "tsdf"


def test_capture_without_depth_converts_without_depth(tiny_scan_path, tmp_path):
    from tests.test_captures import write_scanner3d

    cap = write_scanner3d(tiny_scan_path, tmp_path / "scan3d")
    out = convert_capture(cap, tmp_path / "scan3d_scannet", fused_dir=tmp_path / "fused")
    assert out.depth == "none" and not (out.path / "depth").exists()
    scan = read_scan(out.path, depth="auto")
    assert scan.depth_source == "rendered" and scan.num_points == read_scan(tiny_scan_path).num_points


def test_convert_refuses_a_non_empty_destination(labelfusion_path, tmp_path):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "x.txt").write_text("mine")
    with pytest.raises(ScanError, match="exists and is not an empty folder. Convert into a new folder"):
        convert_capture(labelfusion_path, dst)
    assert [p.name for p in dst.iterdir()] == ["x.txt"]


def test_cli_convert_bad_capture_leaves_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.r3d"
    bad.write_bytes(b"not a zip")
    code = main(["convert", str(bad), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"Error: {bad}: not a readable .r3d (zip) file")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.r3d"]


def test_cli_convert_json(labelfusion_path, tmp_path, capsys):
    code = main(["convert", str(labelfusion_path), str(tmp_path / "lf"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["frames_written"] == 15 and out["source_format"] == "scannet"
    assert Path(out["path"]) == tmp_path / "lf"
