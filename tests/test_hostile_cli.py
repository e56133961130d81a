"""Hostile CLI input (audit of search / export / reindex / relations / view): each case runs the real
``om3db`` entry point and asserts the exit status and the exact ``Error: ...`` line (never an
``unexpected ...`` one), and that what is stored is unchanged; relational queries with an image subject
are checked against the synthetic scans' exact ground truth."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from om3db_cli.main import main

import om3db
from om3db.errors import ConfigError
from om3db.query import Filters, Query, check_template

from .fakes import FakeColorEncoder

SCAN = "synth_0_0"


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def dump(db: Path) -> dict:
    """Every SQLite row and every index file's bytes (read-only)."""
    out = {}
    con = sqlite3.connect(f"file:{db / 'om3db.sqlite'}?mode=ro", uri=True)
    try:
        for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").fetchall():
            out[t] = sorted(repr(r) for r in con.execute(f'SELECT * FROM "{t}"'))
    finally:
        con.close()
    for p in sorted((db / "indexes").glob("*")):
        out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def cli_db(tmp_path_factory, synth_root, tiny_siglip_dir, tiny_dinov2_dir) -> Path:
    """Both tiny synthetic scans of seed 0 ingested by the CLI with the tiny random SigLIP and DINOv2."""
    db = tmp_path_factory.mktemp("hostilecli") / "db"
    argv = ["ingest", synth_root, "--db", db, "--siglip", tiny_siglip_dir, "--dinov2", tiny_dinov2_dir]
    assert main([str(a) for a in [*argv, "--frame-step", "5", "--json"]]) == 0
    return db


@pytest.fixture
def db(cli_db, tmp_path) -> Path:
    copy = tmp_path / "db"
    shutil.copytree(cli_db, copy)
    return copy


def refused(capsys, db: Path, args: list, message: str) -> None:
    """The command exits 1 with exactly this one Error line and leaves the database as it was."""
    before = dump(db)
    assert run(capsys, *args, "--db", db) == (1, "", f"Error: {message}\n")
    assert dump(db) == before


# -- 1. prompt templates ---------------------------------------------------------------------------

RULE = "template must contain exactly one '{}' where the text goes ('{{' and '}}' are literal braces)"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{} {} {}", "'{} {} {}' holds {}, {}, {}"),
        ("a {} }", "'a {} }' cannot be used: Single '}' encountered in format string"),
        ("{x} {}", "'{x} {}' holds {x}, {}"),
        ("{0}", "'{0}' holds {0}"),
        ("a {!r}", "'a {!r}' holds {!r}"),
        ("no slot", "'no slot' holds none"),
    ],
)
def test_bad_template_is_named_with_the_rule(db, capsys, template, problem):
    refused(capsys, db, ["search", "red", "--template", template], f"{RULE}; {problem}")
    refused(capsys, db, ["search", "red on blue", "--template", template], f"{RULE}; {problem}")
    with pytest.raises(ConfigError) as info:
        check_template(template)
    assert str(info.value) == f"{RULE}; {problem}"


def test_template_with_literal_braces_is_used(db, capsys):
    assert check_template("a {{x}} {}") == "a {{x}} {}"
    code, out, err = run(capsys, "search", "red", "--template", "a {{toy}} {}", "--db", db, "--json")
    assert code == 0 and err == "" and len(json.loads(out)) == 10


def test_eval_refuses_a_bad_template_before_any_work(db, capsys, synth_root):
    refused(
        capsys,
        db,
        ["eval", "instances", "--gt", synth_root, "--template", "{} {}"],
        f"{RULE}; '{{}} {{}}' holds {{}}, {{}}",
    )


# -- 2. an image subject with a text object (and without=) -----------------------------------------

SEED37 = 37
"""Tiny scenes of seed 37: scan 0 has red on blue, scan 1 red on orange, scan 2 blue on red (and more)."""


