"""Tiny random SigLIP / DINOv2 / SAM checkpoints, written once per test session and loaded through the real loaders."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    from om3db.random_models import write_random_siglip

    return write_random_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory) -> Path:
    from om3db.random_models import write_random_dinov2

    return write_random_dinov2(tmp_path_factory.mktemp("models") / "tiny-dinov2", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sam_path(tmp_path_factory) -> Path:
    from om3db.random_models import write_random_sam

    return write_random_sam(tmp_path_factory.mktemp("models") / "sam_tiny.pth", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_siglip(tiny_siglip_dir):
    from om3db.embed import load_siglip

    return load_siglip(tiny_siglip_dir, device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def tiny_dinov2(tiny_dinov2_dir):
    from om3db.embed import load_dinov2

    return load_dinov2(tiny_dinov2_dir, device="cpu", batch_size=4)


@pytest.fixture(scope="session")
def tiny_sam(tiny_sam_path):
    """A SamPredictor over the tiny checkpoint; tests that count calls should read deltas or load their own."""
    from om3db.sam import load_sam

    return load_sam(tiny_sam_path, device="cpu")
