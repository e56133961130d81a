"""What every capture reader returns (:class:`Capture`) and the helpers the readers share.

A reader turns one capture (a folder, or a Record3D ``.r3d`` file) into frames whose poses are already
camera-to-world with OpenCV camera axes in metres, and the cameras of its colour and depth images.
:func:`om3db.scan.read_scan` then applies the frame step, fuses a scene point cloud when the capture has
none and builds the :class:`om3db.scan.Scan`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..camera import Intrinsics
from ..errors import ScanError
from ..images import DEPTH_MODES, depth_mode_problem  # noqa: F401 - DEPTH_MODES re-exported

__all__ = [
    "Capture",
    "ReadOptions",
    "GL_TO_CV",
    "ARKIT_UP",
    "quaternion_to_matrix",
    "axis_angle_to_matrix",
    "check_pose_scale",
]

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiply an OpenGL / ARKit camera-to-world pose (x right, y up, z backward) to get OpenCV axes."""
ARKIT_UP = [0.0, 1.0, 0.0]
"""The up vector of an ARKit world frame (``worldAlignment = .gravity``: y points against gravity)."""
QUAT_TOL = 1e-3
"""A quaternion whose norm differs from 1 by more than this is refused (not silently normalised)."""
_TRAILING_INT = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class ReadOptions:
    """Options every reader receives from :func:`om3db.scan.read_scan`."""

    check_all_images: bool = True
    """Read every image header (and decode every compressed depth map) during validation."""
    min_confidence: int = 1
    """Depth pixels whose ARKit confidence (0 low, 1 medium, 2 high) is below this are dropped (0 keeps all)."""
    pose_scale: float | None = None
    """Metres per pose unit, for nerfstudio captures whose poses are not metric (COLMAP): multiplies the
    poses' translations and the ``ply_file_path`` points. None: the poses are taken as metres where the
    capture has depth, and a capture without depth is refused (its scale is unknown)."""

    def __post_init__(self) -> None:
        check_pose_scale(self.pose_scale)


@dataclass(frozen=True)
class Capture:
    """One capture read by a format reader, in om3db's conventions (not yet a :class:`~om3db.scan.Scan`)."""

    name: str
    """Scan name (the folder name, the ``.r3d`` file stem, the ScanNet++ scene id)."""
    path: Path
    """The capture folder or file."""
    source_format: str
    """Reader name: "nerfstudio", "record3d", "arkitscenes", "replica", "scannetpp", "scanner3d"."""
    frames: tuple = field(repr=False)
    """Every frame on disk (:class:`om3db.scan.Frame`), sorted by id; poses camera-to-world, OpenCV axes,
    metres. A frame without a pose carries a non-finite pose and a reason in :attr:`skip_reasons`."""
    color_intrinsics: Intrinsics
    depth_intrinsics: Intrinsics | None
    """Camera of the depth maps; None when the capture has no sensor depth."""
    ply_path: Path | None
    """The capture's own scene cloud or mesh (PLY, vertices = scene points), or None."""
    digest: str
    """sha256 over the capture's metadata files and every frame's name and size: changes when its content does."""
    depth_scale: float = 1000.0
    """Raw depth units per metre of its depth images (informational; depth() already returns metres)."""
    mesh_path: Path | None = None
    """A scene mesh in another format (3D Scanner App OBJ), converted to a PLY once when no PLY exists."""
    ply_scale: float = 1.0
    """Metres per unit of :attr:`ply_path` (nerfstudio ``pose_scale``): read_scan writes a scaled copy when not 1."""
    skip_reasons: dict = field(default_factory=dict, repr=False)
    """frame id -> why the frame has no usable pose (e.g. no trajectory sample near its timestamp)."""
    info: dict = field(default_factory=dict, repr=False)
    """JSON-able facts for reports: pose convention, depth units, intrinsics source."""

    @property
    def has_depth(self) -> bool:
        return self.depth_intrinsics is not None


