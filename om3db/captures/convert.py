"""Write any supported capture as a ScanNet / OpenMask3D folder (``om3db convert SRC DST``).

The capture is read and validated completely first (and its point cloud fused when it has none); the
folder is written under a temporary name next to ``DST`` and renamed at the end, so ``DST`` is either
complete or absent. Files that are already in ScanNet form (colour JPG/PNG, 16-bit depth PNG at the
output scale, the PLY, mask files) are copied byte for byte; everything else is re-encoded losslessly
(depth rounded to the output units).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ScanError

__all__ = ["ConvertResult", "convert_capture"]

Progress = Callable[[str, int, int], None]
_COLOR_SUFFIX = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png"}


@dataclass(frozen=True)
class ConvertResult:
    """What ``convert_capture`` wrote."""

    path: Path
    """The ScanNet-layout folder."""
    name: str
    source: Path
    source_format: str
    frames_written: int
    frames_skipped: list[dict] = field(default_factory=list)
    """Frames of the capture without a usable pose (not written unless the source is ScanNet layout)."""
    depth: str = "sensor"
    """"sensor" (depth/ written) or "none" (the capture has no depth: om3db renders it from the PLY)."""
    depth_scale: float = 1000.0
    depth_out_of_range: int = 0
    """Depth pixels beyond 65535 / depth_scale metres, written as 0 (no measurement)."""
    fused_ply: Path | None = None
    """The fused cloud copied as the scene PLY, when the capture had none."""

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _matrix_text(m: np.ndarray) -> str:
    # 17 significant digits: a float64 written here reads back bit for bit
    return "\n".join(" ".join(f"{x:.17g}" for x in row) for row in np.asarray(m, dtype=np.float64)) + "\n"


def _k4(intr) -> np.ndarray:
    k = np.eye(4)
    k[:3, :3] = intr.matrix
    return k


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path)


def convert_capture(
    src: str | Path,
    dst: str | Path,
    *,
    format: str = "auto",  # noqa: A002 - the user-facing name
    depth_scale: float = 1000.0,
    fused_dir: str | Path | None = None,
    fusion=None,
    min_confidence: int = 1,
    pose_scale: float | None = None,
    progress: Progress | None = None,
) -> ConvertResult:
    """Write the capture at ``src`` as a ScanNet-layout scan folder ``dst`` (which must not exist or be empty).

    depth_scale: units per metre of the written depth PNGs (1000: millimetres, what om3db and OpenMask3D
        read by default). A capture without sensor depth gets no depth/ folder.
    fused_dir, fusion, min_confidence, pose_scale: as for :func:`om3db.scan.read_scan` (the fused, converted or
        scaled cloud becomes the PLY; poses are written in metres).
    """
    from ..scan import read_scan

    if not depth_scale > 0 or depth_scale > 65535:
        raise ConfigError(f"depth_scale must be in (0, 65535] units per metre, got {depth_scale}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ScanError(dst, "exists and is not an empty folder", "Convert into a new folder")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ScanError(dst, "is the capture itself or inside it", "Convert into a folder outside the capture")
    scan = read_scan(
        src,
        format=format,
        depth="auto",
        fused_dir=fused_dir,
        fusion=fusion,
        min_confidence=min_confidence,
        pose_scale=pose_scale,
        masks=True,
    )
    name = dst.name
    tmp = dst.parent / f".{name}.converting-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        result = _write(scan, tmp, name, src, depth_scale, progress)
        _check_written(scan, tmp, dst, result["frames_written"])
        if dst.exists():
            dst.rmdir()
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return ConvertResult(**{**result, "path": dst})


def _write(scan, out: Path, name: str, src: Path, depth_scale: float, progress: Progress | None) -> dict:
    sensor = scan.depth_source == "sensor"
    for sub in ("color", "pose", "intrinsic", *(("depth",) if sensor else ())):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "intrinsic" / "intrinsic_color.txt").write_text(_matrix_text(_k4(scan.color_intrinsics)))
    if sensor:
        (out / "intrinsic" / "intrinsic_depth.txt").write_text(_matrix_text(_k4(scan.depth_intrinsics)))
    out_of_range = 0
    frames = list(scan.frames)
    for i, f in enumerate(frames):
        _write_color(f, out / "color", str(f.frame_id))
        (out / "pose" / f"{f.frame_id}.txt").write_text(_matrix_text(f.pose))
        if sensor:
            out_of_range += _write_depth(f, out / "depth" / f"{f.frame_id}.png", depth_scale)
        if progress is not None:
            progress("convert", i + 1, len(frames))
    skipped = [{"frame_id": s.frame_id, "reason": s.reason} for s in scan.skipped]
    written = len(frames)
    if scan.source_format == "scannet":  # keep unusable frames as they are, like ScanNet's -inf poses
        written += _copy_skipped(scan, out, sensor)
    shutil.copyfile(scan.ply_path, out / f"{name}.ply")
    if scan.mask_path is not None:
        shutil.copyfile(scan.mask_path, out / f"{name}_masks{scan.mask_path.suffix}")
    masks2d = scan.path / "masks2d" if scan.path.is_dir() else None
    if masks2d is not None and masks2d.is_dir():
        shutil.copytree(masks2d, out / "masks2d")
    provenance = {
        "source": str(src),
        "source_format": scan.source_format,
        "capture": scan.capture_info,
        "depth_scale": depth_scale if sensor else None,
        "fusion": scan.fusion,
        "frames_skipped": skipped,
    }
    (out / "om3db_convert.json").write_text(json.dumps(provenance, indent=1, sort_keys=True, default=str) + "\n")
    return {
        "name": name,
        "source": src,
        "source_format": scan.source_format,
        "frames_written": written,
        "frames_skipped": skipped,
        "depth": "sensor" if sensor else "none",
        "depth_scale": depth_scale,
        "depth_out_of_range": out_of_range,
        "fused_ply": scan.fused_ply,
    }


def _write_color(f, folder: Path, stem: str) -> None:
    suffix = _COLOR_SUFFIX.get(f.color_path.suffix.lower())
    if f.color_loader is None and suffix is not None and f.color_path.is_file():
        shutil.copyfile(f.color_path, folder / f"{stem}{suffix}")
    else:
        _save_png(folder / f"{stem}.png", f.color())


def _write_depth(f, path: Path, depth_scale: float) -> int:
    """Write one depth PNG; returns the number of pixels beyond the uint16 range (written as 0)."""
    plain_png = f.depth_loader is None and f.depth_renderer is None and f.depth_path is not None
    if plain_png and f.depth_scale == depth_scale and f.depth_path.suffix.lower() == ".png":
        shutil.copyfile(f.depth_path, path)
        return 0
    raw = np.rint(f.depth().astype(np.float64) * depth_scale)
    over = raw > 65535
    raw[over | ~np.isfinite(raw) | (raw < 0)] = 0
    _save_png(path, raw.astype(np.uint16))
    return int(over.sum())


def _copy_skipped(scan, out: Path, sensor: bool) -> int:
    from ..scan import COLOR_EXTS, _index_frames

    # By integer frame id, as the reader indexed them: colour 000004.png and depth 4.png are both frame 4.
    root = scan.path
    colors = _index_frames(root / "color", COLOR_EXTS)
    depths = _index_frames(root / "depth", (".png",)) if sensor else {}
    for s in scan.skipped:
        c = colors.get(s.frame_id)
        d = depths.get(s.frame_id)
        if c is None or (sensor and d is None):
            missing = "colour" if c is None else "depth"
            raise ScanError(root, f"skipped frame {s.frame_id} has no {missing} file", "Report this as an om3db bug")
        shutil.copyfile(c, out / "color" / f"{s.frame_id}{_COLOR_SUFFIX.get(c.suffix.lower(), c.suffix)}")
        shutil.copyfile(s.path, out / "pose" / f"{s.frame_id}.txt")
        if sensor:
            shutil.copyfile(d, out / "depth" / f"{s.frame_id}.png")
    return len(scan.skipped)


def _check_written(scan, out: Path, dst: Path, written: int) -> None:
    """Read the written folder back as om3db will: refuse to report success for a folder it cannot read."""
    from ..scan import read_scan

    fix = "Report this as an om3db bug, with the capture"
    try:
        back = read_scan(out, format="scannet", depth="auto", masks=True)
    except ScanError as exc:
        raise ScanError(dst, f"the converted folder does not read back ({exc.problem})", fix) from exc
    counts = {sub: sum(1 for _ in (out / sub).iterdir()) for sub in ("color", "pose", "depth") if (out / sub).is_dir()}
    wrong = {sub: n for sub, n in counts.items() if n != written}
    if wrong or back.frames_on_disk != written or back.num_points != scan.num_points:
        raise ScanError(
            dst,
            f"the converted folder does not match the capture ({written} frames written; files found: "
            + ", ".join(f"{sub}/ {n}" for sub, n in counts.items())
            + f"; {back.frames_on_disk} frames and {back.num_points} points read back, {scan.num_points} points read)",
            fix,
        )
