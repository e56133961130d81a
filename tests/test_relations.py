"""Spatial relations: geometry and relations against exact synthetic truth, the relational join of
queries, cross-scan and negation scan sets, and the fake colour encoder end to end (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

import om3db
from om3db.relations import RelationConfig, gravity_up, scan_relations
from om3db.synth.arrangement import arrangement_scene, near_truth

from .fakes import FakeColorEncoder

SEEDS = (0, 1, 2)


def _pairs(rel, name):
    return {(int(r.subject), int(r.object)) for r in rel.relations if r.relation == name}


def _pr(found: set, truth: set) -> tuple[float, float]:
    tp = len(found & truth)
    return (tp / len(found) if found else 1.0), (tp / len(truth) if truth else 1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_relations_match_exact_truth(seed):
    a = arrangement_scene(seed)
    rel = scan_relations(a.points, a.instances)
    assert rel.gravity.source == "floor" and np.dot(rel.gravity.up, (0, 0, 1)) > 1 - 1e-8
    truth = {"on": a.on, "in": a.inside, "near": near_truth(a.instances, RelationConfig().near), "above": a.above}
    for name, want in truth.items():
        assert _pr(_pairs(rel, name), set(want)) == (1.0, 1.0), name
    assert _pairs(rel, "below") == {(o, s) for s, o in a.above}
    # the boundary: the sphere hovers 4.9 cm over its box (on), the cone 5.1 cm (above, not on)
    gaps = {(r.subject, r.object): r.gap for r in rel.relations if r.relation == "above"}
    assert sorted(round(g, 4) for g in gaps.values()) == [0.0, 0.049, 0.051]
    on = _pairs(rel, "on")
    assert not on & {(o, s) for s, o in on}  # antisymmetric
    near = _pairs(rel, "near")
    assert near == {(o, s) for s, o in near}  # symmetric
    assert _pairs(rel, "next_to") == {(o, s) for s, o in _pairs(rel, "next_to")}
    for r in rel.relations:
        assert np.isfinite([r.score, r.distance, r.gap, r.overlap]).all() and 0 < r.score <= 1


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


@pytest.mark.parametrize(("axis", "degrees"), [((0, 0, 1), 37.0), ((1, 0.3, 0), 25.0), ((0.2, 1, 0.1), -40.0)])
def test_invariant_to_rigid_transform_and_tilted_up_axis(axis, degrees):
    a = arrangement_scene(1)
    base = scan_relations(a.points, a.instances)
    rot, shift = _rotation(axis, degrees), np.array([3.0, -1.5, 0.7])
    moved = scan_relations(a.points @ rot.T + shift, [p @ rot.T + shift for p in a.instances])
    assert np.degrees(np.arccos(np.clip(np.dot(moved.gravity.up, rot @ [0, 0, 1]), -1, 1))) < 0.01
    key = {(r.subject, r.object, r.relation): r for r in base.relations}
    got = {(r.subject, r.object, r.relation): r for r in moved.relations}
    assert set(got) == set(key)
    for k, r in got.items():
        assert abs(r.distance - key[k].distance) < 1e-6 and abs(r.gap - key[k].gap) < 1e-3, k
        assert abs(r.overlap - key[k].overlap) < 0.05, k


def test_gravity_from_the_capture_and_default():
    a = arrangement_scene(0)
    assert gravity_up(a.points, capture_up=(0, 0, 2)).source == "capture"
    assert gravity_up(np.zeros((10, 3))).source == "default"
    with pytest.raises(om3db.ConfigError, match="capture up axis"):
        gravity_up(a.points, capture_up=(0, 0, 0))


@pytest.mark.parametrize("bad", [{"near": -1.0}, {"on_gap": float("nan")}, {"in_fraction": 2.0}, {"near": 0}])
def test_bad_relation_config_refused(bad):
    with pytest.raises(om3db.ConfigError, match="RelationConfig"):
        RelationConfig(**bad)


# ------------------------------------------------------------------ database, fake colour encoder

SEED37 = 37
"""Tiny scenes of seed 37: scan 0 has red on blue, scan 1 red on orange, scan 2 blue on red (and more)."""


@pytest.fixture(scope="module")
def rel_db(tmp_path_factory):
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig
    from om3db.synth import write_scans

    root = tmp_path_factory.mktemp("relsynth")
    write_scans(root, scans=3, seed=SEED37, size="tiny")
    path = tmp_path_factory.mktemp("reldb") / "db"
    enc = FakeColorEncoder()
    with om3db.connect(path) as db:
        db.ingest(root, config=IngestConfig(frame_step=4, crop=CropConfig(mode="box")), siglip=enc, dinov2=False)
    return path, root, enc


def _truth(root):
    from om3db.synth import load_gt

    out = {}
    for d in sorted(root.iterdir()):
        gt = load_gt(d)
        out[d.name] = gt
    return out


def _gt_on(gts) -> set:
    return {
        (scan, o["class_name"], gt.objects[o["support"]]["class_name"], i, o["support"])
        for scan, gt in gts.items()
        for i, o in enumerate(gt.objects)
        if o["support"] != "floor"
    }


def _found(db, scenes) -> set:
    out = set()
    for m in scenes:
        for h in m.hits:
            assert h.scan == m.scan and h.evidence and np.isfinite(list(h.evidence.values())).all()
            s, o = db.instance(h.subject.instance_id), db.instance(h.object.instance_id)
            out.add((m.scan, s.mask_index, o.mask_index))
    return out


def test_red_on_blue_returns_exactly_the_ground_truth_pairs(rel_db):
    path, root, enc = rel_db
    gts = _truth(root)
    truth = _gt_on(gts)
    assert ("synth_37_0", "red", "blue") in {t[:3] for t in truth}
    with om3db.connect(path) as db:
        db.use_encoder("siglip", enc)
        for top, support in sorted({t[1:3] for t in truth}):
            scenes = db.search(f"a {top} object", on=f"a {support} object")
            want = {(t[0], t[3], t[4]) for t in truth if t[1:3] == (top, support)}
            assert _found(db, scenes) == want, (top, support)
            assert [m.scan for m in scenes] == sorted({w[0] for w in want}, key=[m.scan for m in scenes].index)
        # antisymmetric through the database: blue on red only where blue stands on red
        flipped = {(t[0], t[3], t[4]) for t in truth if t[1:3] == ("blue", "red")}
        assert _found(db, db.search("a blue object", on="a red object")) == flipped
        # the same through the query object and the phrase's words
        q = db.query(text="a red object").on("a blue object")
        assert _found(db, q.to_list()) == {(t[0], t[3], t[4]) for t in truth if t[1:3] == ("red", "blue")}
        # best-view similarity (aggregation 'max'): objects and negations scored through the view space
        red_blue = {(t[0], t[3], t[4]) for t in truth if t[1:3] == ("red", "blue")}
        assert _found(db, q.aggregate("max").to_list()) == red_blue
        without = {m.scan for m in db.search("a red object", without="a blue object", aggregation="max")}
        assert without == {m.scan for m in db.search("a red object", without="a blue object")}
        # a negation's scans found scan by scan or all at once (one range search): the same, both aggregations
        from om3db.relations import query as rq

        scans = sorted(gts)
        for agg in ("mean", "max"):
            for colour in ("blue", "orange", "pink"):
                phrase = rq._Phrase(db, q.aggregate(agg), f"a {colour} object", None)
                one_by_one = phrase.scans_with_match(scans)
                phrase.know_every_match()
                assert phrase.every_scan == one_by_one == {s for s in scans if colour in gts[s].object_classes}


def test_every_stored_relation_matches_the_synthetic_on_truth(rel_db):
    path, root, _ = rel_db
    gts = _truth(root)
    with om3db.connect(path) as db:
        for scan, gt in gts.items():
            mask = {i.id: i.mask_index for i in db.instances(scan)}
            rows = db.relations(scan)
            on = {(mask[r["subject_id"]], mask[r["object_id"]]) for r in rows if r["relation"] == "on"}
            assert on == {(i, o["support"]) for i, o in enumerate(gt.objects) if o["support"] != "floor"}
            for r in rows:
                assert np.isfinite([r["score"], r["distance"], r["gap"], r["overlap"]]).all()
            assert db.gravity(scan)["source"] == "floor"


def test_cross_scan_negation_and_count_scan_sets(rel_db):
    path, root, enc = rel_db
    gts = _truth(root)
    classes = {scan: set(gt.object_classes) for scan, gt in gts.items()}
    with om3db.connect(path) as db:
        db.use_encoder("siglip", enc)
        for colour in ("blue", "orange", "pink", "cyan"):
            got = {m.scan for m in db.search("a red object", without=f"a {colour} object")}
            assert got == {s for s, c in classes.items() if "red" in c and colour not in c}, colour
        got = {m.scan for m in db.search("a red object", relation=("same_scan", "a blue object"))}
        assert got == {s for s, c in classes.items() if {"red", "blue"} <= c}
        n = max(len(gt.objects) for gt in gts.values())
        got = {m.scan for m in db.search("any object", count_at_least=n, match=0.0)}
        assert got == {s for s, gt in gts.items() if len(gt.objects) >= n}
        near = db.search("a red object", near="a blue object", within=0.5)
        for m in near:
            assert all(h.evidence["distance"] <= 0.5 for h in m.hits)


def test_subject_candidates_widen_until_every_pair_is_found(rel_db, monkeypatch):
    """From one first candidate, the query widens 4x at a time until no more subjects can match, and finds
    exactly the ground-truth pairs; ``candidates`` caps the widening (the best subject only)."""
    from om3db.relations import query as rq

    path, root, enc = rel_db
    truth = {(t[0], t[3], t[4]) for t in _gt_on(_truth(root))}  # match=0: every instance matches "any object"
    assert len(truth) >= 5
    monkeypatch.setattr(rq, "_FIRST_CANDIDATES", 1)
    monkeypatch.setattr(rq, "_PER_SCAN_CANDIDATES", 0)
    asked = []
    best = rq._Phrase.best
    spy = lambda self, k: (self.text.startswith("subj:") and asked.append(k)) or best(self, k)  # noqa: E731
    monkeypatch.setattr(rq._Phrase, "best", spy)
    with om3db.connect(path) as db:
        db.use_encoder("siglip", _Prefixed(enc))
        assert _found(db, db.search("subj: any object", on="any object", match=0.0)) == truth
        assert asked[:3] == [1, 4, 16]
        asked.clear()
        capped = db.search("subj: any object", on="any object", match=0.0, candidates=1)
        assert asked == [1]
        best_subject = db.search("any object", k=1)[0].instance_id
        assert {h.subject.instance_id for m in capped for h in m.hits} <= {best_subject}


def test_join_from_the_objects_when_their_matches_run_out_first(rel_db, monkeypatch):
    """When every match of the object phrase is known before the subject's (a rare object), the join is
    driven from the objects' stored relations: the same exact pairs, whatever the subject candidates."""
    from om3db.relations import query as rq

    path, root, enc = rel_db
    truth = _gt_on(_truth(root))
    monkeypatch.setattr(rq, "_FIRST_CANDIDATES", 1000)  # more than the database holds: one round
    best = rq._Phrase.best
    # the subject phrase claims more matches may exist beyond its candidates; the object's are all known
    monkeypatch.setattr(rq._Phrase, "best", lambda self, k: (best(self, k)[0], self.text.startswith("subj:")))
    driven = []
    from_objects = rq._Join.from_objects
    monkeypatch.setattr(rq._Join, "from_objects", lambda self, *a: driven.append(1) or from_objects(self, *a))
    with om3db.connect(path) as db:
        db.use_encoder("siglip", _Prefixed(enc))
        for top, support in sorted({t[1:3] for t in truth}):
            got = _found(db, db.search(f"subj: a {top} object", on=f"a {support} object"))
            assert got == {(t[0], t[3], t[4]) for t in truth if t[1:3] == (top, support)}, (top, support)
    assert len(driven) == len({t[1:3] for t in truth})


