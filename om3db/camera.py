"""Pinhole camera model: intrinsics, per-axis rescaling and projection of world points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Intrinsics", "project", "matrix_problem"]

PINHOLE_TOL = 1e-6
"""How far K's skew and bottom row may be from 0 / 0 0 1 (relative to the focal length for the skew)."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics for an image of ``width`` x ``height`` pixels (pixel centres at integers)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_matrix(cls, k: np.ndarray, width: int, height: int) -> Intrinsics:
        """From a 3x3 or 4x4 camera matrix (only ``[:3, :3]`` is used). Readers check the matrix with
        :func:`matrix_problem` first: a skewed camera or a transposed matrix is not a plain pinhole."""
        return cls(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), int(width), int(height))

    def problem(self, margin: float = 0.5) -> str | None:
        """What makes these intrinsics implausible (None when they are fine): non-finite values, a focal
        length <= 0 (a degenerate or mirrored camera), an empty image, or a principal point more than
        ``margin`` of the image size outside it."""
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(v) for v in values):
            return f"intrinsics are not finite (fx={self.fx}, fy={self.fy}, cx={self.cx}, cy={self.cy})"
        if self.fx <= 0 or self.fy <= 0:
            return f"focal lengths must be positive, got fx={self.fx}, fy={self.fy} (a degenerate or mirrored camera)"
        if self.width < 1 or self.height < 1:
            return f"image size {self.width}x{self.height} is empty"
        w, h = self.width, self.height
        if not (-margin * w <= self.cx <= (1 + margin) * w and -margin * h <= self.cy <= (1 + margin) * h):
            return f"principal point ({self.cx}, {self.cy}) is far outside the {w}x{h} image"
        return None

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) float64 K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def scaled_to(self, width: int, height: int) -> Intrinsics:
        """The same camera at another resolution: fx, cx scale by W'/W and fy, cy by H'/H.

        (OpenMask3D swaps the two axes here; with ScanNet's 1296x968 -> 640x480 that shifts
        points by several pixels.)
        """
        sx = width / self.width
        sy = height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))


def matrix_problem(k: np.ndarray) -> str | None:
    """What makes a 3x3 (or 4x4, ``[:3, :3]``) camera matrix other than a pinhole ``[[fx 0 cx] [0 fy cy]
    [0 0 1]]``, naming each entry (``K[0,1] (skew) is 80``); None when it is one. A skew, a bottom row other
    than ``0 0 1`` (a transposed matrix has ``cx cy 1`` there) or a scaled matrix would otherwise be read as
    a plain pinhole with its fx, fy, cx, cy entries, silently wrong."""
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] < 3 or k.shape[1] < 3:
        return f"camera matrix has shape {k.shape}, expected 3x3"
    k = k[:3, :3]
    scale = max(1.0, abs(k[0, 0]), abs(k[1, 1])) if np.isfinite(k[:2, :2]).all() else 1.0
    wrong = []
    for (i, j), want, name, tol in (
        ((0, 1), 0.0, " (skew)", PINHOLE_TOL * scale),
        ((1, 0), 0.0, "", PINHOLE_TOL * scale),
        ((2, 0), 0.0, "", PINHOLE_TOL),
        ((2, 1), 0.0, "", PINHOLE_TOL),
        ((2, 2), 1.0, "", PINHOLE_TOL),
    ):
        if not abs(k[i, j] - want) <= tol:  # also catches nan
            wrong.append(f"K[{i},{j}]{name} is {k[i, j]:.10g}, expected {want:g}")
    if not wrong:
        return None
    return "camera matrix is not a pinhole [[fx 0 cx] [0 fy cy] [0 0 1]]: " + "; ".join(wrong)


def project(
    points: np.ndarray, world_to_camera: np.ndarray, intr: Intrinsics
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project (N, 3) world points. Returns float64 pixel ``u``, ``v`` (N,) and camera depth ``z`` (N,).

    Points behind the camera get z <= 0; callers must test ``z > 0`` before using u, v.
    """
    pts = np.asarray(points, dtype=np.float64)
    r = world_to_camera[:3, :3]
    t = world_to_camera[:3, 3]
    cam = pts @ r.T + t
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intr.fx * cam[:, 0] / z + intr.cx
        v = intr.fy * cam[:, 1] / z + intr.cy
    return u, v, z
