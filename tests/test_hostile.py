"""Hostile input: broken scans, mask files, queries, damaged database files and environment faults.

Every case runs the real ``om3db`` entry point (``om3db_cli.main.main``) against a database built once
from two synthetic scans with tiny random SigLIP / DINOv2 models (loaded through the real code), and
asserts: the exit status, one ``Error: ...`` line naming the file / option / scan, no traceback, and a
database whose canonical dump (every SQLite row, every index file's bytes) is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from om3db_cli.main import main

REPO = Path(__file__).resolve().parents[1]
SCAN = "synth_0_0"


# -- the database every case starts from -------------------------------------------------------


@pytest.fixture(scope="session")
def base_db(tmp_path_factory, synth_root, tiny_siglip_dir, tiny_dinov2_dir) -> Path:
    db = tmp_path_factory.mktemp("hostile") / "db"
    code = main(
        ["ingest", str(synth_root), "--db", str(db), "--siglip", str(tiny_siglip_dir), "--dinov2", str(tiny_dinov2_dir),
         "--frame-step", "5", "--json"]
    )  # fmt: skip
    assert code == 0
    return db


@pytest.fixture
def db(base_db, tmp_path) -> Path:
    """A private copy of the base database."""
    copy = tmp_path / "db"
    shutil.copytree(base_db, copy)
    return copy


def dump(db: Path) -> dict:
    """Canonical content: every row of every table (read with sqlite3, read-only) and every index file."""
    out = {}
    con = sqlite3.connect(f"file:{db / 'om3db.sqlite'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for t in tables:
            out[t] = sorted(repr(r) for r in con.execute(f'SELECT * FROM "{t}"'))
    finally:
        con.close()
    for p in sorted((db / "indexes").glob("*")):
        out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(capsys, args, *, names: str | list[str], code: int = 1) -> str:
    rc, out, err = run(capsys, *args)
    text = out + err
    assert rc == code, text
    assert "Traceback" not in text and "unexpected" not in text, text
    if code == 1:
        assert err.startswith("Error: ") and err.count("\n") == 1, err
    for n in [names] if isinstance(names, str) else names:
        assert n in err, (n, err)
    return err


# -- broken scans: each ingest is refused naming the file, and the database is unchanged ----------


def _png_header(path: Path, width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> None:
    """A valid PNG signature + IHDR (with its CRC) claiming a huge image, + an empty IDAT and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def _first(folder: Path) -> Path:
    return sorted(folder.iterdir(), key=lambda p: int(p.stem))[0]


def _intrinsic(values: str):
    def apply(scan: Path) -> Path:
        p = scan / "intrinsic" / "intrinsic_color.txt"
        p.write_text(values)
        return p

    return apply


def _write(rel: str, data: bytes):
    def apply(scan: Path) -> Path:
        p = scan / rel.replace("SCAN", scan.name)
        p.write_bytes(data)
        return p

    return apply


def _color_huge(scan):
    p = _first(scan / "color")
    _png_header(p, 20000, 20000)
    return p


def _depth_huge(scan):
    p = _first(scan / "depth")
    _png_header(p, 20000, 20000, bit_depth=16, color_type=0)
    return p


def _depth_8bit(scan):
    from PIL import Image

    p = _first(scan / "depth")
    Image.fromarray(np.asarray(Image.open(p)).astype(np.uint8)).save(p)
    return p


def _depth_missing(scan):
    _first(scan / "depth").unlink()
    return scan / "depth"


def _color_garbage(scan):
    p = _first(scan / "color")
    p.write_bytes(b"this is not an image")
    return p


def _color_empty(scan):
    p = _first(scan / "color")
    p.write_bytes(b"")
    return p


def _color_truncated(scan):
    p = _first(scan / "color")
    p.write_bytes(p.read_bytes()[:200])
    return p


def _pose(text: str):
    def apply(scan):
        p = _first(scan / "pose")
        p.write_text(text)
        return p

    return apply


def _intrinsic_missing(scan):
    p = scan / "intrinsic" / "intrinsic_color.txt"
    p.unlink()
    return p


