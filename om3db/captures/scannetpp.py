"""ScanNet++ iPhone data (``data/<scene>/iphone/``), with frames extracted by the ScanNet++ toolkit.

``rgb/frame_<i>.jpg`` colour (1920x1440); ``depth/frame_<i>.png`` 16-bit depth in millimetres (256x192);
``pose_intrinsic_imu.json``: per ``frame_<i>`` an ``intrinsic`` 3x3 at colour resolution and an
``aligned_pose`` (camera-to-world in the laser scan's frame, OpenCV axes, metres; else the raw ARKit
``pose``, taken as the same convention). With aligned poses the laser mesh ``../scans/mesh_aligned_0.05.ply``
is the scene cloud when present. Only the released ``rgb.mkv`` / ``depth.bin`` (not extracted) is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..camera import Intrinsics
from ..errors import ScanError
from .base import Capture, Digest, ReadOptions, camera_matrix, check_sizes, matrix, read_json

NAME = "scannetpp"
NEEDS = "iphone/pose_intrinsic_imu.json with rgb/ and depth/ (or the iphone/ folder itself)"
_FIX = "Extract the iPhone frames with the ScanNet++ toolkit (iphone/prepare_iphone_data.py): rgb/, depth/"
_FRAME = re.compile(r"^frame_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
INTRINSICS_TOL = 0.1


def _iphone(path: Path) -> Path:
    return path / "iphone" if (path / "iphone" / "pose_intrinsic_imu.json").is_file() else path


def probe(path: Path) -> tuple[bool, list[str]]:
    if not path.is_dir():
        return False, ["pose_intrinsic_imu.json"]
    ip = _iphone(path)
    missing = [p for p in ("pose_intrinsic_imu.json", "rgb/") if not (ip / p.rstrip("/")).exists()]
    return not missing, missing


def read(path: Path, options: ReadOptions) -> Capture:
    from ..scan import Frame

    ip = _iphone(path)
    scene = ip.parent if ip.name == "iphone" else ip
    jpath = ip / "pose_intrinsic_imu.json"
    if not (ip / "depth").is_dir():
        raise ScanError(
            ip / "depth", "folder is missing" + (" (only depth.bin)" if (ip / "depth.bin").exists() else ""), _FIX
        )
    meta = read_json(jpath, "Download pose_intrinsic_imu.json again")
    if not isinstance(meta, dict):
        raise ScanError(jpath, "is not a frame -> pose / intrinsic mapping", "Download it again")
    from ..scan import add_frame

    colors = {}
    for p in (ip / "rgb").iterdir():
        if m := _FRAME.match(p.name):
            add_frame(colors, m.group(1), p)
    if not colors:
        raise ScanError(ip / "rgb", "no frame_<i>.jpg images", _FIX)
    ids = sorted(colors)
    lacking = [i for i in ids if colors[i].stem not in meta]
    if lacking:
        raise ScanError(
            jpath,
            f"has no entry for {len(lacking)} of the {len(ids)} frames in rgb/ (e.g. {colors[lacking[0]].stem})",
            "Use the pose_intrinsic_imu.json of the same scene and release",
        )
    aligned = all("aligned_pose" in meta[colors[i].stem] for i in ids)
    key = "aligned_pose" if aligned else "pose"
    digest = Digest(NAME)
    digest.file(jpath)
    entries, first_k = [], None
    for i in ids:
        stem = colors[i].stem
        entry = meta[stem]
        if not isinstance(entry, dict) or key not in entry or "intrinsic" not in entry:
            raise ScanError(jpath, f"{stem} lacks {key} or intrinsic", "Download it again")
        k = camera_matrix(entry["intrinsic"], jpath, f"{stem} intrinsic", "Download it again")
        if first_k is None:
            first_k = (stem, k)
        elif np.abs(k - first_k[1]).max() > INTRINSICS_TOL:
            raise ScanError(
                jpath,
                f"{stem} intrinsics differ from {first_k[0]}'s; om3db reads one camera per scan",
                "Split the sequence where the camera changes",
            )
        pose = matrix(entry[key], (4, 4), jpath, f"{stem} {key}", "Download it again")
        dpath = ip / "depth" / f"{stem}.png"
        if not dpath.is_file():
            raise ScanError(dpath, f"missing for colour frame {colors[i].name}", _FIX)
        digest.sized(colors[i])
        digest.sized(dpath)
        entries.append((i, colors[i], dpath, pose))
    c_size, d_size = check_sizes(
        [(c, d) for _, c, d, _ in entries],
        options.check_all_images,
        depth_fix="ScanNet++ depth must be 16-bit PNG (mm)",
    )
    color = Intrinsics.from_matrix(first_k[1], *c_size)
    frames = [Frame(i, c, d, jpath, pose, 1000.0) for i, c, d, pose in entries]
    mesh = scene / "scans" / "mesh_aligned_0.05.ply"
    return Capture(
        name=scene.name,
        path=scene,
        source_format=NAME,
        frames=tuple(frames),
        color_intrinsics=color,
        depth_intrinsics=color.scaled_to(*d_size),
        ply_path=mesh if aligned and mesh.is_file() else None,
        digest=digest.hexdigest(),
        depth_scale=1000.0,
        info={
            "pose_convention": f"camera-to-world, OpenCV axes ({key})",
            "depth_units": "uint16 millimetres",
            "intrinsics_source": "pose_intrinsic_imu.json intrinsic",
        },
    )