class ImageOnly:
    """The fake colour encoder without a text tower, as DINOv2 is."""

    def __init__(self, enc):
        self.identity = enc.identity
        self._enc = enc

    def encode_images(self, images):
        return self._enc.encode_images(images)


@pytest.fixture(scope="module")
def colour_db(tmp_path_factory):
    """Three scans of seed 37 with the fake colour encoder in both spaces (no text tower in DINOv2's)."""
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig
    from om3db.synth import write_scans

    root = tmp_path_factory.mktemp("colsynth")
    write_scans(root, scans=3, seed=SEED37, size="tiny")
    path = tmp_path_factory.mktemp("coldb") / "db"
    enc = FakeColorEncoder()
    with om3db.connect(path) as db:
        db.ingest(
            root, config=IngestConfig(frame_step=4, crop=CropConfig(mode="box")), siglip=enc, dinov2=ImageOnly(enc)
        )
    return path, root, enc


def _truth_on(root, top: str, support: str) -> set:
    from om3db.synth import load_gt

    out = set()
    for d in sorted(root.iterdir()):
        gt = load_gt(d)
        for i, o in enumerate(gt.objects):
            if o["support"] != "floor" and (o["class_name"], gt.objects[o["support"]]["class_name"]) == (top, support):
                out.add((d.name, i, o["support"]))
    return out


def _found(db, scenes) -> set:
    out = set()
    for m in scenes:
        for h in m.hits:
            s, o = db.instance(h.subject.instance_id), db.instance(h.object.instance_id)
            assert s.scan == o.scan == m.scan
            out.add((m.scan, s.mask_index, o.mask_index))
    return out


def _swatch(colour: str) -> np.ndarray:
    return np.full((24, 24, 3), FakeColorEncoder().palette[colour], np.uint8)


def test_image_subject_on_a_text_object_returns_the_ground_truth_pairs(colour_db, tmp_path):
    """The subject (an image) is searched in the DINOv2 space, the object phrase in the SigLIP text space:
    a red swatch on "a blue object" finds exactly the synthetic red-on-blue pairs (it used to fail with
    "the 'dinov2' encoder has no text tower" although no text was given for the subject)."""
    path, root, enc = colour_db
    with om3db.connect(path) as db:
        db.use_encoder("siglip", enc)
        db.use_encoder("dinov2", ImageOnly(enc))
        for top, support in (("red", "blue"), ("red", "orange"), ("blue", "red")):
            want = _truth_on(root, top, support)
            assert want, (top, support)
            got = _found(db, db.query(image=_swatch(top)).on(f"a {support} object").to_list())
            assert got == want, (top, support)
            # the same as the text subject, and as the image searched in the SigLIP space
            assert got == _found(db, db.search(f"a {top} object", on=f"a {support} object"))
            assert got == _found(db, db.query(image=_swatch(top)).on(f"a {support} object").using(space="siglip"))
        # a path works as the array does; without= phrases are text too
        png = tmp_path / "red.png"
        from PIL import Image

        Image.fromarray(_swatch("red")).save(png)
        assert _found(db, db.query(image=png).on("a blue object").to_list()) == _truth_on(root, "red", "blue")
        gts = {
            d.name: set(__import__("om3db.synth", fromlist=["load_gt"]).load_gt(d).object_classes)
            for d in root.iterdir()
        }
        got = {m.scan for m in db.query(image=_swatch("red")).without("a blue object").to_list()}
        assert got == {s for s, c in gts.items() if "red" in c and "blue" not in c}


def test_cli_image_subject_with_a_text_object(db, capsys, synth_root):
    png = synth_root / SCAN / "color" / "0.png"
    code, out, err = run(capsys, "search", "--image", png, "--on", "a table", "--db", db, "--json", "-k", "5")
    assert (code, err) == (0, "")
    for scene in json.loads(out):
        for h in scene["hits"]:
            assert h["relation"] == "on" and h["subject"]["scan"] == h["object"]["scan"] == scene["scan"]