class _Prefixed:
    """The fake colour encoder, ignoring a leading 'subj: ' marker (lets a test tell the two phrases apart)."""

    def __init__(self, enc):
        self.enc, self.identity = enc, enc.identity

    def encode_texts(self, texts):
        return self.enc.encode_texts([t.replace("subj: ", "") for t in texts])


def test_without_in_a_region_drops_only_scans_with_a_match_inside_it(rel_db):
    """``without=`` with ``region=``: a scan is dropped only when the excluded phrase matches inside the
    region; elsewhere in the scan does not count."""
    path, root, enc = rel_db
    gts = _truth(root)
    with om3db.connect(path) as db:
        db.use_encoder("siglip", enc)
        case = None
        for scan, gt in gts.items():
            by_class = {}
            for inst in db.instances(scan):
                by_class.setdefault(gt.objects[inst.mask_index]["class_name"], []).append(inst)
            if "red" in by_class and "blue" in by_class:
                red = by_class["red"][0]
                lo, hi = np.asarray(red.bbox_min), np.asarray(red.bbox_max)
                if all(
                    np.any(np.asarray(b.bbox_min) > hi) or np.any(np.asarray(b.bbox_max) < lo) for b in by_class["blue"]
                ):
                    case = scan, red, (tuple(lo - 1e-3), tuple(hi + 1e-3))
                    break
        assert case is not None, "no scan with a red object clear of every blue one"
        scan, red, region = case
        assert scan not in {m.scan for m in db.search("a red object", without="a blue object")}
        kept = db.search("a red object", without="a blue object", scans=[scan], region=region)
        assert [m.scan for m in kept] == [scan]
        assert red.id in {h.subject.instance_id for h in kept[0].hits}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"relation": ("touching", "a table")}, "unknown relation 'touching'"),
        ({"near": "a desk", "within": -0.1}, "within must be >= 0"),
        ({"near": "a desk", "within": 1e6}, "absurd"),
        ({"near": "a desk", "within": float("inf")}, "within must be a distance"),
        ({"within": 0.5}, "within= needs a relation"),
        ({"near": "a desk", "within": 2.0}, r"beyond the near distance the relations were built with \(1 m"),
        ({"on": "a table", "near": "a desk"}, "one relation per query"),
        ({"count_at_least": 0}, "count_at_least must be an integer >= 1"),
        ({"on": "a table", "candidates": 0}, r"candidates must be an integer >= 1, got 0"),
        ({"on": "a table", "candidates": 2.5}, r"candidates must be an integer >= 1, got 2.5"),
    ],
)
def test_bad_relational_queries_are_typed_errors(rel_db, kwargs, message):
    path, _, enc = rel_db
    with om3db.connect(path) as db:
        db.use_encoder("siglip", enc)
        with pytest.raises(om3db.ConfigError, match=message):
            db.search("a red object", **kwargs)


