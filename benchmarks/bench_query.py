"""Query latency and ingest write throughput: om3db vs OpenMask3D's per-scan .npy files vs LanceDB.

One run measures, on the same clustered 1152-d unit vectors and the same queries:
  * om3db's vector index (exact FAISS, and the automatic IVF from the store's threshold on, at its
    store-tuned nprobe and at the smallest nprobe matching each LanceDB index's recall@10),
  * OpenMask3D's way: one .npy file per scan (100 instances each) loaded and scanned with numpy per query,
    warm (page cache) and cold (files evicted with posix_fadvise(DONTNEED) before every query),
  * LanceDB: brute force and its ANN indexes (IVF_HNSW_SQ; IVF_PQ with refine on request), build time included,
and, when the store is available, instances/s written through om3db's store (SQLite + FAISS).

Usage (see benchmarks/README.md):
    .venv/bin/python benchmarks/bench_query.py --sizes 10000 100000 1000000 --out results.json
    .venv/bin/python benchmarks/bench_query.py --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("LANCE_LOG", "error")
os.environ.setdefault("LANCEDB_LOG", "error")

DIM = 1152
K = 10
TARGET_RECALL = 0.95
BATCH = 32


# ---------------------------------------------------------------- data


def cluster_count(n: int) -> int:
    """A few thousand clusters at 1M; ~300 instances per cluster on average (object classes x scans)."""
    return int(min(3000, max(30, n // 300)))


class Generator:
    """Clustered unit vectors that look like object embeddings (not axis aligned, no per-dim structure).

    x = 0.5 * m + c_k + B_k z + noise, then L2-normalised, where m is a shared mean direction (real
    embeddings live in a cone), c_k a cluster centre drawn from a power-law spectrum in a random 256-d
    subspace (centres correlate like semantic classes), B_k a per-cluster random 8-d basis with its own
    scale (anisotropic spread), cluster sizes log-normal (many chairs, few pianos). Typical cosines:
    ~0.8 within a cluster, ~0.2-0.4 across clusters.
    """

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n, self.seed = n, seed
        self.kc = cluster_count(n)
        self.mean = _unit(rng.standard_normal(DIM)).astype(np.float32)
        self.text_mean = _unit(rng.standard_normal(DIM)).astype(np.float32)
        basis = rng.standard_normal((256, DIM)).astype(np.float32) / np.sqrt(DIM)
        spectrum = (np.arange(1, 257) ** -0.5).astype(np.float32)
        z = rng.standard_normal((self.kc, 256)).astype(np.float32) * spectrum
        c = z @ basis
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.spread = rng.standard_normal((self.kc, 8, DIM)).astype(np.float32) / np.sqrt(DIM)
        self.spread *= (np.linspace(1.0, 0.3, 8, dtype=np.float32))[None, :, None]
        self.spread *= rng.uniform(0.3, 0.6, (self.kc, 1, 1)).astype(np.float32)
        w = rng.lognormal(0.0, 1.0, self.kc)
        self.weights = w / w.sum()

    def _points(self, labels: np.ndarray, rng, noise: float, mean: np.ndarray) -> np.ndarray:
        out = rng.standard_normal((len(labels), DIM), dtype=np.float32)
        out *= noise / np.sqrt(DIM)
        out += 0.5 * mean
        out += self.centres[labels]
        order = np.argsort(labels, kind="stable")
        sl = labels[order]
        starts = np.flatnonzero(np.r_[True, sl[1:] != sl[:-1]])
        ends = np.r_[starts[1:], len(sl)]
        z = rng.standard_normal((len(labels), 8), dtype=np.float32) * 1.6
        for s, e in zip(starts, ends, strict=True):
            rows = order[s:e]
            out[rows] += z[rows] @ self.spread[sl[s]]
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def write(self, path: Path, chunk: int = 50_000) -> np.memmap:
        """All n vectors as float16 (n, DIM) in ``path``; generated chunk by chunk (bounded memory)."""
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(self.n, DIM))
        for i, start in enumerate(range(0, self.n, chunk)):
            rng = np.random.default_rng([self.seed, 1, i])
            m = min(chunk, self.n - start)
            labels = rng.choice(self.kc, size=m, p=self.weights)
            mm[start : start + m] = self._points(labels, rng, 0.35, self.mean)
        mm.flush()
        return mm

    def queries(self, count: int, salt: int) -> np.ndarray:
        """Half image-like (near an instance), half text-like (modality gap: other mean, more noise)."""
        rng = np.random.default_rng([self.seed, 2, salt])
        labels = rng.choice(self.kc, size=count, p=self.weights)
        q = self._points(labels, rng, 0.5, self.mean)
        half = count // 2
        q[half:] = self._points(labels[half:], rng, 0.8, self.text_mean)
        return np.ascontiguousarray(q, dtype=np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def chunks(mm: np.ndarray, size: int = 100_000):
    for start in range(0, len(mm), size):
        yield start, np.ascontiguousarray(mm[start : start + size], dtype=np.float32)


# ---------------------------------------------------------------- measuring


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def time_single(search_one, queries: np.ndarray, budget_s: float, min_q: int = 5):
    """Per-query latencies (s) and the ids found; stops after ``budget_s`` once ``min_q`` queries ran."""
    lat, ids = [], []
    t_start = time.perf_counter()
    for q in queries:
        t0 = time.perf_counter()
        ids.append(search_one(q))
        lat.append(time.perf_counter() - t0)
        if len(lat) >= min_q and time.perf_counter() - t_start > budget_s:
            break
    return np.array(lat), np.array(ids)


def time_batches(search_many, queries: np.ndarray, budget_s: float, min_b: int = 2):
    """Median per-query latency (s) over batches of BATCH queries."""
    per_q = []
    t_start = time.perf_counter()
    for start in range(0, len(queries) - BATCH + 1, BATCH):
        t0 = time.perf_counter()
        search_many(queries[start : start + BATCH])
        per_q.append((time.perf_counter() - t0) / BATCH)
        if len(per_q) >= min_b and time.perf_counter() - t_start > budget_s:
            break
    return float(np.median(per_q)) if per_q else float("nan")


def row(system, n, lat, ids, truth, batch_s, build_s=None, note=""):
    return {
        "system": system,
        "n": int(n),
        "queries": int(len(lat)),
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "batch_ms_per_query": batch_s * 1e3,
        "recall@10": recall_at_k(ids, truth[: len(ids)]),
        "build_s": build_s,
        "note": note,
        "loadavg_1min": os.getloadavg()[0],
    }


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg} (peak RSS {peak_rss_gb():.1f} GB)", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- om3db


def ivf_params(n: int) -> int:
    """nlist as om3db's store chooses it (``om3db.store.vectors.ivf_nlist``: 2 * sqrt(N), at most N/39)."""
    from om3db.store.vectors import ivf_nlist

    return ivf_nlist(n)


