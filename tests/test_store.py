"""Store: migrations vs ORM metadata, atomic scan writes, FAISS vs brute force, repair, removal."""

from __future__ import annotations

import numpy as np
import pytest

from om3db.errors import EncoderMismatchError, NotFoundError, SchemaOutOfDateError
from om3db.records import EncoderIdentity, IngestReport, IngestResult, InstanceRecord, View

DIM = 16
IDENT = {
    "siglip": EncoderIdentity("fake/siglip", "sha256:00", DIM, "l2", "fake"),
    "dinov2": EncoderIdentity("fake/dinov2", "sha256:11", DIM, "l2", "fake"),
}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_result(
    name: str, n: int = 5, *, seed: int = 0, views: int = 3, encoders=None, fingerprint: str = "fp", centres=None
) -> IngestResult:
    """A hand-built IngestResult: n instances with random unit vectors and `views` views each."""
    rng = np.random.default_rng(seed)
    encoders = encoders or IDENT
    insts = []
    for m in range(n):
        centre = np.asarray(centres[m] if centres is not None else rng.uniform(0, 5, 3), dtype=np.float32)
        vv = {s: unit(rng.standard_normal((views, e.dim))) for s, e in encoders.items()}
        insts.append(
            InstanceRecord(
                mask_index=m,
                point_indices=np.arange(m * 10, m * 10 + 10 + m, dtype=np.int32),
                bbox_min=centre - 0.5,
                bbox_max=centre + 0.5,
                centroid=centre,
                score=0.5 + m / 100,
                views=tuple(
                    View(
                        100 + v,
                        50 - v,
                        np.array([[v, v, 10 + v, 10 + v]] * 3, dtype=np.int32),
                        inlier=v != views - 1 or views == 1,
                    )
                    for v in range(views)
                ),
                view_vectors=vv,
                vectors={s: unit(a[:-1].mean(0) if views > 1 else a[0]) for s, a in vv.items()},
            )
        )
    report = IngestReport(name, 10, 10, {}, n, [], {})
    return IngestResult(name, f"/scans/{name}", fingerprint, {"frame_step": 1}, dict(encoders), insts, report, 1000, 10)


@pytest.fixture
def store(db_target):
    """A Store on a fresh database of each backend (SQLite, PostgreSQL: tests/fixtures_postgres.py)."""
    s = db_target.store()
    yield s
    s.close()


def _metadata_url(db_target) -> str:
    return db_target.connect_arg if db_target.backend == "postgresql" else f"sqlite:///{db_target.root}.sqlite"


def test_migrated_schema_equals_orm_metadata(db_target):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from om3db.store.models import Base
    from om3db.store.schema import current_revision, head_revision, make_engine, upgrade

    engine = make_engine(_metadata_url(db_target))
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata) == []


def test_old_revision_refused_with_upgrade_command(db_target):
    from om3db.store.schema import make_engine, redact_url, upgrade

    db = db_target.root
    db.mkdir()
    url = db_target.connect_arg if db_target.backend == "postgresql" else f"sqlite:///{(db / 'om3db.sqlite').resolve()}"
    engine = make_engine(url)
    upgrade(engine, "0001")
    engine.dispose()
    with pytest.raises(SchemaOutOfDateError) as err:
        db_target.store()
    where = redact_url(url) if db_target.backend == "postgresql" else str(db)
    assert str(err.value) == (
        f"{where}: database schema is out of date (revision 0001, this om3db needs 0004). Upgrade it with om3db.upgrade_database('{where}') (the CLI's `om3db db upgrade`)"
    )


def test_write_scan_roundtrip_and_counts(store):
    from om3db.store.catalog import unpack_indices
    from om3db.store.models import InstanceRow, ScanRow
    from om3db.store.writer import unpack_views

    res = make_result("a", 4)
    store.write_scan(res, settings={"key": 1})
    with store.session() as s:
        scan = s.query(ScanRow).one()
        assert (scan.name, scan.status, scan.num_points, scan.frame_count) == ("a", "ready", 1000, 10)
        insts = s.query(InstanceRow).order_by(InstanceRow.id).all()
        assert [i.mask_index for i in insts] == [0, 1, 2, 3]
        np.testing.assert_array_equal(unpack_indices(insts[2].point_indices), res.instances[2].point_indices)
        views = unpack_views(insts[0].views)
        assert [v.frame_id for v in views] == [100, 101, 102]
        assert [v.visible_pixels for v in views] == [50, 49, 48]
        assert [v.inlier for v in views] == [True, True, False]
        assert views[0].crop_boxes == ((0, 0, 10, 10),) * 3 and views[2].crop_boxes == ((2, 2, 12, 12),) * 3
    assert store.index("siglip", "instance").ntotal == 4
    assert store.index("siglip", "view").ntotal == 4 * 2  # the outlier view is recorded, its vector not kept


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