@pytest.mark.parametrize(
    ("phrase", "message"),
    [
        ("a mug on", "no noun after 'on'"),
        ("a mug on a", "no noun after 'on'"),
        ("on a table", "no noun before 'on'"),
        ("a desk but no", "no noun after 'but no'"),
        ("a mug on a table near a lamp", "one relation per phrase"),
        ("   ", "the phrase is empty"),
    ],
)
def test_bad_phrases(phrase, message):
    from om3db.relations.query import parse_phrase

    with pytest.raises(om3db.ConfigError, match=message):
        parse_phrase(phrase)


def test_phrase_grammar():
    from om3db.relations.query import parse_phrase

    r = parse_phrase("a mug on top of a table")
    assert (r.subject, r.relation, r.object, r.without) == ("a mug", "on", "a table", ())
    r = parse_phrase("a chair next to a desk but no lamp")
    assert (r.subject, r.relation, r.object, r.without) == ("a chair", "next_to", "a desk", ("lamp",))
    assert parse_phrase("a cup under a shelf").relation == "below"
    assert parse_phrase("a sofa").relation is None
    assert "relation 'on' (join in the database)" in parse_phrase("a mug on a table").explain()


def _forget_relations(db_dir) -> None:
    """Make the database look ingested before relations existed (their tables empty, as after upgrade)."""
    import sqlite3

    with sqlite3.connect(db_dir / "om3db.sqlite") as conn:
        for table in ("relations", "instance_geometry", "scan_gravity"):
            conn.execute(f"DELETE FROM {table}")