class RawFaiss:
    """Fallback (``--raw-faiss``): FAISS used directly with the parameters om3db's store uses."""

    label = "raw faiss (store parameters)"

    def __init__(self, kind: str, n: int):
        import faiss

        self.faiss, self.kind = faiss, kind
        if kind == "exact":
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        else:
            nlist = ivf_params(n)
            self.quantizer = faiss.IndexFlatIP(DIM)
            self.index = faiss.IndexIVFFlat(self.quantizer, DIM, nlist, faiss.METRIC_INNER_PRODUCT)
            from om3db.store.vectors import IVF_TRAIN_ITERATIONS

            self.index.cp.niter = IVF_TRAIN_ITERATIONS
        self.nlist = getattr(self.index, "nlist", None)

    def build(self, mm: np.ndarray, rng) -> None:
        if self.kind == "ivf":
            from om3db.store.vectors import IVF_TRAIN_POINTS_PER_LIST

            cap = IVF_TRAIN_POINTS_PER_LIST * self.index.nlist
            sample = np.sort(rng.choice(len(mm), size=min(len(mm), cap), replace=False))
            self.index.train(np.asarray(mm[sample], dtype=np.float32))
        for start, x in chunks(mm):
            self.index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))

    def set_nprobe(self, nprobe: int) -> None:
        self.index.nprobe = nprobe

    def search(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, K)[1]


