"""benchmarks/device_check.sh --dry-run: the GPU check's steps at toy size on the CPU, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.sh"


def _run(*args: str, tmp_path: Path, timeout: int = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dry_run_writes_the_report(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from device_check import REPORT_KEYS
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "report"
    done = _run("--dry-run", "--out", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report) and report["dry_run"] is True
    assert report["install"] == {"all": "skipped (dry run)"}
    assert report["device"]["device"] == "cpu" and "bf16_native" in report["device"]
    faiss = report["faiss"]
    assert faiss["status"] == "ok" and faiss["n"] == 8192, faiss
    for row in faiss["indexes"].values():
        assert {"add_rate_per_s", "recall_at_10", "single_p50_ms", "single_p99_ms", "batch_p50_ms_per_query"} <= set(
            row
        )
        assert row["recall_at_10"] > 0.5
    enc = report["encoders"]
    assert enc["status"] == "ok", enc
    for kind in ("siglip", "dinov2", "sam"):
        assert {"achieved_tflops", "peak_tflops", "efficiency", "dtype", "items_per_s"} <= set(enc[kind])
    assert enc["sam"]["model_type"] == "transformers"  # the device needs no segment-anything
    ingest = report["ingest"]
    assert ingest["status"] == "ok" and ingest["mode"] in ("pipeline", "model-stages"), ingest
    assert ingest["crops"] > 0 and set(ingest["crops_per_s"]) == {"siglip", "dinov2"}
    assert {"sam", "siglip", "dinov2"} <= set(ingest["seconds_per_stage"])
    md = (out / "report.md").read_text()
    assert md.startswith("# om3db device check (dry run)") and "## FAISS" in md and "## Ingest" in md


def test_help_and_bad_arguments(tmp_path):
    done = _run("--bogus", tmp_path=tmp_path, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == "device_check.sh: unknown argument --bogus (use --out DIR, --dry-run)"
    assert _run("--help", tmp_path=tmp_path, timeout=30).stdout.startswith("om3db device check: ")
