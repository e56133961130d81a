"""Soak: N reader processes search while one writer ingests many scans into the same database.

Measures what a shared deployment sees: reads done, read errors (must be 0), and single-query search
latency (p50 / p99) while idle and while the writer ingests. Tiny random SigLIP / DINOv2 models of the
real architectures are written once (om3db.random_models) and loaded through the real loaders.

    .venv/bin/python benchmarks/bench_soak.py --readers 8 --scans 20 --idle 20 --out soak.json

Phases: the database starts with 2 scans; readers search for ``--idle`` seconds with no writer, then the
writer ingests ``--scans`` more (one atomic commit each) while the readers go on; readers stop when the
writer is done (or after ``--max-seconds``). Each reader opens the database once and searches in a loop,
checking every hit's scan is a complete one (a half-written scan would be an error).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _reader(db: str, siglip: str, phase, stop, ready, results, index: int) -> None:
    import torch

    torch.set_num_threads(1)
    import om3db

    lat = {"idle": [], "write": []}
    errors: list[str] = []
    texts = ["a red object", "a blue object", "a chair", "a green box"]
    with om3db.connect(db, create=False) as d:
        d.use_encoder("siglip", siglip)
        d.search(text="warm up", k=1)  # model loaded, index read: only then is this reader measured
        ready.put(index)
        i = 0
        while not stop.is_set():
            which = "write" if phase.is_set() else "idle"
            t0 = time.perf_counter()
            try:
                hits = d.search(text=texts[(i + index) % len(texts)], k=5)
                ready = {s.name for s in d.scans()}
                if any(h.scan not in ready for h in hits):
                    errors.append("a hit from a scan that is not complete")
            except Exception as exc:  # noqa: BLE001 - every failure is counted, that is the measurement
                errors.append(f"{type(exc).__name__}: {exc}")
            lat[which].append(time.perf_counter() - t0)
            i += 1
    results.put({"reader": index, "latency": lat, "errors": errors})


def _pct(xs: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 2) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--scans", type=int, default=20)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of reads before the writer starts")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import om3db
    from om3db.random_models import write_random_dinov2, write_random_siglip
    from om3db.synth import write_scans

    work = Path(args.workdir or tempfile.mkdtemp(prefix="om3db-soak-"))
    siglip, dinov2 = work / "siglip", work / "dinov2"
    if not siglip.exists():
        write_random_siglip(siglip, size="tiny", seed=0)
        write_random_dinov2(dinov2, size="tiny", seed=0)
    first, rest = work / "first", work / "rest"
    if not first.exists():
        write_scans(first, scans=2, seed=0, size="tiny")
        write_scans(rest, scans=args.scans, seed=1, size="tiny")
    db = work / "db"
    with om3db.connect(db) as d:
        d.ingest(first, siglip=str(siglip), dinov2=str(dinov2))

    ctx = mp.get_context("spawn")
    phase, stop, ready, results = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(str(db), str(siglip), phase, stop, ready, results, i))
        for i in range(args.readers)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every reader has loaded its model and searched once
        ready.get(timeout=600)
    time.sleep(args.idle)
    phase.set()
    t0 = time.perf_counter()
    with om3db.connect(db) as d:
        out = d.ingest(rest, siglip=str(siglip), dinov2=str(dinov2))
    write_s = time.perf_counter() - t0
    stop.set()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    idle = [x for r in got for x in r["latency"]["idle"]]
    during = [x for r in got for x in r["latency"]["write"]]
    errors = [e for r in got for e in r["errors"]]
    with om3db.connect(db, create=False) as d:
        check = d.check()
        scans = len(d.scans())
    report = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "readers": args.readers,
        "scans_written": sum(o.status == "ingested" for o in out),
        "write_seconds": round(write_s, 2),
        "scans_per_s": round(len(out) / write_s, 3),
        "reads": len(idle) + len(during),
        "reads_idle": len(idle),
        "reads_during_write": len(during),
        "read_errors": len(errors),
        "error_examples": errors[:5],
        "search_ms_idle": {"p50": _pct(idle, 50), "p99": _pct(idle, 99)},
        "search_ms_during_write": {"p50": _pct(during, 50), "p99": _pct(during, 99)},
        "final_scans": scans,
        "check_ok": check.ok,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
