"""The scan reader: layout, conventions and every bad-input case, on small hand-built scans and real data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from om3db.camera import Intrinsics, project
from om3db.errors import ConfigError, MaskFileError, ScanError
from om3db.masks import save_masks
from om3db.scan import find_scans, read_scan

DEPTH_W, DEPTH_H = 40, 30
COLOR_W, COLOR_H = 81, 62  # a different aspect ratio on purpose (like ScanNet's 1296x968 vs 640x480)
K_DEPTH = Intrinsics(fx=30.0, fy=32.0, cx=19.5, cy=14.5, width=DEPTH_W, height=DEPTH_H)
PLANE_Z = 2.0


def _write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    header = (
        "ply\nformat ascii 1.0\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    rows = [f"{p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {c[0]} {c[1]} {c[2]}" for p, c in zip(points, colors, strict=True)]
    path.write_text(header + "\n".join(rows) + "\n")


def _pose(tx: float) -> np.ndarray:
    pose = np.eye(4)
    pose[0, 3] = tx
    return pose


def make_scan(root: Path, *, n_frames: int = 4, ids=None, pad: int = 0, intrinsic_depth: bool = False) -> Path:
    """A fronto-parallel plane at world z = 2 m seen by cameras translated along x (OpenCV axes)."""
    ids = list(range(n_frames)) if ids is None else list(ids)
    for d in ("color", "depth", "pose", "intrinsic"):
        (root / d).mkdir(parents=True, exist_ok=True)
    k_color = K_DEPTH.scaled_to(COLOR_W, COLOR_H)
    np.savetxt(
        root / "intrinsic" / "intrinsic_color.txt", np.pad(k_color.matrix, ((0, 1), (0, 1))) + np.diag([0, 0, 0, 1])
    )
    if intrinsic_depth:
        np.savetxt(
            root / "intrinsic" / "intrinsic_depth.txt", np.pad(K_DEPTH.matrix, ((0, 1), (0, 1))) + np.diag([0, 0, 0, 1])
        )
    for i in ids:
        stem = str(i).zfill(pad) if pad else str(i)
        Image.fromarray(np.full((COLOR_H, COLOR_W, 3), (200, 30, 30), np.uint8)).save(root / "color" / f"{stem}.png")
        Image.fromarray(np.full((DEPTH_H, DEPTH_W), int(PLANE_Z * 1000), np.uint16)).save(
            root / "depth" / f"{stem}.png"
        )
        np.savetxt(root / "pose" / f"{stem}.txt", _pose(0.05 * i))
    xs, ys = np.meshgrid(np.linspace(-1, 1, 21), np.linspace(-0.8, 0.8, 17))
    pts = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, PLANE_Z)], axis=1).astype(np.float32)
    cols = np.tile(np.array([[200, 30, 30]], np.uint8), (len(pts), 1))
    _write_ply(root / f"{root.name}.ply", pts, cols)
    return root


@pytest.fixture
def scan_dir(tmp_path: Path) -> Path:
    return make_scan(tmp_path / "scene0000_00")


# ---- layout and conventions --------------------------------------------------------------------


def test_reads_points_frames_and_cameras(scan_dir: Path) -> None:
    scan = read_scan(scan_dir)
    assert scan.name == "scene0000_00"
    assert scan.points.shape == (21 * 17, 3) and scan.points.dtype == np.float32
    assert np.all(scan.colors == [200, 30, 30])
    assert [f.frame_id for f in scan.frames] == [0, 1, 2, 3]
    assert scan.masks is None and scan.skipped == ()
    # depth intrinsics derived by per-axis scaling of the colour ones, back to the exact depth camera
    d = scan.depth_intrinsics
    assert (d.width, d.height) == (DEPTH_W, DEPTH_H)
    assert d.fx == pytest.approx(K_DEPTH.fx) and d.fy == pytest.approx(K_DEPTH.fy)
    assert d.cx == pytest.approx(K_DEPTH.cx) and d.cy == pytest.approx(K_DEPTH.cy)
    depth = scan.frames[0].depth()
    assert depth.shape == (DEPTH_H, DEPTH_W) and depth.dtype == np.float32
    assert np.allclose(depth, PLANE_Z)
    assert scan.frames[0].color().shape == (COLOR_H, COLOR_W, 3)


def test_points_reproject_onto_depth(scan_dir: Path) -> None:
    scan = read_scan(scan_dir)
    for frame in scan.frames:
        u, v, z = project(scan.points, frame.world_to_camera, scan.depth_intrinsics)
        px, py = np.rint(u).astype(int), np.rint(v).astype(int)
        inside = (z > 0) & (px >= 0) & (px < DEPTH_W) & (py >= 0) & (py < DEPTH_H)
        assert inside.sum() > 50
        depth = frame.depth()
        assert np.abs(depth[py[inside], px[inside]] - z[inside]).max() < 1e-3


def test_intrinsic_scaling_is_per_axis() -> None:
    k = Intrinsics(fx=1170.0, fy=1170.0, cx=647.75, cy=483.75, width=1296, height=968)
    d = k.scaled_to(640, 480)
    assert d.fx == pytest.approx(1170 * 640 / 1296) and d.cx == pytest.approx(647.75 * 640 / 1296)
    assert d.fy == pytest.approx(1170 * 480 / 968) and d.cy == pytest.approx(483.75 * 480 / 968)


def test_padded_ids_gaps_and_numeric_order(tmp_path: Path) -> None:
    root = make_scan(tmp_path / "s", ids=[0, 2, 10, 11, 30], pad=6)
    scan = read_scan(root)
    assert [f.frame_id for f in scan.frames] == [0, 2, 10, 11, 30]  # past the gap, numeric not lexical
    assert scan.frames[2].color_path.name == "000010.png"


def test_frame_step_keeps_every_nth_in_sorted_order(tmp_path: Path) -> None:
    root = make_scan(tmp_path / "s", n_frames=7)
    scan = read_scan(root, frame_step=3)
    assert [f.frame_id for f in scan.frames] == [0, 3, 6]
    assert scan.frames_on_disk == 7


def test_depth_scale_option(scan_dir: Path) -> None:
    scan = read_scan(scan_dir, depth_scale=6553.5)
    assert np.allclose(scan.frames[0].depth(), PLANE_Z * 1000 / 6553.5)


def test_opengl_pose_convention_is_converted(tmp_path: Path) -> None:
    root = make_scan(tmp_path / "s", n_frames=2)
    gl_from_cv = np.diag([1.0, -1.0, -1.0, 1.0])
    for p in (root / "pose").iterdir():
        np.savetxt(p, np.loadtxt(p) @ gl_from_cv)  # the same cameras written with OpenGL axes
    cv = read_scan(make_scan(tmp_path / "ref", n_frames=2))
    gl = read_scan(root, pose_convention="opengl")
    for a, b in zip(cv.frames, gl.frames, strict=True):
        assert np.allclose(a.pose, b.pose)


def test_masks_openmask3d_pt_npy_npz(scan_dir: Path) -> None:
    n = 21 * 17
    masks = np.zeros((n, 3), bool)
    masks[:10, 0] = masks[10:50, 1] = masks[100:, 2] = True
    save_masks(scan_dir / "scene0000_00_masks.pt", masks)
    scan = read_scan(scan_dir)
    assert scan.masks.dtype == bool and np.array_equal(scan.masks, masks)
    assert scan.mask_scores is None
    (scan_dir / "scene0000_00_masks.pt").unlink()
    np.save(scan_dir / "scene0000_00_masks.npy", masks.astype(np.float16))
    assert np.array_equal(read_scan(scan_dir).masks, masks)
    (scan_dir / "scene0000_00_masks.npy").unlink()
    np.savez(scan_dir / "scene0000_00_masks.npz", masks=masks, scores=np.array([0.9, 0.5, 0.1]))
    scan = read_scan(scan_dir)
    assert np.array_equal(scan.masks, masks) and np.allclose(scan.mask_scores, [0.9, 0.5, 0.1])
    assert read_scan(scan_dir, masks=False).masks is None


def test_find_scans_below_a_folder(tmp_path: Path) -> None:
    a = make_scan(tmp_path / "all" / "a", n_frames=1)
    b = make_scan(tmp_path / "all" / "nested" / "b", n_frames=1)
    assert find_scans(tmp_path / "all") == [a, b]
    assert find_scans(a) == [a]


def test_fingerprint_tracks_content(scan_dir: Path) -> None:
    before = read_scan(scan_dir).fingerprint()
    assert read_scan(scan_dir).fingerprint() == before
    np.savetxt(scan_dir / "pose" / "1.txt", _pose(0.5))
    assert read_scan(scan_dir).fingerprint() != before


# ---- real sensor data --------------------------------------------------------------------------


def test_real_capture_reads_and_reprojects(labelfusion_path: Path) -> None:
    scan = read_scan(labelfusion_path)
    assert scan.points.shape == (118296, 3)
    assert len(scan.frames) == 15 and scan.skipped == ()
    assert scan.depth_intrinsics.fx == pytest.approx(611.68573)
    errors = []
    for frame in scan.frames[1::2]:  # the odd frames were not fused into the cloud
        depth = frame.depth()
        u, v, z = project(scan.points, frame.world_to_camera, scan.depth_intrinsics)
        px, py = np.rint(u).astype(int), np.rint(v).astype(int)
        inside = (z > 0) & (px >= 0) & (px < 640) & (py >= 0) & (py < 480)
        assert inside.mean() > 0.8
        d = depth[py[inside], px[inside]]
        dz = np.abs(d - z[inside])[(d > 0)]
        near = dz[dz < 0.1]
        errors.append(np.median(near))
        assert (near < 0.02).mean() > 0.8
    assert np.median(errors) < 0.01  # ~6 mm: real sensor noise and 3 mm fusion voxels


def test_real_capture_with_shifted_poses_disagrees(labelfusion_path: Path) -> None:
    """The reprojection check above can fail: 2 cm pose error visibly breaks the agreement."""
    scan = read_scan(labelfusion_path)
    frame = scan.frames[1]
    depth = frame.depth()
    shifted = frame.world_to_camera.copy()
    shifted[0, 3] += 0.02
    fracs = []
    for w2c in (frame.world_to_camera, shifted):
        u, v, z = project(scan.points, w2c, scan.depth_intrinsics)
        px, py = np.rint(u).astype(int), np.rint(v).astype(int)
        inside = (z > 0) & (px >= 0) & (px < 640) & (py >= 0) & (py < 480)
        d = depth[py[inside], px[inside]]
        dz = np.abs(d - z[inside])[d > 0]
        fracs.append((dz < 0.005).mean())
    assert fracs[1] < fracs[0] - 0.1


# ---- bad input: one test per case, exact type and message --------------------------------------


def test_empty_scan_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError) as err:
        read_scan(tmp_path / "empty")
    assert (
        str(err.value)
        == f"{tmp_path / 'empty'}: scan folder is empty. A scan needs color/, depth/, pose/, intrinsic/ and a .ply"
    )


def test_missing_scan_folder(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="scan folder not found"):
        read_scan(tmp_path / "nope")


def test_missing_intrinsics(scan_dir: Path) -> None:
    path = scan_dir / "intrinsic" / "intrinsic_color.txt"
    path.unlink()
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert err.value.path == path
    assert (
        str(err.value)
        == f"{path}: colour intrinsics are missing. Write the 4x4 colour camera matrix there (only [:3,:3] is used)"
    )


def test_pose_not_4x4(scan_dir: Path) -> None:
    path = scan_dir / "pose" / "2.txt"
    np.savetxt(path, np.eye(3))
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value) == f"{path}: pose is not 4x4 (shape 3x3). Write the pose as 4 rows of 4 numbers"


def test_pose_not_numeric(scan_dir: Path) -> None:
    path = scan_dir / "pose" / "2.txt"
    path.write_text("1 0 0 0\n0 1 zero 0\n")
    with pytest.raises(ScanError, match=r"2\.txt: pose is not a numeric matrix"):
        read_scan(scan_dir)


def test_inf_pose_is_skipped_and_counted(scan_dir: Path) -> None:
    path = scan_dir / "pose" / "1.txt"
    path.write_text("-inf -inf -inf -inf\n" * 4)  # what ScanNet writes for lost tracking
    scan = read_scan(scan_dir)
    assert [f.frame_id for f in scan.frames] == [0, 2, 3]
    assert len(scan.skipped) == 1
    assert scan.skipped[0].frame_id == 1 and scan.skipped[0].path == path
    assert scan.skipped[0].reason == "pose is not finite (contains inf or nan)"


def test_non_rigid_pose_is_skipped_and_counted(scan_dir: Path) -> None:
    pose = _pose(0.1)
    pose[:3, :3] *= 1.5  # a scaled "rotation"
    np.savetxt(scan_dir / "pose" / "3.txt", pose)
    scan = read_scan(scan_dir)
    assert [f.frame_id for f in scan.frames] == [0, 1, 2]
    assert [s.reason for s in scan.skipped] == [
        "pose is not rigid (rotation not orthonormal with det 1, or last row not 0 0 0 1)"
    ]


def test_all_poses_unusable(scan_dir: Path) -> None:
    for p in (scan_dir / "pose").iterdir():
        p.write_text("-inf -inf -inf -inf\n" * 4)
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert (
        str(err.value)
        == f"{scan_dir / 'pose'}: no usable frame: all 4 poses are non-finite or non-rigid. Check the pose export"
    )


def test_depth_not_16_bit(scan_dir: Path) -> None:
    path = scan_dir / "depth" / "2.png"
    Image.fromarray(np.full((DEPTH_H, DEPTH_W), 20, np.uint8)).save(path)
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value) == (
        f"{path}: depth is not 16-bit (PIL mode L). "
        "Depth must be a single-channel 16-bit PNG (mode I;16) holding depth_scale units per metre"
    )


def test_truncated_image(scan_dir: Path) -> None:
    path = scan_dir / "color" / "1.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    scan = read_scan(scan_dir)  # headers are intact: the damage shows when the frame is decoded
    with pytest.raises(ScanError) as err:
        scan.frame(1).color()
    assert err.value.path == path
    assert str(err.value).startswith(f"{path}: image is truncated or corrupt (")
    assert str(err.value).endswith("Re-export the frame or delete its colour, depth and pose files")


def test_garbage_image(scan_dir: Path) -> None:
    path = scan_dir / "depth" / "0.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(ScanError, match=r"0\.png: not a readable image"):
        read_scan(scan_dir)


def test_colour_and_depth_counts_differ(scan_dir: Path) -> None:
    (scan_dir / "depth" / "2.png").unlink()
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir)
    assert str(err.value) == (
        f"{scan_dir / 'depth'}: colour and depth frame counts differ (4 colour, 3 depth): no depth for frame ids 2. "
        "Every frame id needs color/<id>, depth/<id>.png and pose/<id>.txt"
    )


def test_missing_pose_file(scan_dir: Path) -> None:
    (scan_dir / "pose" / "0.txt").unlink()
    with pytest.raises(
        ScanError, match=r"colour and pose frame counts differ \(4 colour, 3 pose\): no pose for frame ids 0"
    ):
        read_scan(scan_dir)


def test_duplicate_frame_id(scan_dir: Path) -> None:
    (scan_dir / "color" / "0.png").rename(scan_dir / "color" / "000.png")
    Image.fromarray(np.zeros((COLOR_H, COLOR_W, 3), np.uint8)).save(scan_dir / "color" / "0.png")
    with pytest.raises(ScanError, match="frame id 0 appears twice"):
        read_scan(scan_dir)


def test_colour_size_changes_mid_scan(scan_dir: Path) -> None:
    path = scan_dir / "color" / "3.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(path)
    with pytest.raises(ScanError, match=r"3\.png: colour size 10x10 differs from the first frame's 81x62"):
        read_scan(scan_dir)


def test_no_ply(scan_dir: Path) -> None:
    (scan_dir / "scene0000_00.ply").unlink()  # with sensor depth a cloud is fused instead (test_captures_fusion)
    with pytest.raises(ScanError) as err:
        read_scan(scan_dir, depth="rendered")
    assert (
        str(err.value)
        == f"{scan_dir}: no scene point cloud (.ply) found. Put the scene points in {scan_dir / 'scene0000_00.ply'}"
    )


def test_mask_rows_do_not_match_point_count(scan_dir: Path) -> None:
    path = scan_dir / "scene0000_00_masks.pt"
    save_masks(path, np.ones((100, 2)))
    with pytest.raises(MaskFileError) as err:
        read_scan(scan_dir)
    assert str(err.value) == (
        f"{path}: mask rows (100) do not match the point count of the scene PLY (357). "
        "Masks must have one row per PLY vertex, in file order"
    )


def test_transposed_masks_get_a_hint(scan_dir: Path) -> None:
    np.save(scan_dir / "scene0000_00_masks.npy", np.ones((2, 357), np.float16))
    with pytest.raises(MaskFileError, match=r"\(it looks transposed: masks x points\)"):
        read_scan(scan_dir)


def test_masks_not_binary(scan_dir: Path) -> None:
    np.save(scan_dir / "scene0000_00_masks.npy", np.full((357, 2), 0.5))
    with pytest.raises(MaskFileError, match="masks must hold only 0 and 1"):
        read_scan(scan_dir)


class _Exploit:
    """A pickle payload that would run a shell command when unpickled."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_masks_pickle_that_executes_code_is_refused(scan_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    path = scan_dir / "scene0000_00_masks.pt"
    torch.save({"masks": _Exploit()}, path)
    with pytest.raises(MaskFileError) as err:
        read_scan(scan_dir)
    assert str(err.value).startswith(
        f"{path}: refused to load: the pickle asks to run code or build objects that are not arrays "
        "(Trying to load unsupported GLOBAL posix.system whose module posix is blocked.)"
    )
    assert str(err.value).endswith("Save the masks as a points x masks 0/1 array with numpy.save (.npy)")
    assert not (tmp_path / "PWNED").exists()


def test_npy_object_pickle_is_refused(scan_dir: Path) -> None:
    path = scan_dir / "scene0000_00_masks.npy"
    np.save(path, np.array([_Exploit()], dtype=object), allow_pickle=True)
    with pytest.raises(MaskFileError, match="cannot be read as a plain array"):
        read_scan(scan_dir)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_raw_pickle_renamed_pt_is_refused(scan_dir: Path) -> None:
    path = scan_dir / "scene0000_00_masks.pt"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(MaskFileError):
        read_scan(scan_dir)


def test_bad_options(scan_dir: Path) -> None:
    with pytest.raises(ConfigError, match="frame_step must be >= 1, got 0"):
        read_scan(scan_dir, frame_step=0)
    with pytest.raises(ConfigError, match="pose_convention must be 'opencv' or 'opengl'"):
        read_scan(scan_dir, pose_convention="arkit-ish")
