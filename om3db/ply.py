"""The one PLY writer: binary little-endian, float xyz, optional uchar rgb, extra per-vertex columns
and triangle faces (what ScanNet's ``_vh_clean_2.ply`` holds). Vertex order is kept: mask and
ground-truth indices refer to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_ply"]

_PLY_TYPES = {"<f4": "float", "<f8": "double", "<i4": "int", "<u4": "uint", "u1": "uchar", "<i2": "short"}


def write_ply(
    path: str | Path,
    points: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    extra: dict[str, np.ndarray] | None = None,
    faces: np.ndarray | None = None,
    comment: str | None = None,
) -> Path:
    """Write (N, 3) points, (N, 3) uint8 colours (properties red green blue), ``extra`` name -> (N,)
    columns (int32 / float32 / ...) and (F, 3) int triangle faces."""
    points = np.asarray(points)
    n = len(points)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
    fields += [(k, v.dtype.newbyteorder("<").str if v.dtype.itemsize > 1 else v.dtype.str) for k, v in extra.items()]
    vertex = np.empty(n, dtype=fields)
    for i, a in enumerate("xyz"):
        vertex[a] = points[:, i]
    if colors is not None:
        for i, a in enumerate(("red", "green", "blue")):
            vertex[a] = colors[:, i]
    for k, v in extra.items():
        vertex[k] = v
    lines = ["ply", "format binary_little_endian 1.0"]
    if comment:
        lines.append(f"comment {comment}")
    lines.append(f"element vertex {n}")
    lines += [f"property {_PLY_TYPES[dt]} {name}" for name, dt in fields]
    if faces is not None:
        lines += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    lines.append("end_header")
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(("\n".join(lines) + "\n").encode("ascii"))
        fh.write(vertex.tobytes())
        if faces is not None:
            fa = np.empty(len(faces), np.dtype([("n", "u1"), ("i", "<i4", 3)]))
            fa["n"], fa["i"] = 3, faces
            fh.write(fa.tobytes())
    return path
