"""Read a scan in the ScanNet / OpenMask3D layout (see docs/data-conventions.md).

``read_scan`` validates the whole folder (file presence, pose matrices, image headers, intrinsics,
mask shape) before returning; frames are decoded lazily. Every problem raises :class:`ScanError`
naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .camera import Intrinsics, matrix_problem
from .errors import ConfigError, ScanError
from .images import DECODE_ERRORS, depth_mode_problem
from .masks import find_mask_file, load_masks

__all__ = ["Frame", "SkippedFrame", "Scan", "read_scan", "PoseConvention", "DepthSource"]

PoseConvention = Literal["opencv", "opengl"]
DepthSource = Literal["sensor", "rendered", "auto"]
COLOR_EXTS = (".jpg", ".jpeg", ".png")
_INT_STEM = re.compile(r"^\d+$")
# OpenGL / ARKit camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward)
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
RIGID_TOL = 1e-3


@dataclass(frozen=True)
class Frame:
    """One usable RGB-D frame. Images are decoded on demand."""

    frame_id: int
    """Integer stem of the file names (``color/000120.jpg`` -> 120)."""
    color_path: Path
    depth_path: Path | None
    """None when the scan has no sensor depth (depth is rendered, see :attr:`depth_renderer`)."""
    pose_path: Path
    pose: np.ndarray = field(repr=False)
    """(4, 4) float64 camera-to-world, OpenCV camera axes (x right, y down, z forward), metres."""
    depth_scale: float = 1000.0
    """Raw uint16 depth units per metre."""
    depth_renderer: Callable[[Frame], np.ndarray] | None = field(default=None, repr=False, compare=False)
    """When set (``read_scan(depth="rendered"|"auto")``), :meth:`depth` renders from the scan's PLY."""
    color_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Capture formats whose colour is not a plain image file (a member of a ``.r3d`` zip): returns
    (H, W, 3) uint8 RGB. ``color_path`` then only names the image in messages."""
    depth_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Capture formats whose depth is not a 16-bit PNG (LZFSE float32, ``.npy``) or is masked by a
    confidence map: returns (h, w) float32 metres, 0 = no measurement."""

    @property
    def rendered_depth(self) -> bool:
        """True when :meth:`depth` is rendered from the scan's mesh / points, not read from a sensor image."""
        return self.depth_renderer is not None

    @property
    def world_to_camera(self) -> np.ndarray:
        """(4, 4) float64 inverse of :attr:`pose`."""
        return np.linalg.inv(self.pose)

    def color(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB at colour resolution."""
        if self.color_loader is not None:
            return self.color_loader()
        img = _open_image(self.color_path)
        try:
            return np.asarray(img.convert("RGB"))
        except DECODE_ERRORS as exc:
            raise ScanError(self.color_path, f"image is truncated or corrupt ({exc})", _REEXPORT) from exc

    def depth(self) -> np.ndarray:
        """(h, w) float32 depth in metres at depth resolution; 0 means no measurement."""
        if self.depth_renderer is not None:
            return self.depth_renderer(self)
        if self.depth_loader is not None:
            return self.depth_loader()
        with _open_image(self.depth_path) as img:
            problem = depth_mode_problem(img.mode, img.format)
            if problem is not None:  # the file changed since the scan was read
                raise ScanError(self.depth_path, problem, _DEPTH_FIX)
            try:
                raw = np.asarray(img)
            except DECODE_ERRORS as exc:
                raise ScanError(self.depth_path, f"image is truncated or corrupt ({exc})", _REEXPORT) from exc
        if raw.dtype not in (np.uint16, np.int32, np.uint32, np.int16):
            raise ScanError(self.depth_path, f"depth is not 16-bit (dtype {raw.dtype})", _DEPTH_FIX)
        if raw.dtype != np.uint16 and raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise ScanError(
                self.depth_path, f"depth values {raw.min()}..{raw.max()} are outside 16 bits (0..65535)", _DEPTH_FIX
            )
        return raw.astype(np.float32) / np.float32(self.depth_scale)


@dataclass(frozen=True)
class SkippedFrame:
    """A frame present on disk that cannot be used, and why."""

    frame_id: int
    path: Path
    reason: str


@dataclass(frozen=True)
class Scan:
    """A validated scan: scene points in PLY file order, frames, cameras and optional masks."""

    name: str
    path: Path
    ply_path: Path
    points: np.ndarray = field(repr=False)
    """(N, 3) float32 world coordinates in metres, PLY vertex order."""
    colors: np.ndarray = field(repr=False)
    """(N, 3) uint8 RGB per point (zeros when the PLY has no colours)."""
    frames: tuple[Frame, ...] = field(repr=False)
    """Usable frames after the frame step, sorted by id."""
    skipped: tuple[SkippedFrame, ...] = field(repr=False)
    """Frames dropped (non-finite or non-rigid pose), counted for the ingest report."""
    color_intrinsics: Intrinsics
    """Pinhole camera at colour resolution (crops are cut here)."""
    depth_intrinsics: Intrinsics
    """Pinhole camera at depth resolution (visibility is computed here)."""
    depth_scale: float
    frame_step: int
    masks: np.ndarray | None = field(default=None, repr=False)
    """(N, M) bool class-agnostic masks, or None when the scan has no mask file."""
    mask_scores: np.ndarray | None = field(default=None, repr=False)
    """(M,) float32 proposal scores when the mask file provides them."""
    mask_path: Path | None = None
    frames_on_disk: int = 0
    """Frames found on disk before the frame step."""
    depth_source: str = "sensor"
    """"sensor" (depth/ images) or "rendered" (depth rendered from the PLY per frame)."""
    source_format: str = "scannet"
    """Capture format the scan was read from: "scannet" (this layout), "nerfstudio", "record3d",
    "arkitscenes", "replica", "scannetpp" or "scanner3d" (docs/data-conventions.md)."""
    fused_ply: Path | None = None
    """Set when the scene points were fused from the RGB-D frames (the capture had no point cloud): the
    fused PLY, equal to :attr:`ply_path`. Mask indices refer to its vertices, so it must be kept."""
    fusion: dict | None = field(default=None, repr=False)
    """JSON-able facts about the fusion (settings, frames fused, points, seconds, ``cached``), or None."""
    capture_digest: str | None = field(default=None, repr=False)
    """Content digest of a non-ScanNet capture's metadata and frame sizes (part of :meth:`fingerprint`)."""
    capture_info: dict = field(default_factory=dict, repr=False)
    """JSON-able facts about the capture: pose convention, depth units, intrinsics source."""

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def frame(self, frame_id: int) -> Frame:
        for f in self.frames:
            if f.frame_id == frame_id:
                return f
        raise KeyError(f"scan {self.name!r} has no usable frame {frame_id}")

    def mesh(self):
        """The PLY as an open3d TriangleMesh (faces may be empty for a point cloud)."""
        from ._o3d import open3d

        return open3d().io.read_triangle_mesh(str(self.ply_path))

    def fingerprint(self) -> str:
        """sha256 over the PLY, masks, poses and intrinsics contents and every image's name and size.

        Changes when any input that ingest reads changes; cheap enough to compute on every ingest.
        """
        h = hashlib.sha256()
        if self.capture_digest is not None:  # another capture format: its own digest replaces intrinsic/ and sizes
            return self._capture_fingerprint(h)
        for p in (self.ply_path, self.mask_path):
            if p is not None:
                h.update(p.name.encode())
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
        for p in sorted((self.path / "intrinsic").glob("*.txt")):
            h.update(p.name.encode() + p.read_bytes())
        if self.depth_source != "sensor":  # sensor-depth fingerprints stay as they were
            h.update(f"depth:{self.depth_source}".encode())
        for f in self.frames:
            depth_size = f.depth_path.stat().st_size if f.depth_path is not None else "rendered"
            h.update(f"{f.frame_id}:{f.color_path.stat().st_size}:{depth_size}".encode())
            h.update(np.ascontiguousarray(f.pose).tobytes())
        return h.hexdigest()

    def _capture_fingerprint(self, h) -> str:
        h.update(f"{self.source_format}:{self.capture_digest}:depth:{self.depth_source}".encode())
        for p in (self.ply_path, self.mask_path):
            if p is not None:
                h.update(p.name.encode())
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
        for f in self.frames:
            h.update(f"{f.frame_id}".encode())
            h.update(np.ascontiguousarray(f.pose).tobytes())
        return h.hexdigest()


_REEXPORT = "Re-export the frame or delete its colour, depth and pose files"
_DEPTH_FIX = "Depth must be a single-channel 16-bit PNG (mode I;16) holding depth_scale units per metre"


def _open_image(path: Path):
    from .images import open_image

    return open_image(path, fix=_REEXPORT)


def _check_intrinsics(intr: Intrinsics, path: Path, which: str) -> None:
    problem = intr.problem()
    if problem is not None:
        raise ScanError(path, f"implausible {which} camera: {problem}", "Fix the camera intrinsics")


def _read_camera_matrix(path: Path) -> np.ndarray:
    k = _read_matrix(path, "intrinsic matrix")
    problem = matrix_problem(k)
    if problem is not None:
        raise ScanError(
            path,
            problem,
            "Write the camera as 4 rows: fx 0 cx 0 / 0 fy cy 0 / 0 0 1 0 / 0 0 0 1 (om3db reads a pinhole camera "
            "without skew)",
        )
    return k


def _index_frames(folder: Path, exts: tuple[str, ...]) -> dict[int, Path]:
    if not folder.is_dir():
        raise ScanError(folder, "folder is missing", "A scan needs color/, depth/, pose/ and intrinsic/ folders")
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower() not in exts or not _INT_STEM.match(p.stem):
            continue
        add_frame(found, p.stem, p)
    return found


MAX_FRAME_ID = 2**31 - 1
"""The largest frame id om3db stores (a view's frame id is an int32 in the database)."""


def frame_id_of(digits: str, path: Path | str) -> int:
    """The frame id written as ``digits`` in the name of ``path``; ScanError when it is above
    :data:`MAX_FRAME_ID` (found while the scan is read, not after all the work when it is stored)."""
    fid = int(digits)
    if fid > MAX_FRAME_ID:
        raise ScanError(
            path,
            f"frame id {digits} is larger than om3db's limit of {MAX_FRAME_ID} (2^31-1)",
            "Renumber the frames (a frame's id is the integer in its file name)",
        )
    return fid


def add_frame(found: dict, digits: str, path: Path) -> None:
    """Index ``path`` under its frame id; the same id twice (``5.png`` and ``005.png``) is a ScanError."""
    fid = frame_id_of(digits, path)
    if fid in found:
        raise ScanError(path, f"frame id {fid} appears twice (also {found[fid].name})", "Keep one file per frame id")
    found[fid] = path


def _read_matrix(path: Path, what: str) -> np.ndarray:
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as exc:
        raise ScanError(
            path, f"{what} is not a numeric matrix ({exc})", f"Write the {what} as 4 rows of 4 numbers"
        ) from exc
    if m.shape != (4, 4):
        raise ScanError(
            path, f"{what} is not 4x4 (shape {m.shape[0]}x{m.shape[1]})", f"Write the {what} as 4 rows of 4 numbers"
        )
    return m


def _pose_problem(pose: np.ndarray) -> str | None:
    if not np.all(np.isfinite(pose)):
        return "pose is not finite (contains inf or nan)"
    r = pose[:3, :3]
    if (
        np.abs(r @ r.T - np.eye(3)).max() > RIGID_TOL
        or abs(np.linalg.det(r) - 1.0) > RIGID_TOL
        or np.abs(pose[3] - [0, 0, 0, 1]).max() > RIGID_TOL
    ):
        return "pose is not rigid (rotation not orthonormal with det 1, or last row not 0 0 0 1)"
    return None


def _find_ply(root: Path, name: str, *, can_fuse: bool = False) -> Path | None:
    """The scene PLY; None when there is none and the scan's sensor depth can be fused into one."""
    candidates = [root / f"{name}.ply", *sorted(root.glob("*_vh_clean_2.ply"))]
    for c in candidates:
        if c.is_file():
            return c
    plys = sorted(root.glob("*.ply"))
    if len(plys) == 1:
        return plys[0]
    if not plys and can_fuse:
        return None
    if not plys:
        raise ScanError(root, "no scene point cloud (.ply) found", f"Put the scene points in {root / (name + '.ply')}")
    raise ScanError(
        root, f"several .ply files and none named {name}.ply: {[p.name for p in plys]}", "Pass ply=PATH to choose one"
    )


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from ._o3d import open3d
    from .ply import check_ply

    check_ply(path)  # a body shorter than the header says: open3d pads it with zeros
    o3d = open3d()
    pcd = o3d.io.read_point_cloud(str(path), format="ply")
    pts = np.asarray(pcd.points, dtype=np.float32)
    if pts.shape[0] == 0:
        raise ScanError(
            path, "PLY has no vertices or cannot be parsed", "Export the scene as a PLY with x, y, z vertex properties"
        )
    if not np.all(np.isfinite(pts)):
        raise ScanError(path, "PLY has non-finite vertex coordinates", "Remove or fix the nan/inf vertices")
    if pcd.has_colors():
        cols = np.clip(np.rint(np.asarray(pcd.colors) * 255.0), 0, 255).astype(np.uint8)
    else:
        cols = np.zeros_like(pts, dtype=np.uint8)
    return pts, cols


def _image_size(path: Path) -> tuple[int, int, str, str | None]:
    with _open_image(path) as img:
        return img.size[0], img.size[1], img.mode, img.format


def check_format(format: str) -> None:  # noqa: A002 - the user-facing name (CLI --format)
    """Refuse a capture format name that is neither 'auto' nor one of ``om3db.captures.FORMATS``."""
    from .captures import FORMATS

    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"format must be 'auto' or one of {', '.join(FORMATS)}; got {format!r}")


