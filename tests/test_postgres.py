"""PostgreSQL by URL against a real server (tests/fixtures_postgres.py): connect, CLI, bad URLs refused
before anything is written, the same rows as SQLite, two writer processes at once, kill -9 of one of them.

The store, crash and concurrency tests run on both backends through ``db_target``; this file holds what
only PostgreSQL has.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import om3db
from om3db.errors import SchemaOutOfDateError, StoreError
from tests.fixtures_postgres import PG_PASSWORD
from tests.test_crash import assert_consistent, kill_when_paused
from tests.test_store import make_result

REPO = Path(__file__).resolve().parents[1]


def _redacted(url: str) -> str:
    return url.replace(f":{PG_PASSWORD}@", ":***@")


def test_connect_by_url_keeps_the_indexes_in_the_vectors_folder(pg_url, tmp_path):
    vectors = tmp_path / "cache"
    with om3db.connect(pg_url, vectors=vectors) as db:
        db.write(make_result("a", 4))
        assert [(s.name, s.instances) for s in db.scans()] == [("a", 4)]
        assert db._store.engine.dialect.name == "postgresql" and db._store.engine.driver == "psycopg"
    assert sorted(p.name for p in (vectors / "indexes").glob("*.faiss")) == [
        "dinov2.instance.faiss",
        "dinov2.view.faiss",
        "siglip.instance.faiss",
        "siglip.view.faiss",
    ]
    assert not list(vectors.glob("*.sqlite"))
    # another machine: an empty cache folder is filled from the server on open
    with om3db.connect(pg_url, vectors=tmp_path / "other") as db:
        assert sorted(db._store.rebuilt) == ["dinov2.instance", "dinov2.view", "siglip.instance", "siglip.view"]
        assert_consistent(db)


def test_url_from_environment_and_default_cache(pg_url, tmp_path, monkeypatch):
    monkeypatch.setenv("OM3DB_DB", pg_url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("OM3DB_VECTORS", raising=False)
    with om3db.connect() as db:
        db.write(make_result("a", 2))
        port, name = pg_url.rsplit(":", 1)[1].split("/")
        assert db.path == tmp_path / "xdg" / "om3db" / f"127.0.0.1-{port}-{name}"
    monkeypatch.setenv("OM3DB_VECTORS", str(tmp_path / "v"))
    with om3db.connect() as db:
        assert db.path == tmp_path / "v" and [s.name for s in db.scans()] == ["a"]


def test_cli_db_url(pg_url, tmp_path, monkeypatch):
    from om3db_cli.main import app
    from typer.testing import CliRunner

    with om3db.connect(pg_url, vectors=tmp_path / "v") as db:
        db.write(make_result("a", 3))
    monkeypatch.setenv("OM3DB_VECTORS", str(tmp_path / "cli"))
    out = CliRunner().invoke(app, ["scans", "--db", pg_url, "--json"])
    assert out.exit_code == 0, out.output
    assert [(s["name"], s["instances"]) for s in json.loads(out.output)] == [("a", 3)]
    out = CliRunner().invoke(app, ["scans", "--json"], env={"OM3DB_DB": pg_url})
    assert out.exit_code == 0 and json.loads(out.output)[0]["name"] == "a"


@pytest.mark.parametrize(
    "change,problem",
    [
        (("password", "wrong-pw"), "the server refused the login"),
        (("port", "1"), "cannot connect to the database server"),
        (("dbname", "no_such_db"), "no such database"),
    ],
    ids=["wrong-password", "unreachable", "no-database"],
)
def test_bad_url_refused_before_anything_is_written(pg_server, pg_url, tmp_path, change, problem):
    what, value = change
    url = {
        "password": pg_url.replace(PG_PASSWORD, value),
        "port": pg_url.replace(f":{pg_server.port}/", f":{value}/"),
        "dbname": pg_url.rsplit("/", 1)[0] + "/" + value,
    }[what]
    vectors = tmp_path / "cache"
    with pytest.raises(StoreError) as err:
        om3db.connect(url, vectors=vectors)
    msg = str(err.value)
    assert msg.startswith(f"{_redacted(url).replace(':wrong-pw@', ':***@')}: {problem}")
    assert PG_PASSWORD not in msg and "wrong-pw" not in msg
    assert not vectors.exists()  # nothing written, not even the cache folder


def test_newer_schema_refused(pg_url, tmp_path):
    import psycopg

    with om3db.connect(pg_url, vectors=tmp_path / "v") as db:
        db.write(make_result("a", 2))
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaOutOfDateError) as err:
        om3db.connect(pg_url, vectors=tmp_path / "v2")
    assert str(err.value) == (
        f"{_redacted(pg_url)}: database schema revision 9999 is newer than this om3db knows (newest 0004). Upgrade om3db"
    )
    assert not (tmp_path / "v2" / "indexes").exists() or not list((tmp_path / "v2" / "indexes").iterdir())


def test_postgres_stores_the_same_rows_as_sqlite(tmp_path, pg_url):
    from om3db.store import Store
    from tests.test_store_write import dump, write_sequence

    def normal(rows: dict) -> dict:
        def cell(v):
            if isinstance(v, memoryview):
                return bytes(v)
            if isinstance(v, str) and v[:1] in "{[":
                return json.loads(v)
            return v

        return {t: [tuple(cell(v) for v in r) for r in rs] for t, rs in rows.items()}

    lite, pg = Store(tmp_path / "lite"), Store(tmp_path / "pg", url=pg_url)
    for s in (lite, pg):
        write_sequence(s)
    assert normal(dump(pg)) == normal(dump(lite))
    for name, level in (("siglip", "instance"), ("dinov2", "view")):
        a, b = lite.index(name, level), pg.index(name, level)
        assert sorted(a.ids().tolist()) == sorted(b.ids().tolist())
    lite.close()
    pg.close()


# Each child waits for `go`, then writes its scans one by one and prints the time window it wrote in.
WRITER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import om3db
from tests.test_store import make_result
with om3db.connect({url!r}, vectors={vectors!r}, lock_timeout=60) as db:
    db.scans()
    print("READY", flush=True)
    deadline = time.time() + 300
    while not os.path.exists({go!r}):
        if time.time() > deadline:
            sys.exit("no go signal")
        time.sleep(0.01)
    t0 = time.time()
    for i in range({n}):
        db.write(make_result("{prefix}%d" % i, 5, seed={seed} + i))
    print("WINDOW", t0, time.time(), flush=True)
"""


