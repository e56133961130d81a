"""CLI of spatial relations: `om3db relations`, relational search options, the phrase grammar, errors."""

from __future__ import annotations

import json
import math

import pytest
from om3db_cli.main import main


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def rel_cli_db(tmp_path_factory, synth_root, tiny_siglip_dir):
    """synth_0_1 (red stands on blue, magenta on orange) ingested by the CLI with the tiny random SigLIP."""
    db = tmp_path_factory.mktemp("relcli") / "db"
    argv = ["ingest", synth_root / "synth_0_1", "--db", db, "--siglip", tiny_siglip_dir, "--dinov2", "none"]
    assert main([str(a) for a in [*argv, "--frame-step", "5", "--json"]]) == 0
    return db


def test_relations_json_lists_pairs_with_finite_evidence(rel_cli_db, capsys):
    code, out, _ = run(capsys, "relations", "synth_0_1", "--db", rel_cli_db, "--json")
    data = json.loads(out)
    assert code == 0 and data["scan"] == "synth_0_1" and data["gravity"]["source"] == "floor"
    rows = data["relations"]
    assert sum(r["relation"] == "on" for r in rows) == 2  # magenta on orange, red on blue
    for r in rows:
        assert r["relation"] in {"on", "in", "near", "next_to", "above", "below"}
        assert all(math.isfinite(r[k]) for k in ("score", "distance", "gap", "overlap"))
    code, out, _ = run(capsys, "relations", "synth_0_1", "--db", rel_cli_db)
    assert code == 0 and "up axis" in out and "relations in synth_0_1" in out
    code, out, _ = run(capsys, "show", rows[0]["subject_id"], "--db", rel_cli_db)
    assert code == 0 and "gravity frame: z" in out


def test_phrase_search_explains_and_groups_by_scan(rel_cli_db, capsys):
    code, out, err = run(capsys, "search", "red on blue", "--db", rel_cli_db, "--explain", "--json")
    assert code == 0, err
    assert err == (
        "read as: subject 'red' (vector search); relation 'on' (join in the database); object 'blue' (vector search)\n"
    )
    for scene in json.loads(out):
        assert scene["scan"] == "synth_0_1"
        for h in scene["hits"]:
            assert h["relation"] == "on" and h["subject"]["instance_id"] != h["object"]["instance_id"]
    code, out, _ = run(capsys, "search", "red", "--near", "blue", "--within", "0.5", "--db", rel_cli_db, "--json")
    assert code == 0 and all(h["evidence"]["distance"] <= 0.5 for s in json.loads(out) for h in s["hits"])
    code, out, _ = run(capsys, "search", "red", "--without", "blue", "--count-at-least", "1", "--db", rel_cli_db)
    assert code == 0 and "scans" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a mug on"], "Error: 'a mug on': no noun after 'on'. Say what follows it, e.g. 'a mug on a table'\n"),
        (["red", "--within", "0.5"], "Error: within= needs a relation to measure, e.g. near='a desk', within=0.5\n"),
        (["red", "--near", "blue", "--within", "-1"], "Error: within must be >= 0 metres, got -1.0\n"),
        (["red on blue", "--near", "green"], "Error: one relation per query, got near, on\n"),
    ],
)
def test_bad_relational_search_input(rel_cli_db, capsys, args, message):
    assert run(capsys, "search", *args, "--db", rel_cli_db) == (1, "", message)