def read_scan(
    path: str | Path,
    *,
    frame_step: int = 1,
    depth_scale: float = 1000.0,
    pose_convention: PoseConvention = "opencv",
    masks: str | Path | bool | None = True,
    ply: str | Path | None = None,
    check_all_images: bool = True,
    depth: DepthSource = "sensor",
    format: str = "auto",  # noqa: A002 - the user-facing name (CLI --format)
    fused_dir: str | Path | None = None,
    fusion=None,
    min_confidence: int = 1,
    pose_scale: float | None = None,
) -> Scan:
    """Read and validate a scan folder or capture.

    frame_step: keep every n-th frame in sorted id order (OpenMask3D's ``frequency``).
    depth_scale: raw depth units per metre of a ScanNet-layout scan (1000 for ScanNet / 7-Scenes,
        6553.5 for Replica). Other formats define their own units; passing another value with them
        is an error.
    pose_convention: camera axes of a ScanNet-layout scan's pose files; "opengl" (also ARKit, PolyCam)
        is converted. Other formats define their own convention (passing "opengl" with them is an error).
    masks: True to load ``<scan>_masks.pt`` / ``.npy`` / ``.npz`` when present, a path to load that
        file, False/None to ignore masks.
    ply: the scene point cloud; default ``<name>.ply``, ``*_vh_clean_2.ply`` or the only ``.ply``
        (captures: their own cloud or mesh when they ship one, else the fused cloud).
    check_all_images: read every image header (size, bit depth); False checks only the first frame.
    depth: "sensor" reads the sensor depth (missing depth is an error); "rendered" renders every frame's
        depth from the PLY (its faces with open3d RaycastingScene, else its points as splats); "auto"
        renders only when the scan has no sensor depth. Rendered depth has the sensor depth size when
        there is one, else half the colour size, with the colour intrinsics rescaled to it.
    format: "auto" detects the layout from the folder's (or file's) contents; or one of
        :data:`om3db.captures.FORMATS` to force it.
    fused_dir: where a scene point cloud fused from the frames is kept (captures without a point cloud):
        ``<fused_dir>/<name>.<key>.ply``, reused while the capture and fusion settings are unchanged.
        None: :func:`om3db.fusion.default_fused_dir` (``$OM3DB_FUSED_DIR``, else ``~/.cache/om3db/fused``).
    fusion: a :class:`om3db.fusion.FusionConfig` (voxel size, depth range, frame step); None: defaults.
    min_confidence: formats with a per-pixel depth confidence (Record3D, ARKitScenes ``confidence/``):
        depth pixels below this ARKit level (0 low, 1 medium, 2 high) are dropped; 0 keeps all.
    pose_scale: metres per pose unit of a nerfstudio capture whose poses are not metric (COLMAP): multiplies
        the poses' translations and its ``ply_file_path`` points (a scaled copy is kept in ``fused_dir``). A
        nerfstudio capture without depth is refused without it (then depth is rendered from the PLY).
        Other formats define metric poses: passing it with them is an error.
    """
    from .captures import detect_format

    root = Path(path)
    if frame_step < 1:
        raise ConfigError(f"frame_step must be >= 1, got {frame_step}")
    if not depth_scale > 0:
        raise ConfigError(f"depth_scale must be > 0, got {depth_scale}")
    if pose_convention not in ("opencv", "opengl"):
        raise ConfigError(f"pose_convention must be 'opencv' or 'opengl', got {pose_convention!r}")
    if depth not in ("sensor", "rendered", "auto"):
        raise ConfigError(f"depth must be 'sensor', 'rendered' or 'auto', got {depth!r}")
    check_format(format)
    if not isinstance(min_confidence, int) or not 0 <= min_confidence <= 2:
        raise ConfigError(f"min_confidence must be 0, 1 or 2 (ARKit low, medium, high), got {min_confidence!r}")
    fusion = _fusion_config(fusion)
    from .captures.base import check_pose_scale

    pose_scale = check_pose_scale(pose_scale)
    fmt = detect_format(root) if format == "auto" else format
    if pose_scale is not None and fmt != "nerfstudio":
        raise ConfigError(
            f"pose_scale={pose_scale} applies to nerfstudio captures (non-metric COLMAP poses); the {fmt} format's "
            "poses are in metres: leave pose_scale unset"
        )
    opts = dict(
        frame_step=frame_step,
        masks=masks,
        ply=ply,
        depth=depth,
        fused_dir=fused_dir,
        fusion=fusion,
    )
    if fmt == "scannet":
        return _read_scannet(
            root, depth_scale=depth_scale, pose_convention=pose_convention, check_all_images=check_all_images, **opts
        )
    from .captures import read_capture
    from .captures.base import ReadOptions

    capture = read_capture(
        root,
        fmt,
        ReadOptions(check_all_images=check_all_images, min_confidence=min_confidence, pose_scale=pose_scale),
    )
    if depth_scale != 1000.0 and depth_scale != capture.depth_scale:
        raise ConfigError(
            f"depth_scale={depth_scale} applies to the ScanNet layout; the {fmt} format defines its own depth "
            f"units ({capture.info.get('depth_units', 'see docs/data-conventions.md')}): leave depth_scale at 1000"
        )
    if pose_convention != "opencv":
        raise ConfigError(
            f"pose_convention={pose_convention!r} applies to the ScanNet layout; the {fmt} format defines its "
            f"own ({capture.info.get('pose_convention', 'see docs/data-conventions.md')}) and om3db converts it"
        )
    return _scan_from_capture(capture, **opts)


