"""Store write path: the DBAPI (SQLite) and Core paths store identical rows; compact (instance-only) databases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from om3db.errors import ConfigError, StoreError
from tests.test_store import DIM, make_result


def _store(path, raw: bool):
    from om3db.store import Store

    return Store(path, raw_sqlite=raw)


def compact(result):
    """The same scan as ingest with IngestConfig(view_vectors=False) makes it."""
    insts = [dataclasses.replace(i, view_vectors={}) for i in result.instances]
    return dataclasses.replace(result, instances=insts, settings={**result.settings, "view_vectors": False})


def dump(store) -> dict:
    """Every row of the scan tables (ids included), in id order."""
    from sqlalchemy import text

    out = {}
    with store.engine.connect() as conn:
        for table in ("scans", "instances", "vector_blocks", "vector_spaces"):
            cols = "*" if table != "scans" else "id, name, path, fingerprint, frame_count, num_points, settings, status"
            out[table] = [tuple(r) for r in conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY id"))]  # noqa: S608
    return out


def blocks(store, name: str, level: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float16 vectors) of every block of a space, straight from the rows."""
    space = store.space(name, level)
    rows = [r for r in dump(store)["vector_blocks"] if r[1] == space.id]
    ids = np.concatenate([np.frombuffer(r[4], "<i8") for r in rows])
    data = np.concatenate([np.frombuffer(r[5], "<f2").reshape(r[3], DIM) for r in rows])
    assert all(r[3] == len(np.frombuffer(r[4], "<i8")) for r in rows)
    return ids, data


def write_sequence(store) -> None:
    store.write_scan(make_result("a", 4, views=3), settings={"k": 1})
    store.write_scan(make_result("b", 3, seed=1, views=2), settings={}, save=False)
    store.write_scan(make_result("a", 2, seed=2, views=3), settings={"k": 2})  # re-ingest replaces
    store.write_scan(make_result("empty", 0), settings={})
    with store.lock:
        store.flush()


def test_dbapi_and_core_paths_store_identical_rows_and_indexes(tmp_path):
    stores = [_store(tmp_path / "raw", True), _store(tmp_path / "core", False)]
    for s in stores:
        write_sequence(s)
    raw, core = (dump(s) for s in stores)
    assert raw == core
    assert [r[1] for r in raw["scans"]] == ["b", "a", "empty"]
    # one row per instance; one block per (non-empty scan, space); the replaced scan's rows are gone
    assert len(raw["instances"]) == 5 and len(raw["vector_blocks"]) == 2 * 4
    assert sorted({r[2] for r in raw["vector_blocks"]}) == [r[0] for r in raw["scans"][:2]]
    for s in stores:
        for level in ("instance", "view"):
            a = np.sort(stores[0].index("siglip", level).ids())
            assert np.array_equal(np.sort(s.index("siglip", level).ids()), a)
        s.close()


def test_generation_bump_without_update_returning_stores_the_same(tmp_path):
    stores = [_store(tmp_path / "returning", True), _store(tmp_path / "plain", True)]
    assert stores[0].engine.dialect.update_returning  # SQLite >= 3.35: one UPDATE ... RETURNING per write
    stores[1].engine.dialect.update_returning = False  # as on older SQLite: UPDATE, then SELECT
    for s in stores:
        write_sequence(s)
    a, b = (dump(s) for s in stores)
    assert a == b
    assert all(s.space("siglip", "instance").generation == 4 for s in stores)  # a, b, a again, empty
    for s in stores:
        assert sorted(s.index("siglip", "view").ids()) == sorted(stores[0].index("siglip", "view").ids())
        s.close()


