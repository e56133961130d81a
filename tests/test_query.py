"""Query engine: search vs brute-force numpy, filters, max aggregation, labelling, encoder checks."""

from __future__ import annotations

import numpy as np
import pytest

from om3db.errors import ConfigError, EncoderMismatchError, NotFoundError
from om3db.records import EncoderIdentity
from tests.test_store import DIM, IDENT, make_result, unit


class FakeTableEncoder:
    """FAKE encoder for tests: texts map to fixed vectors given in a table."""

    def __init__(self, table: dict[str, np.ndarray], identity: EncoderIdentity = IDENT["siglip"]) -> None:
        self.table = table
        self.identity = identity

    def encode_texts(self, texts):
        return np.stack([self.table[t] for t in texts])

    def encode_images(self, images):
        return np.stack([unit(np.asarray(im, dtype=np.float32).reshape(-1)[:DIM] + 1) for im in images])


@pytest.fixture
def db(tmp_path):
    import om3db

    d = om3db.connect(tmp_path / "db")
    for i in range(3):
        d.write(make_result(f"scan{i}", 12, seed=i, views=4, centres=[(m, i, 0) for m in range(12)]))
    yield d
    d.close()


def brute_mean(db, q, allowed=None):
    vecs, ids = db._store.stored_vectors(db._store.space("siglip", "instance"))
    sims = vecs @ q
    keep = np.ones(len(ids), bool) if allowed is None else np.isin(ids, list(allowed))
    order = np.argsort(-sims[keep], kind="stable")
    return ids[keep][order], sims[keep][order]


def test_text_search_equals_bruteforce(db):
    q = unit(np.random.default_rng(5).standard_normal(DIM))
    enc = FakeTableEncoder({"a chair in a scene": q})
    hits = db.search(text="chair", k=7, encoder=enc)
    ids, sims = brute_mean(db, q)
    assert [h.instance_id for h in hits] == ids[:7].tolist()
    np.testing.assert_allclose([h.score for h in hits], sims[:7], rtol=1e-5)
    assert hits[0].frame_id == 100 and hits[0].crop_box == (0, 0, 10, 10)  # the most visible view


def test_max_aggregation_equals_bruteforce_over_inlier_views(db):
    q = unit(np.random.default_rng(6).standard_normal(DIM))
    enc = FakeTableEncoder({"a chair in a scene": q})
    hits = db.search(text="chair", k=5, aggregation="max", encoder=enc)
    # truth from the records written (float16 as stored), inlier views only, not from the store
    ids = {(s.name, s_i): i for s in db.scans() for s_i, i in enumerate(x.id for x in db.instances(s.name))}
    best: dict[int, tuple[float, int]] = {}
    for k in range(3):
        res = make_result(f"scan{k}", 12, seed=k, views=4, centres=[(m, k, 0) for m in range(12)])
        for m, rec in enumerate(res.instances):
            vv = rec.view_vectors["siglip"].astype("<f2").astype(np.float32)
            for rank, (view, sim) in enumerate(zip(rec.views, (vv @ q).tolist(), strict=True)):
                if view.inlier and sim > best.get(ids[(f"scan{k}", m)], (-2.0, 0))[0]:
                    best[ids[(f"scan{k}", m)]] = (sim, rank)
    expect = sorted(best, key=lambda i: -best[i][0])[:5]
    assert [h.instance_id for h in hits] == expect
    np.testing.assert_allclose([h.score for h in hits], [best[i][0] for i in expect], rtol=1e-5)
    # the hit's view is its best-matching view (frames are 100 + rank), not the most visible one
    assert [h.frame_id for h in hits] == [100 + best[i][1] for i in expect]


