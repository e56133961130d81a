"""The query object (``db.query(...)``), ``Filters``, the encoder default, and the layering rules:
``database`` and ``query`` hold no SQL and import neither sqlalchemy nor faiss."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from om3db.errors import ConfigError, NotFoundError
from tests.test_query import FakeTableEncoder, brute_mean
from tests.test_query import db as db  # noqa: F401 - the fixture
from tests.test_store import DIM, unit

REPO = Path(__file__).resolve().parents[1]


def _query_vec(seed=5):
    return unit(np.random.default_rng(seed).standard_normal(DIM))


def test_chained_query_equals_search_and_bruteforce(db):  # noqa: F811
    import om3db

    q = _query_vec()
    enc = FakeTableEncoder({"a chair in a scene": q, "chair": q})
    built = db.query(text="chair").where(scans=["scan1", "scan2"], min_points=1).limit(6).using(enc)
    assert isinstance(built, om3db.Query) and built.filters == om3db.Filters(scans=("scan1", "scan2"), min_points=1)
    hits = built.to_list()
    same = db.search(text="chair", k=6, scans=["scan1", "scan2"], min_points=1, encoder=enc)
    assert [h.to_dict() for h in hits] == [h.to_dict() for h in same]
    allowed = {i.id for s in ("scan1", "scan2") for i in db.instances(s)}
    ids, _ = brute_mean(db, q, allowed)
    assert [h.instance_id for h in hits] == ids[:6].tolist()
    assert list(built) == hits  # iterating runs it too
    # each step returns a new query; the original is unchanged
    assert built.limit(2).k == 2 and built.k == 6
    # a Filters value is accepted as one argument
    via_filters = db.search(text="chair", k=6, filters=om3db.Filters(scans=("scan1", "scan2")), encoder=enc)
    assert [h.instance_id for h in via_filters] == [h.instance_id for h in hits]
    # the template is applied once, in one place
    raw = db.query(text="chair").using(enc, template="{}").limit(3).to_list()
    assert [h.instance_id for h in raw] == brute_mean(db, q)[0][:3].tolist()


def test_max_aggregation_and_points_through_the_query_object(db):  # noqa: F811
    enc = FakeTableEncoder({"a lamp in a scene": _query_vec(6)})
    hits = db.query(text="lamp").aggregate("max").with_points().limit(4).using(enc).to_list()
    assert hits == db.search(text="lamp", k=4, aggregation="max", with_points=True, encoder=enc)
    for h in hits:
        assert np.array_equal(h.point_indices, db.instance(h.instance_id).point_indices)
        assert (h.point_count, h.bbox_min, h.centroid) == (
            db.instance(h.instance_id).point_count,
            db.instance(h.instance_id).bbox_min,
            db.instance(h.instance_id).centroid,
        )


def test_k_is_clamped_to_what_the_space_holds(db):  # noqa: F811
    enc = FakeTableEncoder({"a cup in a scene": _query_vec(7)})
    hits = db.search(text="cup", k=10**9, encoder=enc)  # no allocation of k slots
    assert len(hits) == 36
    assert len(db.search(text="cup", k=10**9, aggregation="max", encoder=enc)) == 36
    assert len(db.query(text="cup").where(scans="scan0").limit(10**9).using(enc).to_list()) == 12


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda db: db.query(text="   "), "the text query is empty"),
        (lambda db: db.query(text=""), "the text query is empty"),
        (lambda db: db.query(), "exactly one of text= or image="),
        (lambda db: db.query(text="a", image=np.zeros((4, 4, 3), np.uint8)), "exactly one of text= or image="),
        (lambda db: db.query(text="a").limit(2.5), "k must be an integer >= 1, got 2.5"),
        (lambda db: db.query(text="a").limit(0), "k must be an integer >= 1, got 0"),
        (lambda db: db.query(text="a").limit(True), "k must be an integer >= 1, got True"),
        (lambda db: db.query(text="a").where(min_score=float("nan")), "min_score must be a finite number"),
        (lambda db: db.query(text="a").where(min_score="high"), "min_score must be a number"),
        (lambda db: db.query(text="a").where(min_points=-1), "min_points must be an integer >= 0"),
        (lambda db: db.query(text="a").where(region=((0, 0, 0), (1, 1))), "region must be"),
        (lambda db: db.query(text="a").where(region=((0, 0, 2), (1, 1, 1))), "region must be"),
        (lambda db: db.query(text="a").where(region=((0, 0, 0), (1, 1, float("inf")))), "region must be"),
        (lambda db: db.query(text="a").where(region_mode="inside"), "region_mode must be"),
        (lambda db: db.query(text="a").aggregate("median"), "aggregation must be 'mean' or 'max'"),
        (lambda db: db.query(text="a").using(template="no slot"), "template must contain"),
        (lambda db: db.query(text=3), "text must be a string"),
    ],
)
def test_bad_query_values_are_typed_errors(db, build, message):  # noqa: F811
    with pytest.raises(ConfigError, match=message):
        build(db)


def test_unknown_scan_is_named_not_an_empty_answer(db):  # noqa: F811
    enc = FakeTableEncoder({"a cup in a scene": _query_vec(7)})
    with pytest.raises(NotFoundError, match=r"no scan named 'kitchen', 'attic'"):
        db.query(text="cup").where(scans=["scan0", "kitchen", "attic"]).using(enc).to_list()


def test_query_encoder_default_is_explicit(db, tmp_path):  # noqa: F811
    import om3db

    # the space was written with an identity whose model id is not loadable: info says which model it is
    info = db.info()
    spaces = {(s["name"], s["level"]): s for s in info["spaces"]}
    assert spaces[("siglip", "instance")]["query_encoder"].endswith("(the model the space was built with)")
    enc = FakeTableEncoder({"a cup in a scene": _query_vec(7)})
    db.use_encoder("siglip", enc)
    assert db.query_encoder("siglip").endswith("(given to this Database)")
    assert db.search(text="cup", k=3) == db.search(text="cup", k=3, encoder=enc)
    with om3db.connect(tmp_path / "empty") as empty:
        assert "the space holds nothing yet" in empty.query_encoder("siglip")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", ["om3db/database.py", "om3db/query.py"])
def test_database_and_query_hold_no_sql(module):
    source = (REPO / module).read_text()
    assert not {"sqlalchemy", "faiss", "sqlite3"} & _imports(REPO / module)
    for word in ("select(", "session(", ".engine", "execute("):
        assert word not in source, f"{module} runs SQL ({word})"


def test_cli_does_not_reach_into_the_store():
    for path in (REPO / "cli").glob("*.py"):
        text = path.read_text()
        assert ".store" not in text.replace("om3db.store", ""), path
        assert "_store" not in text, path