# ---------------------------------------------------------------- small helpers


def check_pose_scale(value) -> float | None:
    """``value`` as a finite float > 0 (metres per pose unit), None for None; ConfigError naming pose_scale."""
    from ..errors import ConfigError

    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pose_scale (--pose-scale) must be a number of metres per pose unit, got {value!r}") from exc
    if isinstance(value, bool) or not np.isfinite(out) or out <= 0:
        raise ConfigError(
            f"pose_scale (--pose-scale) must be a finite number > 0 (metres per pose unit), got {value!r}"
        )
    return out


def read_json(path: Path, fix: str):
    """Parsed JSON, or ScanError naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ScanError(path, "file not found", fix) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ScanError(path, f"cannot be read ({exc})", fix) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScanError(path, f"is not valid JSON ({exc})", fix) from exc
    except RecursionError as exc:
        raise ScanError(path, "is not valid JSON (nested too deeply to parse)", fix) from exc


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(value, path: Path, what: str, fix: str) -> float:
    """``value`` as a finite float, or ScanError naming ``what`` (a string, a boolean, NaN, inf, or an
    integer too large for a float is refused)."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ScanError(path, f"{what} is not a number ({_short(value)})", fix)
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ScanError(path, f"{what} is not a number ({_short(value)})", fix) from exc
    if not np.isfinite(out):
        raise ScanError(path, f"{what} is not finite ({_short(value)})", fix)
    return out


def pixels(value, path: Path, what: str, fix: str) -> int:
    """An image dimension: a whole number of pixels, 1 .. 2^31-1, or ScanError naming ``what``."""
    v = number(value, path, what, fix)
    if v != int(v) or not 1 <= v <= 2**31 - 1:
        raise ScanError(path, f"{what} is not a whole number of pixels >= 1 ({_short(value)})", fix)
    return int(v)


def camera_matrix(value, path: Path, what: str, fix: str, *, column_major: bool = False) -> np.ndarray:
    """A 3x3 pinhole K from nine numbers (row-major, or ``column_major``), or ScanError naming the entry
    that makes it something else (skew, a bottom row other than 0 0 1: transposed?)."""
    from ..camera import matrix_problem

    k = matrix(value, (3, 3), path, what, fix)
    if column_major:
        k = k.T
    problem = matrix_problem(k)
    if problem is not None:
        if k[2, 0] != 0 and k[2, 1] != 0 and k[0, 2] == 0 and k[1, 2] == 0:
            order = "column-major" if column_major else "row-major"
            problem += f". K may be transposed: cx, cy are in its bottom row ({what} must be {order})"
        raise ScanError(path, f"{what}: {problem}", fix)
    return k


def _numbers_only(value) -> bool:
    """True when ``value`` is a number or (nested) lists of numbers: no strings, booleans, dicts or None
    (numpy would read "1.5" and true as numbers)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            return False
    return True


def matrix(value, shape: tuple[int, ...], path: Path, what: str, fix: str) -> np.ndarray:
    """``value`` (nested lists or a flat list of numbers) as a float64 array of ``shape``, or ScanError."""
    try:
        if not _numbers_only(value):
            raise TypeError(f"{what} holds something other than numbers")
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ScanError(path, f"{what} is not a numeric matrix ({_short(value)})", fix) from exc
    if arr.size != int(np.prod(shape)):
        raise ScanError(path, f"{what} has {arr.size} numbers, expected {'x'.join(map(str, shape))}", fix)
    return arr.reshape(shape)


def quaternion_to_matrix(q: np.ndarray, path: Path, what: str) -> np.ndarray:
    """(3, 3) rotation from a unit quaternion ``(qx, qy, qz, qw)`` (scalar last); non-unit is refused."""
    q = np.asarray(q, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or abs(norm - 1.0) > QUAT_TOL:
        raise ScanError(
            path,
            f"{what}: quaternion {q.tolist()} is not unit (norm {norm:.6g})",
            "Poses must be rotations: re-export the capture",
        )
    x, y, z, w = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def axis_angle_to_matrix(r: np.ndarray) -> np.ndarray:
    """(3, 3) rotation from an axis-angle vector (angle = its norm, radians): Rodrigues' formula."""
    r = np.asarray(r, dtype=np.float64)
    theta = float(np.linalg.norm(r))
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * (kx @ kx)


