"""ARKitScenes raw video folders (``<video_id>/``).

``lowres_wide/<video>_<timestamp>.png`` colour; ``lowres_depth/<video>_<timestamp>.png`` 16-bit depth in
millimetres, registered to the colour camera; ``lowres_wide_intrinsics/<video>_<timestamp>.pincam`` one line
``w h fx fy cx cy``; ``lowres_wide.traj`` one line per pose ``timestamp rx ry rz tx ty tz``: world-to-camera,
axis-angle rotation (radians), metres, OpenCV camera axes. A frame takes the trajectory sample within
5 ms of its timestamp (ARKitScenes' own tolerance); a frame with none is skipped and counted. Optional
``confidence/`` (uint8 ARKit confidence) and ``<video>_3dod_mesh.ply`` (the scene mesh). The poses are in
the laser scan's world frame, gravity-aligned with z up (apple/ARKitScenes issues #78, #81): ``info["up"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..camera import Intrinsics
from ..errors import ScanError
from .base import Capture, Digest, ReadOptions, axis_angle_to_matrix, check_sizes, drop_low_confidence, rigid

NAME = "arkitscenes"
NEEDS = "lowres_wide/, lowres_depth/, lowres_wide_intrinsics/ and lowres_wide.traj"
_PARTS = ("lowres_wide/", "lowres_depth/", "lowres_wide_intrinsics/", "lowres_wide.traj")
_FIX = "Download the video folder again (ARKitScenes raw: lowres_wide, lowres_depth, intrinsics, traj)"
MATCH_TOL = 0.005
"""Seconds: a frame's timestamp and its trajectory sample may differ by this much."""
INTRINSICS_TOL = 0.1
"""Pixels: per-frame .pincam intrinsics must agree within this (one camera per scan)."""


def probe(path: Path) -> tuple[bool, list[str]]:
    if not path.is_dir():
        return False, list(_PARTS)
    missing = [p for p in _PARTS if not (path / p.rstrip("/")).exists()]
    return not missing, missing


def _timestamp(p: Path) -> str:
    return p.stem.rsplit("_", 1)[-1]


def _read_traj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    stamps, poses = [], []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:  # damaged bytes are not text
        raise ScanError(path, f"trajectory cannot be read as text ({exc})", _FIX) from exc
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(x) for x in parts]
        except ValueError as exc:
            raise ScanError(path, f"line {n} is not numeric", _FIX) from exc
        if len(vals) != 7:
            raise ScanError(path, f"line {n} has {len(vals)} numbers, expected 7 (timestamp rx ry rz tx ty tz)", _FIX)
        w2c = rigid(axis_angle_to_matrix(vals[1:4]), vals[4:7])
        stamps.append(vals[0])
        poses.append(np.linalg.inv(w2c))
    if not stamps:
        raise ScanError(path, "trajectory is empty", _FIX)
    order = np.argsort(stamps, kind="stable")
    return np.asarray(stamps)[order], np.asarray(poses)[order]


