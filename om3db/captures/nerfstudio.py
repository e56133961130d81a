"""nerfstudio ``transforms.json`` (Polycam, KIRI, Spectacular AI, Metashape, ``ns-process-data``).

Intrinsics ``fl_x fl_y cx cy w h`` are shared (top level) or per frame (they must then agree: one camera
per scan); ``camera_model`` OPENCV / PINHOLE with zero distortion is accepted, distortion or a fisheye /
equirectangular model is refused. ``transform_matrix`` is camera-to-world with OpenGL axes (converted).
``depth_file_path`` images are 16-bit PNG (or ``.npy`` float) times ``depth_unit_scale_factor`` metres
(default 0.001). ``applied_transform`` was already applied to the poses and to ``ply_file_path`` by the
writer and is only recorded. Without depth the poses' scale is unknown (COLMAP): such a capture is refused
unless ``pose_scale`` (metres per pose unit) is given and it has a ``ply_file_path`` to render depth from;
``pose_scale`` multiplies the poses' translations and the PLY's points. nerfstudio defines no gravity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..camera import Intrinsics
from ..errors import ScanError
from .base import (
    GL_TO_CV,
    Capture,
    Digest,
    ReadOptions,
    check_sizes,
    matrix,
    number,
    pixels,
    read_json,
    trailing_ids,
)

NAME = "nerfstudio"
NEEDS = "transforms.json"
_FIX = "Re-export transforms.json (nerfstudio format: fl_x, fl_y, cx, cy, w, h and frames[].transform_matrix)"
_DIST = ("k1", "k2", "k3", "k4", "p1", "p2")
_PINHOLE = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "PERSPECTIVE")


def _json_path(path: Path) -> Path:
    return path if path.is_file() else path / "transforms.json"


def probe(path: Path) -> tuple[bool, list[str]]:
    if path.is_file():
        return path.name == "transforms.json", ["transforms.json"]
    ok = (path / "transforms.json").is_file()
    return ok, [] if ok else ["transforms.json"]


def _camera(src: dict, jpath: Path, where: str) -> tuple[float, float, float, float, int | None, int | None]:
    missing = [k for k in ("fl_x", "fl_y", "cx", "cy") if k not in src]
    if missing:
        raise ScanError(
            jpath,
            f"{where}has no intrinsics ({', '.join(missing)} missing)",
            "Write fl_x, fl_y, cx, cy (pixels) at the top level or in every frame",
        )
    model = str(src.get("camera_model", "OPENCV")).upper()
    if model not in _PINHOLE:
        raise ScanError(
            jpath,
            f"{where}camera_model {model} is not a pinhole camera (fisheye and equirectangular are not supported)",
            "Undistort the images to a pinhole camera (e.g. colmap image_undistorter) and write camera_model OPENCV "
            "with zero distortion",
        )
    dist = {k: number(src[k], jpath, f"{where}{k}", _FIX) for k in _DIST if k in src}  # NaN is not "none"
    if any(abs(v) > 1e-9 for v in dist.values()):
        nonzero = ", ".join(f"{k}={v:g}" for k, v in dist.items() if v)
        raise ScanError(
            jpath,
            f"{where}lens distortion ({nonzero}) is not supported",
            "Undistort the images first (e.g. colmap image_undistorter or ns-process-data) and write zero distortion",
        )
    vals = [number(src[k], jpath, f"{where}{k}", _FIX) for k in ("fl_x", "fl_y", "cx", "cy")]
    w = pixels(src["w"], jpath, f"{where}w", _FIX) if "w" in src else None
    h = pixels(src["h"], jpath, f"{where}h", _FIX) if "h" in src else None
    return (*vals, w, h)


def _check_path(value, jpath: Path, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ScanError(
            jpath, f"{what} is not a file path ({value!r})", "Write file paths as strings relative to transforms.json"
        )


def read(path: Path, options: ReadOptions) -> Capture:
    from ..scan import Frame

    jpath = _json_path(path)
    root = jpath.parent
    meta = read_json(jpath, _FIX)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise ScanError(jpath, "has no frames list", _FIX)
    frames_meta = meta["frames"]
    cams = []
    for i, fm in enumerate(frames_meta):
        if not isinstance(fm, dict) or "file_path" not in fm or "transform_matrix" not in fm:
            raise ScanError(jpath, f"frames[{i}] lacks file_path or transform_matrix", _FIX)
        for key in ("file_path", "depth_file_path"):
            if key in fm:
                _check_path(fm[key], jpath, f"frames[{i}].{key}")
        cams.append(_camera({**meta, **fm}, jpath, f"frames[{i}]: " if "fl_x" in fm else ""))
    if len(set(cams)) > 1:
        raise ScanError(
            jpath,
            "frames have different intrinsics; om3db reads one camera per scan",
            "Split the capture per camera, or resample the images to one camera",
        )
    fx, fy, cx, cy, w, h = cams[0]
    pose_scale = options.pose_scale
    scale = number(meta.get("depth_unit_scale_factor", 1e-3), jpath, "depth_unit_scale_factor", _FIX)
    if not scale > 0:
        raise ScanError(jpath, f"depth_unit_scale_factor must be > 0 metres per unit, got {scale}", _FIX)
    with_depth = ["depth_file_path" in fm for fm in frames_meta]
    if any(with_depth) and not all(with_depth):
        raise ScanError(
            jpath,
            f"{with_depth.count(False)} of {len(frames_meta)} frames have no depth_file_path",
            "Give every frame a depth map, or none",
        )
    has_depth = all(with_depth)

    ids = trailing_ids(fm["file_path"] for fm in frames_meta) or list(range(len(frames_meta)))
    digest = Digest(NAME)
    digest.file(jpath)
    entries = []
    for fid, fm in sorted(zip(ids, frames_meta, strict=True), key=lambda t: t[0]):
        cpath = root / fm["file_path"]
        dpath = root / fm["depth_file_path"] if has_depth else None
        for p in (cpath, dpath):
            if p is not None and not p.is_file():
                raise ScanError(p, "file not found (listed in transforms.json)", _FIX)
        pose = matrix(fm["transform_matrix"], (4, 4), jpath, f"frames[{frames_meta.index(fm)}] transform_matrix", _FIX)
        pose = pose @ GL_TO_CV
        if pose_scale is not None:
            pose = pose.copy()
            pose[:3, 3] *= pose_scale
        entries.append((fid, cpath, dpath, pose))
        digest.sized(cpath)
        digest.sized(dpath)

    npy = has_depth and entries[0][2].suffix.lower() == ".npy"
    pairs = [(c, None if npy else d) for _, c, d, _ in entries]
    c_size, d_size = check_sizes(pairs, options.check_all_images, depth_fix=_DEPTH_FIX)
    if npy:
        d_size = _npy_size(entries, options.check_all_images)
    if (w, h) != (None, None) and (w, h) != c_size:
        raise ScanError(
            entries[0][1],
            f"image is {c_size[0]}x{c_size[1]} but transforms.json says w={w} h={h}",
            "Fix w / h or the images",
        )
    color = Intrinsics(fx, fy, cx, cy, *c_size)
    depth_intr = color.scaled_to(*d_size) if has_depth else None

    frames = []
    for fid, cpath, dpath, pose in entries:
        loader = None
        if npy:
            loader = _npy_loader(dpath, scale)
        frames.append(Frame(fid, cpath, dpath, jpath, pose, 1.0 / scale, depth_loader=loader))
    ply = meta.get("ply_file_path")
    if ply is not None:
        _check_path(ply, jpath, "ply_file_path")
    ply_path = root / ply if ply else None
    if ply_path is not None and not ply_path.is_file():
        raise ScanError(ply_path, "file not found (ply_file_path in transforms.json)", "Fix ply_file_path or remove it")
    if ply_path is not None:
        digest.sized(ply_path)
    if not has_depth and ply_path is None:
        raise ScanError(
            jpath,
            "frames have no depth_file_path and there is no ply_file_path: om3db has nothing to measure the scene "
            "with (no depth maps, no mesh or point cloud to render depth from)",
            "Export the capture with depth maps (Polycam, Record3D, Spectacular AI do), or add the scene mesh / point "
            "cloud as ply_file_path and pass pose_scale (metres per pose unit; CLI --pose-scale)",
        )
    if not has_depth and pose_scale is None:
        raise ScanError(
            jpath,
            "frames have no depth_file_path: the poses' scale is unknown (COLMAP poses are not metric) and om3db "
            "does not guess it",
            "Pass pose_scale = metres per pose unit (CLI --pose-scale; 1 when the poses and ply_file_path are already "
            "in metres) to render depth from ply_file_path, or export the capture with depth maps",
        )
    if pose_scale is not None:
        digest.text(f"pose_scale:{pose_scale!r}")
    info = {
        "pose_convention": "OpenGL camera-to-world (transform_matrix), converted to OpenCV",
        "depth_units": f"{scale:g} m per unit (depth_unit_scale_factor)"
        if has_depth
        else "none: rendered from ply_file_path",
        "intrinsics_source": "transforms.json fl_x fl_y cx cy",
    }
    if pose_scale is not None:
        info["pose_scale"] = pose_scale
    if "applied_transform" in meta:
        info["applied_transform"] = meta["applied_transform"]
    return Capture(
        name=root.name,
        path=root,
        source_format=NAME,
        frames=tuple(frames),
        color_intrinsics=color,
        depth_intrinsics=depth_intr,
        ply_path=ply_path,
        ply_scale=1.0 if pose_scale is None else pose_scale,
        digest=digest.hexdigest(),
        depth_scale=1.0 / scale,
        info=info,
    )


_DEPTH_FIX = "Depth maps must be 16-bit PNGs (times depth_unit_scale_factor metres) or float .npy arrays"


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ScanError(path, f"not a readable .npy array ({exc})", _DEPTH_FIX) from exc
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype.kind not in "fui":
        raise ScanError(path, f"depth must be a 2D numeric array, got shape {arr.shape} dtype {arr.dtype}", _DEPTH_FIX)
    return arr


def _npy_size(entries, check_all: bool) -> tuple[int, int]:
    size = None
    for _, _, dpath, _ in entries if check_all else entries[:1]:
        arr = _load_npy(dpath)
        if size is None:
            size = (arr.shape[1], arr.shape[0])
        elif (arr.shape[1], arr.shape[0]) != size:
            raise ScanError(
                dpath, f"depth size {arr.shape[1]}x{arr.shape[0]} differs from the first frame's", _DEPTH_FIX
            )
    return size


def _npy_loader(path: Path, scale: float):
    def load() -> np.ndarray:
        d = _load_npy(path).astype(np.float32) * np.float32(scale)
        d[~np.isfinite(d)] = 0.0
        return d

    return load
