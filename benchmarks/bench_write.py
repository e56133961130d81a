"""Store write throughput: instances/s and MB/s through ``Store.write_scan`` vs the raw sqlite3 ceiling.

Shapes (scans of ``--per-scan`` instances, 5 views each):
  a) SigLIP instance vectors only (view_vectors=False, one 1152-d space)
  b) SigLIP + DINOv2 instance vectors only (view_vectors=False)
  c) full OpenMask3D++ shape: SigLIP + DINOv2, instance vectors and 5 per-view vectors per space
Each scan is written with ``save=False`` and one ``flush()`` follows (as ``Database.ingest`` does); the
flush (index files saved, and spaces that crossed the exact/IVF threshold rebuilt and trained once) is
reported separately. Into a fresh database at the store's default IVF threshold, unless
``--ivf-threshold`` says otherwise. The raw ceiling writes only the float16 vector bytes with bare
``sqlite3`` (one blob per scan and space, as the store lays them out; WAL, synchronous=NORMAL, same page
size, one commit per scan). MB = float16 vector bytes. ``--base N`` first fills the database with N other
instances of the same shape (untimed, flushed): with N past the IVF threshold the timed writes add to a
trained IVF, the steady state of a large database.

    .venv/bin/python benchmarks/bench_write.py --instances 20000 --full-instances 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from om3db.records import EncoderIdentity, IngestReport, IngestResult, InstanceRecord, View
from om3db.store import Store

DIMS = {"siglip": 1152, "dinov2": 2048}
SHAPES = {"a": (("siglip",), False), "b": (("siglip", "dinov2"), False), "c": (("siglip", "dinov2"), True)}


def _pool(dim: int, n: int, rng) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_results(
    spaces, keep_views: bool, scans: int, per_scan: int, views: int, seed: int = 0, prefix: str = "s"
) -> list[IngestResult]:
    """Synthetic scans; vectors are rows of a shared random pool (the content does not matter here)."""
    return list(iter_results(spaces, keep_views, scans, per_scan, views, seed, prefix))


def iter_results(spaces, keep_views: bool, scans: int, per_scan: int, views: int, seed: int = 0, prefix: str = "s"):
    """:func:`make_results` one scan at a time (the ``--base`` scans are never all held in memory)."""
    rng = np.random.default_rng(seed)
    pools = {s: _pool(DIMS[s], 4096, rng) for s in spaces}
    enc = {s: EncoderIdentity(f"bench/{s}", "r", DIMS[s]) for s in spaces}
    box = np.zeros((3, 4), np.int32)
    for k in range(scans):
        insts = []
        for i in range(per_scan):
            o = (k * per_scan + i) * (views + 1) % (4096 - views - 1)
            vs = tuple(View(j, 100 + j, box, j != views - 1) for j in range(views))
            pidx = np.arange(i * 100, i * 100 + 500, dtype=np.int32)
            insts.append(
                InstanceRecord(
                    i,
                    pidx,
                    np.zeros(3, np.float32),
                    np.ones(3, np.float32),
                    np.full(3, 0.5, np.float32),
                    1.0,
                    vs,
                    {s: pools[s][o + 1 : o + 1 + views] for s in spaces} if keep_views else {},
                    {s: pools[s][o] for s in spaces},
                )
            )
        rep = IngestReport(f"{prefix}{k}", 10, 10, {}, per_scan, [], {})
        yield IngestResult(f"{prefix}{k}", "/bench", "fp", {"view_vectors": keep_views}, enc, insts, rep, 100000, 10)


def vector_bytes(results) -> int:
    total = 0
    for r in results:
        for inst in r.instances:
            total += sum(v.size * 2 for v in inst.vectors.values())
            total += sum(v.size * 2 for v in inst.view_vectors.values())
    return total


def run_store(
    results, *, raw_sqlite: bool = True, ivf_threshold: int | None = None, base=lambda: ()
) -> tuple[float, float]:
    """(seconds for all write_scan calls, seconds for the final flush) into a fresh database, or into one
    already holding the scans ``base()`` yields (written and flushed untimed). The writer lock is held
    throughout, as ``Database.ingest`` holds it."""
    with tempfile.TemporaryDirectory() as d:
        options = {} if ivf_threshold is None else {"ivf_threshold": ivf_threshold}
        store = Store(d, raw_sqlite=raw_sqlite, **options)
        with store.lock:
            for r in base():
                store.write_scan(r, settings={}, save=False)
            store.flush()
            t0 = time.perf_counter()
            for r in results:
                store.write_scan(r, settings={}, save=False)
            t1 = time.perf_counter()
            store.flush()
            t2 = time.perf_counter()
        store.close()
    return t1 - t0, t2 - t1


def run_raw(results) -> float:
    """The same float16 vector bytes through bare sqlite3, one blob per (scan, space), one commit per scan."""
    with tempfile.TemporaryDirectory() as d:
        c = sqlite3.connect(os.path.join(d, "raw.db"))
        c.execute("PRAGMA page_size=65536")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("CREATE TABLE v(id INTEGER PRIMARY KEY, s INT, scan INT, data BLOB)")
        c.commit()
        spaces = sorted(results[0].encoders)
        t0 = time.perf_counter()
        for k, r in enumerate(results):
            rows = []
            for s_id, s in enumerate(spaces):
                inst = np.stack([x.vectors[s] for x in r.instances]).astype("<f2")
                rows.append((s_id, k, inst.tobytes()))
                if r.instances[0].view_vectors:
                    vv = np.concatenate([x.view_vectors[s] for x in r.instances]).astype("<f2")
                    rows.append((s_id + 10, k, vv.tobytes()))
            c.executemany("INSERT INTO v(s, scan, data) VALUES (?, ?, ?)", rows)
            c.commit()
        el = time.perf_counter() - t0
        c.close()
    return el


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=20000, help="instances per run, shapes a and b")
    ap.add_argument("--full-instances", type=int, default=10000, help="instances per run, shape c")
    ap.add_argument("--per-scan", type=int, default=200)
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--core", action="store_true", help="also time the portable SQLAlchemy Core path")
    ap.add_argument("--ivf-threshold", type=int, default=None, help="the store's (default: its DEFAULT_IVF_THRESHOLD)")
    ap.add_argument(
        "--base",
        type=int,
        default=0,
        help="instances already in the database (written and flushed untimed): steady-state adds",
    )
    ap.add_argument("--shapes", default="abc", help="which shapes to run (letters)")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here, and its figure as .png")
    args = ap.parse_args()
    rows = []
    print(
        "| shape | instances | writes inst/s | writes + flush inst/s | store MB/s | flush s | raw sqlite3 inst/s "
        "| raw MB/s |" + (" Core path inst/s |" if args.core else "")
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.core else ""))
    for label, (spaces, keep) in SHAPES.items():
        if label not in args.shapes:
            continue
        n = args.full_instances if keep else args.instances
        results = make_results(spaces, keep, n // args.per_scan, args.per_scan, args.views)

        def base(spaces=spaces, keep=keep):
            return iter_results(
                spaces, keep, args.base // args.per_scan, args.per_scan, args.views, seed=1, prefix="base"
            )

        total = len(results) * args.per_scan
        mb = vector_bytes(results) / 1e6
        store = [run_store(results, ivf_threshold=args.ivf_threshold, base=base) for _ in range(args.repeats)]
        raw = [run_raw(results) for _ in range(args.repeats)]
        w = statistics.median(s[0] for s in store)
        f = statistics.median(s[1] for s in store)
        r = statistics.median(raw)
        line = (
            f"| {label}) {'+'.join(spaces)} {'instance + view' if keep else 'instance only'} | {total} | "
            f"{total / w:,.0f} | {total / (w + f):,.0f} | {mb / (w + f):,.0f} | {f:.2f} | {total / r:,.0f} | "
            f"{mb / r:,.0f} |"
        )
        if args.core:
            c = statistics.median(
                sum(run_store(results, raw_sqlite=False, ivf_threshold=args.ivf_threshold, base=base))
                for _ in range(args.repeats)
            )
            line += f" {total / c:,.0f} |"
        print(line, flush=True)
        shape = f"{label}) {'+'.join(spaces)} {'instance + view' if keep else 'instance only'}"
        rows.append({"shape": shape, "instances": total, "writes": total / w, "writes_flush": total / (w + f),
                     "flush_s": f, "raw": total / r, "store_mb_s": mb / (w + f)})  # fmt: skip
    if args.out:
        from _plots import plot_write  # benchmarks/_plots.py: the throughput figure next to the JSON

        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"args": meta, "rows": rows}, indent=1))
        print(f"wrote {args.out} and {plot_write(args.out)}")


if __name__ == "__main__":
    main()