@pytest.mark.parametrize("raw", [True, False])
def test_rows_hold_exact_values(tmp_path, raw):
    from om3db.store import unpack_indices
    from om3db.store.writer import unpack_views, view_key

    s = _store(tmp_path / "db", raw)
    res = make_result("a", 3, views=3)
    s.write_scan(res, settings={})
    rows = dump(s)
    for (_iid, _scan, mask, count, *geo, pidx, score, views), rec in zip(rows["instances"], res.instances, strict=True):
        assert (mask, count, score) == (rec.mask_index, len(rec.point_indices), rec.score)
        assert geo == [*map(float, rec.bbox_min), *map(float, rec.bbox_max), *map(float, rec.centroid)]
        assert np.array_equal(unpack_indices(pidx), rec.point_indices)
        got = unpack_views(views)
        assert len(got) == len(rec.views)
        for v, want in zip(got, rec.views, strict=True):
            assert (v.frame_id, v.visible_pixels, v.inlier) == (want.frame_id, want.visible_pixels, want.inlier)
            assert v.crop_boxes == want.crop_boxes
    inst_ids = [r[0] for r in rows["instances"]]
    ids, data = blocks(s, "siglip", "instance")
    want = np.stack([r.vectors["siglip"] for r in res.instances]).astype("<f2")
    assert ids.tolist() == inst_ids and np.array_equal(data, want)
    vecs, sids = s.stored_vectors(s.space("siglip", "instance"))
    assert np.array_equal(vecs, want.astype(np.float32)) and sids.tolist() == inst_ids
    # view blocks: the inlier views only, keyed instance id << 8 | rank
    ids, data = blocks(s, "dinov2", "view")
    keys = [
        int(view_key(i, r))
        for i, rec in zip(inst_ids, res.instances, strict=True)
        for r, v in enumerate(rec.views)
        if v.inlier
    ]
    allv = np.concatenate([r.view_vectors["dinov2"] for r in res.instances]).astype("<f2")
    inl = [v.inlier for r in res.instances for v in r.views]
    assert ids.tolist() == keys == [(i << 8) | r for i in inst_ids for r in (0, 1)]
    assert np.array_equal(data, allv[inl])
    vvecs, vids = s.stored_vectors(s.space("dinov2", "view"))
    assert vids.tolist() == keys and np.array_equal(vvecs, allv[inl].astype(np.float32))
    idx = s.index("dinov2", "view")
    assert sorted(idx.ids().tolist()) == keys
    scores, got = idx.search(vvecs[1:2], 1)
    assert got[0, 0] == keys[1] and scores[0, 0] == pytest.approx(float(vvecs[1] @ vvecs[1]), abs=1e-5)
    # a subset by instance: only those instances' vectors
    sub, sub_ids = s.stored_vectors(s.space("dinov2", "view"), instance_ids=[inst_ids[2]])
    assert sub_ids.tolist() == keys[4:] and np.array_equal(sub, vvecs[4:])
    s.close()


def test_views_with_different_crop_levels(tmp_path):
    from om3db.store.writer import unpack_views

    s = _store(tmp_path / "db", True)
    res = make_result("a", 1, views=2)
    rec = res.instances[0]
    views = (rec.views[0], dataclasses.replace(rec.views[1], crop_boxes=np.array([[1, 2, 3, 4]], np.int32)))
    s.write_scan(dataclasses.replace(res, instances=[dataclasses.replace(rec, views=views)]), settings={})
    got = unpack_views(dump(s)["instances"][0][-1])
    assert [v.crop_boxes for v in got] == [((0, 0, 10, 10),) * 3, ((1, 2, 3, 4),)]
    s.close()


def test_too_many_views_refused(tmp_path):
    from om3db.ingest import IngestConfig

    with pytest.raises(ConfigError) as err:
        IngestConfig(top_k=257)
    assert str(err.value) == "IngestConfig.top_k must be <= 256 (views the store keeps per instance), got 257"
    s = _store(tmp_path / "db", True)
    res = compact(make_result("a", 2, views=1))
    rec = res.instances[1]
    many = dataclasses.replace(rec, views=rec.views * 257)
    with pytest.raises(StoreError) as err:
        s.write_scan(dataclasses.replace(res, instances=[res.instances[0], many]), settings={})
    assert (
        str(err.value) == "scan a: mask 1 has 257 views; the store keeps at most 256 per instance (IngestConfig.top_k)"
    )
    assert dump(s)["scans"] == []
    s.close()


def test_new_database_uses_64k_pages(tmp_path):
    from sqlalchemy import text

    s = _store(tmp_path / "db", True)
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA page_size")).scalar_one() == 65536
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    s.close()