def _fusion_config(fusion):
    from .fusion import FusionConfig

    if fusion is None:
        return FusionConfig()
    if not isinstance(fusion, FusionConfig):
        raise ConfigError(f"fusion must be an om3db.fusion.FusionConfig or None, got {type(fusion).__name__}")
    return fusion


def _read_scannet(
    root: Path,
    *,
    frame_step: int,
    depth_scale: float,
    pose_convention: PoseConvention,
    masks,
    ply,
    check_all_images: bool,
    depth: DepthSource,
    fused_dir,
    fusion,
) -> Scan:
    name = root.name
    intr_path = root / "intrinsic" / "intrinsic_color.txt"
    if not intr_path.is_file():
        raise ScanError(
            intr_path,
            "colour intrinsics are missing",
            "Write the 4x4 colour camera matrix there (only [:3,:3] is used)",
        )
    k_color = _read_camera_matrix(intr_path)
    k_depth_path = root / "intrinsic" / "intrinsic_depth.txt"
    k_depth = _read_camera_matrix(k_depth_path) if k_depth_path.is_file() else None

    colors = _index_frames(root / "color", COLOR_EXTS)
    has_depth_dir = (root / "depth").is_dir()
    render = depth == "rendered" or (depth == "auto" and not (has_depth_dir and any((root / "depth").glob("*.png"))))
    depths = _index_frames(root / "depth", (".png",)) if has_depth_dir or not render else {}
    poses = _index_frames(root / "pose", (".txt",))
    if not colors and not depths:
        raise ScanError(
            root / "color", "no frames found", "Frames are color/<id>.jpg|png, depth/<id>.png, pose/<id>.txt"
        )
    _check_same_ids(root, colors, depths if not render or depths else dict.fromkeys(colors), poses)

    all_ids = sorted(colors)
    on_disk = len(all_ids)
    ids = all_ids[::frame_step]

    # Image sizes: every header (cheap) so a bad frame is caught before any work.
    check_ids = ids if check_all_images else ids[:1]
    c_size = d_size = None
    for fid in check_ids:
        cw, ch, _, _ = _image_size(colors[fid])
        if render and not depths:
            dw, dh, dmode, dfmt = max(cw // 2, 1), max(ch // 2, 1), "I;16", "PNG"
        else:
            dw, dh, dmode, dfmt = _image_size(depths[fid])
        problem = depth_mode_problem(dmode, dfmt)
        if problem is not None:
            raise ScanError(depths[fid], problem, _DEPTH_FIX)
        if c_size is None:
            c_size, d_size = (cw, ch), (dw, dh)
        elif (cw, ch) != c_size:
            raise ScanError(
                colors[fid],
                f"colour size {cw}x{ch} differs from the first frame's {c_size[0]}x{c_size[1]}",
                "All colour frames must share one resolution",
            )
        elif (dw, dh) != d_size:
            raise ScanError(
                depths[fid],
                f"depth size {dw}x{dh} differs from the first frame's {d_size[0]}x{d_size[1]}",
                "All depth frames must share one resolution",
            )

    color_intr = Intrinsics.from_matrix(k_color, *c_size)
    _check_intrinsics(color_intr, intr_path, "colour")
    if k_depth is not None and depths:
        depth_intr = Intrinsics.from_matrix(k_depth, *d_size)
        _check_intrinsics(depth_intr, k_depth_path, "depth")
    else:
        depth_intr = color_intr.scaled_to(*d_size)

    def make_frames(wanted: list[int]) -> tuple[list[Frame], list[SkippedFrame]]:
        kept: list[Frame] = []
        dropped: list[SkippedFrame] = []
        for fid in wanted:
            pose = _read_matrix(poses[fid], "pose")
            problem = _pose_problem(pose)
            if problem is not None:
                dropped.append(SkippedFrame(fid, poses[fid], problem))
                continue
            if pose_convention == "opengl":
                pose = pose @ _GL_TO_CV
            kept.append(Frame(fid, colors[fid], depths.get(fid), poses[fid], pose, depth_scale))
        return kept, dropped

    frames, skipped = make_frames(ids)
    if not frames:
        raise ScanError(
            root / "pose", f"no usable frame: all {len(ids)} poses are non-finite or non-rigid", "Check the pose export"
        )

    fused = None
    if ply is not None:
        ply_path = Path(ply)
    else:
        ply_path = _find_ply(root, name, can_fuse=bool(depths) and not render)
    if ply_path is None:  # no scene cloud: fuse one from the sensor depth (kept fixed in fused_dir)
        from .fusion import fused_scene_ply, scannet_digest

        fuse_ids = fusion.pick_ids(all_ids)
        fuse_frames, _ = make_frames(fuse_ids)
        digest = scannet_digest(root, [poses[i] for i in fuse_ids], k_color, k_depth, depth_scale, pose_convention)
        ply_path, fused = fused_scene_ply(
            fuse_frames, depth_intr, color_intr, config=fusion, fused_dir=fused_dir, name=name, digest=digest
        )
    if not ply_path.is_file():
        raise ScanError(ply_path, "point cloud file not found", "Pass an existing .ply")
    points, point_colors = _read_ply(ply_path)
    if render:
        from .proposals.render import FrameDepthRenderer

        renderer = FrameDepthRenderer(ply_path, points, depth_intr)
        frames = [replace(f, depth_renderer=renderer) for f in frames]

    mask_arr, mask_scores, mask_path = _masks(root, masks, points.shape[0])
    return Scan(
        name=name,
        path=root,
        ply_path=ply_path,
        points=points,
        colors=point_colors,
        frames=tuple(frames),
        skipped=tuple(skipped),
        color_intrinsics=color_intr,
        depth_intrinsics=depth_intr,
        depth_scale=float(depth_scale),
        frame_step=frame_step,
        masks=mask_arr,
        mask_scores=mask_scores,
        mask_path=mask_path,
        frames_on_disk=on_disk,
        depth_source="rendered" if render else "sensor",
        fused_ply=ply_path if fused is not None else None,
        fusion=fused,
    )


def _masks(root: Path, masks, num_points: int):
    mask_path = None
    mask_arr = mask_scores = None
    if masks is not None and masks is not False:
        mask_path = (find_mask_file(root) if root.is_dir() else None) if masks is True else Path(masks)
        if mask_path is not None:
            mask_arr, mask_scores = load_masks(mask_path, num_points=num_points)
    return mask_arr, mask_scores, mask_path


def _scan_from_capture(capture, *, frame_step: int, masks, ply, depth: DepthSource, fused_dir, fusion) -> Scan:
    """Frame step, pose checks, scene points (given, converted or fused) and depth mode for a capture."""
    all_frames = list(capture.frames)
    stepped = all_frames[::frame_step]

    def usable(wanted) -> tuple[list[Frame], list[SkippedFrame]]:
        kept, dropped = [], []
        for f in wanted:
            problem = capture.skip_reasons.get(f.frame_id) or _pose_problem(f.pose)
            if problem is None:
                kept.append(f)
            else:
                dropped.append(SkippedFrame(f.frame_id, f.pose_path, problem))
        return kept, dropped

    frames, skipped = usable(stepped)
    if not frames:
        raise ScanError(
            capture.path,
            f"no usable frame: none of the {len(stepped)} frames has a finite rigid pose"
            + (f" ({skipped[0].reason})" if skipped else ""),
            "Check the capture's trajectory / pose export",
        )
    if depth == "sensor" and not capture.has_depth:
        raise ScanError(
            capture.path,
            f"the {capture.source_format} capture has no sensor depth",
            "Pass depth='rendered' (or 'auto') to render depth from its mesh / point cloud",
        )
    render = depth == "rendered" or not capture.has_depth
    color_intr = capture.color_intrinsics
    _check_intrinsics(color_intr, capture.path, "colour")
    if capture.has_depth:
        _check_intrinsics(capture.depth_intrinsics, capture.path, "depth")
    if capture.has_depth:
        depth_intr = capture.depth_intrinsics
    else:
        depth_intr = color_intr.scaled_to(max(color_intr.width // 2, 1), max(color_intr.height // 2, 1))

    fused = None
    if ply is not None:
        ply_path = Path(ply)
    elif capture.ply_path is not None:
        ply_path = capture.ply_path
        if capture.ply_scale != 1.0:
            from .fusion import scaled_ply

            ply_path, fused = scaled_ply(ply_path, capture.ply_scale, fused_dir=fused_dir, name=capture.name)
    elif capture.mesh_path is not None:
        from .fusion import mesh_as_ply

        colour_frames, _ = usable([all_frames[i] for i in fusion.pick_indices(len(all_frames))])
        ply_path, fused = mesh_as_ply(
            capture.mesh_path,
            fused_dir=fused_dir,
            name=capture.name,
            frames=colour_frames,
            color_intr=color_intr,
            digest=capture.digest,
        )
    elif capture.has_depth:
        from .fusion import fused_scene_ply

        fuse_frames, _ = usable([all_frames[i] for i in fusion.pick_indices(len(all_frames))])
        ply_path, fused = fused_scene_ply(
            fuse_frames,
            depth_intr,
            color_intr,
            config=fusion,
            fused_dir=fused_dir,
            name=capture.name,
            digest=capture.digest,
        )
    else:
        raise ScanError(
            capture.path,
            f"the {capture.source_format} capture has neither depth maps nor a scene mesh / point cloud",
            "om3db needs one of them to place the scene points: export the capture with depth or with its mesh",
        )
    if not ply_path.is_file():
        raise ScanError(ply_path, "point cloud file not found", "Pass an existing .ply")
    points, point_colors = _read_ply(ply_path)
    if render:
        from .proposals.render import FrameDepthRenderer

        renderer = FrameDepthRenderer(ply_path, points, depth_intr)
        frames = [replace(f, depth_renderer=renderer) for f in frames]
    mask_arr, mask_scores, mask_path = _masks(capture.path, masks, points.shape[0])
    return Scan(
        name=capture.name,
        path=capture.path,
        ply_path=ply_path,
        points=points,
        colors=point_colors,
        frames=tuple(frames),
        skipped=tuple(skipped),
        color_intrinsics=color_intr,
        depth_intrinsics=depth_intr,
        depth_scale=float(capture.depth_scale),
        frame_step=frame_step,
        masks=mask_arr,
        mask_scores=mask_scores,
        mask_path=mask_path,
        frames_on_disk=len(all_frames),
        depth_source="rendered" if render else "sensor",
        source_format=capture.source_format,
        fused_ply=ply_path if fused is not None and fused.get("kind") == "tsdf" else None,
        fusion=fused,
        capture_digest=capture.digest,
        capture_info=dict(capture.info),
    )


def _check_same_ids(root: Path, colors: dict, depths: dict, poses: dict) -> None:
    for folder, have in (("depth", depths), ("pose", poses)):
        if set(have) == set(colors):
            continue
        missing = sorted(set(colors) - set(have))
        extra = sorted(set(have) - set(colors))
        detail = []
        if missing:
            detail.append(f"no {folder} for frame ids {_id_list(missing)}")
        if extra:
            detail.append(f"no colour for frame ids {_id_list(extra)}")
        raise ScanError(
            root / folder,
            f"colour and {folder} frame counts differ ({len(colors)} colour, {len(have)} {folder}): "
            + "; ".join(detail),
            "Every frame id needs color/<id>, depth/<id>.png and pose/<id>.txt",
        )


def _id_list(ids: list[int], limit: int = 8) -> str:
    head = ", ".join(str(i) for i in ids[:limit])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def is_scan_dir(path: Path) -> bool:
    """True when ``path`` looks like a ScanNet-layout scan folder (has color/ and intrinsic/)."""
    return (path / "color").is_dir() and (path / "intrinsic").is_dir()


def find_scans(root: str | Path) -> list[Path]:
    """Every scan at or below ``root``, sorted by path: ScanNet-layout folders and captures of the other
    formats (folders, and Record3D ``.r3d`` files). A folder recognised as a scan is not searched further."""
    from .captures import find_captures

    root = Path(root)
    if is_scan_dir(root):
        return [root]
    if not root.exists():
        raise ScanError(root, "folder not found", "Pass a scan folder or a folder of scans")
    return find_captures(root)