def rigid(rotation: np.ndarray, translation) -> np.ndarray:
    """(4, 4) from a rotation and a translation."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def trailing_ids(names: Iterable[str]) -> list[int] | None:
    """The integer at the end of each file stem when every stem has one, they are all distinct and none is
    above the largest frame id om3db stores (2^31-1: timestamps in names), else None."""
    from ..scan import MAX_FRAME_ID

    ids = []
    for n in names:
        m = _TRAILING_INT.search(Path(n).stem)
        if m is None or int(m.group(1)) > MAX_FRAME_ID:
            return None
        ids.append(int(m.group(1)))
    return ids if len(set(ids)) == len(ids) else None


class Digest:
    """Accumulates the content digest of a capture (metadata bytes, frame names and sizes)."""

    def __init__(self, source_format: str) -> None:
        self._h = hashlib.sha256(f"om3db-capture:{source_format}".encode())

    def file(self, path: Path) -> None:
        self._h.update(path.name.encode() + b"\0" + path.read_bytes())

    def sized(self, path: Path | None) -> None:
        if path is not None:
            self._h.update(f"{path.name}:{path.stat().st_size}".encode())

    def text(self, s: str) -> None:
        self._h.update(s.encode())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def image_size(path: Path) -> tuple[int, int, str]:
    """(width, height, PIL mode) from the header (through om3db's image size guard), or ScanError naming the file."""
    return _image_header(path)[:3]


def _image_header(path: Path) -> tuple[int, int, str, str | None]:
    from ..images import open_image

    with open_image(path, fix="Re-export the capture") as img:
        return img.size[0], img.size[1], img.mode, img.format


def check_sizes(
    pairs: list[tuple[Path, Path | None]],
    check_all: bool,
    *,
    depth_fix: str,
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Colour and depth image sizes (read from headers), the same for every frame, depth 16-bit.

    ``pairs`` are (colour file, depth file or None). Only the first pair is read when not ``check_all``.
    """
    c_size = d_size = None
    for cpath, dpath in pairs if check_all else pairs[:1]:
        cw, ch, _ = image_size(cpath)
        if c_size is None:
            c_size = (cw, ch)
        elif (cw, ch) != c_size:
            raise ScanError(
                cpath,
                f"colour size {cw}x{ch} differs from the first frame's {c_size[0]}x{c_size[1]}",
                "All colour frames must share one resolution",
            )
        if dpath is None:
            continue
        dw, dh, mode, fmt = _image_header(dpath)
        problem = depth_mode_problem(mode, fmt)
        if problem is not None:
            raise ScanError(dpath, f"{problem}: its units are unknown", depth_fix)
        if d_size is None:
            d_size = (dw, dh)
        elif (dw, dh) != d_size:
            raise ScanError(
                dpath,
                f"depth size {dw}x{dh} differs from the first frame's {d_size[0]}x{d_size[1]}",
                "All depth frames must share one resolution",
            )
    if c_size is None:  # readers refuse a capture without frames first; never assert on user input
        raise ScanError(".", "the capture has no frames", "Check the capture folder")
    return c_size, d_size


def drop_low_confidence(depth: np.ndarray, conf: np.ndarray | None, min_confidence: int) -> np.ndarray:
    """Depth with pixels below ``min_confidence`` set to 0 (no measurement)."""
    if conf is None or min_confidence <= 0:
        return depth
    out = depth.copy()
    out[conf < min_confidence] = 0.0
    return out


Loader = Callable[[], np.ndarray]