# -- 3. relational-only options on a plain search ----------------------------------------------------

MATCH_ONLY = (
    "--match 0.7 applies only to spatial queries (a phrase such as 'a mug on a table', or --on, --near, ..., "
    "--without, --count-at-least): a plain search ranks every instance. Drop --match or add a relation"
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a mug", "--match", "2"], "match must be a fraction in [0, 1], got 2.0"),
        (["a mug", "--match", "nan"], "match must be a fraction in [0, 1], got nan"),
        (["a mug", "--match", "-0.1"], "match must be a fraction in [0, 1], got -0.1"),
        (["a mug on a table", "--match", "1.5"], "match must be a fraction in [0, 1], got 1.5"),
        (["a mug", "--match", "0.7"], MATCH_ONLY),
        (["a mug", "--match", "0.5"], MATCH_ONLY.replace("0.7", "0.5")),
        (["--image", "PNG", "--match", "0.7"], MATCH_ONLY),
    ],
)
def test_match_is_refused_without_a_relation_and_range_checked(db, capsys, synth_root, args, message):
    args = [str(synth_root / SCAN / "color" / "0.png") if a == "PNG" else a for a in args]
    refused(capsys, db, ["search", *args], message)


def test_match_with_a_relation_is_used(db, capsys):
    code, out, err = run(capsys, "search", "red on blue", "--match", "0", "--db", db, "--json")
    assert (code, err) == (0, "") and isinstance(json.loads(out), list)


def test_api_refuses_relational_only_values_on_a_plain_query(db):
    import dataclasses

    with om3db.connect(db) as database:
        for name, value in (("match", 0.7), ("candidates", 10)):
            with pytest.raises(ConfigError) as info:
                dataclasses.replace(database.query(text="red"), **{name: value}).to_list()
            assert str(info.value) == (
                f"{name}={value!r} applies only to relational queries (a relation such as on= or near=, without= or "
                "count_at_least=): a plain search ranks every instance. Drop it or add a relation"
            )
        with pytest.raises(ConfigError, match=r"^match=0.7 applies only to relational queries"):
            database.search("red", match=0.7)
        assert len(database.search("red", k=3)) == 3  # the defaults pass


# -- 4. export reads a spatial phrase as search does -------------------------------------------------


@pytest.fixture
def colour_cli(colour_db, monkeypatch):
    """The colour database, its CLI queries encoded by the fake colour encoder (the in-process CLI asks the
    Database for the space's encoder; the fake stands in for the model named in the database)."""
    from om3db.database import Database

    path, root, enc = colour_db
    fakes = {"siglip": enc, "dinov2": ImageOnly(enc)}
    real = Database._encoder

    def encoder(self, space, spec=None, **kw):
        return fakes[space] if spec is None and space in fakes else real(self, space, spec, **kw)

    monkeypatch.setattr(Database, "_encoder", encoder)
    return path, root, enc


