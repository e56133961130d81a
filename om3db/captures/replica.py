"""Replica as rendered for NICE-SLAM (``Datasets/Replica/<scene>/``).

``results/frame<i>.jpg`` colour and ``results/depth<i>.png`` 16-bit depth at 6553.5 units per metre;
``traj.txt`` one camera-to-world pose per line (16 numbers, row-major, OpenCV axes, metres), line i for
frame i. The camera comes from ``cam_params.json`` (``{"camera": {w, h, fx, fy, cx, cy, scale}}``) in
the scene folder or its parent; without one, NICE-SLAM's Replica camera (1200x680, fx = fy = 600,
cx 599.5, cy 339.5, scale 6553.5) is used, and only for images of exactly that size. The scene mesh
``<scene>_mesh.ply`` next to the scene folder (or a ``.ply`` inside it) is used when present.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..camera import Intrinsics
from ..errors import ScanError
from .base import Capture, Digest, ReadOptions, check_sizes, number, read_json

NAME = "replica"
NEEDS = "results/frame*.jpg, results/depth*.png and traj.txt"
NICE_SLAM_CAMERA = {"w": 1200, "h": 680, "fx": 600.0, "fy": 600.0, "cx": 599.5, "cy": 339.5, "scale": 6553.5}
_FIX = "Replica as rendered for NICE-SLAM: results/frame<i>.jpg, results/depth<i>.png, traj.txt"
_COLOR = re.compile(r"^frame(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_DEPTH = re.compile(r"^depth(\d+)\.png$", re.IGNORECASE)


def probe(path: Path) -> tuple[bool, list[str]]:
    if not path.is_dir():
        return False, ["results/", "traj.txt"]
    missing = []
    results = path / "results"
    if not results.is_dir() or not any(results.glob("frame*")):
        missing.append("results/frame*.jpg")
    if not (path / "traj.txt").is_file():
        missing.append("traj.txt")
    return not missing, missing


def _camera(path: Path, c_size: tuple[int, int]) -> tuple[dict, str, Path | None]:
    for p in (path / "cam_params.json", path.parent / "cam_params.json"):
        if p.is_file():
            cam = read_json(p, 'Write {"camera": {"w", "h", "fx", "fy", "cx", "cy", "scale"}}')
            cam = cam.get("camera", cam) if isinstance(cam, dict) else {}
            missing = [k for k in ("w", "h", "fx", "fy", "cx", "cy", "scale") if k not in cam]
            if missing:
                raise ScanError(p, f"camera lacks {', '.join(missing)}", "Write w, h, fx, fy, cx, cy and scale")
            vals = {k: number(cam[k], p, k, "Fix cam_params.json") for k in ("w", "h", "fx", "fy", "cx", "cy", "scale")}
            return vals, f"{p.name}", p
    if c_size != (NICE_SLAM_CAMERA["w"], NICE_SLAM_CAMERA["h"]):
        raise ScanError(
            path,
            f"no cam_params.json and the frames are {c_size[0]}x{c_size[1]}, not NICE-SLAM's 1200x680 Replica camera",
            'Write cam_params.json ({"camera": {w, h, fx, fy, cx, cy, scale}}) next to traj.txt',
        )
    return dict(NICE_SLAM_CAMERA), "NICE-SLAM's Replica camera (configs/Replica/replica.yaml)", None


def read(path: Path, options: ReadOptions) -> Capture:
    from ..scan import Frame, add_frame

    results = path / "results"
    colors, depths = {}, {}
    for p in results.iterdir() if results.is_dir() else ():
        if m := _COLOR.match(p.name):
            add_frame(colors, m.group(1), p)
        elif m := _DEPTH.match(p.name):
            add_frame(depths, m.group(1), p)
    if not colors:
        raise ScanError(results, "no frame<i>.jpg images", _FIX)
    if set(depths) != set(colors):
        lacking = sorted(set(colors) ^ set(depths))[:8]
        raise ScanError(
            results, f"colour and depth frames differ (ids {lacking})", "Every frame<i>.jpg needs depth<i>.png"
        )
    ids = sorted(colors)
    traj_path = path / "traj.txt"
    try:
        rows = [line.split() for line in traj_path.read_text().splitlines() if line.strip()]
        traj = np.asarray(rows, dtype=np.float64)
    except ValueError as exc:
        raise ScanError(traj_path, f"is not 16 numbers per line ({exc})", _FIX) from exc
    if traj.ndim != 2 or traj.shape[1] != 16:
        raise ScanError(traj_path, "is not 16 numbers per line (a row-major 4x4 camera-to-world pose)", _FIX)
    if ids != list(range(len(ids))) or len(traj) != len(ids):
        raise ScanError(
            traj_path,
            f"has {len(traj)} poses for {len(ids)} frames (ids {ids[0]}..{ids[-1]})",
            "Line i of traj.txt is the pose of frame i: keep them in step",
        )
    pairs = [(colors[i], depths[i]) for i in ids]
    c_size, d_size = check_sizes(pairs, options.check_all_images, depth_fix="Replica depth must be 16-bit PNG")
    cam, source, cam_path = _camera(path, c_size)
    if (int(cam["w"]), int(cam["h"])) != c_size:
        raise ScanError(
            cam_path or path,
            f"camera is {int(cam['w'])}x{int(cam['h'])} but the frames are {c_size[0]}x{c_size[1]}",
            "Fix cam_params.json",
        )
    color = Intrinsics(cam["fx"], cam["fy"], cam["cx"], cam["cy"], *c_size)
    digest = Digest(NAME)
    digest.file(traj_path)
    digest.text(repr(sorted(cam.items())))
    frames = []
    for i in ids:
        digest.sized(colors[i])
        digest.sized(depths[i])
        frames.append(Frame(i, colors[i], depths[i], traj_path, traj[i].reshape(4, 4), cam["scale"]))
    mesh = path.parent / f"{path.name}_mesh.ply"
    if not mesh.is_file():
        inside = sorted(path.glob("*.ply"))
        mesh = inside[0] if len(inside) == 1 else None
    return Capture(
        name=path.name,
        path=path,
        source_format=NAME,
        frames=tuple(frames),
        color_intrinsics=color,
        depth_intrinsics=color.scaled_to(*d_size),
        ply_path=mesh,
        digest=digest.hexdigest(),
        depth_scale=cam["scale"],
        info={
            "pose_convention": "camera-to-world, OpenCV axes (traj.txt, row-major)",
            "depth_units": f"uint16, {cam['scale']:g} units per metre",
            "intrinsics_source": source,
        },
    )
