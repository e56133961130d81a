"""Pinhole camera model: intrinsics, per-axis rescaling and projection of world points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Intrinsics", "project"]


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
        """From a 3x3 or 4x4 camera matrix (only ``[:3, :3]`` is used)."""
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
