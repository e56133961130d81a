"""Synthetic RGB-D scans in the ScanNet / OpenMask3D layout, with exact ground truth.

A scene is a room (floor + four walls, no ceiling) holding objects of several shapes whose class
is their colour name. It is a function of ``(seed, size, index)`` only (:func:`build_scene`), so
the ground-truth oracles (:func:`gt_point_visibility`, :func:`render_frame`) rebuild it from
``gt/scene.json`` and raycast it with open3d, the same way the frames were rendered.
Layout and formats: docs/synthetic.md.
"""

from .render import camera_poses
from .scene import CLASSES, PALETTE, ROOM_RGB, SHAPES, SynthObject, SynthScene, SynthSize, build_scene
from .truth import GroundTruth, RenderedFrame, gt_point_visibility, load_gt, render_frame
from .writer import write_scans

__all__ = [
    "PALETTE",
    "ROOM_RGB",
    "CLASSES",
    "SHAPES",
    "SynthSize",
    "SynthObject",
    "SynthScene",
    "GroundTruth",
    "RenderedFrame",
    "build_scene",
    "camera_poses",
    "write_scans",
    "load_gt",
    "gt_point_visibility",
    "render_frame",
]