def test_stale_index_file_rebuilt_on_open(db_target):
    from om3db.store import VectorIndex

    s = db_target.store()
    s.write_scan(make_result("a", 5), settings={})
    s.close()
    path = db_target.root / "indexes" / "siglip.instance.faiss"
    VectorIndex(DIM).save(path, {"generation": 0})  # an index from before the last commit
    (db_target.root / "indexes" / "dinov2.view.faiss").write_bytes(b"garbage")
    s = db_target.store()
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
    assert ivf.choice.kind == "ivf" and ivf.choice.nlist == round(2 * np.sqrt(30000))
    q = unit(centres[rng.integers(0, 200, 200)] + 0.5 * rng.standard_normal((200, 64)))
    assert recall_at_k(ivf.search(q, 10)[1], exact.search(q, 10)[1]) >= 0.95
    # ...with a tuned nprobe, not by probing every list (ids are not positions: tuning must map them)
    assert ivf.choice.nprobe <= ivf.choice.nlist // 8, ivf.choice
    # filtered search still returns k results when they exist
    allowed = ids[::997]
    _, got = ivf.search(q[:3], 10, allowed_ids=allowed)
    assert ((got >= 0).sum(1) == 10).all() and set(got.ravel()) <= set(allowed)


def test_store_switches_to_ivf_past_threshold(db_target):
    s = db_target.store(ivf_threshold=40)
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


def test_deferred_writes_switch_to_ivf_once_at_flush(db_target):
    s = db_target.store(ivf_threshold=40)
    built = []
    real = s._build
    s._build = lambda row: built.append((row.name, row.level)) or real(row)
    for k in range(4):  # 120 vectors per space, past the threshold after the second scan
        s.write_scan(make_result(f"s{k}", 30, views=1, seed=k), settings={}, save=False)
    assert s.space("siglip", "instance").index_kind == "flat" and s.index("siglip", "instance").ntotal == 120
    first = len(built)  # the first write builds each (empty) index from SQLite; no rebuild after that
    with s.lock:
        s.flush()
    assert sorted(built[first:]) == [
        ("dinov2", "instance"),
        ("dinov2", "view"),
        ("siglip", "instance"),
        ("siglip", "view"),
    ]
    row = s.space("siglip", "instance")
    index = s.index("siglip", "instance")
    assert row.index_kind == "ivf" and index.choice.kind == "ivf" and index.choice.trained_on == 120
    assert sorted(index.ids()) == sorted(s.stored_vectors(row)[1])
    s.close()
    again = db_target.store()  # the saved file is the IVF one, current: nothing to rebuild
    assert again.rebuilt == [] and again.index("siglip", "instance").choice.kind == "ivf"
    again.close()


def test_deferred_save_then_flush(db_target):
    from om3db.store import VectorIndex

    s = db_target.store()
    s.write_scan(make_result("a", 3), settings={})
    s.write_scan(make_result("b", 4, seed=1), settings={}, save=False)
    path = db_target.root / "indexes" / "siglip.instance.faiss"
    assert VectorIndex.read_header(path)["count"] == 3  # file still at the previous generation
    other = db_target.sibling("reader").store(lock_timeout=0)  # a reader: sees the database's state
    assert other.index("siglip", "instance").ntotal == 7
    s.flush()
    assert VectorIndex.read_header(path)["count"] == 7
    assert VectorIndex.read_header(path)["generation"] == s.space("siglip", "instance").generation
    other.close()
    s.close()


