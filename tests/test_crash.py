"""Crash safety: a real ``kill -9`` of a writing process at several points, then reopen and resume (on SQLite
and on PostgreSQL: ``db_target``)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

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
with om3db.connect({db}) as db:
    db._store.log_fraction = {fraction!r}
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
with om3db.connect({db}) as db:
    db.ingest({root!r}, config=IngestConfig(frame_step=5, crop=CropConfig(mode="box")), siglip=enc, dinov2=False,
              progress=progress)
"""


def kill_when_paused(code: str, timeout: float = 120.0, before_kill=None) -> None:
    """Run ``code`` in a child, wait (at most ``timeout`` s) for it to print PAUSED, call ``before_kill()``
    when given, then SIGKILL it."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child cannot block on a full stderr pipe
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        try:
            line, why = _read_line(proc.stdout.fileno(), time.monotonic() + timeout)
            if line != b"PAUSED":
                proc.kill()
                rc = proc.wait()
                err.seek(0)
                stderr = err.read().decode(errors="replace")
                pytest.fail(f"child {why} (exit status {rc}); stdout: {line!r}; stderr:\n{stderr}", pytrace=False)
            if before_kill is not None:
                before_kill()
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _read_line(fd: int, deadline: float) -> tuple[bytes, str]:
    """The child's first stdout line without its newline, and how reading ended; never blocks past ``deadline``.

    ``readline()`` on the pipe would block for as long as a hung child stays alive, so wait with select().
    """
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return buf, "did not print PAUSED before the timeout"
        chunk = os.read(fd, 4096)
        if not chunk:
            return buf, "closed its stdout without printing PAUSED"
        buf += chunk
    return buf.split(b"\n", 1)[0].strip(), "printed something other than PAUSED first"


def test_kill_when_paused_fails_a_hung_child_in_time():
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not print PAUSED before the timeout"):
        kill_when_paused("import time; time.sleep(60)", timeout=1.0)
    assert time.monotonic() - start < 20


def test_kill_when_paused_reports_a_crashed_child():
    with pytest.raises(pytest.fail.Exception, match=r"closed its stdout(?s:.*)ZeroDivisionError"):
        kill_when_paused("1 / 0")


def assert_consistent(db) -> None:
    """No incomplete scan; every FAISS index holds exactly the vectors SQLite holds for ready scans."""
    assert [s.name for s in db.scans(include_incomplete=True)] == [s.name for s in db.scans()]
    for row in db._store.spaces():
        index = db._store.index(row.name, row.level)
        _, ids = db._store.stored_vectors(row)
        assert sorted(index.ids().tolist()) == sorted(ids.tolist()), (row.name, row.level)


@pytest.mark.parametrize(
    "fraction", [0.25, 100.0], ids=["file", "log"]
)  # the write rewrites the index file / appends to its log
@pytest.mark.parametrize("stage,visible", [("rows_written", False), ("committed", True), ("index_saved", True)])
def test_kill_during_scan_write(db_target, stage, visible, fraction):
    with db_target.connect() as db:
        db.write(make_result("a", 5))
    kill_when_paused(WRITER.format(repo=str(REPO), stage=stage, db=db_target.code(), scan="b", fraction=fraction))
    log = db_target.root / "indexes" / "siglip.instance.faiss.log"
    assert log.exists() == (fraction == 100.0 and stage == "index_saved")
    with db_target.connect() as db:
        assert [s.name for s in db.scans()] == (["a", "b"] if visible else ["a"])
        if stage == "committed":  # SQLite has b, the index files do not: detected and rebuilt on open
            assert sorted(db._store.rebuilt) == ["dinov2.instance", "dinov2.view", "siglip.instance", "siglip.view"]
        else:
            assert db._store.rebuilt == []
        assert_consistent(db)
        db.write(make_result("b", 6, seed=7))  # resume
        assert [s.instances for s in db.scans()] == [5, 6]
        assert_consistent(db)


def test_kill_during_reingest_keeps_the_old_scan(db_target):
    with db_target.connect() as db:
        db.write(make_result("a", 5))
        before = db._store.stored_vectors(db._store.space("siglip", "instance"))[0]
    kill_when_paused(WRITER.format(repo=str(REPO), stage="rows_written", db=db_target.code(), scan="a", fraction=0.25))
    with db_target.connect() as db:
        assert [(s.name, s.instances) for s in db.scans()] == [("a", 5)]
        np.testing.assert_array_equal(db._store.stored_vectors(db._store.space("siglip", "instance"))[0], before)
        assert_consistent(db)


def test_kill_during_ingest_then_resume(db_target, synth_root):
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig
    from tests.fakes import FakeColorEncoder

    kill_when_paused(INGEST.format(repo=str(REPO), db=db_target.code(), root=str(synth_root)))
    with db_target.connect() as db:
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
