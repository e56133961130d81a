"""PostgreSQL vs SQLite for the metadata: write throughput, search latency and a cold cache's catch-up.

For each backend, on a fresh database:
- write: ``--scans`` scans of ``--per-scan`` instances in the full OpenMask3D++ shape (SigLIP 1152-d +
  DINOv2 2048-d, instance vectors and 5 per-view vectors each; bench_write.py's generator) through
  ``Store.write_scan(save=False)`` and one ``flush()``, as ``Database.ingest`` writes; instances/s;
- search: ``db.search(text=..., k=10)`` single queries (a fixed query encoder, so the time is the FAISS
  search plus the metadata of the hits), p50 / p99 over ``--queries``; and the same with a scan filter
  (its allowed ids come from SQL);
- open with an empty FAISS folder (another machine's first open): the indexes rebuilt from the database.

PostgreSQL: ``--url`` (an empty database), else a throwaway server is started like the tests do
(Debian's postgresql, initdb in a temp folder, 127.0.0.1, fsync and synchronous_commit on: durable like
SQLite's WAL with synchronous=NORMAL is not, so PostgreSQL pays more per commit).

    .venv/bin/python benchmarks/bench_backends.py --scans 50 --per-scan 200 --queries 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_write import DIMS, iter_results  # noqa: E402

import om3db  # noqa: E402
from om3db.records import EncoderIdentity  # noqa: E402


class FixedQueries:
    """A query encoder with the bench spaces' identity: text i -> a fixed random unit vector."""

    def __init__(self, n: int, seed: int = 1) -> None:
        self.identity = EncoderIdentity("bench/siglip", "r", DIMS["siglip"])
        x = np.random.default_rng(seed).standard_normal((n, DIMS["siglip"])).astype(np.float32)
        self.q = x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_texts(self, texts):
        return np.stack([self.q[int(t.split()[-1]) % len(self.q)] for t in texts])


def run(name: str, connect, args) -> dict:
    out = {"backend": name}
    with connect("w") as db:
        store = db._store
        n = 0
        t0 = time.perf_counter()
        for res in iter_results(("siglip", "dinov2"), True, args.scans, args.per_scan, 5):
            store.write_scan(res, settings={"key": None}, save=False)
            n += len(res.instances)
        t1 = time.perf_counter()
        with store.lock:
            store.flush()
        t2 = time.perf_counter()
        out.update(instances=n, write_s=t1 - t0, flush_s=t2 - t1, inst_per_s=n / (t2 - t0))
        enc = FixedQueries(args.queries)
        db.search(text="q 0", k=10, encoder=enc, template="{}")  # load the index
        for label, kw in (("search", {}), ("search_filtered", {"scans": ["s1", "s7"]})):
            times = []
            for i in range(args.queries):
                t = time.perf_counter()
                hits = db.search(text=f"q {i}", k=10, encoder=enc, template="{}", **kw)
                times.append(time.perf_counter() - t)
                assert len(hits) == 10
            times.sort()
            out[f"{label}_p50_ms"] = 1000 * statistics.median(times)
            out[f"{label}_p99_ms"] = 1000 * times[int(0.99 * (len(times) - 1))]
    t = time.perf_counter()
    with connect("cold") as db:  # an empty FAISS folder: every index rebuilt from the database
        out["cold_open_s"] = time.perf_counter() - t
        out["rebuilt"] = len(db._store.rebuilt)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=50)
    ap.add_argument("--per-scan", type=int, default=200)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--url", help="an empty PostgreSQL database (default: start a throwaway server)")
    ap.add_argument(
        "--threads", type=int, default=1, help="FAISS OpenMP threads (1: stable latencies on 2 shared cores)"
    )
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="om3db-bench-"))
    server = None
    url = args.url
    if url is None:
        from tests.fixtures_postgres import start_pg_server

        server = start_pg_server(fsync=True)
        url = server.url(server.create_db())
    try:
        rows = [
            run(
                "sqlite",
                lambda cache: om3db.connect(work / "lite", ivf_threshold=10**9) if cache == "w" else _cold_copy(work),
                args,
            ),
            run(
                "postgresql", lambda cache: om3db.connect(url, vectors=work / f"pg-{cache}", ivf_threshold=10**9), args
            ),
        ]
    finally:
        if server is not None:
            from tests.fixtures_postgres import stop_pg_server

            stop_pg_server(server)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in r.items()) + " |")
    lite, pg = rows
    print(
        f"\nPostgreSQL / SQLite: write throughput x{pg['inst_per_s'] / lite['inst_per_s']:.2f}, "
        f"search p50 x{pg['search_p50_ms'] / lite['search_p50_ms']:.2f}, "
        f"filtered search p50 x{pg['search_filtered_p50_ms'] / lite['search_filtered_p50_ms']:.2f}, "
        f"cold open x{pg['cold_open_s'] / lite['cold_open_s']:.2f}"
    )
    print(f"(cpus: {os.cpu_count()}, FAISS threads: {args.threads})", file=sys.stderr)


def _cold_copy(work: Path):
    """SQLite's cold open: the same database file in a folder without index files."""
    import shutil

    cold = work / "lite-cold"
    if not cold.exists():
        cold.mkdir()
        for f in (work / "lite").glob("om3db.sqlite*"):
            shutil.copy2(f, cold / f.name)
    return om3db.connect(cold, ivf_threshold=10**9)


if __name__ == "__main__":
    main()
