"""Readers for capture formats other than the ScanNet layout, chosen from a folder's (or file's) contents.

Each reader module has ``NAME``, ``NEEDS`` (what it looks for, for error messages), ``probe(path)``
(``(matches, missing)``: cheap, no image is opened) and ``read(path, options) -> Capture``.
:func:`om3db.scan.read_scan` uses them; :func:`convert` writes any of them as a ScanNet folder.
Conventions of each format: docs/data-conventions.md.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import ConfigError, ScanError
from .base import Capture, ReadOptions

__all__ = ["FORMATS", "Capture", "ReadOptions", "detect_format", "read_capture", "find_captures", "convert"]

READERS = ("nerfstudio", "record3d", "arkitscenes", "replica", "scannetpp", "scanner3d")
FORMATS = ("scannet", *READERS)
"""Every format name ``read_scan(format=...)`` accepts (besides "auto")."""
SCANNET_NEEDS = "color/ and intrinsic/ folders (plus depth/, pose/ and a .ply)"


def _module(fmt: str):
    return importlib.import_module(f"{__name__}.{fmt}")


def _probe_scannet(path: Path) -> tuple[bool, list[str]]:
    if not path.is_dir():
        return False, ["a folder"]
    missing = [f"{d}/" for d in ("color", "intrinsic") if not (path / d).is_dir()]
    return not missing, missing


def _probes(path: Path) -> dict[str, tuple[bool, list[str]]]:
    out = {"scannet": _probe_scannet(path)}
    for fmt in READERS:
        out[fmt] = _module(fmt).probe(path)
    return out


def detect_format(path: str | Path) -> str:
    """The format of the scan folder or capture file at ``path``; ScanError when none or several match."""
    path = Path(path)
    if not path.exists():
        raise ScanError(path, "scan folder not found", "Pass a scan folder, a capture folder or a Record3D .r3d file")
    if path.is_dir() and not any(path.iterdir()):
        raise ScanError(path, "scan folder is empty", "A scan needs color/, depth/, pose/, intrinsic/ and a .ply")
    probes = _probes(path)
    found = [fmt for fmt, (ok, _) in probes.items() if ok]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ScanError(
            path,
            f"holds several capture formats at once ({', '.join(found)})",
            "Pass format= (CLI --format) with one of them, or keep one capture per folder",
        )
    needs = {"scannet": SCANNET_NEEDS, **{fmt: _module(fmt).NEEDS for fmt in READERS}}
    lines = "; ".join(f"{fmt} needs {needs[fmt]} (missing: {', '.join(probes[fmt][1])})" for fmt in FORMATS)
    raise ScanError(path, f"matches no capture format: {lines}", "Pass format= to read it as one format and see why")


def read_capture(path: str | Path, fmt: str, options: ReadOptions = ReadOptions()) -> Capture:
    """Read a capture of format ``fmt`` (one of :data:`READERS`); every problem is a ScanError naming the file."""
    if fmt not in READERS:
        raise ConfigError(f"no capture reader named {fmt!r}; readers: {', '.join(READERS)}")
    path = Path(path)
    if not path.exists():
        raise ScanError(path, "capture not found", "Pass the capture folder (or .r3d file)")
    return _module(fmt).read(path, options)


def find_captures(root: str | Path) -> list[Path]:
    """Every scan or capture at or below ``root`` (a recognised folder is not searched further), sorted."""
    root = Path(root)
    if root.is_file():
        return [root] if any(ok for ok, _ in _probes(root).values()) else []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if any(ok for ok, _ in _probes(here).values()):
            found.append(here)
            dirnames[:] = []
            continue
        found.extend(here / f for f in filenames if f.lower().endswith(".r3d"))
        dirnames.sort()
    return sorted(found)


def convert(*args, **kwargs):
    """See :func:`om3db.captures.convert.convert_capture`."""
    from .convert import convert_capture

    return convert_capture(*args, **kwargs)
