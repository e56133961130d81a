"""Store: migrations vs ORM metadata, atomic scan writes, FAISS vs brute force, repair, removal."""

from __future__ import annotations

import numpy as np
import pytest

from om3db.errors import EncoderMismatchError, NotFoundError, SchemaOutOfDateError
from om3db.records import EncoderIdentity, IngestReport, IngestResult, InstanceRecord, ViewRecord

DIM = 16
IDENT = {
    "siglip": EncoderIdentity("fake/siglip", "sha256:00", DIM, "l2", "fake"),
    "dinov2": EncoderIdentity("fake/dinov2", "sha256:11", DIM, "l2", "fake"),
}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_result(name: str, n: int = 5, *, seed: int = 0, views: int = 3, encoders=None,
                fingerprint: str = "fp", centres=None) -> IngestResult:
    """A hand-built IngestResult: n instances with random unit vectors and `views` views each."""
    rng = np.random.default_rng(seed)
    encoders = encoders or IDENT
    insts = []
    for m in range(n):
        centre = np.asarray(centres[m] if centres is not None else rng.uniform(0, 5, 3), dtype=np.float32)
        vv = {s: unit(rng.standard_normal((views, e.dim))) for s, e in encoders.items()}
        insts.append(InstanceRecord(
            mask_index=m, point_indices=np.arange(m * 10, m * 10 + 10 + m, dtype=np.int32),
            bbox_min=centre - 0.5, bbox_max=centre + 0.5, centroid=centre, score=0.5 + m / 100,
            views=tuple(ViewRecord(100 + v, 50 - v, np.array([[v, v, 10 + v, 10 + v]] * 3, dtype=np.int32),
                                   inlier=v != views - 1 or views == 1) for v in range(views)),
            view_vectors=vv, vectors={s: unit(a[:-1].mean(0) if views > 1 else a[0]) for s, a in vv.items()}))
    report = IngestReport(name, 10, 10, {}, n, [], {})
    return IngestResult(name, f"/scans/{name}", fingerprint, {"frame_step": 1}, dict(encoders), insts, report, 1000, 10)


@pytest.fixture
def store(tmp_path):
    from om3db.store import Store

    s = Store(tmp_path / "db")
    yield s
    s.close()


