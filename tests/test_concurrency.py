"""Concurrency with real processes: readers keep working during a write; a second writer waits or fails.
On SQLite and on PostgreSQL (``db_target``; tests/test_postgres.py has two PostgreSQL writers at once)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from om3db.errors import DatabaseBusyError
from tests.test_store import DIM, make_result, unit

REPO = Path(__file__).resolve().parents[1]

# The child writes scan "b" and holds its transaction (and the writer lock) open until `go` exists.
WRITER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import om3db
from om3db.store import CHECKPOINT_HOOKS
from tests.test_store import make_result

def wait(stage):
    if stage == "rows_written":
        print("PAUSED", flush=True)
        while not os.path.exists({go!r}):
            time.sleep(0.02)

CHECKPOINT_HOOKS.append(wait)
with om3db.connect({db}) as db:
    db.write(make_result("b", 6, seed=7))
print("DONE", flush=True)
"""


class FakeQueryEncoder:
    """FAKE query encoder for tests: every text maps to one fixed vector; identity of the stored space."""

    def __init__(self) -> None:
        from tests.test_store import IDENT

        self.identity = IDENT["siglip"]
        self.vector = unit(np.random.default_rng(3).standard_normal(DIM))

    def encode_texts(self, texts):
        return np.stack([self.vector for _ in texts])


@pytest.fixture
def paused_writer(tmp_path, db_target):
    with db_target.connect() as db:
        db.write(make_result("a", 5))
    go = tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(repo=str(REPO), go=str(go), db=db_target.code())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    line = proc.stdout.readline()
    assert line.strip() == "PAUSED", proc.stderr.read() if proc.poll() is not None else line
    yield db_target, go, proc
    go.touch()
    if proc.poll() is None:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_reader_queries_during_a_write_then_sees_it(paused_writer):
    target, go, proc = paused_writer
    enc = FakeQueryEncoder()
    t0 = time.monotonic()
    with target.connect() as reader:  # opens while another process holds the write lock and a transaction
        hits = reader.search(text="x", k=20, encoder=enc)
        assert {h.scan for h in hits} == {"a"} and len(hits) == 5
        assert time.monotonic() - t0 < 10
        go.touch()
        assert proc.stdout.readline().strip() == "DONE" and proc.wait(timeout=60) == 0
        hits = reader.search(text="x", k=20, encoder=enc)  # the reader reloads the changed index
        assert sorted({h.scan for h in hits}) == ["a", "b"] and len(hits) == 11
        vecs, ids = reader._store.stored_vectors(reader._store.space("siglip", "instance"))
        assert [h.instance_id for h in hits] == ids[np.argsort(-(vecs @ enc.vector))].tolist()


def test_second_writer_fails_naming_the_holder(paused_writer):
    target, go, proc = paused_writer
    with target.connect(lock_timeout=0.3) as db:
        with pytest.raises(DatabaseBusyError) as err:
            db.write(make_result("c", 2))
        if target.backend == "sqlite":
            assert str(err.value).startswith(
                f"{target.root}: another process is writing to this database (pid {proc.pid} on "
            )
        else:  # the URL without its password, the holder's session as the server knows it
            where = target.connect_arg.replace(":s3cret-pw@", ":***@")
            assert str(err.value).startswith(
                f"{where}: another process is writing to this database (om3db pid {proc.pid} on "
            )
        assert str(err.value).endswith("Wait for it to finish, or stop it, then retry")
        with pytest.raises(DatabaseBusyError):
            db.remove("a")
        assert [s.name for s in db.scans()] == ["a"]


def test_second_writer_waits_then_writes(paused_writer):
    target, go, proc = paused_writer
    threading.Timer(1.0, go.touch).start()
    with target.connect(lock_timeout=60) as db:
        t0 = time.monotonic()
        db.write(make_result("c", 2, seed=9))
        assert time.monotonic() - t0 >= 0.5  # it waited for the other writer
        assert proc.wait(timeout=60) == 0
        assert [(s.name, s.instances) for s in db.scans()] == [("a", 5), ("b", 6), ("c", 2)]
        index = db._store.index("siglip", "instance")
        assert index.ntotal == 13 == len(db._store.stored_vectors(db._store.space("siglip", "instance"))[1])
    assert not os.path.exists(target.root / "indexes" / "siglip.instance.faiss.tmp")
