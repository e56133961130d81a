"""Import open3d where it is used (it costs ~1 s), working around a missing system libusb."""

from __future__ import annotations

import ctypes
import functools
import os

from .errors import Om3dbError


@functools.cache
def open3d():
    """Return the ``open3d`` module, loading the pip-packaged libusb first when the system lacks it."""
    os.environ.setdefault("OPEN3D_DISABLE_WEB_VISUALIZER", "true")
    try:
        import open3d as o3d

        return _quiet(o3d)
    except ImportError as exc:
        if "libusb" not in str(exc):
            raise Om3dbError(f"open3d cannot be imported: {exc}. Install it with `pip install open3d-cpu`.") from exc
    try:
        import libusb_package

        lib = libusb_package.get_library_path()
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise Om3dbError(
            "open3d needs libusb-1.0.so.0: install the Debian package libusb-1.0-0 or `pip install libusb-package`"
        ) from exc
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    import open3d as o3d

    return _quiet(o3d)


def _quiet(o3d):
    """open3d logs warnings (e.g. "Read PLY failed") to stdout itself; om3db reports problems as errors."""
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d