def test_migrated_schema_equals_orm_metadata(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from om3db.store.models import Base
    from om3db.store.schema import current_revision, head_revision, make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []


def test_old_revision_refused_with_upgrade_command(tmp_path):
    from om3db.store import Store
    from om3db.store.schema import make_engine, upgrade

    db = tmp_path / "db"
    db.mkdir()
    upgrade(make_engine(f"sqlite:///{(db / 'om3db.sqlite').resolve()}"), "0001")
    with pytest.raises(SchemaOutOfDateError) as err:
        Store(db)
    assert str(err.value) == (f"{db}: database schema is out of date (revision 0001, this om3db needs 0002). "
                              f"Run: om3db db upgrade --db {db}")


def test_write_scan_roundtrip_and_counts(store):
    from om3db.store.catalog import unpack_indices
    from om3db.store.models import InstanceRow, ScanRow

    res = make_result("a", 4)
    store.write_scan(res, settings={"key": 1})
    with store.session() as s:
        scan = s.query(ScanRow).one()
        assert (scan.name, scan.status, scan.num_points, scan.frame_count) == ("a", "ready", 1000, 10)
        insts = s.query(InstanceRow).order_by(InstanceRow.id).all()
        assert [i.mask_index for i in insts] == [0, 1, 2, 3]
        np.testing.assert_array_equal(unpack_indices(insts[2].point_indices), res.instances[2].point_indices)
        assert [v.frame_id for v in insts[0].views] == [100, 101, 102]
        assert insts[0].views[0].crop_boxes == [[0, 0, 10, 10]] * 3
    assert store.index("siglip", "instance").ntotal == 4
    assert store.index("siglip", "view").ntotal == 4 * 2  # the outlier view is stored, not indexed


def test_search_matches_bruteforce(store):
    for i in range(3):
        store.write_scan(make_result(f"s{i}", 20, seed=i), settings={})
    vecs, ids = store.stored_vectors(store.space("siglip", "instance"))
    q = unit(np.random.default_rng(9).standard_normal((5, DIM)))
    scores, got = store.index("siglip", "instance").search(q, 10)
    order = np.argsort(-(q @ vecs.T), axis=1)[:, :10]
    np.testing.assert_array_equal(got, ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(q @ vecs.T, order, 1), rtol=1e-5)


def test_reingest_replaces_and_remove_deletes(store):
    store.write_scan(make_result("a", 5), settings={})
    store.write_scan(make_result("b", 3, seed=1), settings={})
    store.write_scan(make_result("a", 2, seed=2), settings={})
    idx = store.index("siglip", "instance")
    assert idx.ntotal == 5
    _, ids = store.stored_vectors(store.space("siglip", "instance"))
    assert sorted(idx.ids()) == sorted(ids)
    assert store.remove_scan("a") == 2
    assert store.index("dinov2", "view").ntotal == 3 * 2
    with pytest.raises(NotFoundError, match="no scan named 'a'"):
        store.remove_scan("a")


def test_stale_index_file_rebuilt_on_open(tmp_path):
    from om3db.store import Store, VectorIndex

    s = Store(tmp_path / "db")
    s.write_scan(make_result("a", 5), settings={})
    s.close()
    path = tmp_path / "db" / "indexes" / "siglip.instance.faiss"
    VectorIndex(DIM).save(path, {"generation": 0})  # an index from before the last commit
    (tmp_path / "db" / "indexes" / "dinov2.view.faiss").write_bytes(b"garbage")
    s = Store(tmp_path / "db")
    assert sorted(s.rebuilt) == ["dinov2.view", "siglip.instance"]
    assert s.index("siglip", "instance").ntotal == 5
    s.close()


def test_encoder_mismatch_on_ingest_names_both(store):
    store.write_scan(make_result("a", 2), settings={})
    other = dict(IDENT, siglip=EncoderIdentity("other/siglip", "sha256:99", DIM, "l2", "fake"))
    with pytest.raises(EncoderMismatchError) as err:
        store.write_scan(make_result("b", 2, encoders=other), settings={})
    assert "fake/siglip@sha256:00" in str(err.value) and "other/siglip@sha256:99" in str(err.value)
    assert [r.name for r in store.session().query(__import__("om3db.store.models", fromlist=["x"]).ScanRow)] == ["a"]


def test_ivf_recall_vs_exact_on_clustered_vectors():
    from om3db.store import VectorIndex, recall_at_k

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 64))
    x = unit(centres[rng.integers(0, 200, 30000)] + 0.35 * rng.standard_normal((30000, 64)))
    ids = np.arange(len(x), dtype=np.int64) + 1000
    ivf = VectorIndex.build(x, ids, ivf_threshold=10000)
    exact = VectorIndex.build(x, ids, kind="flat")
    assert ivf.choice.kind == "ivf" and ivf.choice.nlist == round(4 * np.sqrt(30000))
    q = unit(centres[rng.integers(0, 200, 200)] + 0.5 * rng.standard_normal((200, 64)))
    assert recall_at_k(ivf.search(q, 10)[1], exact.search(q, 10)[1]) >= 0.95
    # ...with a tuned nprobe, not by probing every list (ids are not positions: tuning must map them)
    assert ivf.choice.nprobe <= ivf.choice.nlist // 8, ivf.choice
    # filtered search still returns k results when they exist
    allowed = ids[::997]
    _, got = ivf.search(q[:3], 10, allowed_ids=allowed)
    assert ((got >= 0).sum(1) == 10).all() and set(got.ravel()) <= set(allowed)


def test_store_switches_to_ivf_past_threshold(tmp_path):
    from om3db.store import Store

    s = Store(tmp_path / "db", ivf_threshold=40)
    s.write_scan(make_result("a", 30, views=1), settings={})
    assert s.space("siglip", "instance").index_kind == "flat"
    s.write_scan(make_result("b", 30, views=1, seed=1), settings={})
    row = s.space("siglip", "instance")
    assert row.index_kind == "ivf" and row.index_params["nlist"] >= 1
    assert s.index("siglip", "instance").ntotal == 60
    s.write_scan(make_result("c", 30, views=1, seed=2), settings={})
    assert s.remove_scan("a") == 30  # removal from an IVF index
    index = s.index("siglip", "instance")
    assert index.choice.kind == "ivf" and sorted(index.ids()) == sorted(s.stored_vectors(row)[1])
    s.remove_scan("b")
    s.write_scan(make_result("d", 5, views=1, seed=3), settings={})
    assert s.remove_scan("c") == 30  # 5 left, below half the threshold: back to exact search
    assert s.space("siglip", "instance").index_kind == "flat" and s.index("siglip", "instance").ntotal == 5
    s.close()


def test_deferred_save_then_flush(tmp_path):
    from om3db.store import Store, VectorIndex

    s = Store(tmp_path / "db")
    s.write_scan(make_result("a", 3), settings={})
    s.write_scan(make_result("b", 4, seed=1), settings={}, save=False)
    path = tmp_path / "db" / "indexes" / "siglip.instance.faiss"
    assert VectorIndex.read_header(path)["count"] == 3  # file still at the previous generation
    other = Store(tmp_path / "db", lock_timeout=0)  # a reader: sees SQLite's state, rebuilt in memory
    assert other.index("siglip", "instance").ntotal == 7
    s.flush()
    assert VectorIndex.read_header(path)["count"] == 7
    assert VectorIndex.read_header(path)["generation"] == s.space("siglip", "instance").generation
    other.close()
    s.close()