def _ply_truncated(scan):
    p = scan / f"{scan.name}.ply"
    data = p.read_bytes()
    p.write_bytes(data[: data.index(b"end_header\n") + 11 + 1000])  # into the vertex data
    return p


def _ply_header_more(scan):
    p = scan / f"{scan.name}.ply"
    data = p.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    lines = [f"element vertex {int(ln.split()[2]) * 10}" if ln.startswith("element vertex") else ln for ln in lines]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b"end_header\n" + body)
    return p


def _ply_garbage(scan):
    p = scan / f"{scan.name}.ply"
    p.write_bytes(b"not a ply at all\n")
    return p


def _ply_missing(scan):
    p = scan / f"{scan.name}.ply"
    p.unlink()
    return scan


def _masks_replaced(suffix: str, make):
    def apply(scan: Path) -> Path:
        (scan / f"{scan.name}_masks.pt").unlink()
        p = scan / f"{scan.name}_masks{suffix}"
        make(p, scan)
        return p

    return apply


def _npy_rows(rows_delta=0, transpose=False, value=None):
    def make(p, scan):
        import torch

        arr = np.asarray(torch.load(scan.parents[2] / "orig_masks.pt", weights_only=False), dtype=np.float32)
        if rows_delta:
            arr = arr[:rows_delta]
        if transpose:
            arr = arr.T
        if value is not None:
            arr = arr.copy()
            arr[0, 0] = value
        np.save(p, arr)

    return make


def _npy_bytes(transform):
    def make(p, scan):
        import torch

        arr = np.asarray(torch.load(scan.parents[2] / "orig_masks.pt", weights_only=False), dtype=np.float32)
        np.save(p, arr)
        p.write_bytes(transform(p.read_bytes()))

    return make


def _pt_bytes(transform):
    def make(p, scan):
        data = (scan.parents[2] / "orig_masks.pt").read_bytes()
        p.write_bytes(transform(data))

    return make


def _pt_malicious(p, scan):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import torch

    torch.save({"x": Evil()}, p, pickle_module=pickle)


def _npz_nokey(p, scan):
    np.savez(p, a=np.zeros((3, 2)), b=np.zeros((3, 2)))


def _npy_object(p, scan):
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)