def test_check_covers_the_relation_tables(rel_db, tmp_path):
    """``check`` reads every relation row, geometry and up axis: a clean database is ok; a relation joining
    two scans, non-finite evidence, a lost geometry row and a broken up axis are each named, with the scan."""
    import shutil
    import sqlite3

    copy = tmp_path / "db"
    shutil.copytree(rel_db[0], copy)
    with om3db.connect(copy, create=False, repair=False) as db:
        clean = db.check()
        scans = [s.name for s in db.scans()]
        other = db.instances(scans[1])[0].id
    assert clean.ok and clean.relations > 0, clean.problems
    with sqlite3.connect(copy / "om3db.sqlite") as conn:
        (rid,) = conn.execute("SELECT id FROM relations ORDER BY id LIMIT 1").fetchone()
        conn.execute("UPDATE relations SET object_id = ? WHERE id = ?", (other, rid))
        conn.execute("UPDATE relations SET distance = 'nan' WHERE id = (SELECT MAX(id) FROM relations)")
        conn.execute(
            "DELETE FROM instance_geometry WHERE instance_id = (SELECT MIN(instance_id) FROM instance_geometry)"
        )
        conn.execute("UPDATE scan_gravity SET up_x = 3.0 WHERE scan_id = (SELECT MIN(scan_id) FROM scan_gravity)")
    with om3db.connect(copy, create=False, repair=False) as db:
        report = db.check()
    text = [str(p) for p in report.problems]
    assert any(f"relation {rid} " in t and "not two of this scan's" in t for t in text), text
    assert any("evidence is not finite" in t for t in text), text
    assert any("instance geometries for" in t for t in text), text
    assert any("is not a unit vector" in t for t in text), text
    assert not report.ok and report.relations == clean.relations


