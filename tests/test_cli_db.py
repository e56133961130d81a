"""CLI database commands through ``om3db_cli.main.main``: outputs, JSON and exact error texts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from om3db_cli.main import main


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def cli_db(tmp_path_factory, synth_root, tiny_siglip_dir, tiny_dinov2_dir):
    """A database holding synth_0_0, ingested by the CLI with the tiny random SigLIP / DINOv2."""
    db = tmp_path_factory.mktemp("cli") / "db"
    code = main(
        [
            "ingest",
            str(synth_root / "synth_0_0"),
            "--db",
            str(db),
            "--siglip",
            str(tiny_siglip_dir),
            "--dinov2",
            str(tiny_dinov2_dir),
            "--frame-step",
            "5",
            "--json",
        ]
    )
    assert code == 0
    return db


def test_ingest_json_then_skip(cli_db, synth_root, tiny_siglip_dir, tiny_dinov2_dir, capsys):
    code, out, _ = run(
        capsys,
        "ingest",
        synth_root / "synth_0_0",
        "--db",
        cli_db,
        "--siglip",
        tiny_siglip_dir,
        "--dinov2",
        tiny_dinov2_dir,
        "--frame-step",
        "5",
        "--json",
    )
    assert code == 0
    rows = json.loads(out)
    assert [(r["scan"], r["status"]) for r in rows] == [("synth_0_0", "skipped")] and rows[0]["instances"] == 7


def test_search_text_json_and_table(cli_db, capsys):
    code, out, _ = run(capsys, "search", "red", "--db", cli_db, "-k", "3", "--json")
    assert code == 0
    hits = json.loads(out)
    assert len(hits) == 3 and hits[0]["scan"] == "synth_0_0"
    assert set(hits[0]) >= {
        "instance_id",
        "score",
        "point_count",
        "bbox_min",
        "bbox_max",
        "centroid",
        "frame_id",
        "crop_box",
    }
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    code, out, _ = run(
        capsys, "search", "red", "--db", cli_db, "-k", "2", "--aggregation", "max", "--scan", "synth_0_0"
    )
    assert code == 0 and "2 hits for red" in out


def test_search_image(cli_db, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), (200, 30, 30), np.uint8)).save(tmp_path / "q.png")
    code, out, _ = run(capsys, "search", "--image", tmp_path / "q.png", "--db", cli_db, "-k", "2", "--json")
    assert code == 0 and len(json.loads(out)) == 2


def test_scans_show_info_reindex_export(cli_db, synth_root, tmp_path, capsys):
    code, out, _ = run(capsys, "scans", "--db", cli_db, "--json")
    assert code == 0 and [s["name"] for s in json.loads(out)] == ["synth_0_0"]
    code, out, _ = run(capsys, "scans", "--db", cli_db)
    assert "1 scans in" in out and "synth_0_0" in out
    hit = json.loads(run(capsys, "search", "blue", "--db", cli_db, "-k", "1", "--json")[1])[0]
    code, out, _ = run(capsys, "show", hit["instance_id"], "--db", cli_db, "--json")
    inst = json.loads(out)
    assert code == 0 and inst["id"] == hit["instance_id"] and len(inst["point_indices"]) == hit["point_count"]
    code, out, _ = run(capsys, "show", hit["instance_id"], "--db", cli_db)
    assert f"instance {hit['instance_id']} of scan synth_0_0" in out
    code, out, _ = run(capsys, "info", "--db", cli_db, "--json")
    info = json.loads(out)
    assert info["scans"] == 1 and info["instances"] == 7 and info["gpus"] == 0 and len(info["spaces"]) == 4
    code, out, _ = run(capsys, "reindex", "--db", cli_db)
    assert code == 0 and out.startswith("rebuilt 4 indexes: dinov2.instance (flat)")
    code, out, _ = run(capsys, "export", "green", "--db", cli_db, "-k", "2", "--out", tmp_path / "exp", "--json")
    files = json.loads(out)["files"]
    assert (
        code == 0
        and any(f.endswith("synth_0_0_hits.ply") for f in files)
        and sum(f.endswith(".png") for f in files) == 2
    )
    ply = (tmp_path / "exp" / "synth_0_0_hits.ply").read_bytes()
    from om3db.synth import load_gt

    num_points = len(load_gt(synth_root / "synth_0_0").gt_ids)  # every scan point, hits highlighted
    assert f"element vertex {num_points}\n".encode() in ply[:200]


def test_rm_and_errors(tmp_path, capsys):
    import om3db
    from tests.test_store import make_result

    db = tmp_path / "db"
    with om3db.connect(db) as d:
        d.write(make_result("a", 3))
    code, out, _ = run(capsys, "rm", "a", "--db", db)
    assert (code, out) == (0, "removed scan a (3 instances)\n")
    assert run(capsys, "rm", "a", "--db", db) == (
        1,
        "",
        f"Error: {db}: no scan named 'a'. The scans it holds: none\n",
    )
    assert run(capsys, "show", "12345", "--db", db) == (
        1,
        "",
        f"Error: {db}: no instance 12345. Search first to get instance ids\n",
    )
    assert run(capsys, "search", "--db", db)[2] == "Error: give a TEXT query or --image FILE (one of them)\n"
    assert run(capsys, "search", "x", "--db", db, "--region", "1,2")[2] == (
        "Error: region must be six numbers xmin,ymin,zmin,xmax,ymax,zmax (metres), got '1,2'\n"
    )
    assert run(capsys, "db", "upgrade", "--db", tmp_path / "none") == (
        1,
        "",
        f"Error: {tmp_path / 'none'}: no om3db database here (no om3db.sqlite)\n",
    )


def test_out_of_date_schema_refused_then_upgraded(tmp_path, capsys, monkeypatch):
    from om3db.store.schema import make_engine, upgrade

    db = tmp_path / "old"
    db.mkdir()
    upgrade(make_engine(f"sqlite:///{(db / 'om3db.sqlite').resolve()}"), "0001")
    monkeypatch.setenv("OM3DB_DB", str(db))
    assert run(capsys, "scans") == (
        1,
        "",
        f"Error: {db}: database schema is out of date (revision 0001, this om3db needs 0004). "
        f"Run: om3db db upgrade --db {db}\n",
    )
    assert run(capsys, "db", "upgrade") == (0, "upgraded database schema from revision 0001 to 0004\n", "")
    assert run(capsys, "db", "upgrade") == (0, "database schema already at revision 0004\n", "")
    assert run(capsys, "scans", "--json") == (0, "[]\n", "")


def test_search_with_another_encoder_refused(cli_db, tmp_path, capsys):
    from om3db.random_models import write_random_siglip

    other = write_random_siglip(tmp_path / "other_siglip", size="tiny", seed=123)
    capsys.readouterr()
    code, _, err = run(capsys, "search", "red", "--db", cli_db, "--model", other)
    err = err.split("\r")[-1]  # transformers draws a weight-loading bar on stderr first
    assert code == 1 and err.startswith(f"Error: {cli_db}: the 'siglip' space was built with ")
    assert str(other) in err and err.endswith("Query with the same model the scans were ingested with\n")


def test_docs_cli_lists_every_option():
    from pathlib import Path

    import typer
    from om3db_cli.main import app

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    sections = {s.split("\n", 1)[0].strip(): s for s in text.split("\n## ")[1:]}

    def walk(group, prefix=""):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
                yield from walk(cmd, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", cmd

    commands = dict(walk(typer.main.get_command(app)))
    assert {"ingest", "search", "db upgrade", "demo", "synth", "models random", "eval instances"} <= set(commands)
    for name, cmd in commands.items():
        assert name in sections, name
        for param in cmd.params:
            for opt in param.opts:
                if opt.startswith("-") and opt != "--help":
                    assert opt in sections[name], (name, opt)


def test_read_commands_do_not_create_a_database(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    for argv in (["search", "mug"], ["scans"], ["show", "1"], ["info"]):
        code, _, err = run(capsys, *argv, "--db", missing)
        assert code == 1
        assert err.strip() == f"Error: {missing}: no om3db database here. Create one by ingesting scans into it"
    assert not missing.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "bogus"], "format must be 'auto' or one of scannet, "),
        (["--dtype", "int8"], "unknown dtype 'int8': use 'auto', 'float32', 'bfloat16' or 'float16'"),
        (["--models", "huge"], "unknown model preset 'huge'; choose one of ['cpu', 'full']"),
        (["MISSING"], "MISSING: folder not found. Pass a scan folder or a folder of scans"),
    ],
)
def test_a_refused_ingest_creates_no_database(tmp_path, capsys, synth_root, options, message):
    """Options and paths that cannot work are refused before the database folder is created (or a model loaded)."""
    missing = str(tmp_path / "no-such-scans")
    scans = [missing] if options == ["MISSING"] else [str(synth_root), *options]
    db = tmp_path / "db"
    code, _, err = run(capsys, "ingest", *scans, "--db", db)
    assert code == 1 and err.startswith("Error: ") and err.count("\n") == 1, err
    assert message.replace("MISSING", missing) in err, err
    assert not db.exists()