SCAN_CASES = {
    "color image 20000x20000 header": (_color_huge, "more than om3db's limit"),
    "depth image 20000x20000 header": (_depth_huge, "more than om3db's limit"),
    "color not an image": (_color_garbage, "not a readable image"),
    "color zero bytes": (_color_empty, "not a readable image"),
    "color truncated": (_color_truncated, ""),
    "depth 8-bit": (_depth_8bit, "16-bit"),
    "depth missing for a frame": (_depth_missing, "no depth for frame ids 0"),
    "pose not 4x4": (_pose("1 0 0\n0 1 0\n0 0 1\n"), "4x4"),
    "pose text": (_pose("hello world\n"), ""),
    "pose empty": (_pose(""), ""),
    "intrinsic missing": (_intrinsic_missing, ""),
    "intrinsic zero focal": (_intrinsic("0 0 160 0\n0 0 120 0\n0 0 1 0\n0 0 0 1\n"), "focal lengths must be positive"),
    "intrinsic negative focal": (
        _intrinsic("-290 0 160 0\n0 290 120 0\n0 0 1 0\n0 0 0 1\n"),
        "focal lengths must be positive",
    ),
    "intrinsic nan": (_intrinsic("nan 0 160 0\n0 290 120 0\n0 0 1 0\n0 0 0 1\n"), "not finite"),
    "intrinsic principal point far out": (
        _intrinsic("290 0 5000 0\n0 290 120 0\n0 0 1 0\n0 0 0 1\n"),
        "principal point",
    ),
    "intrinsic 2 numbers": (_intrinsic("290 160\n"), ""),
    "ply truncated": (_ply_truncated, "truncated"),
    "ply header claims 10x the vertices": (_ply_header_more, "declares"),
    "ply garbage": (_ply_garbage, "not a PLY"),
    "ply missing": (_ply_missing, ""),
    "masks .npy zero bytes": (_masks_replaced(".npy", lambda p, s: p.write_bytes(b"")), "empty"),
    "masks .npy truncated": (_masks_replaced(".npy", _npy_bytes(lambda b: b[: len(b) // 2])), ""),
    "masks .npy garbage": (_masks_replaced(".npy", lambda p, s: p.write_bytes(b"\x00" * 100)), ""),
    "masks .pt zero bytes": (_masks_replaced(".pt", lambda p, s: p.write_bytes(b"")), "empty"),
    "masks .pt truncated": (_masks_replaced(".pt", _pt_bytes(lambda b: b[: len(b) // 2])), ""),
    "masks .pt malicious pickle": (_masks_replaced(".pt", _pt_malicious), "refused to load"),
    "masks rows missing": (_masks_replaced(".npy", _npy_rows(rows_delta=-7)), "do not match the point count"),
    "masks transposed": (_masks_replaced(".npy", _npy_rows(transpose=True)), "transposed"),
    "masks value 2": (_masks_replaced(".npy", _npy_rows(value=2)), "only 0 and 1"),
    "masks value nan": (_masks_replaced(".npy", _npy_rows(value=np.nan)), "only 0 and 1"),
    "masks object array": (_masks_replaced(".npy", _npy_object), ""),
    "masks npz without a masks key": (_masks_replaced(".npz", _npz_nokey), "no 'masks' array"),
    "masks npz truncated": (
        _masks_replaced(".npz", lambda p, s: (np.savez(p, masks=np.zeros((5, 2))), p.write_bytes(p.read_bytes()[:40]))),
        "",
    ),
}


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_broken_scan_is_refused_by_name_and_nothing_changes(capsys, db, synth_root, tmp_path, case):
    breaker, words = SCAN_CASES[case]
    root = tmp_path / "scans"
    shutil.copytree(synth_root / SCAN, root / "new" / SCAN)
    shutil.copy(synth_root / SCAN / f"{SCAN}_masks.pt", tmp_path / "orig_masks.pt")
    scan = root / "new" / SCAN
    named = breaker(scan)
    before = dump(db)
    err = assert_refused(
        capsys, ["ingest", root, "--db", db, "--force"], names=[str(named)] + ([words] if words else [])
    )
    assert err.startswith(f"Error: {named}") or str(named) in err
    assert dump(db) == before


# -- ingest-level refusals ----------------------------------------------------------------------


def test_two_scans_with_one_name_are_refused_before_any_work(capsys, db, synth_root, tmp_path):
    for parent in ("a", "b"):
        shutil.copytree(synth_root / SCAN, tmp_path / "scans" / parent / "same_name")
    before = dump(db)
    assert_refused(
        capsys, ["ingest", tmp_path / "scans", "--db", db], names=["two scans are named 'same_name'", "/a/", "/b/"]
    )
    assert dump(db) == before


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["ingest", "/no/such/folder"], "/no/such/folder"),
        (["ingest", "EMPTY"], "no scans"),
        (["ingest", "SCANS", "--frame-step", "0"], "frame_step"),
        (["ingest", "SCANS", "--sam", "/no/such.pth"], "/no/such.pth"),
        (["ingest", "SCANS", "--siglip", "/no/such/model"], "/no/such/model"),
    ],
)
def test_bad_ingest_options(capsys, db, synth_root, tmp_path, args, names):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else str(synth_root) if a == "SCANS" else a for a in args]
    before = dump(db)
    assert_refused(capsys, [*args, "--db", db], names=names)
    assert dump(db) == before


# -- hostile queries ----------------------------------------------------------------------------

QUERY_CASES = [
    (["search", ""], "the text query is empty", 1),
    (["search", "   "], "the text query is empty", 1),
    (["search", "chair", "-k", "0"], "k must be an integer >= 1", 1),
    (["search", "chair", "-k", "-5"], "k must be an integer >= 1", 1),
    (["search", "chair", "-k", "2.5"], "'-k'", 2),
    (["search", "chair", "--min-score", "nan"], "min_score must be a finite number", 1),
    (["search", "chair", "--min-score", "inf"], "min_score must be a finite number", 1),
    (["search", "chair", "--min-score", "abc"], "'--min-score'", 2),
    (["search", "chair", "--scan", "no_such_scan"], "no scan named 'no_such_scan'", 1),
    (["search", "chair", "--region", "1,2"], "region must be six numbers", 1),
    (["search", "chair", "--region", "1,1,1,0,0,0"], "min <= max", 1),
    (["search", "chair", "--region", "0,0,nan,1,1,1"], "finite", 1),
    (["search", "chair", "--region-mode", "inside"], "region_mode must be", 1),
    (["search", "chair", "--aggregation", "median"], "aggregation must be 'mean' or 'max'", 1),
    (["search", "chair", "--template", "no slot"], "template must contain", 1),
    (["search", "chair", "--space", "clip"], "no instance-level vector space 'clip'", 1),
    (["search", "chair", "--model", "/no/such/model"], "/no/such/model", 1),
    (["search", "chair", "--image", "IMG"], "one of them", 1),
    (["search"], "give a TEXT query or --image FILE", 1),
    (["search", "--image", "/no/such.png"], "/no/such.png", 1),
    (["search", "--image", "GARBAGE"], "not a readable image", 1),
    (["search", "--image", "EMPTYFILE"], "not a readable image", 1),
    (["search", "--image", "HUGE"], "more than om3db's limit", 1),
    (["search", "chair " * 400], "tokens", 1),
    (["show", "-1"], "instance ids are integers >= 1", 1),
    (["show", "0"], "instance ids are integers >= 1", 1),
    (["show", "abc"], "'instance'", 2),
    (["show", "999999"], "no instance 999999", 1),
    (["rm", "no_such_scan"], "no scan named 'no_such_scan'", 1),
    (["export", "chair", "--out", "AFILE"], "exists and is not a folder", 1),
    (["export", "chair", "-k", "0", "--out", "ADIR"], "k must be an integer >= 1", 1),
]


@pytest.mark.parametrize(("args", "names", "code"), QUERY_CASES, ids=[" ".join(c[0])[:40] for c in QUERY_CASES])
def test_hostile_query(capsys, db, tmp_path, args, names, code):
    files = {
        "IMG": tmp_path / "img.png",
        "GARBAGE": tmp_path / "garbage.png",
        "EMPTYFILE": tmp_path / "empty.png",
        "HUGE": tmp_path / "huge.png",
        "AFILE": tmp_path / "a_file",
        "ADIR": tmp_path / "a_dir",
    }
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files["IMG"])
    files["GARBAGE"].write_bytes(b"garbage")
    files["EMPTYFILE"].write_bytes(b"")
    _png_header(files["HUGE"], 20000, 20000)
    files["AFILE"].write_text("keep me")
    args = [str(files.get(a, a)) for a in args]
    before = dump(db)
    assert_refused(capsys, [*args, "--db", db], names=names, code=code)
    assert dump(db) == before
    assert files["AFILE"].read_text() == "keep me"


def test_absurd_k_is_clamped_not_allocated(capsys, db):
    rc, out, err = run(capsys, "search", "chair", "-k", "1000000000", "--db", db, "--json")
    assert rc == 0, err
    import json

    with __import__("om3db").connect(db) as d:
        total = sum(s.instances for s in d.scans())
    assert len(json.loads(out)) == total


# -- damaged database files ---------------------------------------------------------------------


def _truncate_half(db):
    p = db / "om3db.sqlite"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _header_garbage(db):
    p = db / "om3db.sqlite"
    data = bytearray(p.read_bytes())
    data[:100] = b"\xff" * 100
    p.write_bytes(bytes(data))


def _zero_bytes(db):
    (db / "om3db.sqlite").write_bytes(b"")


def _not_sqlite(db):
    (db / "om3db.sqlite").write_text("just text, not a database\n" * 100)


DAMAGE = {
    "sqlite truncated to half": (_truncate_half, "om3db.sqlite"),
    "sqlite header overwritten": (_header_garbage, "om3db.sqlite"),
    "sqlite zero bytes": (_zero_bytes, "empty (0 bytes)"),
    "sqlite is a text file": (_not_sqlite, "om3db.sqlite"),
}


def _checkpointed(db: Path) -> None:
    """Fold the WAL into the main file so damage to om3db.sqlite is damage to the data."""
    con = sqlite3.connect(db / "om3db.sqlite")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for suffix in ("-wal", "-shm"):
        Path(str(db / "om3db.sqlite") + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("command", [["scans"], ["search", "chair"], ["reindex"], ["check"], ["info"], ["show", "1"]])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_database_file_is_one_line(capsys, db, damage, command):
    _checkpointed(db)
    breaker, words = DAMAGE[damage]
    breaker(db)
    kept = (db / "om3db.sqlite").read_bytes()
    err = assert_refused(capsys, [*command, "--db", db], names=words)
    assert str(db) in err
    assert (db / "om3db.sqlite").read_bytes() == kept  # refused, not "repaired" into an empty database


def _blob(db: Path, sql: str, params=()) -> None:
    con = sqlite3.connect(db / "om3db.sqlite")
    con.execute(sql, params)
    con.commit()
    con.close()


def test_truncated_vector_block_is_named_by_check_and_reindex(capsys, db):
    _blob(db, "UPDATE vector_blocks SET data = substr(data, 1, 10) WHERE id = (SELECT min(id) FROM vector_blocks)")
    rc, out, err = run(capsys, "check", "--db", db)
    assert rc == 1 and "vector block is damaged" in out and "re-ingest that scan" in out, out + err
    assert_refused(capsys, ["reindex", "--db", db], names=["vectors of scan", "damaged"])


def test_garbage_point_indices_are_named_by_show_and_check(capsys, db):
    _blob(db, "UPDATE instances SET point_indices = ? WHERE id = 1", (b"\x02garbage",))
    assert_refused(capsys, ["show", "1", "--db", db], names=["instance 1 of scan", "damaged"])
    rc, out, err = run(capsys, "check", "--db", db)
    assert rc == 1 and "instance 1 (scan" in out and "point indices do not decode" in out, out + err


def test_damaged_index_file_is_reported_then_repaired(capsys, db):
    index = sorted((db / "indexes").glob("*.faiss"))[0]
    index.write_bytes(b"garbage" * 10)
    rc, out, err = run(capsys, "check", "--db", db)
    assert rc == 1 and f"index {index.stem}" in out and "om3db reindex" in out, out + err
    assert index.read_bytes() == b"garbage" * 10  # check changes nothing
    assert run(capsys, "reindex", "--db", db)[0] == 0
    assert run(capsys, "check", "--db", db)[0] == 0


def test_index_vector_changed_in_the_file_is_found_by_check(capsys, db):
    """An index file that loads and holds the right ids but a changed vector would score wrongly: check
    compares every vector with SQLite's, names the space and the id; reindex repairs it."""
    con = sqlite3.connect(db / "om3db.sqlite")
    dim, ids, data = con.execute(
        "SELECT s.dim, b.ids, b.data FROM vector_blocks b JOIN vector_spaces s ON s.id = b.space_id "
        "WHERE s.name = 'siglip' AND s.level = 'instance' ORDER BY b.id LIMIT 1"
    ).fetchone()
    con.close()
    index = db / "indexes" / "siglip.instance.faiss"
    raw = bytearray(index.read_bytes())
    at = raw.find(data[: 2 * dim])  # the first stored vector, as the index holds it (float16 bytes)
    assert at > 0 and raw.count(data[: 2 * dim]) == 1
    raw[at + 1] ^= 0x40  # one float16 value of that vector, changed
    index.write_bytes(bytes(raw))
    first = int(np.frombuffer(ids[:8], "<i8")[0])
    rc, out, err = run(capsys, "check", "--db", db)
    assert rc == 1, out + err
    assert f"index siglip.instance: 1 of its vectors differ from the database's (ids [{first}])" in out, out
    assert "om3db reindex" in out and out.count("Repair:") == 1
    assert run(capsys, "reindex", "--db", db)[0] == 0
    assert run(capsys, "check", "--db", db)[0] == 0


def test_instance_rows_with_impossible_geometry_are_named_by_check(capsys, db):
    _blob(db, "UPDATE instances SET centroid_x = 1e400 WHERE id = 1")  # +inf
    _blob(db, "UPDATE instances SET point_count = point_count + 1 WHERE id = 2")
    _blob(db, "UPDATE instances SET bbox_min_z = bbox_max_z + 1 WHERE id = 3")
    rc, out, err = run(capsys, "check", "--db", db)
    assert rc == 1, out + err
    assert "instance 1 (scan" in out and "non-finite geometry (centroid_x)" in out, out
    assert "instance 2 (scan" in out and "point count" in out and "point indices. Repair: re-ingest" in out, out
    assert "instance 3 (scan" in out and "its box minimum exceeds its maximum" in out, out
    assert out.count("Repair:") == 3


def test_missing_and_stale_index_files_are_named_as_such_and_healed_by_a_writer(capsys, db):
    """After an interrupted ingest an index file can be missing or stop before SQLite's last change: check
    says which, and that an open that can write rebuilds and saves it (a search here), as reindex would."""
    old = {p.name: p.read_bytes() for p in (db / "indexes").iterdir() if p.name.startswith("dinov2.instance")}
    assert run(capsys, "rm", SCAN, "--db", db)[0] == 0
    (db / "indexes" / "siglip.instance.faiss").unlink()
    for name, data in old.items():  # the dinov2 index as it was before the rm: behind SQLite now
        (db / "indexes" / name).write_bytes(data)
    for p in (db / "indexes").iterdir():
        if p.name.startswith("dinov2.instance") and p.name not in old:
            p.unlink()
    rc, out, err = run(capsys, "check", "--db", db)
    assert rc == 1, out + err
    assert "index siglip.instance: its file is missing (never saved" in out, out
    assert "index dinov2.instance: its file and change log stop before the database's changes" in out, out
    assert out.count("rebuilds and saves it") == 2 and out.count("Repair: run `om3db reindex`") == 2, out
    assert run(capsys, "search", "chair", "--db", db)[0] == 0
    assert run(capsys, "check", "--db", db)[0] == 0


def test_a_table_the_orm_cannot_read_is_a_check_problem(capsys, db):
    _blob(db, "ALTER TABLE relations RENAME COLUMN overlap TO overlaq")  # as flipped schema bytes would
    rc, out, err = run(capsys, "check", "--db", db)
    assert rc == 1 and "unexpected" not in out + err, out + err
    assert "database: SQLite cannot read its tables (OperationalError: no such column: relations.overlap)" in out
    assert "Repair: restore om3db.sqlite from a backup" in out


def test_healthy_database_checks_ok(capsys, db):
    rc, out, err = run(capsys, "check", "--db", db)
    assert rc == 0 and out.strip().endswith(": ok"), out + err


# -- the environment ----------------------------------------------------------------------------


def test_write_lock_that_is_not_a_file(capsys, db, synth_root):
    (db / "write.lock").unlink(missing_ok=True)
    (db / "write.lock").mkdir()
    assert_refused(capsys, ["ingest", synth_root, "--db", db], names=["write.lock", "is not a file"])


@pytest.mark.parametrize(
    ("path", "words"),
    [("mysql://user@host/db", "looks like a URL"), ("s3://bucket/db", "looks like a URL"), ("FILE", "is a file")],
)
def test_database_path_that_is_not_a_folder(capsys, tmp_path, synth_root, path, words):
    target = tmp_path / "a_file" if path == "FILE" else path
    if path == "FILE":
        target.write_text("x")
    assert_refused(capsys, ["ingest", synth_root, "--db", target], names=words)
    assert not Path("mysql:").exists() and not Path("s3:").exists()


@pytest.mark.skipif(not shutil.which("setpriv") or os.geteuid() != 0, reason="needs root and setpriv to become nobody")
def test_unreadable_scan_folders_are_named_not_a_bug(synth_root, tiny_siglip_dir):
    """As the user nobody: a scan folder, or its color/, that cannot be listed is one Error line naming it
    (not an unexpected PermissionError), and no scan is written."""
    import tempfile

    world = Path(tempfile.mkdtemp(prefix="om3db-perm-"))
    try:
        shutil.copytree(synth_root / SCAN, world / "scans" / SCAN)
        shutil.copytree(tiny_siglip_dir, world / "siglip")
        for p in [world, *world.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o644)
        code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from om3db_cli.main import main
args = ["--siglip", {str(world / "siglip")!r}, "--dinov2", "none"]
print("ROOT", main(["ingest", {str(world / "scans")!r}, "--db", {str(world / "db1")!r}, *args]), flush=True)
print("COLOR", main(["ingest", {str(world / "scans" / SCAN)!r}, "--db", {str(world / "db2")!r}, *args]), flush=True)
"""
        env = {**os.environ, "HOME": str(world), "HF_HOME": str(world / "hf")}
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code]
        (world / "scans").chmod(0o700)  # the folder of scans cannot be listed by nobody
        first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd="/")
        (world / "scans").chmod(0o777)
        (world / "scans" / SCAN / "color").chmod(0o700)
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd="/")
        for done, where in ((first, world / "scans"), (second, world / "scans" / SCAN / "color")):
            err = done.stderr
            assert "Traceback" not in err and "unexpected" not in err, err
            assert f"Error: {where}: cannot be read (Permission denied). Check its permissions and the disk" in err, err
        assert "ROOT 1" in first.stdout and "COLOR 1" in second.stdout
    finally:
        for p in [world, *world.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(world, ignore_errors=True)


def test_read_only_database_can_be_searched_not_written(db, synth_root, tiny_siglip_dir):
    """As the user nobody (root ignores permissions), on a read-only copy of the database: search and
    scans work (a shared read-only mount is a normal deployment), ingest is refused naming the database
    as read-only, and creating a database under a read-only folder is refused, all without a traceback."""
    import tempfile

    world = Path(tempfile.mkdtemp(prefix="om3db-ro-"))
    try:
        shutil.copytree(db, world / "db")
        shutil.copytree(tiny_siglip_dir, world / "siglip")  # the same weights: the same content hash
        (world / "ro").mkdir()
        for p in [world / "db", *(world / "db").rglob("*"), world / "ro"]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        for p in [world, *(world / "siglip").rglob("*"), world / "siglip"]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        ro, new = world / "db", world / "ro" / "new"
        code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from om3db_cli.main import main
print("SEARCH", main(["search", "chair", "--db", {str(ro)!r}, "--model", {str(world / "siglip")!r}, "--json"]), flush=True)
print("SCANS", main(["scans", "--db", {str(ro)!r}]), flush=True)
print("INGEST", main(["ingest", {str(synth_root)!r}, "--db", {str(ro)!r}]), flush=True)
print("CREATE", main(["ingest", {str(synth_root)!r}, "--db", {str(new)!r}]), flush=True)
"""
        env = {**os.environ, "HOME": str(world), "HF_HOME": str(world / "hf")}
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd="/")
        out, err = done.stdout, done.stderr
        assert "SEARCH 0" in out and "SCANS 0" in out, out + err
        assert "INGEST 1" in out and "the database is read-only here" in err, out + err
        assert "CREATE 1" in out and "cannot create the database folder" in err, out + err
        assert "Traceback" not in err and "unexpected" not in err, err
        assert (
            not (ro / "write.lock").exists() or (ro / "write.lock").stat().st_size == (db / "write.lock").stat().st_size
        )
    finally:
        for p in [world, *world.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(world, ignore_errors=True)


def test_disk_full_during_ingest_is_one_line_and_resumable(tmp_path, synth_root, tiny_siglip_dir, tiny_dinov2_dir):
    """RLIMIT_FSIZE makes writes past a size fail (EFBIG) as a full disk does; the scan being written is
    rolled back, the error is one line, and the same ingest later completes."""
    db = tmp_path / "db"
    first = tmp_path / "one"
    shutil.copytree(synth_root / SCAN, first / SCAN)
    common = ["--db", str(db), "--siglip", str(tiny_siglip_dir), "--dinov2", str(tiny_dinov2_dir), "--frame-step", "5"]
    assert main(["ingest", str(first), *common]) == 0
    code = f"""
import resource, signal, sys
sys.path.insert(0, {str(REPO)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from om3db_cli.main import main
import om3db.embed, om3db.store  # imported before the limit (their caches write files)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))  # no file may grow past 64 KiB
sys.exit(main(["ingest", {str(synth_root)!r}, *{common!r}]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("Error: "), done.stderr
    assert "synth_0_1" in done.stderr and "run the same ingest again" in done.stderr, done.stderr
    import om3db

    with om3db.connect(db) as d:
        assert [s.name for s in d.scans()] == [SCAN]
        assert d.check().ok
    assert main(["ingest", str(synth_root), *common]) == 0
    with om3db.connect(db) as d:
        assert [s.name for s in d.scans()] == [SCAN, "synth_0_1"]


# -- hypothesis: damage of any shape is a typed error, never anything else ------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_to_a_mask_file_is_a_mask_file_error(tmp_path, data):
    from om3db.errors import MaskFileError
    from om3db.masks import load_masks, save_masks

    masks = data.draw(st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=5, max_size=12))
    arr = np.array(masks, dtype=bool)
    suffix = data.draw(st.sampled_from([".pt", ".npy", ".npz"]))
    path = tmp_path / f"s_masks{suffix}"
    if suffix == ".pt":
        save_masks(path, arr)
    elif suffix == ".npy":
        np.save(path, arr.astype(np.float32))
    else:  # a zip: damaged member headers claim unsupported methods, versions or encryption
        np.savez(path, masks=arr.astype(np.float32), scores=np.ones(arr.shape[1], np.float32))
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "both"]))
    if how in ("truncate", "both"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    if how in ("flip", "both") and raw:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(raw))
    try:
        got, _ = load_masks(path, num_points=len(arr))
    except MaskFileError as exc:
        assert str(path) in str(exc)
    else:  # damage that still decodes must still be a valid mask array of the right shape
        assert got.dtype == bool and got.shape[0] == len(arr)


@settings(max_examples=60, deadline=None)
@given(
    k=st.one_of(st.integers(-3, 10**12), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)),
    min_score=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=2)),
    region=st.one_of(st.none(), st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=7)),
)
def test_any_query_values_build_a_query_or_a_config_error(k, min_score, region):
    from om3db.errors import ConfigError
    from om3db.query import Filters, Query

    try:
        reg = None if region is None else (tuple(region[:3]), tuple(region[3:]))
        q = Query(object(), text="a mug", k=k, filters=Filters(min_score=min_score, region=reg))
    except ConfigError:
        return
    assert isinstance(q.k, int) and q.k >= 1 and not isinstance(q.k, bool)
    assert q.filters.min_score is None or np.isfinite(q.filters.min_score)
    if q.filters.region is not None:
        lo, hi = map(np.asarray, q.filters.region)
        assert np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.99), flips=st.integers(0, 20), seed=st.integers(0, 10**6))
def test_any_damage_to_the_sqlite_file_is_a_store_error(base_db, tmp_path_factory, cut, flips, seed):
    import om3db
    from om3db.errors import StoreError

    db = tmp_path_factory.mktemp("dmg") / "db"
    shutil.copytree(base_db, db)
    _checkpointed(db)
    p = db / "om3db.sqlite"
    raw = bytearray(p.read_bytes())
    raw = raw[: max(int(len(raw) * cut), 0)] if cut > 0.05 else raw
    rng = np.random.default_rng(seed)
    for i in rng.integers(0, max(len(raw), 1), size=flips if raw else 0):
        raw[int(i)] ^= int(rng.integers(1, 256))
    p.write_bytes(bytes(raw))
    try:
        with om3db.connect(db, create=False, repair=False) as d:
            d.scans()
            d.check()
    except StoreError as exc:
        assert str(db) in str(exc)
