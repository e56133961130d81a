"""3D Scanner App "All Data" export (iPhone / iPad LiDAR).

``frame_<i>.jpg`` colour and ``frame_<i>.json`` with ``intrinsics`` (9 numbers, row-major, at the JPG's
resolution) and ``cameraPoseARFrame`` (16 numbers, row-major camera-to-world, ARKit / OpenGL axes, metres);
the scene mesh (a ``.ply``, else ``export_refined.obj`` / ``export.obj`` / ``textured_output.obj``) in the
same ARKit world. Without depth maps, depth is rendered from the mesh (``depth="auto"``); when the export
has ``depth_<i>.png`` (16-bit millimetres) for every frame they are used as sensor depth. The OBJ has no
vertex colours: read_scan colours its vertices from the frames that see them
(:func:`om3db.fusion.colors_from_frames`). The ARKit world is gravity-aligned with y up: ``info["up"]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..camera import Intrinsics
from ..errors import ScanError
from .base import ARKIT_UP, GL_TO_CV, Capture, Digest, ReadOptions, camera_matrix, check_sizes, matrix, read_json

NAME = "scanner3d"
NEEDS = "frame_<i>.jpg with frame_<i>.json (intrinsics, cameraPoseARFrame) and the mesh"
_FIX = "Export the scan from 3D Scanner App with 'All Data'"
_JSON = re.compile(r"^frame_(\d+)\.json$")
_OBJ_NAMES = ("export_refined.obj", "export.obj", "textured_output.obj")
INTRINSICS_TOL = 0.1


def probe(path: Path) -> tuple[bool, list[str]]:
    if not path.is_dir():
        return False, ["frame_<i>.json"]
    first = next((p for p in sorted(path.glob("frame_*.json")) if _JSON.match(p.name)), None)
    if first is None:
        return False, ["frame_<i>.json"]
    try:
        ok = "cameraPoseARFrame" in json.loads(first.read_text())
    except (OSError, ValueError):
        ok = False
    return ok, [] if ok else ["cameraPoseARFrame in frame_<i>.json"]


def _mesh(path: Path) -> tuple[Path | None, Path | None]:
    plys = sorted(path.glob("*.ply"))
    if len(plys) == 1:
        return plys[0], None
    if len(plys) > 1:
        raise ScanError(path, f"several meshes: {[p.name for p in plys]}", "Keep one .ply in the export, or pass ply=")
    for name in _OBJ_NAMES:
        if (path / name).is_file():
            return None, path / name
    objs = sorted(path.glob("*.obj"))
    return (None, objs[0]) if len(objs) == 1 else (None, None)


def read(path: Path, options: ReadOptions) -> Capture:
    from ..scan import Frame, add_frame

    jsons: dict[int, Path] = {}
    for p in path.glob("frame_*.json") if path.is_dir() else ():
        if m := _JSON.match(p.name):
            add_frame(jsons, m.group(1), p)
    ids = sorted(jsons)
    if not ids:
        raise ScanError(path, "no frame_<i>.json files: not a 3D Scanner App 'All Data' export", _FIX)
    digest = Digest(NAME)
    entries, first_k = [], None
    for i in ids:
        jp = jsons[i]
        meta = read_json(jp, _FIX)
        if not isinstance(meta, dict) or "intrinsics" not in meta or "cameraPoseARFrame" not in meta:
            raise ScanError(jp, "lacks intrinsics or cameraPoseARFrame", _FIX)
        k = camera_matrix(meta["intrinsics"], jp, "intrinsics", _FIX)
        if first_k is None:
            first_k = (jp, k)
        elif np.abs(k - first_k[1]).max() > INTRINSICS_TOL:
            raise ScanError(
                jp, f"intrinsics differ from {first_k[0].name}'s; om3db reads one camera per scan", "Split the scan"
            )
        pose = matrix(meta["cameraPoseARFrame"], (4, 4), jp, "cameraPoseARFrame", _FIX) @ GL_TO_CV
        cpath = jp.with_suffix(".jpg")
        if not cpath.is_file():
            raise ScanError(cpath, f"missing for {jp.name}", _FIX)
        dpath = path / f"depth_{jp.stem.split('_', 1)[1]}.png"
        digest.file(jp)
        digest.sized(cpath)
        entries.append((i, cpath, dpath if dpath.is_file() else None, jp, pose))
    with_depth = [d is not None for _, _, d, _, _ in entries]
    has_depth = all(with_depth)
    if any(with_depth) and not has_depth:
        raise ScanError(
            path, f"{with_depth.count(False)} frames have no depth_<i>.png", "Export every frame's depth or none"
        )
    c_size, d_size = check_sizes(
        [(c, d) for _, c, d, _, _ in entries], options.check_all_images, depth_fix="depth_<i>.png must be 16-bit (mm)"
    )
    for _, _, d, _, _ in entries:
        digest.sized(d)
    color = Intrinsics.from_matrix(first_k[1], *c_size)
    frames = [Frame(i, c, d, jp, pose, 1000.0) for i, c, d, jp, pose in entries]
    ply, obj = _mesh(path)
    for p in (ply, obj):
        digest.sized(p)
    return Capture(
        name=path.name,
        path=path,
        source_format=NAME,
        frames=tuple(frames),
        color_intrinsics=color,
        depth_intrinsics=color.scaled_to(*d_size) if has_depth else None,
        ply_path=ply,
        mesh_path=obj,
        digest=digest.hexdigest(),
        depth_scale=1000.0,
        info={
            "pose_convention": "ARKit (OpenGL) camera-to-world cameraPoseARFrame, row-major, converted",
            "depth_units": "uint16 millimetres (depth_<i>.png)" if has_depth else "none: rendered from the mesh",
            "intrinsics_source": "frame_<i>.json intrinsics",
            "up": list(ARKIT_UP),
            "up_source": "ARKit world frame of cameraPoseARFrame (gravity-aligned, y up)",
        },
    )
