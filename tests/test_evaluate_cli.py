"""``om3db eval files`` end to end through the CLI (tables, JSON, errors), and semantic evaluation from a database."""

from __future__ import annotations

import json

import numpy as np
from om3db_cli.main import main

from om3db.evaluate import ScenePredictions, Vocabulary, save_predictions, semantic_from_database
from tests.test_evaluate_db import FakeLabel, FakeLabelDB


def _write_case(tmp_path):
    gt = np.zeros(600, dtype=np.int64)
    gt[:200], gt[200:400] = 1001, 2001
    (tmp_path / "gt").mkdir()
    np.savetxt(tmp_path / "gt" / "scene0.txt", gt, fmt="%d")
    masks = np.zeros((600, 2), bool)
    masks[:200, 0] = masks[200:400, 1] = True
    save_predictions(tmp_path / "pred" / "scene0.npz", ScenePredictions(masks, np.array([1, 1]), np.array([0.5, 0.9])))
    (tmp_path / "classes.json").write_text(json.dumps([{"id": 1, "name": "cup"}, {"id": 2, "name": "box"}]))


def test_eval_files_json(tmp_path, capsys):
    _write_case(tmp_path)
    rc = main(
        [
            "eval",
            "files",
            str(tmp_path / "pred"),
            "--gt",
            str(tmp_path / "gt"),
            "--vocabulary",
            str(tmp_path / "classes.json"),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    # cup: the 0.9 prediction lies on the box -> FP ranked first -> AP 1/4; box: missed -> 0
    assert out["classes"][0] == {
        "id": 1,
        "name": "cup",
        "ap": 0.25,
        "ap50": 0.25,
        "ap25": 0.25,
        "num_gt": 1,
        "num_pred": 2,
    }
    assert out["ap"] == 0.125 and out["scenes"] == ["scene0"]


def test_eval_files_table(tmp_path, capsys):
    _write_case(tmp_path)
    rc = main(
        [
            "eval",
            "files",
            str(tmp_path / "pred"),
            "--gt",
            str(tmp_path / "gt"),
            "--vocabulary",
            str(tmp_path / "classes.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "Per class AP50" in out and "cup" in out and "25.0" in out and "12.5" in out


def test_eval_files_error_line(tmp_path, capsys):
    _write_case(tmp_path)
    np.savetxt(tmp_path / "gt" / "scene0.txt", np.zeros(500, int), fmt="%d")
    rc = main(
        [
            "eval",
            "files",
            str(tmp_path / "pred"),
            "--gt",
            str(tmp_path / "gt"),
            "--vocabulary",
            str(tmp_path / "classes.json"),
        ]
    )
    assert rc == 1
    assert capsys.readouterr().err == (
        "Error: scene scene0: pred_masks has 600 rows but the ground truth has 500 points; "
        "masks must be (points x masks) in the GT point order\n"
    )


def test_semantic_from_database(tmp_path):
    gt = np.zeros(600, dtype=np.int64)
    gt[:200], gt[200:400] = 1001, 2001
    db = FakeLabelDB(
        {
            ("s", "mean"): [
                FakeLabel(1, "cup", 0, 0.5, np.arange(0, 200)),
                FakeLabel(2, "cup", 0, 0.9, np.arange(200, 300)),
            ]
        },
        {"s": 600},
    )
    vocab = Vocabulary(ids=(1, 2), names=("cup", "box"))
    rep = semantic_from_database(db, {"s": gt}, vocab, export=tmp_path / "sem")
    # cup: TP 200, FP 100 -> 2/3; box: 200 GT points, none predicted -> 0
    assert rep.result.iou == (2 / 3, 0.0)
    assert np.load(tmp_path / "sem" / "s.npy").tolist() == [0] * 300 + [-1] * 300
    hi = semantic_from_database(db, {"s": gt}, vocab, novel=["box"]).result
    assert (hi.base_miou, hi.novel_miou, hi.hiou) == (2 / 3, 0.0, 0.0)
    assert rep.to_dict()["exported"] == [str(tmp_path / "sem" / "s.npy")]


def test_eval_instances_and_semantic_on_a_database(tmp_path, synth_root, tiny_siglip_dir, capsys):
    """The CLI opens the database and reloads its SigLIP (a tiny random one): the plumbing, not the numbers."""
    import om3db
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig

    db_path = tmp_path / "db"
    with om3db.connect(db_path) as db:
        db.ingest(
            synth_root,
            config=IngestConfig(frame_step=10, crop=CropConfig(mode="box")),
            siglip=str(tiny_siglip_dir),
            dinov2=False,
        )
    args = ["--db", str(db_path), "--gt", str(synth_root), "--vocabulary", str(synth_root / "synth_0_0"), "--json"]
    assert main(["eval", "instances", *args, "--aggregation", "max"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["results"]) == ["constant/max", "similarity/max"] and out["scenes"] == ["synth_0_0", "synth_0_1"]
    assert (
        main(["eval", "semantic", *args, "--export", str(tmp_path / "sem"), "--format", "ply", "--fill", "nearest"])
        == 0
    )
    sem = json.loads(capsys.readouterr().out)
    assert 0.0 <= sem["miou"] <= 1.0 and [p.rsplit("/", 1)[-1] for p in sem["exported"]] == [
        "synth_0_0.ply",
        "synth_0_1.ply",
    ]