def test_export_of_a_spatial_phrase_exports_the_subjects_of_the_relational_search(colour_cli, capsys, tmp_path):
    """`export "a red object on a blue object"` runs the relational query search runs (it used to export
    the flat top-k of the literal phrase) and exports its subjects: exactly the synthetic red-on-blue
    subjects, with one PLY per scan holding them."""
    path, root, _ = colour_cli
    want = _truth_on(root, "red", "blue")
    phrase = "a red object on a blue object"
    code, out, err = run(capsys, "search", phrase, "--db", path, "--json")
    assert (code, err) == (0, "")
    scenes = json.loads(out)
    subjects = list(dict.fromkeys(h["subject"]["instance_id"] for s in scenes for h in s["hits"]))
    code, out, err = run(capsys, "export", phrase, "--db", path, "--out", tmp_path / "exp", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["scenes"] == scenes
    assert [h["instance_id"] for h in data["hits"]] == subjects
    with om3db.connect(path) as db:
        masks = {(h["scan"], db.instance(h["instance_id"]).mask_index) for h in data["hits"]}
    assert masks == {(scan, s) for scan, s, _ in want}
    names = sorted(Path(f).name for f in data["files"])
    assert [n for n in names if n.endswith(".ply")] == sorted({f"{scan}_hits.ply" for scan, _, _ in want})
    assert [n for n in names if n.endswith(".png")] == sorted(f"hit{i}_{s}.png" for i, s in enumerate(subjects, 1))
    # a plain phrase still exports a flat top-k of hits
    code, out, _ = run(capsys, "export", "a red object", "--db", path, "--out", tmp_path / "flat", "--json", "-k", "2")
    assert code == 0 and len(json.loads(out)["hits"]) == 2 and "scenes" not in json.loads(out)


def test_cli_image_subject_on_a_text_object_is_the_ground_truth(colour_cli, capsys, tmp_path):
    path, root, _ = colour_cli
    from PIL import Image

    png = tmp_path / "red.png"
    Image.fromarray(_swatch("red")).save(png)
    code, out, err = run(capsys, "search", "--image", png, "--on", "a blue object", "--db", path, "--json")
    assert (code, err) == (0, "")
    with om3db.connect(path) as db:
        got = {
            (
                s["scan"],
                db.instance(h["subject"]["instance_id"]).mask_index,
                db.instance(h["object"]["instance_id"]).mask_index,
            )
            for s in json.loads(out)
            for h in s["hits"]
        }
    assert got == _truth_on(root, "red", "blue")


def test_export_refuses_a_phrase_without_a_noun_like_search(db, capsys, tmp_path):
    message = "'a mug on': no noun after 'on'. Say what follows it, e.g. 'a mug on a table'"
    refused(capsys, db, ["export", "a mug on", "--out", tmp_path / "x"], message)
    assert not (tmp_path / "x").exists()


# -- 5. reindex exits 1 when a scan's relations could not be built ----------------------------------


def test_reindex_exits_1_naming_the_scan_whose_relations_failed(db, capsys, tmp_path):
    with sqlite3.connect(db / "om3db.sqlite") as conn:
        for table in ("relations", "instance_geometry", "scan_gravity"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("UPDATE scans SET path = ? WHERE name = ?", (str(tmp_path / "moved"), SCAN))
    code, out, err = run(capsys, "reindex", "--db", db)
    assert code == 1
    assert out.startswith("rebuilt 4 indexes: ") and "built spatial relations of 1 scans: synth_0_1\n" in out
    assert err.startswith(f"Error: no spatial relations for scan {SCAN}: {tmp_path / 'moved'}") and err.count("\n") == 1
    assert err.endswith(f"Put the scan back at {tmp_path / 'moved'} (or re-ingest it) and run reindex again\n")
    code, out, err = run(capsys, "reindex", "--db", db, "--json")
    assert code == 1 and list(json.loads(out)["relations_failed"]) == [SCAN]
    assert err.startswith(f"Error: no spatial relations for scan {SCAN}: ")


# -- 6. --json never prints Infinity / NaN ---------------------------------------------------------

NOT_JSON = (
    "which JSON cannot hold. The database holds a non-finite value there: run `om3db check` to list the damaged "
    "rows, then re-ingest (or remove) the scan"
)


def test_search_json_refuses_a_non_finite_centroid(db, capsys):
    with sqlite3.connect(db / "om3db.sqlite") as conn:
        (iid,) = conn.execute(
            "SELECT MIN(i.id) FROM instances i JOIN scans s ON s.id = i.scan_id WHERE s.name = ?", (SCAN,)
        ).fetchone()
        conn.execute("UPDATE instances SET centroid_x = 1e400 WHERE id = ?", (iid,))
    code, out, err = run(capsys, "search", "red", "--db", db, "-k", "100", "--json")
    assert (code, out) == (1, "")
    assert err == f"Error: cannot print --json: scan {SCAN}, instance {iid}, centroid[0] is inf, {NOT_JSON}\n"
    code, out, err = run(capsys, "show", iid, "--db", db, "--json")
    assert (code, out) == (1, "")
    assert err == f"Error: cannot print --json: scan {SCAN}, instance {iid}, centroid[0] is inf, {NOT_JSON}\n"
    assert run(capsys, "search", "red", "--db", db, "-k", "100")[0] == 0  # the table shows it


def test_relations_json_refuses_an_infinite_distance(db, capsys):
    with sqlite3.connect(db / "om3db.sqlite") as conn:
        rid, s_id, o_id, rel = conn.execute(
            "SELECT r.id, r.subject_id, r.object_id, r.relation FROM relations r JOIN instances i ON i.id = r.subject_id "
            "JOIN scans s ON s.id = i.scan_id WHERE s.name = ? ORDER BY r.id LIMIT 1",
            (SCAN,),
        ).fetchone()
        conn.execute("UPDATE relations SET distance = 1e400 WHERE id = ?", (rid,))
    code, out, err = run(capsys, "relations", SCAN, "--db", db, "--json")
    assert (code, out) == (1, "")
    assert (
        err == f"Error: cannot print --json: scan {SCAN}, relation {s_id} {rel} {o_id}, distance is inf, {NOT_JSON}\n"
    )


# -- 7. min_score is a cosine similarity ------------------------------------------------------------


@pytest.mark.parametrize("value", ["5", "-1.5", "1.0001"])
def test_min_score_outside_minus_one_one_is_refused(db, capsys, value):
    message = (
        f"min_score is a cosine similarity and must lie in [-1, 1], got {float(value)!r}. Give a similarity floor "
        "such as 0.1"
    )
    refused(capsys, db, ["search", "red", "--min-score", value], message)
    with pytest.raises(ConfigError) as info:
        Filters(min_score=float(value))
    assert str(info.value) == message


def test_min_score_bounds_are_accepted(db):
    assert Filters(min_score=-1).min_score == -1 and Filters(min_score=1.0).min_score == 1.0
    with om3db.connect(db) as database:
        assert len(database.search("red", k=3, min_score=-1.0)) == 3


# -- 8. empty paths and URLs in path options --------------------------------------------------------

EMPTY = "is empty: give a file or folder path ('.' for the current folder)"


def url(option: str, value: str) -> str:
    return f"{option} {value}: is a URL; om3db reads local files only. Download it and pass the local path"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "red", "--out", "", "-k", "1"], f"--out {EMPTY}"),
        (["export", "red", "--out", "  "], f"--out {EMPTY}"),
        (["export", "--image", "", "--out", "OUT"], f"--image {EMPTY}"),
        (["search", "--image", ""], f"--image {EMPTY}"),
        (["ingest", ""], f"SCANS_DIR {EMPTY}"),
        (["ingest", "SCANS", "--sam", ""], f"--sam {EMPTY}"),
        (["ingest", "SCANS", "--siglip", ""], f"--siglip {EMPTY}"),
        (["eval", "instances", "--gt", ""], f"--gt {EMPTY}"),
        (["eval", "instances", "--gt", "SCANS", "--plot", ""], f"--plot {EMPTY}"),
        (["search", "--image", "http://example.com/x.png"], url("--image", "http://example.com/x.png")),
        (["export", "red", "--out", "s3://bucket/out"], url("--out", "s3://bucket/out")),
        (["ingest", "https://example.com/scans"], url("SCANS_DIR", "https://example.com/scans")),
        (["ingest", "SCANS", "--sam", "https://example.com/sam.pth"], url("--sam", "https://example.com/sam.pth")),
        (["eval", "semantic", "--gt", "SCANS", "--export", "ftp://x/y"], url("--export", "ftp://x/y")),
    ],
)
def test_empty_or_url_path_options_are_refused(db, capsys, synth_root, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # an empty path would mean this folder: nothing may appear in it
    args = [str(synth_root) if a == "SCANS" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    refused(capsys, db, args, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["synth", ""], f"OUT {EMPTY}"),
        (["models", "random", ""], f"OUT {EMPTY}"),
        (["convert", "", "DST"], f"SRC {EMPTY}"),
        (["convert", "SRC", ""], f"DST {EMPTY}"),
        (["convert", "http://example.com/a.r3d", "DST"], url("SRC", "http://example.com/a.r3d")),
        (["demo", "--out", ""], f"--out {EMPTY}"),
    ],
)
def test_empty_or_url_paths_of_commands_without_a_database(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "SRC").mkdir()
    assert run(capsys, *args) == (1, "", f"Error: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SRC"]


