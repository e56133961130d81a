"""Record3D ``.r3d`` (iPhone / iPad LiDAR), read straight from the file (a zip archive).

``metadata``: JSON with ``K`` (3x3, column-major, at colour resolution ``w`` x ``h``), depth size
``dw`` x ``dh`` and ``poses``: one ``[qx, qy, qz, qw, tx, ty, tz]`` per frame, camera-to-world with
ARKit (OpenGL) camera axes, metres. ``rgbd/<i>.jpg`` colour; ``rgbd/<i>.depth`` LZFSE-compressed float32
metres (dh x dw); optional ``rgbd/<i>.conf`` LZFSE-compressed uint8 ARKit confidence (0 low .. 2 high).
Colour JPGs pass om3db's image size guard (:func:`om3db.images.open_image`) like every image file. The
ARKit world is gravity-aligned with y up: ``info["up"]``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..camera import Intrinsics
from ..errors import ScanError
from ..images import DECODE_ERRORS
from .base import (
    ARKIT_UP,
    GL_TO_CV,
    Capture,
    Digest,
    ReadOptions,
    camera_matrix,
    drop_low_confidence,
    matrix,
    pixels,
    quaternion_to_matrix,
    rigid,
)

NAME = "record3d"
NEEDS = "a .r3d file (zip with metadata and rgbd/)"
_FIX = "Re-export the recording from Record3D (Share > Export > .r3d)"
_MEMBER = re.compile(r"^rgbd/(\d+)\.(jpg|depth|conf)$")


def probe(path: Path) -> tuple[bool, list[str]]:
    ok = path.is_file() and path.suffix.lower() == ".r3d"
    return ok, [] if ok else ["a .r3d file"]


def _lzfse():
    try:
        import lzfse
    except ImportError as exc:  # pragma: no cover - a dependency of om3db
        raise ScanError(
            ".", "the lzfse package is missing (Record3D depth is LZFSE-compressed)", "pip install lzfse"
        ) from exc
    return lzfse


def decode_lzfse(data: bytes, count: int, dtype, where: str) -> np.ndarray:
    """``count`` values of ``dtype`` from an LZFSE stream, or ScanError naming ``where``."""
    lz = _lzfse()
    try:
        raw = lz.decompress(data)
    except Exception as exc:  # noqa: BLE001 - lzfse raises its own bare error type
        raise ScanError(where, f"LZFSE stream does not decode ({exc or 'corrupt data'})", _FIX) from exc
    itemsize = np.dtype(dtype).itemsize
    if len(raw) != count * itemsize:
        raise ScanError(
            where,
            f"LZFSE stream decodes to {len(raw)} bytes, expected {count} x {itemsize} "
            f"(dw * dh {np.dtype(dtype).name} values)",
            _FIX,
        )
    return np.frombuffer(raw, dtype=dtype)


class _Archive:
    """The .r3d zip, opened once; reads are thread-safe (zipfile serialises access to the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
            self.names = set(self.zip.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise ScanError(path, f"not a readable .r3d (zip) file ({exc})", _FIX) from exc

    def read(self, member: str) -> bytes:
        try:
            return self.zip.read(member)
        # RuntimeError: an encrypted member; NotImplementedError: a compression method zipfile lacks
        except (KeyError, zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error) as exc:
            raise ScanError(f"{self.path}/{member}", f"cannot be read from the archive ({exc})", _FIX) from exc


def _open_member(arc: _Archive, member: str):
    """A colour JPG of the archive opened through om3db's image guard (size checked before decoding)."""
    from ..images import open_image

    return open_image(io.BytesIO(arc.read(member)), name=f"{arc.path}/{member}", fix=_FIX)


def read(path: Path, options: ReadOptions) -> Capture:
    from ..scan import Frame, frame_id_of

    arc = _Archive(path)
    if "metadata" not in arc.names:
        raise ScanError(path, "archive has no metadata entry", _FIX)
    where = f"{path}/metadata"
    raw_meta = arc.read("metadata")
    try:
        meta = json.loads(raw_meta)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScanError(where, f"is not valid JSON ({exc})", _FIX) from exc
    except RecursionError as exc:
        raise ScanError(where, "is not valid JSON (nested too deeply to parse)", _FIX) from exc
    if not isinstance(meta, dict):
        raise ScanError(where, f"is a JSON {type(meta).__name__}, not an object with K, w, h, dw, dh, poses", _FIX)
    missing = [k for k in ("K", "w", "h", "dw", "dh", "poses") if k not in meta]
    if missing:
        raise ScanError(where, f"lacks {', '.join(missing)}", _FIX)
    w, h, dw, dh = (pixels(meta[k], Path(where), k, _FIX) for k in ("w", "h", "dw", "dh"))
    k = camera_matrix(meta["K"], Path(where), "K", _FIX, column_major=True)
    color = Intrinsics.from_matrix(k, w, h)

    files: dict[int, dict[str, str]] = {}
    for name in sorted(arc.names):
        m = _MEMBER.match(name)
        if m:
            kind = files.setdefault(frame_id_of(m.group(1), f"{path}/{name}"), {})
            if m.group(2) in kind:
                raise ScanError(
                    f"{path}/{name}", f"frame {int(m.group(1))} appears twice (also {kind[m.group(2)]})", _FIX
                )
            kind[m.group(2)] = name
    ids = sorted(files)
    if not ids:
        raise ScanError(path, "archive has no rgbd/<i>.jpg frames", _FIX)
    poses = meta["poses"]
    if not isinstance(poses, list) or len(poses) != len(ids):
        raise ScanError(
            where,
            f"has {len(poses) if isinstance(poses, list) else 'no'} poses for {len(ids)} frames in rgbd/",
            "Every frame needs one pose: re-export the recording",
        )
    if ids != list(range(len(ids))):
        raise ScanError(path, f"frame numbers in rgbd/ are not 0..{len(ids) - 1}", _FIX)
    for fid in ids:
        lacking = [ext for ext in ("jpg", "depth") if ext not in files[fid]]
        if lacking:
            raise ScanError(f"{path}/rgbd/{fid}.{lacking[0]}", "missing from the archive", _FIX)

    digest = Digest(NAME)
    digest.text(f"metadata:{raw_meta.hex()}:conf{options.min_confidence}")
    for info in sorted(arc.zip.infolist(), key=lambda i: i.filename):
        digest.text(f"{info.filename}:{info.file_size}:{info.CRC}")

    def color_loader(member: str):
        def load() -> np.ndarray:
            with _open_member(arc, member) as img:
                try:
                    return np.asarray(img.convert("RGB"))
                except DECODE_ERRORS as exc:
                    raise ScanError(f"{path}/{member}", f"image is truncated or corrupt ({exc})", _FIX) from exc

        return load

    def depth_loader(member: str, conf_member: str | None):
        def load() -> np.ndarray:
            d = decode_lzfse(arc.read(member), dw * dh, "<f4", f"{path}/{member}").reshape(dh, dw).astype(np.float32)
            d = np.where(np.isfinite(d) & (d > 0), d, np.float32(0.0))
            conf = None
            if conf_member is not None and options.min_confidence > 0:
                conf = decode_lzfse(arc.read(conf_member), dw * dh, "u1", f"{path}/{conf_member}").reshape(dh, dw)
            return drop_low_confidence(d, conf, options.min_confidence)

        return load

    frames = []
    for fid in ids:
        pq = matrix(poses[fid], (7,), Path(where), f"poses[{fid}] (qx qy qz qw tx ty tz)", _FIX)
        c2w = rigid(quaternion_to_matrix(pq[:4], Path(where), f"poses[{fid}]"), pq[4:]) @ GL_TO_CV
        f = files[fid]
        frames.append(
            Frame(
                fid,
                Path(f"{path}/{f['jpg']}"),
                Path(f"{path}/{f['depth']}"),
                Path(where),
                c2w,
                1.0,
                color_loader=color_loader(f["jpg"]),
                depth_loader=depth_loader(f["depth"], f.get("conf")),
            )
        )
    _validate(arc, frames, files, color, options)
    return Capture(
        name=path.stem,
        path=path,
        source_format=NAME,
        frames=tuple(frames),
        color_intrinsics=color,
        depth_intrinsics=color.scaled_to(dw, dh),
        ply_path=None,
        digest=digest.hexdigest(),
        depth_scale=1000.0,
        info={
            "pose_convention": "ARKit (OpenGL) camera-to-world quaternion qx qy qz qw + translation, converted",
            "depth_units": "float32 metres (LZFSE)",
            "intrinsics_source": "metadata K (column-major)",
            "min_confidence": options.min_confidence,
            "up": list(ARKIT_UP),
            "up_source": "ARKit world frame (gravity-aligned, y up)",
        },
    )


def _validate(arc: _Archive, frames, files: dict, color: Intrinsics, options: ReadOptions) -> None:
    """Every colour header has the metadata size; every depth (and confidence) stream decodes to dw*dh values."""
    for f in frames if options.check_all_images else frames[:1]:
        f.depth_loader()  # raises ScanError on a stream that does not decode to dw*dh values
        with _open_member(arc, files[f.frame_id]["jpg"]) as im:
            size = im.size
        if size != (color.width, color.height):
            raise ScanError(
                f.color_path, f"colour is {size[0]}x{size[1]} but metadata says w={color.width} h={color.height}", _FIX
            )