def make_om3db(kind: str, n: int, raw: bool):
    if raw:
        return RawFaiss(kind, n)
    return StoreIndex(kind, n)


class StoreIndex:
    """om3db's own vector index class, ``om3db.store.VectorIndex``, as the store builds it.

    exact: ``VectorIndex(DIM)`` + ``add`` in chunks (bounded memory); ivf: ``VectorIndex.build(kind="auto")``
    on the whole float32 matrix, i.e. the store's own nlist, training sample and nprobe tuning.
    """

    label = "om3db.store.VectorIndex"

    def __init__(self, kind: str, n: int):
        from om3db.store import DEFAULT_IVF_THRESHOLD, IndexChoice, VectorIndex

        self.kind, self.VectorIndex = kind, VectorIndex
        self.threshold = DEFAULT_IVF_THRESHOLD
        self.vi = VectorIndex(DIM, IndexChoice("flat"), use_gpu=False) if kind == "exact" else None
        self.nlist = None

    def build(self, mm: np.ndarray, rng) -> None:
        if self.kind == "exact":
            for start, x in chunks(mm):
                self.vi.add(x, np.arange(start, start + len(x), dtype=np.int64))
            return
        x = np.asarray(mm, dtype=np.float32)
        kind = "auto" if len(x) >= self.threshold else "ivf"  # below the threshold only in --quick runs
        self.vi = self.VectorIndex.build(x, np.arange(len(x), dtype=np.int64), kind=kind, use_gpu=False)
        del x
        self.nlist, self.store_nprobe = self.vi.choice.nlist, self.vi.choice.nprobe

    def set_nprobe(self, nprobe: int) -> None:
        # benchmark-only sweep: VectorIndex has no public nprobe setter (the store tunes it itself)
        self.vi._inner.nprobe = nprobe

    def search(self, q: np.ndarray) -> np.ndarray:
        return self.vi.search(q, K)[1]


def tune_nprobe(index, tune_q: np.ndarray, tune_truth: np.ndarray) -> tuple[int, list]:
    """Smallest nprobe with recall@10 >= TARGET_RECALL on tuning queries (not the evaluation queries)."""
    sweep = []
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
        if nprobe > index.nlist:
            break
        index.set_nprobe(nprobe)
        r = recall_at_k(index.search(tune_q), tune_truth)
        sweep.append((nprobe, r))
        if r >= TARGET_RECALL:
            return nprobe, sweep
    return sweep[-1][0], sweep


class faiss_threads:  # noqa: N801 - used as a context manager
    """FAISS OpenMP threads inside the block (None: all cores), restored after."""

    def __init__(self, threads):
        import faiss

        self.faiss, self.threads = faiss, threads or os.cpu_count()

    def __enter__(self):
        self.before = self.faiss.omp_get_max_threads()
        self.faiss.omp_set_num_threads(self.threads)

    def __exit__(self, *exc):
        self.faiss.omp_set_num_threads(self.before)


def bench_om3db_exact(mm, n, queries, tune_q, args, rng):
    """The exact index: its row, and the ground truth of the evaluation and tuning queries."""
    exact = make_om3db("exact", n, args.raw_faiss)
    t0 = time.perf_counter()
    with faiss_threads(None):
        exact.build(mm, rng)
    build = time.perf_counter() - t0
    log(f"exact index built in {build:.1f}s")
    truth = exact.search(queries)
    tune_truth = exact.search(tune_q)
    lat, ids = time_single(lambda q: exact.search(q[None])[0], queries, args.budget)
    batch = time_batches(exact.search, queries, args.budget)
    rows = [row(f"om3db exact ({exact.label})", n, lat, ids, truth, batch, build)]
    exact = None  # free the index before the next one is built
    gc.collect()
    return rows, truth, tune_truth


