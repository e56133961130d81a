"""VectorIndex at the store's defaults: IVF from the threshold on, tuned recall vs brute force, FAISS quiet."""

from __future__ import annotations

import numpy as np
import pytest

from om3db.store.vectors import DEFAULT_IVF_THRESHOLD, DEFAULT_TARGET_RECALL, VectorIndex, recall_at_k


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int = 64, clusters: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around ``clusters`` random centres, and 200 queries drawn like them but noisier."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = unit(centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)))
    q = unit(centres[rng.integers(0, clusters, 200)] + 0.5 * rng.standard_normal((200, dim)))
    return x, q


def test_space_at_the_default_threshold_builds_ivf_reaching_the_target_recall(capfd):
    n = DEFAULT_IVF_THRESHOLD
    x, q = clustered(n)
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # ids are primary keys, not positions
    assert VectorIndex.build(x[:-1], ids[:-1]).choice.kind == "flat"
    ivf = VectorIndex.build(x, ids)
    choice = ivf.choice
    assert choice.kind == "ivf" and choice.trained_on == n
    assert choice.nlist == min(round(4 * np.sqrt(n)), n // 39)  # >= 39 training points per centroid
    assert choice.nprobe < choice.nlist  # tuned, not an exhaustive scan of every list
    truth = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]  # brute force in numpy
    assert recall_at_k(ivf.search(q, 10)[1], truth) >= DEFAULT_TARGET_RECALL
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("n", [1, 2, 10, 38, 39, 100, 1000])
def test_faiss_prints_nothing_at_small_n(n, capfd):
    x, q = clustered(n, clusters=5, seed=n)
    ivf = VectorIndex.build(x, np.arange(n, dtype=np.int64), kind="ivf")
    assert ivf.choice.nlist == max(1, min(round(4 * np.sqrt(n)), n // 39))
    _, got = ivf.search(q[:3], 10)
    assert (got >= 0).any(axis=1).all() and set(got[got >= 0].tolist()) <= set(range(n))
    assert capfd.readouterr() == ("", "")