def test_database_without_relations_says_to_reindex(rel_db, tmp_path):
    import shutil

    path, _, enc = rel_db
    copy = tmp_path / "db"
    shutil.copytree(path, copy)
    _forget_relations(copy)
    with om3db.connect(copy) as db:
        db.use_encoder("siglip", enc)
        with pytest.raises(om3db.StoreError, match=r"Run `om3db reindex`"):
            db.search("a red object", on="a blue object")
        with pytest.raises(om3db.StoreError, match=r"Run `om3db reindex`"):
            db.relations("synth_37_0")
        before = db.scans()
        db.reindex()
        assert db.relations_built == ["synth_37_0", "synth_37_1", "synth_37_2"]
        assert [(s.name, s.instances) for s in db.scans()] == [(s.name, s.instances) for s in before]
        assert {m.scan for m in db.search("a red object", on="a blue object")} == {"synth_37_0"}


def test_real_capture_relations_run_with_finite_evidence(labelfusion_path):
    """Real sensor noise and holes (LabelFusion shelf): instances are the points of 12 cm cells."""
    from om3db.scan import read_scan

    scan = read_scan(labelfusion_path)
    pts = scan.points.astype(np.float64)
    cell = np.floor(pts / 0.12).astype(np.int64)
    _, inverse, counts = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    keep = np.flatnonzero(counts >= 200)[:80]
    instances = [pts[inverse == k] for k in keep]
    rel = scan_relations(pts, instances)
    assert rel.gravity.source in ("floor", "default") and np.isfinite(rel.gravity.up).all()
    assert len(rel.geometry) == len(instances) and rel.relations
    for g in rel.geometry:
        assert np.isfinite([*g.aabb_min, *g.aabb_max, g.yaw, g.volume, g.footprint_area]).all()
        assert np.isfinite(g.sample).all() and np.isfinite(g.footprint).all()
    for r in rel.relations:
        assert np.isfinite([r.score, r.distance, r.gap, r.overlap]).all(), r
    assert _pairs(rel, "near") == {(o, s) for s, o in _pairs(rel, "near")}
    on = _pairs(rel, "on")
    assert not on & {(o, s) for s, o in on}