def test_filters_return_k_when_they_exist(db):
    q = unit(np.random.default_rng(7).standard_normal(DIM))
    enc = FakeTableEncoder({"a x in a scene": q})
    hits = db.search(text="x", k=5, scans=["scan1"], encoder=enc)
    assert len(hits) == 5 and {h.scan for h in hits} == {"scan1"}
    # min points: instance m has 10 + m points
    hits = db.search(text="x", k=50, min_points=20, encoder=enc)
    assert len(hits) == 3 * 2 and all(h.point_count >= 20 for h in hits)
    # region: centroids at (m, scan, 0), bboxes +-0.5 around them
    region = ((2.4, 0.0, -1.0), (3.0, 1.0, 1.0))
    hits = db.search(text="x", k=50, region=region, region_mode="centroid", encoder=enc)
    assert sorted((h.scan, h.centroid[0]) for h in hits) == [("scan0", 3.0), ("scan1", 3.0)]
    hits = db.search(text="x", k=50, region=region, encoder=enc)  # bbox x [m-.5, m+.5] meets [2.4, 3]: m = 2, 3
    assert sorted((h.scan, h.centroid[0]) for h in hits) == [
        ("scan0", 2.0),
        ("scan0", 3.0),
        ("scan1", 2.0),
        ("scan1", 3.0),
    ]
    hits = db.search(text="x", k=50, region=region, aggregation="max", encoder=enc)
    assert len(hits) == 4
    top = db.search(text="x", k=50, encoder=enc)
    hits = db.search(text="x", k=50, min_score=top[3].score, encoder=enc)
    assert [h.instance_id for h in hits] == [h.instance_id for h in top[:4]]
    with pytest.raises(NotFoundError, match="no scan named 'nope'"):  # named, not an empty answer
        db.search(text="x", k=5, scans="nope", encoder=enc)


def test_with_points_and_instance(db):
    enc = FakeTableEncoder({"a x in a scene": unit(np.ones(DIM))})
    hit = db.search(text="x", k=1, with_points=True, encoder=enc)[0]
    inst = db.instance(hit.instance_id)
    np.testing.assert_array_equal(hit.point_indices, inst.point_indices)
    assert inst.point_indices.dtype == np.int32 and len(inst.point_indices) == hit.point_count
    assert len(inst.views) == 4 and inst.views[-1].inlier is False
    with pytest.raises(NotFoundError, match="no instance 99999"):
        db.instance(99999)


def test_label_picks_best_class_per_instance(db):
    vecs, ids = db._store.stored_vectors(db._store.space("siglip", "instance"))
    scan0 = [i.id for i in [db.instance(int(x)) for x in ids] if i.scan == "scan0"]
    v = {int(i): vv for i, vv in zip(ids, vecs, strict=True)}
    table = {"a c0 in a scene": v[scan0[0]], "a c1 in a scene": v[scan0[1]], "a c2 in a scene": unit(np.ones(DIM))}
    labels = db.label("scan0", ["c0", "c1", "c2"], encoder=FakeTableEncoder(table))
    assert [lab.instance_id for lab in labels] == scan0
    classes = np.stack(list(table.values()))
    for lab in labels:
        sims = v[lab.instance_id] @ classes.T
        assert lab.label_index == int(sims.argmax()) and lab.label == f"c{lab.label_index}"
        assert lab.score == pytest.approx(float(sims.max()), rel=1e-5)
    assert labels[0].label == "c0" and labels[1].label == "c1"
    assert len(db.label("scan0", ["c0", "c1"], aggregation="max", encoder=FakeTableEncoder(table))) == 12
    with pytest.raises(NotFoundError, match="no scan named 'zzz'"):
        db.label("zzz", ["c0"], encoder=FakeTableEncoder(table))


def test_encoder_mismatch_names_both(db):
    other = FakeTableEncoder(
        {"a x in a scene": unit(np.ones(DIM))}, EncoderIdentity("other/model", "v2", DIM, "l2", "p")
    )
    with pytest.raises(EncoderMismatchError) as err:
        db.search(text="x", encoder=other)
    assert str(err.value) == (
        f"{db.path}: the 'siglip' space was built with fake/siglip@sha256:00 (dim {DIM}, l2, fake), but the query "
        "encoder is other/model@v2 (dim 16, l2, p). Query with the same model the scans were ingested with"
    )


def test_bad_inputs(db):
    enc = FakeTableEncoder({"a x in a scene": unit(np.ones(DIM))})
    with pytest.raises(ConfigError, match="exactly one of text= or image="):
        db.search()
    with pytest.raises(ConfigError, match="k must be an integer >= 1, got 0"):
        db.search(text="x", k=0, encoder=enc)
    with pytest.raises(ConfigError, match="aggregation must be 'mean' or 'max', got 'median'"):
        db.search(text="x", aggregation="median", encoder=enc)
    with pytest.raises(ConfigError, match="region must be"):
        db.search(text="x", region=((1, 1, 1), (0, 0, 0)), encoder=enc)
    with pytest.raises(NotFoundError, match="no instance-level vector space 'clip'"):
        db.search(text="x", space="clip", encoder=enc)
    from om3db.query import parse_region

    assert parse_region("0,1,2,3,4,5") == ((0, 1, 2), (3, 4, 5))
    with pytest.raises(ConfigError, match="six numbers"):
        parse_region("1,2")
