"""Serial ingest vs ``--ray local`` (Ray actors holding the models, one writer), in scans/s.

``--scans`` synthetic scans (om3db.synth, ``--size``) ingested with random SigLIP + DINOv2 models of
``--model-size`` (om3db.random_models; the real loaders, no downloads) and box crops, into fresh SQLite
databases: once serially (``Database.ingest``), once with ``ray="local"`` and ``--workers`` actors. The
Ray time is reported twice: with the local Ray start (what ``om3db ingest --ray local`` costs from a
cold process) and with Ray already running (the steady state: a long ingest, or a cluster that is up).
Both include starting the actors and shipping the models to them. The databases are compared: same
scans, instances and vectors.

    .venv/bin/python benchmarks/bench_ray.py --scans 8 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import om3db
from om3db.ingest import IngestConfig


def _ingest(db_path: Path, scans: Path, encoders: dict, config, **kw) -> float:
    t = time.perf_counter()
    with om3db.connect(db_path) as db:
        out = db.ingest(scans, config=config, siglip=encoders["siglip"], dinov2=encoders["dinov2"], **kw)
    assert all(o.status == "ingested" for o in out), out
    return time.perf_counter() - t


def _same(a: Path, b: Path) -> float:
    """Max |difference| of the stored vectors (ids and scans must match exactly)."""
    worst = 0.0
    with om3db.connect(a) as x, om3db.connect(b) as y:
        assert [(s.name, s.instances) for s in x.scans()] == [(s.name, s.instances) for s in y.scans()]
        for row in x._store.spaces():
            va, ia = x._store.stored_vectors(row)
            vb, ib = y._store.stored_vectors(y._store.space(row.name, row.level))
            assert np.array_equal(ia, ib)
            worst = max(worst, float(np.abs(va - vb).max()) if len(va) else 0.0)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--size", default="tiny", help="om3db.synth scan size")
    ap.add_argument("--model-size", default="tiny", help="om3db.random_models size")
    ap.add_argument("--frame-step", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from om3db.embed import load_dinov2, load_siglip
    from om3db.random_models import write_random_dinov2, write_random_siglip
    from om3db.synth import write_scans

    work = Path(tempfile.mkdtemp(prefix="om3db-bench-ray-"))
    write_scans(work / "scans", scans=args.scans, seed=3, size=args.size)
    encoders = {
        "siglip": load_siglip(
            write_random_siglip(work / "siglip", size=args.model_size, seed=0), device="cpu", dtype="float32"
        ),
        "dinov2": load_dinov2(
            write_random_dinov2(work / "dinov2", size=args.model_size, seed=0), device="cpu", dtype="float32"
        ),
    }
    config = IngestConfig(frame_step=args.frame_step)
    serial = _ingest(work / "serial", work / "scans", encoders, config)
    cold = _ingest(work / "ray-cold", work / "scans", encoders, config, ray="local", ray_workers=args.workers)
    import ray

    t = time.perf_counter()
    os.environ["RAY_worker_niceness"] = "0"  # as om3db's own local start does (Ray's default is 15)
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    start = time.perf_counter() - t
    warm = _ingest(work / "ray-warm", work / "scans", encoders, config, ray="local", ray_workers=args.workers)
    ray.shutdown()
    diff = max(_same(work / "serial", work / "ray-cold"), _same(work / "serial", work / "ray-warm"))
    n = args.scans
    print("| run | seconds | scans/s | vs serial |\n|---|---|---|---|")
    for label, s in (
        ("serial", serial),
        (f"--ray local, {args.workers} workers, Ray started by the ingest", cold),
        (f"--ray local, {args.workers} workers, Ray already running", warm),
    ):
        print(f"| {label} | {s:.1f} | {n / s:.3f} | x{serial / s:.2f} |")
    print(f"\nlocal Ray start alone: {start:.1f} s; max |vector difference| ray vs serial: {diff:.2e}")
    print(f"(cpus: {os.cpu_count()}; {n} {args.size} scans, {args.model_size} models)", file=sys.stderr)


if __name__ == "__main__":
    main()