def test_far_above_keeps_an_exact_finite_distance():
    from om3db.synth.arrangement import _points
    from om3db.synth.scene import SynthObject

    low = _points(SynthObject(0, "red", "box", (0.5, 0.5, 0.4), (1, 0, 0), (0.0, 0.0), 0.0, 0.0, -1), 0.05)
    high = _points(SynthObject(1, "blue", "box", (0.3, 0.3, 0.2), (0, 0, 1), (0.0, 0.0), 1.9, 0.0, -1), 0.05)
    rel = scan_relations(np.concatenate([low, high]), [low, high], capture_up=(0, 0, 1))
    above = [r for r in rel.relations if r.relation == "above"]
    assert [(r.subject, r.object) for r in above] == [(1, 0)] and not _pairs(rel, "near")
    assert abs(above[0].distance - 1.5) < 1e-9 and abs(above[0].gap - 1.5) < 1e-9


def test_removing_a_scan_removes_its_relations(rel_db, tmp_path):
    import shutil
    import sqlite3

    path, _, _ = rel_db
    copy = tmp_path / "db"
    shutil.copytree(path, copy)
    with om3db.connect(copy) as db:
        db.remove("synth_37_2")
        with pytest.raises(om3db.NotFoundError, match="no scan named 'synth_37_2'"):
            db.relations("synth_37_2")
        assert db.relations("synth_37_0")
    with sqlite3.connect(copy / "om3db.sqlite") as conn:
        for table in ("relations", "instance_geometry", "scan_gravity"):
            orphans = conn.execute(f"SELECT count(*) FROM {table} WHERE scan_id NOT IN (SELECT id FROM scans)")
            assert orphans.fetchone()[0] == 0, table


def test_reindex_names_a_scan_whose_folder_is_gone_and_builds_the_others(rel_db, tmp_path):
    import shutil
    import sqlite3

    path, _, enc = rel_db
    copy = tmp_path / "db"
    shutil.copytree(path, copy)
    _forget_relations(copy)
    with sqlite3.connect(copy / "om3db.sqlite") as conn:
        conn.execute("UPDATE scans SET path = ? WHERE name = 'synth_37_1'", (str(tmp_path / "moved"),))
    with om3db.connect(copy) as db:
        db.reindex()
        assert db.relations_built == ["synth_37_0", "synth_37_2"]
        assert list(db.relations_failed) == ["synth_37_1"] and "run reindex again" in db.relations_failed["synth_37_1"]
        db.use_encoder("siglip", enc)
        with pytest.raises(om3db.StoreError, match=r"1 scan\(s\) have no spatial relations \(synth_37_1\)"):
            db.search("a red object", on="a blue object")
        assert {m.scan for m in db.search("a red object", on="a blue object", scans=["synth_37_0"])} == {"synth_37_0"}
