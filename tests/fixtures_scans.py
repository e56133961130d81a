"""Session fixtures: synthetic scans with exact ground truth (om3db.synth), written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Folder holding two tiny synthetic scans of seed 0: ``synth_0_0`` and ``synth_0_1``."""
    from om3db.synth import write_scans

    root = tmp_path_factory.mktemp("synth")
    write_scans(root, scans=2, seed=0, size="tiny")
    return root


@pytest.fixture(scope="session")
def tiny_scan_path(synth_root) -> Path:
    """The first tiny synthetic scan (``synth_0_0``: 20 frames, 7 objects, GT in ``gt/``)."""
    return synth_root / "synth_0_0"


@pytest.fixture(scope="session")
def tiny_scan(tiny_scan_path):
    """The first tiny synthetic scan read with ``om3db.scan.read_scan`` (GT masks loaded)."""
    from om3db.scan import read_scan

    return read_scan(tiny_scan_path)
