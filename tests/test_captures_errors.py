"""Bad captures: each a typed error naming the file, what is wrong and the fix, before anything is written."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from om3db.errors import ConfigError, ScanError
from om3db.scan import read_scan
from tests.test_captures import write_nerfstudio, write_record3d, write_replica


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory, tiny_scan_path) -> Path:
    """The tiny synthetic scan cut to 4 frames (errors do not need more)."""
    root = tmp_path_factory.mktemp("small") / "synth"
    shutil.copytree(tiny_scan_path, root, ignore=shutil.ignore_patterns("gt", "*_masks.pt"))
    for sub in ("color", "depth", "pose"):
        for p in (root / sub).iterdir():
            if int(p.stem) >= 4:
                p.unlink()
    return root


@pytest.fixture()
def ns(small_scan, tmp_path) -> Path:
    return write_nerfstudio(small_scan, tmp_path / "ns")


@pytest.fixture()
def r3d(small_scan, tmp_path) -> Path:
    return write_record3d(small_scan, tmp_path / "rec.r3d")


def _edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _rewrite_zip(path: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members.update(replace)
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            if data is not None:
                z.writestr(n, data)


def test_folder_matching_no_format_lists_what_each_needs(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(ScanError) as err:
        read_scan(tmp_path / "stuff")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'stuff'}: matches no capture format: scannet needs color/ and intrinsic/")
    for piece in (
        "nerfstudio needs transforms.json (missing: transforms.json)",
        "record3d needs a .r3d file",
        "arkitscenes needs lowres_wide/, lowres_depth/, lowres_wide_intrinsics/ and lowres_wide.traj",
        "replica needs results/frame*.jpg, results/depth*.png and traj.txt (missing: results/frame*.jpg, traj.txt)",
        "scannetpp needs",
        "scanner3d needs",
    ):
        assert piece in msg, piece
    assert msg.endswith("Pass format= to read it as one format and see why")


def test_two_formats_at_once(small_scan, ns, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(small_scan, both)
    shutil.copyfile(ns / "transforms.json", both / "transforms.json")
    with pytest.raises(ScanError) as err:
        read_scan(both)
    assert str(err.value) == (
        f"{both}: holds several capture formats at once (scannet, nerfstudio). Pass format= (CLI --format) with "
        "one of them, or keep one capture per folder"
    )
    assert read_scan(both, format="scannet").source_format == "scannet"


def test_transforms_without_intrinsics(ns):
    _edit_json(ns / "transforms.json", lambda m: [m.pop(k) for k in ("fl_x", "cy")])
    with pytest.raises(ScanError) as err:
        read_scan(ns)
    assert err.value.path == ns / "transforms.json"
    assert str(err.value).endswith(
        "transforms.json: has no intrinsics (fl_x, cy missing). Write fl_x, fl_y, cx, cy (pixels) at the top level "
        "or in every frame"
    )


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"k1": 0.1}, "lens distortion (k1=0.1) is not supported"),
        ({"camera_model": "OPENCV_FISHEYE"}, "camera_model OPENCV_FISHEYE is not a pinhole camera"),
    ],
)
def test_transforms_distortion_and_fisheye_are_refused(ns, edit, problem):
    _edit_json(ns / "transforms.json", lambda m: m.update(edit))
    with pytest.raises(ScanError) as err:
        read_scan(ns)
    assert str(err.value).startswith(f"{ns / 'transforms.json'}: {problem}")


def test_transforms_without_depth_is_not_guessed(ns):
    _edit_json(ns / "transforms.json", lambda m: [f.pop("depth_file_path") for f in m["frames"]])
    with pytest.raises(ScanError) as err:
        read_scan(ns)
    assert "no depth_file_path and there is no ply_file_path: om3db has nothing to measure" in str(err.value)
    assert str(err.value).endswith("ply_file_path and pass pose_scale (metres per pose unit; CLI --pose-scale)")
    _edit_json(ns / "transforms.json", lambda m: m.update(ply_file_path="scene.ply"))
    (ns / "scene.ply").write_bytes((ns / "transforms.json").read_bytes())  # any file: refused before it is read
    with pytest.raises(ScanError, match="the poses' scale is unknown \\(COLMAP poses are not metric\\)"):
        read_scan(ns, depth="auto")


def test_depth_in_unknown_units(ns):
    first = ns / "depth" / "frame_00000.png"
    Image.fromarray(np.zeros((120, 160, 3), np.uint8)).save(first)  # an 8-bit colour "depth"
    with pytest.raises(ScanError) as err:
        read_scan(ns)
    assert err.value.path == first
    assert "depth is not 16-bit (PIL mode RGB): its units are unknown" in str(err.value)


def test_corrupt_zip(tmp_path):
    bad = tmp_path / "broken.r3d"
    bad.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(ScanError, match=r"broken.r3d: not a readable .r3d \(zip\) file"):
        read_scan(bad)


def test_lzfse_stream_of_the_wrong_size(r3d):
    import lzfse

    _rewrite_zip(r3d, {"rgbd/2.depth": lzfse.compress(np.zeros(100, "<f4").tobytes())})
    with pytest.raises(ScanError) as err:
        read_scan(r3d)
    assert str(err.value).startswith(
        f"{r3d}/rgbd/2.depth: LZFSE stream decodes to 400 bytes, expected 19200 x 4 (dw * dh float32 values)"
    )


def test_lzfse_stream_that_does_not_decode(r3d):
    _rewrite_zip(r3d, {"rgbd/1.depth": b"bvx2 this is not lzfse"})
    with pytest.raises(ScanError, match=r"rgbd/1.depth: LZFSE stream does not decode"):
        read_scan(r3d)


def test_quaternion_not_unit(r3d):
    with zipfile.ZipFile(r3d) as z:
        meta = json.loads(z.read("metadata"))
    meta["poses"][1][:4] = [0.5, 0.5, 0.5, 0.9]
    _rewrite_zip(r3d, {"metadata": json.dumps(meta).encode()})
    with pytest.raises(ScanError) as err:
        read_scan(r3d)
    assert str(err.value).startswith(f"{r3d}/metadata: poses[1]: quaternion [0.5, 0.5, 0.5, 0.9] is not unit (norm")


def test_record3d_pose_count_differs_from_frame_count(r3d):
    with zipfile.ZipFile(r3d) as z:
        meta = json.loads(z.read("metadata"))
    meta["poses"] = meta["poses"][:-1]
    _rewrite_zip(r3d, {"metadata": json.dumps(meta).encode()})
    with pytest.raises(ScanError) as err:
        read_scan(r3d)
    assert str(err.value) == (
        f"{r3d}/metadata: has 3 poses for 4 frames in rgbd/. Every frame needs one pose: re-export the recording"
    )


def test_replica_pose_count_differs_from_frame_count(small_scan, tmp_path):
    scene = write_replica(small_scan, tmp_path / "Replica" / "room0")
    traj = scene / "traj.txt"
    traj.write_text("\n".join(traj.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ScanError, match=r"traj.txt: has 3 poses for 4 frames \(ids 0..3\)"):
        read_scan(scene)


def test_forced_format_that_does_not_fit(ns):
    with pytest.raises(ScanError, match="rec.r3d|archive|zip|not a readable"):
        read_scan(ns, format="record3d")


def test_scannet_options_are_refused_for_formats_with_their_own(ns, tmp_path):
    with pytest.raises(ConfigError, match="depth_scale=6553.5 applies to the ScanNet layout"):
        read_scan(ns, depth_scale=6553.5, fused_dir=tmp_path)
    with pytest.raises(ConfigError, match="pose_convention='opengl' applies to the ScanNet layout"):
        read_scan(ns, pose_convention="opengl", fused_dir=tmp_path)
    with pytest.raises(ConfigError, match="format must be 'auto' or one of scannet, nerfstudio"):
        read_scan(ns, format="polycam")
