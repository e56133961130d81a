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

    return load_siglip(tiny_siglip_dir, device="cpu", dtype="float32", batch_size=4)


@pytest.fixture(scope="session")
def tiny_dinov2(tiny_dinov2_dir):
    from om3db.embed import load_dinov2

    return load_dinov2(tiny_dinov2_dir, device="cpu", dtype="float32", batch_size=4)


@pytest.fixture(scope="session")
def tiny_sam(tiny_sam_path):
    """A SamPredictor over the tiny checkpoint; tests that count calls should read deltas or load their own."""
    from om3db.sam import load_sam

    return load_sam(tiny_sam_path, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_sam_hf_dir(tmp_path_factory) -> Path:
    """A tiny random transformers SamModel (save_pretrained directory with its image processor)."""
    from om3db.random_models import write_random_sam_hf

    return write_random_sam_hf(tmp_path_factory.mktemp("models") / "tiny-sam-hf", size="tiny", seed=0)


@pytest.fixture
def fake_cpu(monkeypatch):
    """``fake_cpu(bf16=True)``: om3db.hardware sees an AMX / AVX512-BF16 Xeon; ``bf16=False``: an AVX2-only EPYC;
    ``fake_cpu(bf16=True, vendor="AuthenticAMD")``: an AVX-512 EPYC with AVX512-BF16 and no AMX (Zen 4)."""
    from om3db import hardware

    def fake(bf16: bool, vendor: str | None = None):
        vendor = vendor or ("GenuineIntel" if bf16 else "AuthenticAMD")
        if not bf16:
            name, capability, flags = "Fake AMD EPYC", "AVX2", {"avx2"}
        elif vendor == "AuthenticAMD":
            name, capability, flags = "Fake AMD EPYC Zen 4", "AVX512", {"avx512_bf16", "avx512f", "avx2"}
        else:
            name, capability, flags = (
                "Fake Xeon with AMX",
                "AVX512",
                {"amx_bf16", "avx512_bf16", "amx_tile", "avx512f", "avx2"},
            )
        info = hardware.CpuInfo(name=name, capability=capability, flags=frozenset(flags), vendor=vendor)
        monkeypatch.setattr(hardware, "detect_cpu", lambda: info)
        return info

    return fake