def _read_pincam(path: Path) -> np.ndarray:
    try:
        vals = np.asarray(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ScanError(path, f"intrinsics are not 6 numbers ({exc})", "Write one line: w h fx fy cx cy") from exc
    if vals.shape != (6,) or not np.all(np.isfinite(vals)):
        raise ScanError(path, f"intrinsics are not 6 numbers (got {vals.size})", "Write one line: w h fx fy cx cy")
    return vals


def read(path: Path, options: ReadOptions) -> Capture:
    from ..scan import Frame

    colors = sorted((path / "lowres_wide").glob("*.png"), key=lambda p: float(_timestamp(p)) if _ok(p) else -1)
    colors = [p for p in colors if _ok(p)]
    if not colors:
        raise ScanError(path / "lowres_wide", "no <video>_<timestamp>.png frames", _FIX)
    traj_path = path / "lowres_wide.traj"
    stamps, traj = _read_traj(traj_path)
    digest = Digest(NAME)
    digest.file(traj_path)
    digest.text(f"conf{options.min_confidence}")
    entries, skip, cams = [], {}, []
    conf_dir = path / "confidence"
    for fid, cpath in enumerate(colors):
        ts = _timestamp(cpath)
        dpath = path / "lowres_depth" / cpath.name
        ipath = path / "lowres_wide_intrinsics" / (cpath.stem + ".pincam")
        for p in (dpath, ipath):
            if not p.is_file():
                raise ScanError(
                    p, f"missing for colour frame {cpath.name}", "Every lowres_wide frame needs its depth and .pincam"
                )
        cams.append((ipath, _read_pincam(ipath)))
        digest.file(ipath)
        digest.sized(cpath)
        digest.sized(dpath)
        t = float(ts)
        j = int(np.searchsorted(stamps, t))
        best = min({max(j - 1, 0), min(j, len(stamps) - 1)}, key=lambda k: abs(stamps[k] - t))
        if abs(stamps[best] - t) <= MATCH_TOL:
            pose = traj[best]
        else:
            pose = np.full((4, 4), np.nan)
            # one fixed text per cause: ingest reports count frames per reason
            skip[fid] = f"no trajectory sample within {MATCH_TOL * 1000:g} ms of the frame's timestamp"
        cpath_conf = conf_dir / cpath.name
        entries.append((fid, cpath, dpath, pose, cpath_conf if cpath_conf.is_file() else None))
    first_path, first = cams[0]
    for ipath, cam in cams[1:]:
        if np.abs(cam - first).max() > INTRINSICS_TOL:
            raise ScanError(
                ipath,
                f"intrinsics {cam.tolist()} differ from {first_path.name}'s {first.tolist()}; om3db reads one camera per scan",
                "Split the video where the camera changes",
            )
    c_size, d_size = check_sizes(
        [(c, d) for _, c, d, _, _ in entries],
        options.check_all_images,
        depth_fix="lowres_depth must be 16-bit PNG (mm)",
    )
    w, h, fx, fy, cx, cy = first
    if (int(w), int(h)) != c_size:
        raise ScanError(first_path, f"says {int(w)}x{int(h)} but the colour frames are {c_size[0]}x{c_size[1]}", _FIX)
    color = Intrinsics(fx, fy, cx, cy, *c_size)
    frames = []
    for fid, cpath, dpath, pose, conf in entries:
        loader = _conf_loader(dpath, conf, options.min_confidence) if conf is not None else None
        frames.append(Frame(fid, cpath, dpath, traj_path, pose, 1000.0, depth_loader=loader))
    mesh = sorted(path.glob("*_3dod_mesh.ply"))
    return Capture(
        name=path.name,
        path=path,
        source_format=NAME,
        frames=tuple(frames),
        color_intrinsics=color,
        depth_intrinsics=color.scaled_to(*d_size),
        ply_path=mesh[0] if mesh else None,
        digest=digest.hexdigest(),
        depth_scale=1000.0,
        skip_reasons=skip,
        info={
            "pose_convention": "world-to-camera axis-angle (lowres_wide.traj), inverted; OpenCV axes",
            "depth_units": "uint16 millimetres",
            "intrinsics_source": "lowres_wide_intrinsics/*.pincam",
            "up": [0.0, 0.0, 1.0],
            "up_source": "ARKitScenes world frame (the laser scan's: gravity-aligned, z up)",
            "frame_ids": "position in timestamp order",
        },
    )


def _ok(p: Path) -> bool:
    try:
        float(_timestamp(p))
        return "_" in p.stem
    except ValueError:
        return False


def _decode(path: Path) -> np.ndarray:
    from ..images import DECODE_ERRORS, open_image

    with open_image(path, fix=_FIX) as img:
        try:
            return np.asarray(img)
        except DECODE_ERRORS as exc:
            raise ScanError(path, f"image is truncated or corrupt ({exc})", _FIX) from exc


def _conf_loader(dpath: Path, cpath: Path, min_confidence: int):
    def load() -> np.ndarray:
        d = _decode(dpath).astype(np.float32) / np.float32(1000.0)
        conf = _decode(cpath)
        if conf.shape != d.shape:
            raise ScanError(cpath, f"confidence is {conf.shape[::-1]}, depth is {d.shape[::-1]}", _FIX)
        return drop_low_confidence(d, conf, min_confidence)

    return load
