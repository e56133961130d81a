"""Index change logs: small writes append to ``<index>.faiss.log`` instead of rewriting the index file."""

from __future__ import annotations

import numpy as np
import pytest

from om3db.store import Store, VectorIndex
from om3db.store.indexlog import Step, append_steps, log_path, read_steps
from tests.test_store import make_result

SPACES = [("dinov2", "instance"), ("dinov2", "view"), ("siglip", "instance"), ("siglip", "view")]


def index_file(root, name="siglip", level="instance"):
    return root / "indexes" / f"{name}.{level}.faiss"


def assert_matches_sqlite(store: Store) -> None:
    """Every index holds exactly SQLite's vectors (ids and float16 values) and searches like brute force."""
    for name, level in SPACES:
        row = store.space(name, level)
        vecs, ids = store.stored_vectors(row)
        index = store.index(name, level)
        assert sorted(index.ids().tolist()) == sorted(ids.tolist()), (name, level)
        q = vecs[:3] + 0.01
        got = index.search(q, 4)[1]
        truth = ids[np.argsort(-(q @ vecs.T), axis=1, kind="stable")[:, :4]]
        assert np.array_equal(np.sort(got, axis=1), np.sort(truth, axis=1)), (name, level)


@pytest.fixture
def logged(tmp_path):
    """A store whose writes always go to the log (the fraction is large), after one full save."""
    s = Store(tmp_path / "db", log_fraction=100.0)
    s.write_scan(make_result("a", 5), settings={})
    yield s
    s.close()


def test_small_writes_append_to_the_log_and_reopen_replays_it(logged, tmp_path):
    root = tmp_path / "db"
    first = VectorIndex.read_header(index_file(root))
    logged.write_scan(make_result("b", 4, seed=1), settings={})
    logged.write_scan(make_result("c", 3, seed=2), settings={}, save=False)
    logged.write_scan(make_result("b", 2, seed=3), settings={}, save=False)  # re-ingest: ids removed and added
    logged.remove_scan("c")  # save=True: the deferred steps and the removal go out together
    row = logged.space("siglip", "instance")
    head = VectorIndex.read_header(index_file(root))
    assert head == first  # the index file was not rewritten
    steps, end = read_steps(log_path(index_file(root)), 16)
    assert [(s.from_generation, s.to_generation) for s in steps] == [(g, g + 1) for g in range(1, row.generation)]
    assert end == log_path(index_file(root)).stat().st_size
    assert [len(s.added_ids) for s in steps] == [4, 3, 2, 0] and [len(s.removed) for s in steps] == [0, 0, 4, 3]
    # the logged vectors are the stored float16 values
    vecs, ids = logged.stored_vectors(row, dtype=np.float16)
    b = dict(zip(ids.tolist(), vecs.view(np.uint16).tolist(), strict=True))
    assert {
        i: v for i, v in zip(steps[2].added_ids.tolist(), steps[2].added.view(np.uint16).tolist(), strict=True)
    } == {i: b[i] for i in steps[2].added_ids.tolist()}
    logged.close()
    again = Store(root)
    assert again.rebuilt == []
    assert again.index("siglip", "instance").ntotal == 7
    assert_matches_sqlite(again)
    again.close()


def test_log_is_folded_into_the_file_past_its_fraction(logged, tmp_path):
    root = tmp_path / "db"
    logged.write_scan(make_result("b", 4, seed=1), settings={})
    assert log_path(index_file(root)).exists()
    logged.log_fraction = 0.01
    logged.write_scan(make_result("c", 3, seed=2), settings={})
    gen = logged.space("siglip", "instance").generation
    assert not log_path(index_file(root)).exists()
    assert VectorIndex.read_header(index_file(root))["generation"] == gen
    assert VectorIndex.read_header(index_file(root))["count"] == 12
    logged.close()
    again = Store(root)
    assert again.rebuilt == []
    assert_matches_sqlite(again)
    again.close()