def recall_sweep(index, queries: np.ndarray, truth: np.ndarray, enough: float, at_least: int) -> dict[int, float]:
    """recall@10 on the evaluation queries per power-of-two nprobe (and nlist), up to the first one
    reaching ``enough`` at or past ``at_least`` (or recall 1)."""
    out = {}
    for nprobe in sorted({2**i for i in range(20) if 2**i < index.nlist} | {index.nlist}):
        index.set_nprobe(nprobe)
        out[nprobe] = recall_at_k(index.search(queries), truth)
        if out[nprobe] >= 1.0 or (out[nprobe] >= enough and nprobe >= at_least):
            break
    return out


def bench_om3db_ivf(mm, n, queries, truth, tune_q, tune_truth, lance_recalls: list[float], args, rng):
    """om3db's IVF at the store's nprobe, at half / double it, and at the smallest nprobe whose
    recall@10 on the evaluation queries reaches each LanceDB index's recall in this run."""
    rows = []
    ivf = make_om3db("ivf", n, args.raw_faiss)
    t0 = time.perf_counter()
    with faiss_threads(None):
        ivf.build(mm, rng)
    build = time.perf_counter() - t0
    nprobe, sweep = tune_nprobe(ivf, tune_q, tune_truth)
    log(
        f"IVF nlist={ivf.nlist} built in {build:.1f}s; nprobe for {TARGET_RECALL} on our tuning queries={nprobe} sweep={sweep}"
    )
    base_tag = "tuned"
    if getattr(ivf, "store_nprobe", None):
        log(f"store's own tuned nprobe={ivf.store_nprobe}")
        nprobe, base_tag = ivf.store_nprobe, "store-tuned"
    curve = recall_sweep(ivf, queries, truth, max(lance_recalls, default=0.0), 2 * nprobe)
    log(f"recall@10 on the evaluation queries per nprobe: {curve}")
    matched = set()
    for bar in lance_recalls:
        ok = [p for p, r in curve.items() if r >= bar]
        if ok:
            matched.add(min(ok))
        else:
            log(f"no nprobe up to {max(curve)} reaches LanceDB's recall@10 {bar:.3f}")
    for p in sorted(({nprobe, max(1, nprobe // 2), nprobe * 2} & set(range(1, ivf.nlist + 1))) | matched):
        ivf.set_nprobe(p)
        lat, ids = time_single(lambda q: ivf.search(q[None])[0], queries, args.budget)
        batch = time_batches(ivf.search, queries, args.budget)
        tags = ([base_tag] if p == nprobe else []) + (["at LanceDB's recall"] if p in matched else [])
        name = f"om3db IVF nlist={ivf.nlist} nprobe={p} ({', '.join(tags) or 'sweep'})"
        rows.append(dict(row(name, n, lat, ids, truth, batch, build), nprobe=p))
    ivf = None  # free the index before the next one is built
    gc.collect()
    return rows


# ---------------------------------------------------------------- OpenMask3D's way


def write_scans(mm, folder: Path, per_scan: int) -> list[Path]:
    """One float32 (per_scan, DIM) .npy per scan, like OpenMask3D's per-scene feature files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, start in enumerate(range(0, len(mm), per_scan)):
        p = folder / f"scene{i:06d}_openmask3d_features.npy"
        np.save(p, np.asarray(mm[start : start + per_scan], dtype=np.float32))
        paths.append(p)
    return paths


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def npy_search(paths: list[Path], per_scan: int, q: np.ndarray) -> np.ndarray:
    """Load every scan's features and keep the global top-K by cosine (q: (B, DIM))."""
    best_s = np.full((len(q), K), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), K), -1, dtype=np.int64)
    for j, p in enumerate(paths):
        feats = np.load(p)
        s = q @ feats.T
        ids = np.broadcast_to(np.arange(j * per_scan, j * per_scan + len(feats)), s.shape)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        top = np.argpartition(-all_s, K - 1, axis=1)[:, :K]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def bench_npy(mm, n, queries, truth, args, work: Path):
    t0 = time.perf_counter()
    paths = write_scans(mm, work / "npy", args.per_scan)
    log(f"wrote {len(paths)} per-scan .npy files in {time.perf_counter() - t0:.1f}s")
    rows = []
    lat, ids = time_single(lambda q: npy_search(paths, args.per_scan, q[None])[0], queries, args.budget, 3)
    batch = time_batches(lambda qs: npy_search(paths, args.per_scan, qs), queries, args.budget, 1)
    rows.append(row("OpenMask3D per-scan .npy, warm", n, lat, ids, truth, batch, note=f"{len(paths)} files"))

    def cold_one(q):
        evict(paths)
        return npy_search(paths, args.per_scan, q[None])[0]

    def cold_many(qs):
        evict(paths)
        return npy_search(paths, args.per_scan, qs)

    # eviction time is excluded from neither: it is tiny next to the reads (fdatasync of clean files)
    lat, ids = time_single(cold_one, queries, args.budget, 3)
    batch = time_batches(cold_many, queries, args.budget, 1)
    rows.append(row("OpenMask3D per-scan .npy, cold", n, lat, ids, truth, batch, note="posix_fadvise DONTNEED"))
    shutil.rmtree(work / "npy")
    return rows


# ---------------------------------------------------------------- LanceDB


def lance_table(mm, work: Path):
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(work / "lance")
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), DIM))])

    def batches():
        for start, x in chunks(mm, 50_000):
            vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)
            yield pa.RecordBatch.from_arrays([pa.array(np.arange(start, start + len(x))), vec], schema=schema)

    return db.create_table("instances", data=batches(), schema=schema, mode="overwrite")


