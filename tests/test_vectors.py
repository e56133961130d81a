"""VectorIndex at the store's defaults: IVF from the threshold on, tuned recall vs brute force, FAISS quiet."""

from __future__ import annotations

import numpy as np
import pytest

from om3db.errors import ConfigError
from om3db.store.vectors import DEFAULT_IVF_THRESHOLD, DEFAULT_TARGET_RECALL, IndexChoice, VectorIndex, recall_at_k


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
    assert choice.nlist == min(round(2 * np.sqrt(n)), n // 39)  # >= 39 training points per centroid
    assert choice.nprobe < choice.nlist  # tuned, not an exhaustive scan of every list
    truth = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]  # brute force in numpy
    assert recall_at_k(ivf.search(q, 10)[1], truth) >= DEFAULT_TARGET_RECALL
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("n", [1, 2, 10, 38, 39, 100, 1000])
def test_faiss_prints_nothing_at_small_n(n, capfd):
    x, q = clustered(n, clusters=5, seed=n)
    ivf = VectorIndex.build(x, np.arange(n, dtype=np.int64), kind="ivf")
    assert ivf.choice.nlist == max(1, min(round(2 * np.sqrt(n)), n // 39))
    _, got = ivf.search(q[:3], 10)
    assert (got >= 0).any(axis=1).all() and set(got[got >= 0].tolist()) <= set(range(n))
    assert capfd.readouterr() == ("", "")


def lists_of(index: VectorIndex) -> dict[int, tuple[list, bytes]]:
    """IVF list number -> (ids, codes) as FAISS holds them."""
    import faiss

    inv = index._inner.invlists
    out = {}
    for i in range(index.choice.nlist):
        n = inv.list_size(i)
        if n:
            ids = faiss.rev_swig_ptr(inv.get_ids(i), n).tolist()
            codes = faiss.rev_swig_ptr(inv.get_codes(i), n * inv.code_size).tobytes()
            out[i] = (ids, codes)
    return out


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_float16_rows_are_held_as_given_and_equal_float32_rows(kind):
    """Stored float16 rows go in without conversion (add_sa_codes); the index equals one built from the
    same values as float32: same lists, codes, tuned nprobe and results."""
    import faiss

    x, q = clustered(3000)
    x16 = x.astype("<f2")
    ids = np.arange(len(x), dtype=np.int64) * 5 + 1
    a = VectorIndex.build(x16, ids, kind=kind)
    b = VectorIndex.build(x16.astype(np.float32), ids, kind=kind)
    assert a.choice == b.choice and a.ntotal == b.ntotal == len(x)
    if kind == "flat":
        codes = faiss.vector_to_array(a._inner.codes)
        assert codes.tobytes() == x16.tobytes() == faiss.vector_to_array(b._inner.codes).tobytes()
    else:
        assert lists_of(a) == lists_of(b)
        # every list holds the vectors whose nearest centroid it is, on the stored (decoded) values
        _, nearest = a._inner.quantizer.search(x16.astype(np.float32), 1)
        for lst, (got, _) in lists_of(a).items():
            assert sorted(got) == sorted(ids[nearest.ravel() == lst].tolist())
    sa, ia = a.search(q, 10)
    sb, ib = b.search(q, 10)
    assert np.array_equal(ia, ib) and np.array_equal(sa, sb)
    # incremental float16 adds equal FAISS's own float32 adds of the same values
    more16 = clustered(500, seed=1)[0].astype("<f2")
    more_ids = np.arange(500, dtype=np.int64) + 10**6
    a.add(more16, more_ids)
    b.add(more16.astype(np.float32), more_ids)
    if kind == "ivf":
        assert lists_of(a) == lists_of(b)
    assert np.array_equal(a.search(q, 10)[1], b.search(q, 10)[1])


def test_add_refuses_ids_of_the_wrong_length():
    index = VectorIndex(8, IndexChoice("flat"))
    with pytest.raises(ConfigError, match=r"ids must be \(2,\) int64, got shape \(3,\)"):
        index.add(np.ones((2, 8), np.float16), np.arange(3))
    assert index.ntotal == 0


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_digests_are_those_of_the_stored_float16_rows(kind):
    """`VectorIndex.digests` (what `check` compares with SQLite): per id, the digest of exactly the float16
    bytes added, for flat and IVF; one changed value changes that id's digest only."""
    from om3db.store.vectors import code_digests

    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("<f2")
    ids = rng.permutation(10_000)[:300].astype(np.int64)
    index = VectorIndex.build(x, ids, kind=kind, nlist=8, nprobe=2)
    assert index.choice.kind == kind
    got_ids, got = index.digests()
    order = np.argsort(got_ids)
    want = code_digests(x.view(np.uint8))
    assert np.array_equal(got_ids[order], np.sort(ids))
    assert np.array_equal(got[order], want[np.argsort(ids)])
    assert len(np.unique(want)) == len(want)
    y = x.copy()
    y[7, 5] = np.float16(-y[7, 5] if y[7, 5] != 0 else 0.5)
    changed = code_digests(y.view(np.uint8)) != want
    assert changed.tolist() == [i == 7 for i in range(300)]