@pytest.mark.parametrize("raw", [True, False])
def test_compact_database_stores_instance_vectors_only(tmp_path, raw):
    from om3db.query import search_space
    from om3db.store.writer import unpack_views

    s = _store(tmp_path / "db", raw)
    assert s.views_kept() is None
    res = compact(make_result("a", 4, views=3))
    s.write_scan(res, settings={})
    rows = dump(s)
    assert sorted((r[1], r[2]) for r in rows["vector_spaces"]) == [("dinov2", "instance"), ("siglip", "instance")]
    assert [len(unpack_views(r[-1])) for r in rows["instances"]] == [3] * 4  # views are still recorded
    assert [r[3] for r in rows["vector_blocks"]] == [4, 4]
    assert s.views_kept() is False
    q = res.instances[2].vectors["siglip"]
    hits = search_space(s, "siglip", q, k=1)
    assert hits[0].instance_id == rows["instances"][2][0]
    with pytest.raises(ConfigError) as err:
        search_space(s, "siglip", q, k=1, aggregation="max")
    assert str(err.value) == (
        f"{s.root}: stores instance vectors only (ingested with IngestConfig.view_vectors=False), so the 'siglip' "
        "space cannot serve aggregation='max'. Use aggregation='mean', or ingest into another database with view_vectors=True"
    )
    s.close()


def test_view_vectors_choice_is_per_database(tmp_path):
    full = _store(tmp_path / "full", True)
    full.write_scan(make_result("a", 2), settings={})
    with pytest.raises(ConfigError) as err:
        full.write_scan(compact(make_result("b", 2)), settings={})
    assert str(err.value) == (
        f"{full.root}: this database keeps per-view vectors (IngestConfig.view_vectors=True), this ingest uses "
        "view_vectors=False. The choice is per database: ingest with view_vectors=True, or into another database"
    )
    full.check_view_vectors(True)
    assert [r[1] for r in dump(full)["scans"]] == ["a"]
    full.close()

    small = _store(tmp_path / "small", True)
    small.write_scan(compact(make_result("a", 2)), settings={})
    with pytest.raises(ConfigError) as err:
        small.check_view_vectors(True)
    assert str(err.value) == (
        f"{small.root}: this database stores instance vectors only (IngestConfig.view_vectors=False), this ingest "
        "uses view_vectors=True. The choice is per database: ingest with view_vectors=False, or into another database"
    )
    with pytest.raises(ConfigError):
        small.write_scan(make_result("b", 2), settings={})
    small.close()


def test_ingest_config_view_vectors_validated():
    from om3db.ingest import IngestConfig

    assert IngestConfig().view_vectors is True and IngestConfig().to_dict()["view_vectors"] is True
    with pytest.raises(ConfigError) as err:
        IngestConfig(view_vectors="no")
    assert str(err.value) == "IngestConfig.view_vectors must be True or False, got 'no'"


def test_bad_vectors_refused_before_any_row(tmp_path):
    s = _store(tmp_path / "db", True)
    res = make_result("a", 2)
    rec = res.instances[1]
    bad = dataclasses.replace(rec, vectors={**rec.vectors, "siglip": np.zeros(DIM + 1, np.float32)})
    with pytest.raises(StoreError) as err:
        s.write_scan(dataclasses.replace(res, instances=[res.instances[0], bad]), settings={})
    assert str(err.value) == (
        f"scan a: siglip vector of mask 1 has shape ({DIM + 1},), the space has dim {DIM}. "
        "This is an ingest bug; report it"
    )
    short = dataclasses.replace(rec, view_vectors={**rec.view_vectors, "dinov2": rec.view_vectors["dinov2"][:1]})
    with pytest.raises(StoreError) as err:
        s.write_scan(dataclasses.replace(res, instances=[short]), settings={})
    assert str(err.value) == "scan a: mask 1 has 3 views but 1 dinov2 view vectors. This is an ingest bug; report it"
    missing = dataclasses.replace(rec, view_vectors={})
    with pytest.raises(StoreError) as err:
        s.write_scan(dataclasses.replace(res, instances=[missing]), settings={})
    assert str(err.value) == "scan a: mask 1 has 3 views but no dinov2 view vectors. This is an ingest bug; report it"
    assert dump(s)["scans"] == [] and s.views_kept() is None
    s.close()