def lance_ids(res, nq: int) -> np.ndarray:
    out = np.full((nq, K), -1, dtype=np.int64)
    qi = res.column("query_index").to_numpy() if "query_index" in res.column_names else np.zeros(res.num_rows, int)
    ids = res.column("id").to_numpy()
    for i in range(nq):
        got = ids[qi == i][:K]
        out[i, : len(got)] = got
    return out


def bench_lance(mm, n, queries, tune_q, truth, tune_truth, args, work: Path):
    from lancedb.index import IvfHnswSq, IvfPq

    t0 = time.perf_counter()
    tbl = lance_table(mm, work)
    log(f"LanceDB table written in {time.perf_counter() - t0:.1f}s")
    rows = []

    def query(q, **kw):
        b = tbl.search(q).distance_type("dot").limit(K).select(["id", "_distance"])
        if kw.get("brute"):
            b = b.bypass_vector_index()
        if "nprobes" in kw:
            b = b.nprobes(kw["nprobes"])
        if "ef" in kw:
            b = b.ef(kw["ef"])
        if "refine" in kw:
            b = b.refine_factor(kw["refine"])
        return lance_ids(b.to_arrow(), 1 if q.ndim == 1 else len(q))

    lat, ids = time_single(lambda q: query(q, brute=True)[0], queries, args.budget, 3)
    batch = time_batches(lambda qs: query(qs, brute=True), queries, args.budget, 1)
    rows.append(row("LanceDB brute force", n, lat, ids, truth, batch, 0.0))
    log("LanceDB brute force done")
    if n < args.lance_index_min or n > args.lance_index_max:
        return rows
    nparts = ivf_params(n) if n >= 40_000 else max(1, n // 4096)
    kinds = {"IVF_HNSW_SQ": IvfHnswSq(distance_type="dot", num_partitions=nparts)}
    if args.lance_ivf_pq:
        kinds["IVF_PQ"] = IvfPq(distance_type="dot", num_partitions=nparts, num_sub_vectors=DIM // 8)
    for name, cfg in kinds.items():
        t0 = time.perf_counter()
        tbl.create_index("vector", config=cfg, replace=True)
        build = time.perf_counter() - t0
        log(f"LanceDB {name} (partitions={nparts}) built in {build:.1f}s")
        sweeps = (
            [{"nprobes": p, "ef": ef} for p in (4, 8, 16, 32) for ef in (50, 100)]
            if name == "IVF_HNSW_SQ"
            else [{"nprobes": p, "refine": r} for p in (8, 16, 32) for r in (5, 20)]
        )
        chosen = None
        for kw in sweeps:  # tune on the tuning queries like the om3db index
            kw = {k: v for k, v in kw.items() if k != "nprobes" or v <= nparts}
            r = recall_at_k(query(tune_q, **kw), tune_truth)
            log(f"  {name} {kw}: tuning recall {r:.3f}")
            if r >= TARGET_RECALL:
                chosen = kw
                break
        chosen = chosen or kw
        lat, ids = time_single(lambda q, kw=chosen: query(q, **kw)[0], queries, args.budget)
        batch = time_batches(lambda qs, kw=chosen: query(qs, **kw), queries, args.budget)
        desc = " ".join(f"{k}={v}" for k, v in chosen.items())
        rows.append(row(f"LanceDB {name} partitions={nparts} {desc}", n, lat, ids, truth, batch, build))
    return rows


# ---------------------------------------------------------------- report


def markdown(rows: list[dict]) -> str:
    head = "| N | system | queries | p50 ms | p99 ms | batch-32 ms/query | recall@10 | build s | load |\n"
    head += "|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
    for r in rows:
        b = "" if r["build_s"] is None else f"{r['build_s']:.1f}"
        head += (
            f"| {r['n']:,} | {r['system']} | {r['queries']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['batch_ms_per_query']:.2f} | {r['recall@10']:.3f} | {b} | {r.get('loadavg_1min', float('nan')):.1f} |\n"
        )
    return head


def is_lance_index(r: dict) -> bool:
    return r["system"].startswith("LanceDB") and "brute force" not in r["system"]


def equal_recall_ratios(rows: list[dict]) -> str:
    """Per size and LanceDB index: the fastest om3db row with recall@10 >= that index's, and the speed ratios."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        for b in [r for r in rows if r["n"] == n and is_lance_index(r)]:
            om = [
                r for r in rows if r["n"] == n and r["system"].startswith("om3db") and r["recall@10"] >= b["recall@10"]
            ]
            if not om:
                out.append(f"- N={n:,}: no om3db row reaches {b['system']}'s recall@10 {b['recall@10']:.3f}")
                continue
            a = min(om, key=lambda r: r["p50_ms"])
            out.append(
                f"- N={n:,}: {a['system']} (recall@10 {a['recall@10']:.3f}) vs {b['system']} ({b['recall@10']:.3f}): "
                f"p50 {a['p50_ms']:.2f} vs {b['p50_ms']:.2f} ms -> {b['p50_ms'] / a['p50_ms']:.1f}x; batch-32 "
                f"{a['batch_ms_per_query']:.2f} vs {b['batch_ms_per_query']:.2f} ms/query "
                f"-> {b['batch_ms_per_query'] / a['batch_ms_per_query']:.1f}x"
            )
    return "\n".join(out)


def ratios(rows: list[dict]) -> str:
    """Fastest om3db vs fastest LanceDB configuration, both at recall@10 >= TARGET_RECALL, per size."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        ok = [r for r in rows if r["n"] == n and r["recall@10"] >= TARGET_RECALL]
        om = [r for r in ok if r["system"].startswith("om3db")]
        la = [r for r in ok if r["system"].startswith("LanceDB")]
        if om and la:
            a = min(om, key=lambda r: r["p50_ms"])
            b = min(la, key=lambda r: r["p50_ms"])
            out.append(
                f"- N={n:,}: {a['system']} p50 {a['p50_ms']:.2f} ms vs {b['system']} p50 {b['p50_ms']:.2f} ms "
                f"-> {b['p50_ms'] / a['p50_ms']:.1f}x (both recall@10 >= {TARGET_RECALL})"
            )
    return "\n".join(out)


def main(argv=None) -> int:
    from om3db.store.vectors import DEFAULT_IVF_THRESHOLD

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[10_000, 100_000, 1_000_000],
        help="vector counts; none (bare --sizes) runs only the ingest benchmark",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 5k vectors, short budgets")
    ap.add_argument("--queries", type=int, default=200, help="evaluation queries per size")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per measurement before stopping early")
    ap.add_argument("--per-scan", type=int, default=100, help="instances per scan file (OpenMask3D's way)")
    ap.add_argument(
        "--ivf-min",
        type=int,
        default=DEFAULT_IVF_THRESHOLD,
        help=f"smallest N where om3db's IVF is benchmarked (default: the store's threshold, {DEFAULT_IVF_THRESHOLD})",
    )
    ap.add_argument("--lance-index-min", type=int, default=5_000)
    ap.add_argument("--lance-index-max", type=int, default=100_000, help="skip LanceDB ANN builds above this N")
    ap.add_argument("--lance-ivf-pq", action="store_true", help="also build LanceDB IVF_PQ (+refine)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["npy", "lance", "ingest"])
    ap.add_argument("--ingest-scans", type=int, default=20, help="commits in the ingest benchmark")
    ap.add_argument("--ingest-per-scan", type=int, default=1000, help="instances per commit (5 views, 2 spaces)")
    ap.add_argument("--raw-faiss", action="store_true", help="fallback: FAISS directly instead of om3db.store")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="FAISS OpenMP threads while searching (builds use all cores); default: all cores",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/om3db-bench"))
    ap.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.budget, args.ivf_min = [5_000], 64, 2.0, 1_000
        args.ingest_scans, args.ingest_per_scan = 3, 500
    args.workdir.mkdir(parents=True, exist_ok=True)
    import faiss

    env = {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "faiss": faiss.__version__,
        "faiss_search_threads": args.threads or faiss.omp_get_max_threads(),
        "numpy": np.__version__,
    }
    try:
        import lancedb

        env["lancedb"] = lancedb.__version__
    except ImportError:
        args.skip.append("lance")
    log(f"env {env}")
    rows = []
    for n in args.sizes:
        gen = Generator(n)
        t0 = time.perf_counter()
        mm = gen.write(args.workdir / f"vectors_{n}.npy")
        log(f"N={n:,}: generated {gen.kc} clusters in {time.perf_counter() - t0:.1f}s")
        queries, tune_q = gen.queries(args.queries, 0), gen.queries(100, 1)
        rng = np.random.default_rng(7)
        with faiss_threads(args.threads):
            exact_rows, truth, tune_truth = bench_om3db_exact(mm, n, queries, tune_q, args, rng)
        log(f"N={n:,}: om3db exact done")
        other = []
        if "npy" not in args.skip:
            other += bench_npy(mm, n, queries, truth, args, args.workdir)
            log(f"N={n:,}: npy done")
        if "lance" not in args.skip:
            other += bench_lance(mm, n, queries, tune_q, truth, tune_truth, args, args.workdir)
            shutil.rmtree(args.workdir / "lance", ignore_errors=True)
            log(f"N={n:,}: lance done")
        ivf_rows = []
        if n >= args.ivf_min:  # after LanceDB: its index recall picks om3db's equal-recall nprobe
            lance_recalls = [r["recall@10"] for r in other if is_lance_index(r)]
            with faiss_threads(args.threads):
                ivf_rows = bench_om3db_ivf(mm, n, queries, truth, tune_q, tune_truth, lance_recalls, args, rng)
            log(f"N={n:,}: om3db IVF done")
        rows += exact_rows + ivf_rows + other
        del mm
        (args.workdir / f"vectors_{n}.npy").unlink()
        print(markdown([r for r in rows if r["n"] == n]), flush=True)
        if args.out:
            _dump(args, env, rows)
    if "ingest" not in args.skip:
        rows_ingest = bench_ingest(args)
        env["ingest"] = rows_ingest
    print(markdown(rows))
    print("om3db vs each LanceDB index at equal recall (om3db recall@10 >= LanceDB's, same queries):")
    print(equal_recall_ratios(rows))
    print(f"Fastest configurations with recall@10 >= {TARGET_RECALL}:")
    print(ratios(rows))
    if args.out:
        _dump(args, env, rows)
    return 0


def _dump(args, env, rows) -> None:
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"env": env, "args": meta, "rows": rows}, indent=1))
    from _plots import plot_query  # benchmarks/_plots.py: the recall-latency figure next to the JSON

    plot_query(args.out)


