"""SIGINT / SIGTERM during ``om3db ingest`` (through the CLI's entry point, in a real child process):
exit 130 / 143, say what was committed and how to resume, leave the database consistent; the same
command then resumes. And a signal during start-up (before any scan) is not an exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import om3db
from tests.test_crash import _read_line

REPO = Path(__file__).resolve().parents[1]

# The CLI's main() with a FAKE colour encoder registered as the siglip model id "fake-colour"; the child
# pauses (announcing PAUSED) at the given stage of the given scan, where the parent signals it.
CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
import om3db.embed
from tests.fakes import FakeColorEncoder

def pause(stage):
    print("PAUSED", flush=True)
    time.sleep(120)

real = om3db.embed.load_encoder
def load_encoder(kind, spec=None, **kw):  # model loading: where start-up spends its time
    if {stage!r} == "startup":
        pause("startup")
    return FakeColorEncoder() if spec == "fake-colour" else real(kind, spec, **kw)
om3db.embed.load_encoder = load_encoder
import om3db.ingest

real_progress_scan = {scan!r}

real_ingest = om3db.ingest.ingest_scan
def ingest_scan(scan, **kw):
    if scan.name == real_progress_scan and {stage!r} == "ingest":
        pause("ingest")
    return real_ingest(scan, **kw)
om3db.ingest.ingest_scan = ingest_scan
from om3db_cli.main import main
sys.exit(main(["ingest", {root!r}, "--db", {db!r}, "--siglip", "fake-colour", "--dinov2", "none",
               "--frame-step", "5"]))
"""


def _signal_when_paused(code: str, signum: int) -> tuple[int, str]:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        try:
            line, why = _read_line(proc.stdout.fileno(), time.monotonic() + 120)
            if line != b"PAUSED":
                proc.kill()
                err.seek(0)
                pytest.fail(f"child {why}: {err.read().decode(errors='replace')}", pytrace=False)
            os.kill(proc.pid, signum)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        err.seek(0)
        return rc, err.read().decode(errors="replace")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_between_scans_reports_committed_and_resumes(tmp_path, synth_root, signum, code):
    db = tmp_path / "db"
    child = CHILD.format(repo=str(REPO), scan="synth_0_1", stage="ingest", root=str(synth_root), db=str(db))
    rc, stderr = _signal_when_paused(child, signum)
    name = signal.Signals(signum).name
    assert rc == code, stderr
    assert "Traceback" not in stderr
    assert f"Interrupted ({name}). Committed before stopping: synth_0_0 (" in stderr
    assert "Run the same command again to resume" in stderr
    with om3db.connect(db) as d:  # consistent: the first scan whole, nothing of the second
        assert [s.name for s in d.scans(include_incomplete=True)] == ["synth_0_0"]
        assert d.check().ok
    # the same command resumes: synth_0_0 is skipped, synth_0_1 ingested
    resume = CHILD.format(repo=str(REPO), scan="none", stage="none", root=str(synth_root), db=str(db))
    done = subprocess.run([sys.executable, "-c", resume], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "synth_0_0 │ skipped" in done.stdout.replace("┃", "│") and "synth_0_1 │ ingested" in done.stdout


def test_signal_during_start_up_is_not_success(tmp_path, synth_root):
    db = tmp_path / "db"
    child = CHILD.format(repo=str(REPO), scan="none", stage="startup", root=str(synth_root), db=str(db))
    rc, stderr = _signal_when_paused(child, signal.SIGINT)
    assert (rc, "Traceback" in stderr) == (130, False), stderr
    assert "Interrupted (SIGINT). No scan was committed" in stderr
    with om3db.connect(db) as d:
        assert d.scans(include_incomplete=True) == []