def test_torn_last_record_is_ignored_then_overwritten(logged, tmp_path):
    root = tmp_path / "db"
    logged.write_scan(make_result("b", 4, seed=1), settings={})
    logged.close()
    log = log_path(index_file(root))
    complete = log.read_bytes()
    log.write_bytes(complete + complete[: len(complete) // 2])  # a crash in the middle of a second append
    again = Store(root, log_fraction=100.0)
    assert again.rebuilt == []  # the complete records still reach SQLite's generation
    again.write_scan(make_result("c", 3, seed=2), settings={})
    steps, end = read_steps(log, 16)
    assert end == log.stat().st_size and [len(s.added_ids) for s in steps] == [4, 3]
    again.close()
    third = Store(root)
    assert third.rebuilt == []
    assert_matches_sqlite(third)
    third.close()


def test_damaged_record_that_breaks_the_chain_means_rebuild(logged, tmp_path):
    root = tmp_path / "db"
    logged.write_scan(make_result("b", 4, seed=1), settings={})
    logged.close()
    log = log_path(index_file(root))
    data = bytearray(log.read_bytes())
    data[-1] ^= 0xFF  # the only record fails its CRC
    log.write_bytes(bytes(data))
    again = Store(root)
    assert "siglip.instance" in again.rebuilt
    assert not log.exists()  # rebuilt and saved whole
    assert_matches_sqlite(again)
    again.close()


def test_reader_catches_up_through_the_log_without_rebuilding(logged, tmp_path):
    root = tmp_path / "db"
    reader = Store(root, lock_timeout=0)
    assert reader.index("siglip", "view").ntotal == 10  # 5 instances x 2 inlier views
    rebuilt = []
    reader._build = lambda row: rebuilt.append(row) or pytest.fail("rebuilt from SQLite")
    loads = []
    real_load = VectorIndex.load
    VectorIndex.load = staticmethod(lambda *a, **k: loads.append(a) or real_load(*a, **k))
    try:
        logged.write_scan(make_result("b", 4, seed=1), settings={})
        logged.remove_scan("a")
        assert reader.index("siglip", "view").ntotal == 8
        assert_matches_sqlite(reader)
    finally:
        VectorIndex.load = real_load
    assert rebuilt == [] and loads == []  # the cached indexes were brought forward by the log alone
    reader.close()


def test_read_steps_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    steps = [
        Step(3, 4, np.array([7, 9]), np.array([11, 12, 13]), rng.standard_normal((3, 5)).astype(np.float16)),
        Step(4, 5, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 5), np.float16)),
    ]
    path = tmp_path / "x.log"
    end = append_steps(path, steps[:1], 5, at=0)
    end = append_steps(path, steps[1:], 5, at=end)
    got, at = read_steps(path, 5)
    assert at == end == path.stat().st_size
    for a, b in zip(got, steps, strict=True):
        assert (a.from_generation, a.to_generation) == (b.from_generation, b.to_generation)
        assert np.array_equal(a.removed, b.removed) and np.array_equal(a.added_ids, b.added_ids)
        assert a.added.tobytes() == b.added.tobytes()
    assert read_steps(path, 6) == ([], 0)  # another dim: not this space's log
    assert read_steps(tmp_path / "missing.log", 5) == ([], 0)


def test_a_stale_writer_does_not_overwrite_a_newer_index_file(tmp_path):
    """Deferred writes of one process, then another process writes and saves: the first one's flush must
    not put its older index over the newer file."""
    root = tmp_path / "db"
    first = Store(root)
    first.write_scan(make_result("a", 5), settings={})
    first.write_scan(make_result("b", 4, seed=1), settings={}, save=False)  # pending, not on disk
    second = Store(root)  # opens: file + log do not reach SQLite's generation, so it rebuilds and saves
    assert "siglip.instance" in second.rebuilt
    second.write_scan(make_result("c", 3, seed=2), settings={})
    newer = VectorIndex.read_header(index_file(root))
    with first.lock:
        first.flush()
    assert VectorIndex.read_header(index_file(root)) == newer
    assert first.index("siglip", "instance").ntotal == 12  # reloaded: it sees the other writer's scan
    second.close()
    first.close()
    again = Store(root)
    assert again.rebuilt == []
    assert_matches_sqlite(again)
    again.close()
