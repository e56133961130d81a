"""Test session setup: offline Hugging Face, shared fixtures (synthetic scans, tiny models)."""

import os

# Must happen before transformers is imported anywhere: no test touches the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELFUSION = REPO / "tests" / "data" / "labelfusion_apc_shelf"

# Shared fixtures live in their own modules (one per area) so they can grow independently.
pytest_plugins = ["tests.fixtures_scans", "tests.fixtures_models", "tests.fixtures_postgres"]


@pytest.fixture(scope="session")
def labelfusion_path() -> Path:
    """The real RGB-D capture (MIT) copied from ../shared/data into the repo's test data."""
    return LABELFUSION