# -- 9. messages that name the right option ---------------------------------------------------------


def test_view_names_the_host_not_the_port(db, capsys):
    code, out, err = run(capsys, "view", "--host", "999.1.1.1", "--db", db)
    assert (code, out) == (1, "")
    assert err.startswith("Error: --host 999.1.1.1 cannot be listened on (") and "--port" not in err
    assert err.endswith(
        "): it is not an address of this machine. Give one of its addresses, e.g. 127.0.0.1 (this machine only) "
        "or 0.0.0.0 (every interface)\n"
    )


@pytest.mark.parametrize("value", ["0", "-5"])
def test_view_names_max_points(db, capsys, value):
    refused(
        capsys,
        db,
        ["view", "--max-points", value],
        f"--max-points must be >= 1 (points per scan sent to the browser), got {value}",
    )


def test_too_long_text_prints_only_the_error_line(db, capfd):
    """transformers' tokenizer logs "Token indices sequence length is longer ..." while om3db counts the
    tokens; the CLI drops that record, so the Error line is all that is printed."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("transformers.tokenization_utils_base")
    handler = Collect()
    logger.addHandler(handler)  # sees what passes the logger's filters
    try:
        assert main(["search", "word " * 200, "--db", str(db)]) == 1
    finally:
        logger.removeHandler(handler)
    out, err = capfd.readouterr()
    assert [r.getMessage() for r in records if "Token indices" in r.getMessage()] == []
    assert out == "" and err.count("\n") == 1 and "Token indices" not in err
    assert err.startswith("Error: the text 'a word word word") and err.endswith("reads at most 16. Shorten it\n")


def test_the_too_long_filter_drops_only_that_record():
    from om3db_cli.main import _TOO_LONG_FILTER, _quiet_library_logs

    _quiet_library_logs()
    _quiet_library_logs()  # once only
    logger = logging.getLogger("transformers.tokenization_utils_base")
    assert logger.filters.count(_TOO_LONG_FILTER) == 1

    def record(msg):
        return logging.LogRecord(logger.name, logging.WARNING, __file__, 1, msg, None, None)

    assert not _TOO_LONG_FILTER.filter(record("Token indices sequence length is longer than ... (205 > 16)"))
    assert _TOO_LONG_FILTER.filter(record("something else"))


def test_query_template_is_checked_for_image_queries_too(db):
    with om3db.connect(db) as database:
        with pytest.raises(ConfigError, match=r"holds \{\}, \{\}$"):
            Query(database, image=np.zeros((4, 4, 3), np.uint8), template="{} {}")


def test_the_library_counts_tokens_without_transformers_warning(db):
    """From Python too (no CLI filter installed): a too-long text is refused by om3db without transformers
    logging its "Token indices sequence length" warning first."""
    import om3db
    from om3db.errors import ConfigError

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("transformers.tokenization_utils_base")
    filters, logger.filters = logger.filters, []  # what the CLI's main() installed, if it ran in this process
    handler = Collect()
    logger.addHandler(handler)
    try:
        with om3db.connect(db, create=False) as database, pytest.raises(ConfigError, match="reads at most 16"):
            database.search(text="word " * 200)
    finally:
        logger.removeHandler(handler)
        logger.filters = filters
    assert [r.getMessage() for r in records if "Token indices" in r.getMessage()] == []