@given(st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=300), st.booleans())
def test_point_index_codec_round_trips(values, sort):
    from om3db.store import pack_indices, unpack_indices

    idx = np.array(sorted(set(values)) if sort else values, dtype=np.int32)
    out = unpack_indices(pack_indices(idx))
    assert out.dtype == np.int32 and np.array_equal(out, idx)


def test_sorted_indices_pack_small():
    from om3db.store import pack_indices

    dense = np.arange(1000, 6000, dtype=np.int32)
    assert pack_indices(dense)[0] == 1 and len(pack_indices(dense)) < 100
    assert pack_indices(np.array([5, 70000], np.int32))[0] == 4
    assert pack_indices(np.array([9, 3], np.int32))[0] == 0  # unsorted: plain int32


@given(
    st.lists(st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=40), max_size=12),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_pack_indices_many_equals_one_by_one(arrays, sort):
    from om3db.store import pack_indices
    from om3db.store.writer import pack_indices_many

    arrs = [np.array(sorted(set(a)) if s else a, dtype=np.int32) for a, s in zip(arrays, sort, strict=False)]
    assert pack_indices_many(arrs) == [pack_indices(a) for a in arrs]


def test_pack_indices_many_mixed_widths():
    from om3db.store import pack_indices
    from om3db.store.writer import pack_indices_many

    arrs = [
        np.arange(0, 5000, 3, dtype=np.int32),
        np.array([7], np.int32),
        np.zeros(0, np.int32),
        np.array([5, 70000, 90000], np.int32),
        np.array([9, 3, 4], np.int32),
        np.array([1, 300, 301], np.int32),
    ]
    packed = pack_indices_many(arrs)
    assert [p[0] for p in packed] == [1, 1, 255, 4, 0, 2]
    assert packed == [pack_indices(a) for a in arrs]


def test_unknown_views_format_refused():
    from om3db.store.writer import unpack_views

    with pytest.raises(StoreError) as err:
        unpack_views(b"\x07\x03")
    assert str(err.value) == "instance views blob has unknown format b'\\x07'; upgrade om3db"


def test_index_holds_exactly_the_stored_float16(tmp_path):
    """The writer rounds to float16 once and hands FAISS those bytes: its codes must be the bytes SQLite
    holds, so an incrementally updated index equals one rebuilt from SQLite (also for values on rounding ties)."""
    import faiss

    s = _store(tmp_path / "db", True)
    res = make_result("a", 6, views=3)
    # values exactly halfway between two float16 numbers, and ones just off the tie
    tie = np.float32(1.0) + np.float32(2.0**-11)
    rec = res.instances[0]
    odd = np.full(DIM, tie / np.sqrt(DIM), np.float32)
    odd[:4] = [tie, -tie, np.float32(np.nextafter(tie, 2)), np.float32(6.1e-5)]
    res = dataclasses.replace(
        res, instances=[dataclasses.replace(rec, vectors={**rec.vectors, "siglip": odd}), *res.instances[1:]]
    )
    s.write_scan(res, settings={})
    for level in ("instance", "view"):
        index = s.index("siglip", level)
        codes = faiss.vector_to_array(index._inner.codes).view("<f2").reshape(-1, DIM)
        ids, data = blocks(s, "siglip", level)
        order = np.argsort(index.ids())
        assert np.array_equal(index.ids()[order], np.sort(ids))
        assert np.array_equal(codes[order].view(np.uint16), data[np.argsort(ids)].view(np.uint16))
    s.close()


