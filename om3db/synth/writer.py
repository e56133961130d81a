"""Write synthetic scans to disk: frames, poses, intrinsics, PLY, ground truth and GT masks."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ScanError
from ..ply import write_ply
from .render import _color_intrinsics, _depth_intrinsics, _raycaster, _render, camera_poses
from .scene import CLASSES, GENERATOR_VERSION, SynthScene, SynthSize, _config, _SizeConfig, build_scene

Progress = Callable[[str, int, int], None]


def _fmt_matrix(m: np.ndarray) -> str:
    return "\n".join(" ".join(f"{x:.9f}".rstrip("0").rstrip(".") if x != 0 else "0" for x in row) for row in m) + "\n"


def _write_ply(path: Path, verts: np.ndarray, colors: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY like ScanNet's ``_vh_clean_2.ply`` (float xyz, uchar rgb, int faces)."""
    write_ply(path, verts, colors, faces=faces, comment="om3db synthetic scan")


def _save_png(path: Path, arr: np.ndarray, **kw) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, **kw)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_scans(
    out: str | Path,
    *,
    scans: int = 2,
    seed: int = 0,
    size: SynthSize = "tiny",
    masks: bool = True,
    masks2d: bool = False,
    depth: bool = True,
    progress: Progress | None = None,
) -> list[Path]:
    """Write ``scans`` synthetic scans ``out/synth_<seed>_<i>``; same seed, same bytes.

    masks: write the GT 3D masks as ``<scan>_masks.pt`` (class-agnostic proposals, OpenMask3D format).
    masks2d: also write the GT 2D instance maps as ``<scan>/masks2d/<id>.png`` (what a perfect 2D
        segmenter would export), the input of om3db's own proposer.
    depth: write sensor depth to ``depth/``; False makes a scan without sensor depth (like a
        reconstruction from video), whose depth om3db renders from the mesh.
    progress: called as ``progress("synth", frames_done, frames_total)`` after each frame.
    Returns the scan folders.
    """
    cfg = _config(size)
    if scans < 1:
        raise ConfigError(f"scans must be >= 1, got {scans}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    _check_out(out, scans, size)
    total, done = scans * cfg.frames, 0
    paths = []
    for index in range(scans):
        scene = build_scene(seed, size, index)
        final = out / scene.name
        _check_replaceable(final)
        # written beside its final place and moved there whole: an interrupted run leaves no scan that
        # looks complete but lacks frames (a temporary folder is removed, or ignored by readers: a dot name)
        root = out / f".{scene.name}.writing-{os.getpid()}"
        if root.exists():
            shutil.rmtree(root)
        try:
            _write_scan(root, scene, cfg, seed, size, index, masks, masks2d, depth, progress, done, total)
            _replace(root, final)
        finally:
            if root.exists():
                shutil.rmtree(root, ignore_errors=True)
        done += cfg.frames
        paths.append(final)
    return paths


# bytes one scan takes on disk, rounded up (tiny: ~3.5 MB; scannet: ~62 MB, docs/synthetic.md)
_SCAN_BYTES = {"tiny": 5_000_000, "scannet": 80_000_000}


def _is_scan(folder: Path) -> bool:
    from ..scan import is_scan_dir

    return (folder / "gt" / "scene.json").is_file() or is_scan_dir(folder)


def _check_out(out: Path, scans: int, size: str) -> None:
    """Refuse, before anything is written, an output folder that cannot hold the scans: a file, a path under
    a file, a folder inside a scan (its reader would take the new scans for part of it), too little space."""
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        if existing == out:
            raise ScanError(out, "exists and is not a folder", "Pass a folder to write the scans into")
        raise ScanError(out, f"cannot be created: {existing} is a file", "Pass a folder to write the scans into")
    for folder in (out, *out.parents):
        if folder.is_dir() and _is_scan(folder):
            raise ScanError(
                out,
                f"is inside the scan {folder}" if folder != out else "is a scan folder itself",
                "Write the synthetic scans into a folder of their own",
            )
    need = scans * _SCAN_BYTES.get(size, _SCAN_BYTES["scannet"])
    free = shutil.disk_usage(existing).free
    if need > free:
        raise ConfigError(
            f"{scans} {size} scans need about {_gb(need)} but {existing} has {_gb(free)} free; write fewer scans "
            "or free space"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"


def _write_scan(root, scene, cfg, seed, size, index, masks, masks2d, depth, progress, done, total) -> None:
    _write_scene_files(root, scene, cfg, masks)
    if masks2d:
        (root / "masks2d").mkdir()
    rc = _raycaster(scene)
    d_intr, c_intr = _depth_intrinsics(cfg), _color_intrinsics(cfg)
    # instance -> instance2d value: object i -> i + 1; room and misses (-1) -> 0
    to_map = np.zeros(len(scene.instance_class) + 1, dtype=np.uint16)
    to_map[1 : scene.num_objects + 1] = np.arange(1, scene.num_objects + 1)
    for fid, pose in enumerate(camera_poses(seed, size, index)):
        stem = f"{fid:0{cfg.id_width}d}" if cfg.id_width else str(fid)
        text = _fmt_matrix(pose)
        (root / "pose" / f"{stem}.txt").write_text(text)
        pose = np.array([[float(x) for x in row.split()] for row in text.splitlines()])  # exactly what readers see
        col = _render(rc, scene, pose, c_intr)
        dep = _render(rc, scene, pose, d_intr)
        depth_mm = (
            np.where(np.isfinite(dep["depth"]), np.rint(dep["depth"] * 1000.0), 0).clip(0, 65535).astype(np.uint16)
        )
        if depth:
            _save_png(root / "depth" / f"{stem}.png", depth_mm)
        if cfg.color_ext == ".jpg":
            _save_png(root / "color" / f"{stem}.jpg", col["rgb"], quality=90)
        else:
            _save_png(root / "color" / f"{stem}.png", col["rgb"])
        for folder, r in (("instance2d", col), ("instance2d_depth", dep)):
            _save_png(root / "gt" / folder / f"{stem}.png", to_map[r["instance"] + 1])
        if masks2d:
            _save_png(root / "masks2d" / f"{stem}.png", to_map[col["instance"] + 1])
        done += 1
        if progress is not None:
            progress("synth", done, total)
    if not depth:  # a reconstruction from video has neither sensor depth nor a depth camera
        (root / "depth").rmdir()
        (root / "intrinsic" / "intrinsic_depth.txt").unlink()


def _check_replaceable(root: Path) -> None:
    """An earlier synthetic scan of the same name is replaced; a folder we did not write is never touched."""
    if not root.exists():
        return
    if not root.is_dir() or (not (root / "gt" / "scene.json").is_file() and any(root.iterdir())):
        raise ScanError(
            root, "exists and is not a synthetic scan (no gt/scene.json)", "Remove it or write the scans elsewhere"
        )


def _replace(new: Path, final: Path) -> None:
    """Move the complete scan ``new`` to ``final``, replacing an earlier one (moved aside first, then removed)."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_scene_files(root: Path, scene: SynthScene, cfg: _SizeConfig, masks: bool) -> None:
    for sub in ("color", "depth", "pose", "intrinsic", "gt/instance2d", "gt/instance2d_depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    d_intr, c_intr = _depth_intrinsics(cfg), _color_intrinsics(cfg)
    for name, intr in (("intrinsic_color.txt", c_intr), ("intrinsic_depth.txt", d_intr)):
        m = np.eye(4)
        m[:3, :3] = intr.matrix
        (root / "intrinsic" / name).write_text(_fmt_matrix(m))
    _write_ply(root / f"{scene.name}.ply", scene.vertices, scene.colors, scene.faces)
    k = scene.num_objects
    labels = np.array([CLASSES.index(c) + 1 for c in scene.instance_class], dtype=np.int64)
    gt_ids = labels[scene.vertex_instance] * 1000 + scene.vertex_instance + 1
    (root / "gt" / "instances.txt").write_text("\n".join(map(str, gt_ids.tolist())) + "\n")
    _write_json(root / "gt" / "classes.json", [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)])
    objs = []
    for o in scene.objects:
        pts = scene.vertices[scene.vertex_instance == o.index].astype(np.float64)
        objs.append({
            "instance": o.index, "class_name": o.class_name, "label": CLASSES.index(o.class_name) + 1,
            "gt_id": int(gt_ids[scene.vertex_instance == o.index][0]), "shape": o.shape, "size": list(o.size),
            "rgb": list(o.rgb), "num_points": len(pts), "centroid": np.round(pts.mean(0), 5).tolist(),
            "bbox_min": np.round(pts.min(0), 5).tolist(), "bbox_max": np.round(pts.max(0), 5).tolist(),
            "support": "floor" if o.support == -1 else o.support, "yaw": o.yaw,
        })  # fmt: skip
    _write_json(root / "gt" / "objects.json", objs)
    _write_json(root / "gt" / "scene.json", {
        "generator": "om3db.synth", "version": GENERATOR_VERSION, "seed": scene.seed, "size": scene.size,
        "index": scene.index, "name": scene.name, "num_points": len(scene.vertices), "num_faces": len(scene.faces),
        "mesh_sha256": scene.digest(),
        "num_objects": k, "room": list(scene.room), "frames": cfg.frames, "depth_size": list(cfg.depth_size),
        "color_size": list(cfg.color_size), "depth_scale": 1000.0, "instances": list(scene.instance_class),
    })  # fmt: skip
    if masks:
        from ..masks import save_masks

        save_masks(root / f"{scene.name}_masks.pt", scene.vertex_instance[:, None] == np.arange(k)[None, :])