def _old_layout_db(path, revision: str = "0002"):
    """A database at revision 0001 or 0002 holding one scan as those writers stored it (a row per view,
    a row per vector, outlier view vectors included); returns (instance ids, the scan's result)."""
    import json

    from sqlalchemy import text

    from om3db.store.schema import make_engine, upgrade

    engine = make_engine(f"sqlite:///{(path / 'om3db.sqlite').resolve()}")
    upgrade(engine, revision)
    res = make_result("old", 3, views=3)
    extra = ", index_params, generation" if revision == "0002" else ""
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO scans (id, name, path, fingerprint, frame_count, num_points, settings, status, "
                "created_at, updated_at) VALUES (1, 'old', '/scans/old', 'fp', 10, 1000, '{}', 'ready', "
                "'2026-01-01', '2026-01-01')"
            )
        )
        for sid, (name, level) in enumerate([(n, lv) for n in sorted(IDENT) for lv in ("instance", "view")], 1):
            c.execute(
                text(
                    "INSERT INTO vector_spaces (id, name, level, model_id, revision, dim, normalization, "
                    f"preprocessing, index_kind{extra}) VALUES (:i, :n, :l, :m, :r, :d, "
                    f"'l2', 'fake', 'flat'{', :p, 0' if extra else ''})"
                ),
                dict(i=sid, n=name, l=level, m=IDENT[name].model_id, r=IDENT[name].revision, d=DIM, p="{}"),
            )
        from om3db.store import pack_indices

        vid = 0
        for m, rec in enumerate(res.instances):
            iid = 10 + m
            c.execute(
                text("INSERT INTO instances VALUES (:i, 1, :m, :c, 0, 0, 0, 1, 1, 1, .5, .5, .5, :p, :s)"),
                dict(i=iid, m=m, c=len(rec.point_indices), p=pack_indices(rec.point_indices), s=rec.score),
            )
            for sid, (name, level) in enumerate([(n, lv) for n in sorted(IDENT) for lv in ("instance", "view")], 1):
                if level == "instance":
                    c.execute(
                        text("INSERT INTO vectors (space_id, instance_id, view_id, data) VALUES (:s, :i, NULL, :d)"),
                        dict(s=sid, i=iid, d=rec.vectors[name].astype("<f2").tobytes()),
                    )
            for rank, v in enumerate(rec.views):
                vid += 1
                c.execute(
                    text("INSERT INTO instance_views VALUES (:v, :i, :r, :f, :p, :b, :n)"),
                    dict(
                        v=100 + vid,
                        i=iid,
                        r=rank,
                        f=v.frame_id,
                        p=v.visible_pixels,
                        b=json.dumps([list(c) for c in v.crop_boxes]),
                        n=v.inlier,
                    ),
                )
                for sid, name in ((2, "dinov2"), (4, "siglip")):
                    c.execute(
                        text("INSERT INTO vectors (space_id, instance_id, view_id, data) VALUES (:s, :i, :v, :d)"),
                        dict(s=sid, i=iid, v=100 + vid, d=rec.view_vectors[name][rank].astype("<f2").tobytes()),
                    )
    engine.dispose()
    return [10, 11, 12], res


@pytest.mark.parametrize("old", ["0001", "0002"])
def test_upgrade_keeps_every_view_and_vector(tmp_path, old):
    # 0001 -> 0002 rebuilds vector_spaces (batch copy); with foreign keys on, that drop would cascade
    # into the vectors: the migration runner switches them off around migrations
    from sqlalchemy import text

    from om3db.store import Store
    from om3db.store.schema import downgrade, make_engine, upgrade
    from om3db.store.writer import unpack_views, view_key

    db = tmp_path / "db"
    db.mkdir()
    ids, res = _old_layout_db(db, old)
    engine = make_engine(f"sqlite:///{(db / 'om3db.sqlite').resolve()}")
    upgrade(engine)
    engine.dispose()
    s = Store(db)
    with s.session() as ses:
        from om3db.store.models import InstanceRow

        rows = ses.query(InstanceRow).order_by(InstanceRow.id).all()
        for row, rec in zip(rows, res.instances, strict=True):
            got = unpack_views(row.views)
            assert [(v.frame_id, v.visible_pixels, v.inlier, v.crop_boxes) for v in got] == [
                (v.frame_id, v.visible_pixels, v.inlier, v.crop_boxes) for v in rec.views
            ]
    vecs, got_ids = s.stored_vectors(s.space("siglip", "instance"))
    assert got_ids.tolist() == ids
    assert np.array_equal(vecs, np.stack([r.vectors["siglip"] for r in res.instances]).astype("<f2").astype(np.float32))
    vvecs, keys = s.stored_vectors(s.space("dinov2", "view"))  # inlier views only, new keys
    want = [(i, r) for i, rec in zip(ids, res.instances, strict=True) for r, v in enumerate(rec.views) if v.inlier]
    assert keys.tolist() == [int(view_key(i, r)) for i, r in want]
    assert np.array_equal(
        vvecs,
        np.stack([res.instances[i - 10].view_vectors["dinov2"][r] for i, r in want]).astype("<f2").astype(np.float32),
    )
    assert s.rebuilt == ["dinov2.instance", "dinov2.view", "siglip.instance", "siglip.view"]
    assert s.index("siglip", "view").ntotal == 6
    s.close()
    # and back down: the rows of the old layout again (outlier view vectors were not carried over)
    engine = make_engine(f"sqlite:///{(db / 'om3db.sqlite').resolve()}")
    downgrade(engine, "0002")
    with engine.connect() as conn:
        views = conn.execute(text("SELECT instance_id, rank, frame_id, inlier FROM instance_views ORDER BY id")).all()
        assert [tuple(v) for v in views] == [(i, r, 100 + r, r != 2) for i in ids for r in range(3)]
        n = conn.execute(text("SELECT count(*) FROM vectors WHERE view_id IS NOT NULL")).scalar_one()
        assert n == 2 * 6
        assert "views" not in [c[1] for c in conn.execute(text("PRAGMA table_info(instances)"))]
    engine.dispose()