def test_deferred_adds_run_off_the_writer_thread_and_settle_before_use(tmp_path, monkeypatch):
    import threading

    from om3db.store import Store, VectorIndex

    s = Store(tmp_path / "db", ivf_threshold=40)
    for k in range(2):  # 60 vectors per space: IVF after the flush
        s.write_scan(make_result(f"s{k}", 30, views=1, seed=k), settings={}, save=False)
    with s.lock:
        s.flush()
    assert s.index("siglip", "instance").choice.kind == "ivf"
    threads = []
    real_add = VectorIndex.add
    monkeypatch.setattr(
        VectorIndex, "add", lambda self, v, i: threads.append(threading.current_thread().name) or real_add(self, v, i)
    )
    for k in range(2, 4):
        s.write_scan(make_result(f"s{k}", 30, views=1, seed=k), settings={}, save=False)
    assert threads and all(t.startswith("om3db-faiss-add") for t in threads)
    for level in ("instance", "view"):  # the pending add is settled before the index is used
        row = s.space("siglip", level)
        vecs, ids = s.stored_vectors(row)
        index = s.index("siglip", level)
        assert sorted(index.ids()) == sorted(ids) and index.ntotal == 120
        _, got = index.search(vecs[:5], 1)
        assert np.array_equal(got[:, 0], ids[:5])  # each stored vector finds itself
    with s.lock:
        s.flush()
    s.close()


def test_failed_background_add_is_reported_and_repaired_from_sqlite(tmp_path, monkeypatch):
    from om3db.store import Store, VectorIndex

    s = Store(tmp_path / "db")
    s.write_scan(make_result("a", 4), settings={})
    real_add = VectorIndex.add

    def broken_add(self, vectors, ids):
        raise MemoryError("out of memory (test double)")

    monkeypatch.setattr(VectorIndex, "add", broken_add)
    s.write_scan(make_result("b", 3, seed=1), settings={}, save=False)  # committed; the add fails on the worker
    with pytest.raises(StoreError, match=r"adding vectors to the in-memory indexes of .*siglip.*rebuilt from SQLite"):
        s.index("siglip", "instance")
    monkeypatch.setattr(VectorIndex, "add", real_add)
    # the rows are committed: the next use rebuilds the failed indexes from SQLite
    for level in ("instance", "view"):
        _, ids = s.stored_vectors(s.space("siglip", level))
        assert sorted(s.index("siglip", level).ids()) == sorted(ids)
    assert len(s.index("siglip", "instance").ids()) == 7
    s.write_scan(make_result("c", 2, seed=2), settings={})
    s.close()
    again = Store(tmp_path / "db")
    for level in ("instance", "view"):
        _, ids = again.stored_vectors(again.space("dinov2", level))
        assert sorted(again.index("dinov2", level).ids()) == sorted(ids)
    again.close()


def test_forked_child_rebuilds_indexes_a_pending_add_may_not_have_reached(tmp_path, monkeypatch):
    import os
    import signal
    import threading

    from om3db.store import Store, VectorIndex

    s = Store(tmp_path / "db")
    s.write_scan(make_result("a", 4), settings={})
    real_add = VectorIndex.add
    parent = os.getpid()
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def held_add(self, vectors, ids):
        if os.getpid() == parent and threading.current_thread().name.startswith("om3db-faiss-add"):
            started.set()  # the background add has begun and waits until the parent has forked
            release.wait(30)
            real_add(self, vectors, ids)
            finished.set()
        else:
            real_add(self, vectors, ids)

    monkeypatch.setattr(VectorIndex, "add", held_add)
    s.write_scan(make_result("b", 3, seed=1), settings={}, save=False)
    assert started.wait(30), "the deferred add never started on the worker thread"
    pid = os.fork()
    if pid == 0:  # the child has no worker thread: it must neither wait for it nor trust its index copies
        code = 1
        try:
            signal.alarm(30)
            mid_add = started.is_set() and not finished.is_set()  # the fork happened inside the add
            s.engine.dispose(close=False)  # SQLAlchemy's advice for a forked child
            _, ids = s.stored_vectors(s.space("siglip", "view"))
            index = s.index("siglip", "view")  # settles: the pending add's indexes are rebuilt
            ok = sorted(index.ids()) == sorted(ids) and len(ids) == 7 * 2
            code = 0 if mid_add and ok else 2
        finally:
            os._exit(code)
    release.set()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert finished.wait(30)
    assert len(s.index("siglip", "instance").ids()) == 7
    with s.lock:
        s.flush()
    s.close()
