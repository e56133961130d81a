"""The local viewer page (``om3db view``): scans, live search, hits highlighted in 3D. Needs ``viser``."""

from __future__ import annotations

from .app import Viewer, ViewerConfig, check_port, start_viewer

__all__ = ["Viewer", "ViewerConfig", "check_port", "start_viewer"]