def fake_ingest_result(name: str, count: int, views: int, rng):
    """An IngestResult like one scan's ingest: ``count`` instances, ``views`` views each, two spaces."""
    from om3db.records import EncoderIdentity, IngestReport, IngestResult, InstanceRecord, View

    dims = {"siglip": DIM, "dinov2": 1024}
    encoders = {k: EncoderIdentity(f"bench/{k}", "bench", d, "l2", "bench") for k, d in dims.items()}

    def unit(*shape):
        v = rng.standard_normal(shape, dtype=np.float32)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    vecs = {k: unit(count, d) for k, d in dims.items()}
    vvecs = {k: unit(count, views, d) for k, d in dims.items()}
    boxes = np.array([[10, 20, 110, 220], [5, 10, 120, 240], [0, 0, 140, 260]], dtype=np.int32)
    insts = []
    for i in range(count):
        pts = np.sort(rng.choice(150_000, 800, replace=False)).astype(np.int32)
        vr = tuple(View(frame_id=j * 10, visible_pixels=5000 - j, crop_boxes=boxes) for j in range(views))
        lo = rng.uniform(0, 4, 3)
        insts.append(
            InstanceRecord(
                mask_index=i,
                point_indices=pts,
                bbox_min=lo,
                bbox_max=lo + 0.5,
                centroid=lo + 0.25,
                score=0.9,
                views=vr,
                view_vectors={k: vvecs[k][i] for k in dims},
                vectors={k: vecs[k][i] for k in dims},
            )
        )
    report = IngestReport(
        scan=name,
        frames_on_disk=100,
        frames_used=100,
        frames_skipped={},
        masks_total=count,
        masks_without_view=[],
        seconds_per_stage={},
    )
    return IngestResult(
        scan=name,
        scan_path=f"/bench/{name}",
        fingerprint=f"{hash(name) & 0xFFFFFFFF:064x}",
        settings={},
        encoders=encoders,
        instances=insts,
        report=report,
        num_points=150_000,
        frame_count=100,
    )


