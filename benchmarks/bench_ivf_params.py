"""IVF parameters: lists (c x sqrt(N)) and k-means training (iterations, points per list) vs build, add and query cost.

On the query benchmark's clustered 1152-d vectors (``bench_query.Generator``), float16 lists as the store
builds them (``IndexIVFScalarQuantizer`` fp16, inner product, not by residual), FAISS on one thread. Per
setting: k-means training time, add rate (the first 20,000 vectors: the list assignment an ingest pays
per vector), and per nprobe recall@10 against exact search on 300 queries with the median single-query
latency (100 queries), up to the first nprobe past recall 0.99. This is how the store's
``IVF_LISTS_PER_SQRT_N``, ``IVF_TRAIN_ITERATIONS`` and ``IVF_TRAIN_POINTS_PER_LIST`` were chosen.

    .venv/bin/python benchmarks/bench_ivf_params.py --n 200000 --lists 4 2 1
    .venv/bin/python benchmarks/bench_ivf_params.py --n 200000 --lists 4 --train 25:64 10:64 10:40 6:32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_query import DIM, Generator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="vectors")
    ap.add_argument("--lists", type=float, nargs="+", default=[2.0], help="nlist = c x sqrt(N) for each c")
    ap.add_argument(
        "--train", nargs="+", default=["10:40"], help="k-means settings ITERATIONS:POINTS_PER_LIST (the store: 10:40)"
    )
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()

    import faiss

    n = args.n
    gen = Generator(n)
    with tempfile.TemporaryDirectory() as d:
        x = np.asarray(gen.write(Path(d) / "x.npy"), dtype=np.float32)
    q = gen.queries(args.queries, 1)
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    faiss.omp_set_num_threads(1)
    print(f"N={n:,}, {gen.kc} clusters, {len(q)} queries, faiss {faiss.__version__}, one thread")
    print("| lists | nlist | k-means | train s | adds /s | nprobe: recall@10, p50 ms |")
    print("|---|---:|---|---:|---:|---|")
    for c in args.lists:
        nlist = int(max(1, min(round(c * np.sqrt(n)), n // 39)))
        for setting in args.train:
            niter, per_list = (int(v) for v in setting.split(":"))
            rng = np.random.default_rng(0)
            quant = faiss.IndexFlatIP(DIM)
            ivf = faiss.IndexIVFScalarQuantizer(
                quant, DIM, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False
            )
            ivf.cp.niter, ivf.cp.min_points_per_centroid = niter, 1
            cap = per_list * nlist
            sample = x if n <= cap else x[np.sort(rng.choice(n, cap, replace=False))]
            t = time.perf_counter()
            ivf.train(sample)
            train_s = time.perf_counter() - t
            first = min(20_000, n)
            t = time.perf_counter()
            ivf.add(x[:first])
            add_rate = first / (time.perf_counter() - t)
            ivf.add(x[first:])
            cells = []
            for nprobe in (1, 2, 4, 8, 16, 32, 64):
                ivf.nprobe = nprobe
                _, got = ivf.search(q, 10)
                recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)]))
                lat = []
                for i in range(min(100, len(q))):
                    t = time.perf_counter()
                    ivf.search(q[i : i + 1], 10)
                    lat.append(time.perf_counter() - t)
                cells.append(f"{nprobe}: {recall:.3f}, {statistics.median(lat) * 1e3:.2f}")
                if recall > 0.99 or nprobe >= nlist:
                    break
            print(
                f"| {c:g}·sqrt(N) | {nlist} | {niter} it, {per_list}/list | {train_s:.2f} | {add_rate:,.0f} | "
                f"{' / '.join(cells)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