@pytest.mark.parametrize("shared_cache", [False, True], ids=["two-machines", "one-cache-folder"])
def test_two_writer_processes_at_once(pg_url, tmp_path, shared_cache):
    go = tmp_path / "go"
    folders = [tmp_path / "m1", tmp_path / ("m1" if shared_cache else "m2")]
    procs = []
    for prefix, seed, folder in (("a", 0, folders[0]), ("b", 100, folders[1])):
        code = WRITER.format(repo=str(REPO), url=pg_url, vectors=str(folder), go=str(go), n=6, prefix=prefix, seed=seed)
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    windows = []
    try:
        for p in procs:
            assert p.stdout.readline().strip() == b"READY", p.stderr.read()
        go.touch()
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err.decode()
            windows.append([float(x) for x in out.split()[1:3]])
    finally:  # a failed start must not leave the other writer waiting for `go` forever
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    (a0, a1), (b0, b1) = windows
    assert a0 < b1 and b0 < a1, windows  # the two writers' work overlapped in time
    for folder in [*folders, tmp_path / "reader"]:
        with om3db.connect(pg_url, vectors=folder) as db:
            assert [s.name for s in db.scans()] == [f"{p}{i}" for p in "ab" for i in range(6)]
            assert_consistent(db)
            # both sets searchable: each scan's own vectors find its instances
            enc = _Fixed(db._store.stored_vectors(db._store.space("siglip", "instance")))
            for scan in ("a3", "b4"):
                inst = db.instances(scan)[2]
                enc.target = inst.id
                hit = db.search(text="x", k=1, encoder=enc)[0]
                assert (hit.instance_id, hit.scan) == (inst.id, scan) and hit.score > 0.99


class _Fixed:
    """A FAKE query encoder: the text's vector is the stored vector of instance ``target``."""

    def __init__(self, stored) -> None:
        from tests.test_store import IDENT

        self.identity = IDENT["siglip"]
        self.vecs, self.ids = stored
        self.target = None

    def encode_texts(self, texts):
        v = self.vecs[list(self.ids).index(self.target)]
        return np.stack([v / np.linalg.norm(v) for _ in texts])


