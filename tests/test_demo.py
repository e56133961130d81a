"""The README's first command: `om3db demo` runs synth -> ingest -> text and image search offline."""

from __future__ import annotations

import json

from om3db_cli.main import main

from om3db.synth import load_gt


def test_demo_runs_the_real_pipeline_offline(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["random_weights"] is True
    assert result["models"] == {"siglip": str(out / "models" / "siglip"), "dinov2": str(out / "models" / "dinov2")}
    assert [o["status"] for o in result["ingested"]] == ["ingested", "ingested"]
    # every GT object of both synthetic scans became an instance (GT masks are the proposals)
    expected = [load_gt(p).num_objects for p in map(__import__("pathlib").Path, result["scans"])]
    assert [o["instances"] for o in result["ingested"]] == expected
    assert len(result["text_hits"]) == 5
    # the image query is the top text hit's own best crop: DINOv2 finds that instance first
    assert result["image_hits"][0]["instance_id"] == result["text_hits"][0]["instance_id"]
    assert result["image_hits"][0]["score"] > 0.9


def test_demo_explains_random_weights(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert "RANDOMLY INITIALISED tiny SigLIP and" in text
    assert "Text search" in text and "Image search" in text
    # a second run finds the scans unchanged and skips them
    assert main(["demo", "--out", str(tmp_path / "d"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [o["status"] for o in again["ingested"]] == ["skipped", "skipped"]


def test_demo_needs_both_models_or_neither(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--siglip", "x"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "Error: give both a SigLIP and a DINOv2 model (or neither, for random demo weights)"
    )
    assert not (tmp_path / "d").exists()  # refused before any work
