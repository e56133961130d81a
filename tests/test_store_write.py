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

    s = Store(path)
    s.raw_sqlite = raw
    return s


def compact(result):
    """The same scan as ingest with IngestConfig(view_vectors=False) makes it."""
    insts = [dataclasses.replace(i, view_vectors={}) for i in result.instances]
    return dataclasses.replace(result, instances=insts, settings={**result.settings, "view_vectors": False})


def dump(store) -> dict:
    """Every row of the scan tables (ids included), in id order."""
    from sqlalchemy import text

    out = {}
    with store.engine.connect() as conn:
        for table in ("scans", "instances", "instance_views", "vectors", "vector_spaces"):
            cols = "*" if table != "scans" else "id, name, path, fingerprint, frame_count, num_points, settings, status"
            out[table] = [tuple(r) for r in conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY id"))]  # noqa: S608
    return out


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
    assert len(raw["instances"]) == 5 and len(raw["instance_views"]) == 3 * 2 + 2 * 3
    for s in stores:
        for level in ("instance", "view"):
            a = np.sort(stores[0].index("siglip", level).ids())
            assert np.array_equal(np.sort(s.index("siglip", level).ids()), a)
        s.close()


@pytest.mark.parametrize("raw", [True, False])
def test_rows_hold_exact_values(tmp_path, raw):
    from om3db.store import unpack_indices

    s = _store(tmp_path / "db", raw)
    res = make_result("a", 3, views=3)
    s.write_scan(res, settings={})
    rows = dump(s)
    for (iid, _scan, mask, count, *geo, pidx, score), rec in zip(rows["instances"], res.instances, strict=True):
        assert (mask, count, score) == (rec.mask_index, len(rec.point_indices), rec.score)
        assert geo == [*map(float, rec.bbox_min), *map(float, rec.bbox_max), *map(float, rec.centroid)]
        assert np.array_equal(unpack_indices(pidx), rec.point_indices)
    views = [v for rec in res.instances for v in rec.views]
    for (vid, owner, rank, frame, pixels, boxes, inlier), v in zip(rows["instance_views"], views, strict=True):
        assert (frame, pixels, bool(inlier)) == (v.frame_id, v.visible_pixels, v.inlier)
        assert boxes.replace(" ", "") == str(v.crop_boxes.tolist()).replace(" ", "")
    space = s.space("siglip", "instance")
    vecs, ids = s.stored_vectors(space)
    want = np.stack([r.vectors["siglip"] for r in res.instances]).astype("<f2").astype(np.float32)
    assert np.array_equal(vecs, want) and ids.tolist() == [r[0] for r in rows["instances"]]
    vvecs, vids = s.stored_vectors(s.space("dinov2", "view"))  # inlier views only
    inl = [v.inlier for v in views]
    allv = np.concatenate([r.view_vectors["dinov2"] for r in res.instances]).astype("<f2").astype(np.float32)
    assert np.array_equal(vvecs, allv[inl])
    assert vids.tolist() == [r[0] for r, i in zip(rows["instance_views"], inl, strict=True) if i]
    idx = s.index("dinov2", "view")
    assert sorted(idx.ids().tolist()) == vids.tolist()
    scores, got = idx.search(vvecs[1:2], 1)
    assert got[0, 0] == vids[1] and scores[0, 0] == pytest.approx(float(vvecs[1] @ vvecs[1]), abs=1e-5)
    s.close()


def test_views_with_different_crop_levels(tmp_path):
    s = _store(tmp_path / "db", True)
    res = make_result("a", 1, views=2)
    rec = res.instances[0]
    views = (rec.views[0], dataclasses.replace(rec.views[1], crop_boxes=np.array([[1, 2, 3, 4]], np.int32)))
    s.write_scan(dataclasses.replace(res, instances=[dataclasses.replace(rec, views=views)]), settings={})
    boxes = [r[5] for r in dump(s)["instance_views"]]
    assert boxes == [str([[0, 0, 10, 10]] * 3), "[[1, 2, 3, 4]]"]
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

    s = _store(tmp_path / "db", raw)
    assert s.views_kept() is None
    res = compact(make_result("a", 4, views=3))
    s.write_scan(res, settings={})
    rows = dump(s)
    assert sorted((r[1], r[2]) for r in rows["vector_spaces"]) == [("dinov2", "instance"), ("siglip", "instance")]
    assert len(rows["instance_views"]) == 12  # views are still recorded
    assert len(rows["vectors"]) == 8 and all(r[3] is None for r in rows["vectors"])
    assert s.views_kept() is False
    q = res.instances[2].vectors["siglip"]
    hits = search_space(s, "siglip", q, k=1)
    assert hits[0].instance_id == rows["instances"][2][0]
    with pytest.raises(ConfigError) as err:
        search_space(s, "siglip", q, k=1, aggregation="max")
    assert str(err.value) == (
        f"{s.root}: stores instance vectors only (ingested with IngestConfig.view_vectors=False), so the 'siglip' "
        "space cannot serve aggregation='max'. Use aggregation='mean', or ingest into another --db with view_vectors=True")
    s.close()


def test_view_vectors_choice_is_per_database(tmp_path):
    full = _store(tmp_path / "full", True)
    full.write_scan(make_result("a", 2), settings={})
    with pytest.raises(ConfigError) as err:
        full.write_scan(compact(make_result("b", 2)), settings={})
    assert str(err.value) == (
        f"{full.root}: this database keeps per-view vectors (IngestConfig.view_vectors=True), this ingest uses "
        "view_vectors=False. The choice is per database: ingest with view_vectors=True, or use another --db")
    full.check_view_vectors(True)
    assert [r[1] for r in dump(full)["scans"]] == ["a"]
    full.close()

    small = _store(tmp_path / "small", True)
    small.write_scan(compact(make_result("a", 2)), settings={})
    with pytest.raises(ConfigError) as err:
        small.check_view_vectors(True)
    assert str(err.value) == (
        f"{small.root}: this database stores instance vectors only (IngestConfig.view_vectors=False), this ingest "
        "uses view_vectors=True. The choice is per database: ingest with view_vectors=False, or use another --db")
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
    assert str(err.value) == (f"scan a: siglip vector of mask 1 has shape ({DIM + 1},), the space has dim {DIM}. "
                              "This is an ingest bug; report it")
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
