"""Captures through the CLI: ingest recognises their format (or takes --format), ``om3db scans`` shows it,
a fused point cloud is kept in the database folder, export reads a capture back through its reader;
a wrong --format is refused by name."""

from __future__ import annotations

import json
import shutil

from om3db_cli.main import main

from tests.test_captures import write_nerfstudio


def test_captures_through_the_cli(tmp_path, tiny_scan_path, tiny_siglip_dir, tiny_sam_path, capsys):
    scans = tmp_path / "scans"
    fused = write_nerfstudio(tiny_scan_path, scans / "kitchen")  # no point cloud: fused at ingest
    given = write_nerfstudio(tiny_scan_path, scans / "office", ply=True)  # the original's PLY and masks
    shutil.copy(tiny_scan_path / f"{tiny_scan_path.name}_masks.pt", given / "office_masks.pt")
    db = tmp_path / "db"
    args = ["--db", str(db), "--siglip", str(tiny_siglip_dir), "--dinov2", "none", "--frame-step", "5"]
    args += ["--sam", str(tiny_sam_path)]  # kitchen has no mask file: the proposer lifts SAM's 2D masks
    # forcing another format is refused by name, before any scan is stored
    assert main(["ingest", str(fused), "--format", "record3d", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and str(fused) in err and ".r3d" in err
    assert main(["scans", "--db", str(db), "--json"]) == 0 and json.loads(capsys.readouterr().out) == []

    assert main(["ingest", str(scans), *args, "--json"]) == 0
    outcomes = {o["scan"]: o for o in json.loads(capsys.readouterr().out)}
    assert {k: (o["status"], o["report"]["source_format"]) for k, o in outcomes.items()} == {
        "kitchen": ("ingested", "nerfstudio"),
        "office": ("ingested", "nerfstudio"),
    }
    assert outcomes["kitchen"]["report"]["fused_ply"].startswith(str(db / "fused"))  # kept with the database
    assert outcomes["office"]["report"]["fused_ply"] is None
    assert outcomes["office"]["report"]["mask_file"].endswith("office_masks.pt")
    assert main(["scans", "--db", str(db), "--json"]) == 0
    infos = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert {k: s["format"] for k, s in infos.items()} == {"kitchen": "nerfstudio", "office": "nerfstudio"}
    assert infos["office"]["masks"] == "office_masks.pt"

    # export reads a capture back through its reader
    assert main(["export", "a red object", "-k", "3", "--scan", "office", "--db", str(db), "--out", str(tmp_path / "o"),
                 "--json"]) == 0  # fmt: skip
    exported = json.loads(capsys.readouterr().out)
    assert exported["hits"] and any(f.endswith("office_hits.ply") for f in exported["files"])
    # the same ingest again: unchanged, skipped
    assert main(["ingest", str(scans), *args, "--json"]) == 0
    assert {o["status"] for o in json.loads(capsys.readouterr().out)} == {"skipped"}