KILLED = """
import sys, time
sys.path.insert(0, {repo!r})
import om3db
from om3db.store import CHECKPOINT_HOOKS
from tests.test_store import make_result

def pause(stage):
    if stage == "rows_written":
        print("PAUSED", flush=True)
        time.sleep(120)

CHECKPOINT_HOOKS.append(pause)
with om3db.connect({url!r}, vectors={vectors!r}) as db:
    db.write(make_result("killed", 7, seed=3))
"""


def test_kill_one_writer_mid_scan_while_another_waits(pg_url, tmp_path):
    """Writer 1 pauses inside its scan's transaction (holding the advisory lock); writer 2 waits for the
    lock; writer 1 is killed with SIGKILL: the server rolls its transaction back, releases the lock, and
    writer 2 commits. Nothing of the killed scan is anywhere; re-running it completes it."""
    import threading

    with om3db.connect(pg_url, vectors=tmp_path / "m0") as db:
        db.write(make_result("first", 3))
    done: dict = {}

    def second() -> None:
        with om3db.connect(pg_url, vectors=tmp_path / "m2", lock_timeout=120) as db:
            t0 = time.monotonic()
            db.write(make_result("second", 4, seed=5))
            done["waited"] = time.monotonic() - t0

    thread = threading.Thread(target=second)

    def while_paused() -> None:
        thread.start()
        time.sleep(2.0)  # long enough for the second writer to be waiting on the lock
        assert "waited" not in done

    kill_when_paused(KILLED.format(repo=str(REPO), url=pg_url, vectors=str(tmp_path / "m1")), before_kill=while_paused)
    thread.join(timeout=120)
    assert done["waited"] >= 1.5
    for folder in ("m0", "m1", "m2"):
        with om3db.connect(pg_url, vectors=tmp_path / folder) as db:
            assert [(s.name, s.instances) for s in db.scans(include_incomplete=True)] == [("first", 3), ("second", 4)]
            assert_consistent(db)
    with om3db.connect(pg_url, vectors=tmp_path / "m1") as db:  # resume the killed writer's scan
        db.write(make_result("killed", 7, seed=3))
        assert [s.name for s in db.scans()] == ["first", "killed", "second"]
        assert_consistent(db)


def test_many_processes_create_one_new_database_at_once(pg_url, tmp_path):
    """Opening a new (empty) database creates its schema under the migration lock: concurrent first
    opens all succeed, and the schema is created once."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4) as pool:
        futures = [pool.submit(_open_and_count, pg_url, str(tmp_path / f"c{i}")) for i in range(4)]
        assert [f.result(timeout=120) for f in futures] == [0, 0, 0, 0]
    with om3db.connect(pg_url, vectors=tmp_path / "after") as db:
        assert db._store.schema_revision() == "0004"


def _open_and_count(url: str, vectors: str) -> int:
    with om3db.connect(url, vectors=vectors) as db:
        return len(db.scans())


def test_relational_queries_on_postgres_equal_sqlite(tmp_path, pg_url):
    """The relational join binds its ids as one array on PostgreSQL (a JSON array on SQLite): the same
    scans, pairs and evidence from both, and check() reads the relation tables of both."""
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig
    from om3db.synth import write_scans
    from tests.fakes import FakeColorEncoder

    root = tmp_path / "scans"
    write_scans(root, scans=3, seed=37, size="tiny")
    enc = FakeColorEncoder()
    config = IngestConfig(frame_step=4, crop=CropConfig(mode="box"))
    answers = []
    for target, vectors in ((tmp_path / "lite", None), (pg_url, tmp_path / "pgv")):
        with om3db.connect(target, vectors=vectors) as db:
            db.ingest(root, config=config, siglip=enc, dinov2=False)
            db.use_encoder("siglip", enc)
            got = []
            for kwargs in (
                {"on": "a blue object"},
                {"near": "a blue object", "within": 0.5},
                {"without": "a blue object"},
                {"relation": ("same_scan", "a blue object")},
            ):
                for m in db.search("a red object", **kwargs):
                    for h in m.hits:
                        subject = db.instance(h.subject.instance_id).mask_index
                        obj = None if h.object is None else db.instance(h.object.instance_id).mask_index
                        got.append((str(kwargs), m.scan, subject, obj, h.relation, round(h.score, 5)))
            report = db.check()
            assert report.ok and report.relations > 0, report.problems
            answers.append(sorted(got))
    assert answers[0] == answers[1] and answers[0]
