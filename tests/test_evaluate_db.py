"""Evaluation from a database: the two scoring protocols side by side (a fake labelling DB with exact
labels), and end to end on synthetic scans with the fake colour encoder (AP50 = 1)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest

import om3db
from om3db.errors import EvaluationError
from om3db.evaluate import Vocabulary, evaluate_database, load_gt, load_vocabulary

VOCAB = Vocabulary(ids=(1, 2), names=("cup", "box"))


@dataclass(frozen=True)
class FakeLabel:
    instance_id: int
    label: str
    label_index: int
    score: float
    point_indices: np.ndarray


@dataclass(frozen=True)
class FakeScanInfo:
    name: str
    num_points: int


class FakeLabelDB:
    """FAKE database: ``label`` returns fixed labels per (scan, aggregation) and records its calls."""

    def __init__(self, labels: dict[tuple[str, str], list[FakeLabel]], num_points: dict[str, int]):
        self.labels, self.num_points, self.calls = labels, num_points, []

    def label(self, scan, vocabulary, *, template, aggregation):
        self.calls.append((scan, tuple(vocabulary), template, aggregation))
        return self.labels[(scan, aggregation)]

    def scans(self):
        return [FakeScanInfo(n, p) for n, p in self.num_points.items()]


def _gt() -> np.ndarray:
    gt = np.zeros(600, dtype=np.int64)
    gt[:200], gt[200:400] = 1001, 2001
    return gt


def _db(n: int = 600) -> FakeLabelDB:
    tp = FakeLabel(1, "cup", 0, 0.5, np.arange(0, 200))
    fp = FakeLabel(2, "cup", 0, 0.9, np.arange(200, 400))  # cup label on the box: a false positive
    box = FakeLabel(2, "box", 1, 0.4, np.arange(200, 400))
    return FakeLabelDB({("s", "mean"): [tp, fp], ("s", "max"): [tp, box]}, {"s": n})


def test_protocols_and_aggregations_side_by_side():
    db = _db()
    ev = evaluate_database(db, {"s": _gt()}, VOCAB, template="a photo of a {}")
    assert sorted(ev.results) == ["constant/max", "constant/mean", "similarity/max", "similarity/mean"]
    # mean: cup TP 0.5 + FP 0.9, box missed. constant: r=1, p=1/2 -> 3/4. similarity: FP first -> 1/4
    assert ev.result("constant", "mean").per_class["cup"].ap == pytest.approx(0.75)
    assert ev.result("similarity", "mean").per_class["cup"].ap == pytest.approx(0.25)
    assert ev.result("constant", "mean").per_class["box"].ap == 0.0
    # max: both right
    assert ev.result("constant", "max").ap == 1.0 and ev.result("similarity", "max").ap == 1.0
    # one labelling per scan and aggregation, with the whole vocabulary and the template
    assert db.calls == [
        ("s", ("cup", "box"), "a photo of a {}", "mean"),
        ("s", ("cup", "box"), "a photo of a {}", "max"),
    ]
    d = ev.to_dict()
    assert d["template"] == "a photo of a {}" and d["results"]["similarity/mean"]["classes"][0]["ap"] == 0.25


def test_database_bad_inputs(tmp_path):
    with pytest.raises(
        EvaluationError,
        match=re.escape(
            "scan s: the database has 500 points but the ground truth has 600; use the GT file of this scan's PLY"
        ),
    ):
        evaluate_database(_db(500), {"s": _gt()}, VOCAB)
    for template in ("a photo", "{} {}", "a {x} {}", "a {} }"):  # exactly one plain {} (a lone brace is not one)
        with pytest.raises(EvaluationError, match=re.escape(f"prompt template {template!r}: template must contain")):
            evaluate_database(_db(), {"s": _gt()}, VOCAB, template=template)
    with pytest.raises(
        EvaluationError, match=re.escape("unknown scoring protocol 'rank'; choose one of ('constant', 'similarity')")
    ):
        evaluate_database(_db(), {"s": _gt()}, VOCAB, protocols=("rank",))
    bad = FakeLabelDB({("s", "mean"): [FakeLabel(1, "cup", 0, 1.0, np.array([700]))]}, {})
    with pytest.raises(
        EvaluationError,
        match=re.escape("scan s: instance 1 has point indices up to 700 but the ground truth has 600 points"),
    ):
        evaluate_database(bad, {"s": _gt()}, VOCAB, aggregations=("mean",))


def test_end_to_end_on_synthetic_scans(synth_root):
    """Ingest the synthetic scans (GT masks as proposals) with the fake colour encoder, label each instance
    against the scans' own classes: every object is found with its colour -> AP50 = 1."""
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig
    from tests.fakes import FakeColorEncoder

    db = om3db.connect(ephemeral=True)
    try:
        enc = FakeColorEncoder()
        # every 2nd frame: with every 4th the max over views of a shaded red box crop leans magenta (fake-encoder limit)
        db.ingest(synth_root, config=IngestConfig(frame_step=2, crop=CropConfig(mode="box")), siglip=enc, dinov2=enc)
        full = load_vocabulary(synth_root / "synth_0_0")
        # the colour names are the vocabulary; wall and floor points are then void (the fake encoder has no word for them)
        colours = [(i, n) for i, n in zip(full.ids, full.names, strict=True) if n not in ("wall", "floor")]
        vocab = Vocabulary(ids=tuple(i for i, _ in colours), names=tuple(n for _, n in colours))
        ev = evaluate_database(db, load_gt(synth_root), vocab)
    finally:
        db.close()
    assert ev.scenes == ("synth_0_0", "synth_0_1")
    for key, res in ev.results.items():
        assert res.ap50 == 1.0, (key, res.to_dict())
        assert res.num_predictions > 0 and res.dropped_small == 0, (key, res.to_dict())