def bench_ingest(args) -> list[dict]:
    """Instances/s written through om3db.store.Store.write_scan (SQLite rows + FAISS add + index save).

    Two modes: FAISS files saved at every commit (``save=True``, the default), and saves deferred to one
    ``flush()`` at the end (``save=False``, as a batch ingest of many scans does); the flush is timed.
    """
    import inspect

    from om3db.store import Store

    modes = [True] + ([False] if "save" in inspect.signature(Store.write_scan).parameters else [])
    out = []
    for save in modes:
        root = args.workdir / "ingest-db"
        shutil.rmtree(root, ignore_errors=True)
        rng = np.random.default_rng(3)
        store = Store(root)
        rows = []
        try:
            for i in range(args.ingest_scans):
                res = fake_ingest_result(f"scan{i:04d}", args.ingest_per_scan, 5, rng)
                kw = {} if save else {"save": False}
                t0 = time.perf_counter()
                store.write_scan(res, settings={"bench": True}, **kw)
                dt = time.perf_counter() - t0
                rows.append(
                    {
                        "scan": i,
                        "instances": args.ingest_per_scan,
                        "seconds": dt,
                        "instances_per_s": args.ingest_per_scan / dt,
                    }
                )
                log(
                    f"ingest (save={save}) commit {i}: {args.ingest_per_scan} instances in {dt:.2f}s "
                    f"({args.ingest_per_scan / dt:,.0f}/s), {(i + 1) * args.ingest_per_scan:,} in the database"
                )
            t0 = time.perf_counter()
            if not save:
                with store.lock:
                    store.flush()
            flush_s = time.perf_counter() - t0
        finally:
            store.close()
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        secs = sum(r["seconds"] for r in rows) + flush_s
        n = sum(r["instances"] for r in rows)
        summary = {
            "save_each_commit": save,
            "commits": len(rows),
            "instances": n,
            "seconds": secs,
            "flush_s": flush_s,
            "instances_per_s": n / secs,
            "median_commit_instances_per_s": float(np.median([r["instances_per_s"] for r in rows])),
            "db_bytes": size,
        }
        print(f"\nIngest write throughput: {summary}", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        out += [summary] + rows
    return out


if __name__ == "__main__":
    raise SystemExit(main())
