"""Crash safety: a real ``kill -9`` of a writing process at several points, then reopen and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import om3db
from tests.test_store import make_result

REPO = Path(__file__).resolve().parents[1]

# The child pauses at a store checkpoint (or an ingest progress stage) and announces it; we kill it there.
WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
import om3db
from om3db.store import CHECKPOINT_HOOKS
from tests.test_store import make_result

def pause(stage):
    if stage == {stage!r}:
        print("PAUSED", flush=True)
        time.sleep(120)

CHECKPOINT_HOOKS.append(pause)
with om3db.connect({db!r}) as db:
    db.store.log_fraction = {fraction!r}
    db.write(make_result({scan!r}, 6, seed=7))
print("DONE", flush=True)
"""

INGEST = """
import sys, time
sys.path.insert(0, {repo!r})
import om3db
from om3db.crops import CropConfig
from om3db.ingest import IngestConfig
from tests.fakes import FakeColorEncoder

def progress(scan, stage, done, total):
    if scan == "synth_0_1" and stage == "embed":
        print("PAUSED", flush=True)
        time.sleep(120)

enc = FakeColorEncoder()
with om3db.connect({db!r}) as db:
    db.ingest({root!r}, config=IngestConfig(frame_step=5, crop=CropConfig(mode="box")), siglip=enc, dinov2=False,
              progress=progress)
"""


def kill_when_paused(code: str, timeout: float = 120.0) -> None:
    """Run ``code`` in a child, wait for it to print PAUSED, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    deadline = time.monotonic() + timeout
    try:
        line = proc.stdout.readline()
        assert line.strip() == "PAUSED", (line, proc.stderr.read() if proc.poll() is not None else "")
        assert time.monotonic() < deadline
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_consistent(db) -> None:
    """No incomplete scan; every FAISS index holds exactly the vectors SQLite holds for ready scans."""
    assert [s.name for s in db.scans(include_incomplete=True)] == [s.name for s in db.scans()]
    for row in db.store.spaces():
        index = db.store.index(row.name, row.level)
        _, ids = db.store.stored_vectors(row)
        assert sorted(index.ids().tolist()) == sorted(ids.tolist()), (row.name, row.level)


@pytest.mark.parametrize(
    "fraction", [0.25, 100.0], ids=["file", "log"]
)  # the write rewrites the index file / appends to its log
@pytest.mark.parametrize("stage,visible", [("rows_written", False), ("committed", True), ("index_saved", True)])
def test_kill_during_scan_write(tmp_path, stage, visible, fraction):
    path = tmp_path / "db"
    with om3db.connect(path) as db:
        db.write(make_result("a", 5))
    kill_when_paused(WRITER.format(repo=str(REPO), stage=stage, db=str(path), scan="b", fraction=fraction))
    log = path / "indexes" / "siglip.instance.faiss.log"
    assert log.exists() == (fraction == 100.0 and stage == "index_saved")
    with om3db.connect(path) as db:
        assert [s.name for s in db.scans()] == (["a", "b"] if visible else ["a"])
        if stage == "committed":  # SQLite has b, the index files do not: detected and rebuilt on open
            assert sorted(db.store.rebuilt) == ["dinov2.instance", "dinov2.view", "siglip.instance", "siglip.view"]
        else:
            assert db.store.rebuilt == []
        assert_consistent(db)
        db.write(make_result("b", 6, seed=7))  # resume
        assert [s.instances for s in db.scans()] == [5, 6]
        assert_consistent(db)


def test_kill_during_reingest_keeps_the_old_scan(tmp_path):
    path = tmp_path / "db"
    with om3db.connect(path) as db:
        db.write(make_result("a", 5))
        before = db.store.stored_vectors(db.store.space("siglip", "instance"))[0]
    kill_when_paused(WRITER.format(repo=str(REPO), stage="rows_written", db=str(path), scan="a", fraction=0.25))
    with om3db.connect(path) as db:
        assert [(s.name, s.instances) for s in db.scans()] == [("a", 5)]
        np.testing.assert_array_equal(db.store.stored_vectors(db.store.space("siglip", "instance"))[0], before)
        assert_consistent(db)


def test_kill_during_ingest_then_resume(tmp_path, synth_root):
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig
    from tests.fakes import FakeColorEncoder

    path = tmp_path / "db"
    kill_when_paused(INGEST.format(repo=str(REPO), db=str(path), root=str(synth_root)))
    with om3db.connect(path) as db:
        assert [s.name for s in db.scans()] == ["synth_0_0"]  # the scan being embedded is not visible
        assert_consistent(db)
        enc = FakeColorEncoder()
        out = db.ingest(
            synth_root, config=IngestConfig(frame_step=5, crop=CropConfig(mode="box")), siglip=enc, dinov2=False
        )
        assert [(o.scan, o.status) for o in out] == [("synth_0_0", "skipped"), ("synth_0_1", "ingested")]
        assert_consistent(db)
        hit = db.search(text="green", k=1, encoder=enc)[0]
        assert hit.score > 0.5
