"""Capture formats against exact truth: each format is written from a synthetic scan in its OWN conventions
(OpenGL axes, quaternions, world-to-camera axis-angle, column-major K, LZFSE float32 ...) by the writers
below, read back with ``read_scan`` and compared with the ScanNet-layout original.

The writers work from the original's files (not through om3db's reader) and use scipy for rotations, so
they do not share code with the readers under test.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from om3db.captures import detect_format
from om3db.scan import read_scan

GL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes (its own inverse)


def arkit_world(yaw_deg: float = 30.0, shift=(0.4, -1.2, 2.0)) -> np.ndarray:
    """(4, 4) rigid map from the synthetic scans' world (z up) to an ARKit-like world (y up, any yaw and
    origin): what a phone's ARKit session would have used for the same room."""
    to_y_up = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # (0, 0, 1) -> (0, 1, 0)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("y", yaw_deg, degrees=True).as_matrix() @ to_y_up
    m[:3, 3] = shift
    return m


def write_binary_ply(path: Path, vertices: np.ndarray, colors: np.ndarray, faces: np.ndarray) -> None:
    """A binary little-endian PLY (float xyz, uchar rgb, uchar-count int faces), written here by hand."""
    head = (
        f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    v = np.empty(len(vertices), [("p", "<f4", 3), ("c", "u1", 3)])
    v["p"], v["c"] = vertices, colors
    f = np.empty(len(faces), [("n", "u1"), ("i", "<i4", 3)])
    f["n"], f["i"] = 3, faces
    path.write_bytes(head.encode() + v.tobytes() + f.tobytes())


# ---------------------------------------------------------------- reading the original's files


class Original:
    """The raw files of a ScanNet-layout scan: poses (OpenCV c2w), cameras, colour and depth arrays."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids = sorted(int(p.stem) for p in (root / "pose").glob("*.txt"))
        self.k_color = np.loadtxt(root / "intrinsic" / "intrinsic_color.txt")[:3, :3]
        self.k_depth = np.loadtxt(root / "intrinsic" / "intrinsic_depth.txt")[:3, :3]

    def file(self, sub: str, fid: int) -> Path:
        return next(p for p in (self.root / sub).iterdir() if p.stem.isdigit() and int(p.stem) == fid)

    def pose(self, fid: int) -> np.ndarray:
        return np.loadtxt(self.file("pose", fid))

    def color(self, fid: int) -> np.ndarray:
        return np.asarray(Image.open(self.file("color", fid)).convert("RGB"))

    def depth_mm(self, fid: int) -> np.ndarray:
        return np.asarray(Image.open(self.file("depth", fid))).astype(np.uint16)

    def size(self, sub: str) -> tuple[int, int]:
        return Image.open(self.file(sub, self.ids[0])).size


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ---------------------------------------------------------------- writers, one per format


def write_nerfstudio(
    src: Path,
    out: Path,
    *,
    depth_unit: float = 1e-4,
    ply: bool = False,
    depth: bool = True,
    pose_unit: float = 1.0,
    ply_faces: bool = True,
) -> Path:
    """transforms.json: shared fl_x.. at colour size, OpenGL c2w, 16-bit depth in ``depth_unit`` metres
    (``ply``: the original's PLY as ply_file_path; ``depth=False``: no depth maps, as COLMAP writes;
    ``pose_unit``: metres per unit of the translations and the PLY, as COLMAP's arbitrary scale;
    ``ply_faces=False``: the PLY is a point cloud, as COLMAP's sparse_pc.ply)."""
    o = Original(src)
    (out / "images").mkdir(parents=True)
    if depth:
        (out / "depth").mkdir()
    w, h = o.size("color")
    frames = []
    for fid in o.ids:
        name = f"frame_{fid:05d}"
        shutil.copyfile(o.file("color", fid), out / "images" / f"{name}.png")
        gl = o.pose(fid) @ GL
        gl[:3, 3] /= pose_unit
        frames.append({"file_path": f"images/{name}.png", "transform_matrix": gl.tolist()})
        if depth:
            raw = np.rint(o.depth_mm(fid).astype(np.float64) * (1e-3 / depth_unit)).astype(np.uint16)
            (out / "depth" / f"{name}.png").write_bytes(_png(raw))
            frames[-1]["depth_file_path"] = f"depth/{name}.png"
    k = o.k_color
    meta = {
        "camera_model": "OPENCV",
        "fl_x": k[0, 0], "fl_y": k[1, 1], "cx": k[0, 2], "cy": k[1, 2], "w": w, "h": h,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "depth_unit_scale_factor": depth_unit,
        "applied_transform": np.eye(4)[:3].tolist(),
        "frames": frames[::-1],  # order in the file is not frame order
    }  # fmt: skip
    if ply and pose_unit == 1.0 and ply_faces:
        shutil.copyfile(next(src.glob("*.ply")), out / "sparse_pc.ply")
    elif ply:
        from om3db.synth import build_scene

        gt = json.loads((src / "gt" / "scene.json").read_text())
        scene = build_scene(gt["seed"], gt["size"], gt["index"])
        faces = scene.faces if ply_faces else np.zeros((0, 3), np.int32)
        write_binary_ply(out / "sparse_pc.ply", scene.vertices / pose_unit, scene.colors, faces)
    if ply:
        meta["ply_file_path"] = "sparse_pc.ply"
    (out / "transforms.json").write_text(json.dumps(meta))
    if (src / "masks2d").is_dir():
        shutil.copytree(src / "masks2d", out / "masks2d")
    return out


def write_record3d(src: Path, out: Path, *, low_confidence_band: bool = True, world: np.ndarray | None = None) -> Path:
    """A .r3d zip: metadata K column-major, poses qx qy qz qw tx ty tz (ARKit c2w), LZFSE float32 depth
    (``world``: the (4, 4) map from the original's world to the capture's, e.g. :func:`arkit_world`)."""
    import lzfse

    o = Original(src)
    w, h = o.size("color")
    dw, dh = o.size("depth")
    world = np.eye(4) if world is None else world
    poses = []
    with zipfile.ZipFile(out, "w") as z:
        for fid in o.ids:
            gl = world @ o.pose(fid) @ GL
            q = Rotation.from_matrix(gl[:3, :3]).as_quat()  # x y z w
            poses.append([*q.tolist(), *gl[:3, 3].tolist()])
            z.writestr(f"rgbd/{fid}.jpg", _jpg(o.color(fid)))
            d = (o.depth_mm(fid).astype(np.float32) / np.float32(1000.0)).astype("<f4")
            z.writestr(f"rgbd/{fid}.depth", lzfse.compress(d.tobytes()))
            conf = np.full((dh, dw), 2, np.uint8)
            if low_confidence_band:
                conf[:, :4] = 0  # a low-confidence band on the left edge
            z.writestr(f"rgbd/{fid}.conf", lzfse.compress(conf.tobytes()))
        meta = {"w": w, "h": h, "dw": dw, "dh": dh, "fps": 30, "K": o.k_color.T.ravel().tolist(), "poses": poses}
        z.writestr("metadata", json.dumps(meta))
    return out


def write_arkitscenes(src: Path, out: Path, *, drop_pose_of: int | None = None) -> Path:
    """lowres_wide/, lowres_depth/ (mm), .pincam, lowres_wide.traj (world-to-camera axis-angle, jittered stamps)."""
    o = Original(src)
    vid = out.name
    for sub in ("lowres_wide", "lowres_depth", "lowres_wide_intrinsics"):
        (out / sub).mkdir(parents=True)
    w, h = o.size("color")
    k = o.k_color
    lines = []
    for fid in o.ids:
        ts = f"{100 + 0.1 * fid:.3f}"
        shutil.copyfile(o.file("color", fid), out / "lowres_wide" / f"{vid}_{ts}.png")
        shutil.copyfile(o.file("depth", fid), out / "lowres_depth" / f"{vid}_{ts}.png")
        (out / "lowres_wide_intrinsics" / f"{vid}_{ts}.pincam").write_text(
            " ".join(repr(float(x)) for x in (w, h, k[0, 0], k[1, 1], k[0, 2], k[1, 2])) + "\n"
        )
        if fid == drop_pose_of:
            continue
        w2c = np.linalg.inv(o.pose(fid))
        rv = Rotation.from_matrix(w2c[:3, :3]).as_rotvec()
        stamp = float(ts) + (0.002 if fid % 2 else -0.001)  # trajectory clock is not the frame clock
        lines.append(" ".join(repr(float(x)) for x in (stamp, *rv, *w2c[:3, 3])))
    lines.append(f"{100 + 0.1 * len(o.ids) + 5:.3f} 0 0 0 0 0 0")  # a sample with no frame
    (out / "lowres_wide.traj").write_text("\n".join(lines) + "\n")
    return out


def write_replica(src: Path, scene: Path) -> Path:
    """NICE-SLAM Replica: results/frame<i>.jpg, depth<i>.png at 6553.5 per metre, traj.txt, ../cam_params.json."""
    o = Original(src)
    (scene / "results").mkdir(parents=True)
    lines = []
    for fid in o.ids:
        (scene / "results" / f"frame{fid:06d}.jpg").write_bytes(_jpg(o.color(fid)))
        raw = np.rint(o.depth_mm(fid).astype(np.float64) * 6.5535).astype(np.uint16)
        (scene / "results" / f"depth{fid:06d}.png").write_bytes(_png(raw))
        lines.append(" ".join(repr(float(x)) for x in o.pose(fid).ravel()))
    (scene / "traj.txt").write_text("\n".join(lines) + "\n")
    w, h = o.size("color")
    k = o.k_color
    cam = {"w": w, "h": h, "fx": k[0, 0], "fy": k[1, 1], "cx": k[0, 2], "cy": k[1, 2], "scale": 6553.5}
    (scene.parent / "cam_params.json").write_text(json.dumps({"camera": cam}))
    return scene


def write_scannetpp(src: Path, scene: Path) -> Path:
    """ScanNet++ iphone/: rgb/frame_<i>.jpg, depth/frame_<i>.png (mm), pose_intrinsic_imu.json (aligned_pose)."""
    o = Original(src)
    ip = scene / "iphone"
    (ip / "rgb").mkdir(parents=True)
    (ip / "depth").mkdir()
    meta = {}
    for fid in o.ids:
        stem = f"frame_{fid:06d}"
        (ip / "rgb" / f"{stem}.jpg").write_bytes(_jpg(o.color(fid)))
        shutil.copyfile(o.file("depth", fid), ip / "depth" / f"{stem}.png")
        meta[stem] = {
            "timestamp": fid / 30,
            "intrinsic": o.k_color.tolist(),
            "pose": (np.eye(4) * 2).tolist(),  # the raw ARKit pose: another world; aligned_pose wins
            "aligned_pose": o.pose(fid).tolist(),
            "imu": {},
        }
    meta["frame_999999"] = {"intrinsic": o.k_color.tolist(), "aligned_pose": np.eye(4).tolist()}  # not extracted
    (ip / "pose_intrinsic_imu.json").write_text(json.dumps(meta))
    return scene


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    lines = [f"v {x!r} {y!r} {z!r}" for x, y, z in vertices.astype(np.float64).tolist()]
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces.tolist()]
    path.write_text("# 3D Scanner App\n" + "\n".join(lines) + "\n")


def write_scanner3d(src: Path, out: Path, *, world: np.ndarray | None = None) -> Path:
    """3D Scanner App: frame_<i>.jpg + frame_<i>.json (intrinsics, cameraPoseARFrame row-major GL), export.obj
    without colours (``world``: the map from the original's world to the capture's, e.g. :func:`arkit_world`)."""
    from om3db.synth import build_scene

    o = Original(src)
    world = np.eye(4) if world is None else world
    out.mkdir(parents=True)
    for fid in o.ids:
        (out / f"frame_{fid:05d}.jpg").write_bytes(_jpg(o.color(fid)))
        meta = {
            "intrinsics": o.k_color.ravel().tolist(),
            "cameraPoseARFrame": (world @ o.pose(fid) @ GL).ravel().tolist(),
            "projectionMatrix": np.eye(4).ravel().tolist(),
            "time": fid / 10,
        }
        (out / f"frame_{fid:05d}.json").write_text(json.dumps(meta))
    gt = json.loads((src / "gt" / "scene.json").read_text())
    scene = build_scene(gt["seed"], gt["size"], gt["index"])
    write_obj(out / "export.obj", scene.vertices.astype(np.float64) @ world[:3, :3].T + world[:3, 3], scene.faces)
    (out / "info.json").write_text(json.dumps({"title": "room"}))
    return out


WRITERS = {
    "nerfstudio": lambda src, tmp: write_nerfstudio(src, tmp / "ns_capture"),
    "record3d": lambda src, tmp: write_record3d(src, tmp / "room.r3d"),
    "arkitscenes": lambda src, tmp: write_arkitscenes(src, tmp / "41069025"),
    "replica": lambda src, tmp: write_replica(src, tmp / "Replica" / "room0"),
    "scannetpp": lambda src, tmp: write_scannetpp(src, tmp / "data" / "0a5c013435"),
    "scanner3d": lambda src, tmp: write_scanner3d(src, tmp / "2024_01_01_scan"),
}
# depth quantisation of each format (metres) against the original's millimetres
DEPTH_TOL = {"nerfstudio": 0.0, "record3d": 1e-7, "arkitscenes": 0.0, "replica": 0.5 / 6553.5, "scannetpp": 0.0}
PNG_COLOUR = {"nerfstudio", "arkitscenes"}
# the up vector each format's world frame defines (ARKit: y up; ARKitScenes: the laser scan's z up); None: the
# format defines no gravity (the floor plane decides)
UP = {"record3d": [0.0, 1.0, 0.0], "scanner3d": [0.0, 1.0, 0.0], "arkitscenes": [0.0, 0.0, 1.0]}


@pytest.fixture(scope="module")
def original(tiny_scan_path) -> Path:
    return tiny_scan_path


@pytest.fixture(scope="module")
def truth(original):
    return read_scan(original, masks=False)


@pytest.fixture(scope="module")
def captures(original, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("captures")
    return {fmt: write(original, tmp) for fmt, write in WRITERS.items()}


@pytest.fixture(scope="module")
def fused_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fused")


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_format_is_detected(captures, fmt):
    assert detect_format(captures[fmt]) == fmt


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_reads_back_exact_truth(captures, truth, fused_dir, fmt):
    scan = read_scan(captures[fmt], fused_dir=fused_dir, depth="auto", masks=False)
    assert scan.source_format == fmt
    assert scan.capture_info.get("up") == UP.get(fmt)
    assert scan.frames_on_disk == len(truth.frames)
    ci, ti = scan.color_intrinsics, truth.color_intrinsics
    assert (ci.width, ci.height) == (ti.width, ti.height)
    assert np.array_equal(ci.matrix, ti.matrix), (ci, ti)  # intrinsics exact
    by_id = {f.frame_id: f for f in truth.frames}
    assert [f.frame_id for f in scan.frames] == sorted(by_id)
    for f in scan.frames:
        t = by_id[f.frame_id]
        assert np.abs(f.pose - t.pose).max() < 1e-5, (fmt, f.frame_id)
    if fmt == "scanner3d":  # no sensor depth: rendered from the mesh at half the colour size
        assert scan.depth_source == "rendered" and scan.fused_ply is None
        assert scan.ply_path.suffix == ".ply" and scan.num_points == truth.num_points
        assert np.array_equal(scan.points, truth.points)  # the OBJ's vertices, in file order
        return
    assert scan.depth_source == "sensor"
    di, td = scan.depth_intrinsics, truth.depth_intrinsics
    assert (di.width, di.height) == (td.width, td.height)
    assert np.allclose(di.matrix, td.matrix, atol=1e-5)
    for f in scan.frames[::4]:
        d, t = f.depth(), by_id[f.frame_id].depth()
        if fmt == "record3d":
            t = t.copy()
            t[:, :4] = 0  # the low-confidence band is dropped (min_confidence=1)
        assert np.abs(d - t).max() <= DEPTH_TOL[fmt] + 1e-6, (fmt, f.frame_id)  # + float32 rounding
        c, tc = f.color(), by_id[f.frame_id].color()
        if fmt in PNG_COLOUR:
            assert np.array_equal(c, tc)
        else:
            assert np.abs(c.astype(int) - tc).mean() < 3.0  # JPEG
    if fmt == "scannetpp":
        assert scan.name == "0a5c013435"


def test_record3d_keeps_low_confidence_with_min_confidence_0(captures, truth, fused_dir):
    scan = read_scan(captures["record3d"], fused_dir=fused_dir, min_confidence=0, masks=False)
    assert np.abs(scan.frames[0].depth() - truth.frames[0].depth()).max() < 1e-6


def test_arkitscenes_frame_without_trajectory_sample_is_skipped(original, truth, tmp_path, fused_dir):
    cap = write_arkitscenes(original, tmp_path / "47333462", drop_pose_of=3)
    scan = read_scan(cap, fused_dir=fused_dir, masks=False)
    assert [s.frame_id for s in scan.skipped] == [3]
    assert scan.skipped[0].reason == "no trajectory sample within 5 ms of the frame's timestamp"
    assert len(scan.frames) == len(truth.frames) - 1


def test_find_scans_finds_every_format(captures, original, tmp_path):
    from om3db.scan import find_scans

    root = tmp_path / "mixed"
    root.mkdir()
    shutil.copytree(captures["nerfstudio"], root / "a" / "ns")
    (root / "b").mkdir()
    shutil.copyfile(captures["record3d"], root / "b" / "x.r3d")
    shutil.copytree(captures["replica"].parent, root / "Replica")
    shutil.copytree(original, root / "scannet" / "scene0000_00")
    found = find_scans(root)
    assert found == sorted(
        [root / "Replica" / "room0", root / "a" / "ns", root / "b" / "x.r3d", root / "scannet" / "scene0000_00"]
    )
    assert find_scans(root / "b" / "x.r3d") == [root / "b" / "x.r3d"]
