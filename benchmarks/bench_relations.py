"""Spatial relations: relation building per ScanNet-size scan, and relational query latency.

1. Building: gravity + geometry + relations of a synthetic ScanNet-size scan (``om3db.synth`` size
   "scannet": 38 objects + floor + 4 walls as instances, as ScanNet masks include them), repeated.
2. Querying: a database of N synthetic instances (100 per scan, 50 classes of log-normal sizes,
   clustered embedding-like vectors; per instance ~0.3 ``on`` relations onto one of its class's two
   support classes and ~4 ``near`` relations) written through Store.write_scan; then
   ``db.search("class A", on="class B")`` for a pair that occurs and a random pair, ``near=...,
   within=0.5`` and ``without=`` p50 / p99 (k = 10 scans; hits fetched, grouped by scan).

Usage:
    .venv/bin/python benchmarks/bench_relations.py --build
    .venv/bin/python benchmarks/bench_relations.py --sizes 10000 100000 1000000 --dim 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 50
PER_SCAN = 100


def bench_build(repeats: int) -> dict:
    from om3db.relations import scan_relations
    from om3db.synth import build_scene

    out = []
    for seed in range(repeats):
        scene = build_scene(seed, "scannet", 0)
        pts = scene.vertices.astype(np.float64)
        inst = [pts[scene.vertex_instance == i] for i in range(int(scene.vertex_instance.max()) + 1)]
        t = time.perf_counter()
        rel = scan_relations(pts, inst)
        out.append(time.perf_counter() - t)
        counts = {}
        for r in rel.relations:
            counts[r.relation] = counts.get(r.relation, 0) + 1
        print(f"scan {seed}: {len(pts)} points, {len(inst)} instances, {out[-1]:.3f} s, {counts}", flush=True)
    return {"points": len(pts), "instances": len(inst), "seconds": out, "median_s": statistics.median(out)}


class Encoder:
    """Texts 'class K' -> class K's direction (the bench's stand-in for SigLIP's text tower)."""

    def __init__(self, centres: np.ndarray):
        from om3db.records import EncoderIdentity

        self.centres = centres
        self.identity = EncoderIdentity("bench/relations", "bench", centres.shape[1], "l2", "bench")

    def encode_texts(self, texts):
        return np.stack([self.centres[int(t.split("class ")[1].split()[0])] for t in texts])


class Embeddings:
    """Clustered unit vectors shaped like object embeddings (the recipe of bench_query.Generator): x =
    0.5 m + c_k + B_k z + noise, normalised; m a shared mean direction, c_k the class centre, B_k a
    per-class 8-d anisotropic spread; class sizes log-normal (many chairs, few pianos). Cosines ~0.8
    within a class, ~0.2-0.4 across. A text query for class k is the direction of 0.5 m + c_k."""

    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
        self.dim = dim
        self.mean = unit(rng.standard_normal(dim)).astype(np.float32)
        self.centres = unit(rng.standard_normal((CLASSES, dim))).astype(np.float32)
        self.spread = rng.standard_normal((CLASSES, 8, dim)).astype(np.float32) / np.sqrt(dim)
        self.spread *= np.linspace(1.0, 0.3, 8, dtype=np.float32)[None, :, None]
        self.spread *= rng.uniform(0.3, 0.6, (CLASSES, 1, 1)).astype(np.float32)
        w = rng.lognormal(0.0, 1.0, CLASSES)
        self.weights = w / w.sum()
        self.texts = unit(0.5 * self.mean + self.centres).astype(np.float32)
        # each class rests on two support classes (mugs on tables and desks, not on random objects)
        self.supports = [((c * 7 + 1) % CLASSES, (c * 13 + 5) % CLASSES) for c in range(CLASSES)]

    def vectors(self, labels: np.ndarray, rng) -> np.ndarray:
        x = rng.standard_normal((len(labels), self.dim)).astype(np.float32) * (0.35 / np.sqrt(self.dim))
        x += 0.5 * self.mean + self.centres[labels]
        z = rng.standard_normal((len(labels), 1, 8)).astype(np.float32) * 1.6
        x += (z @ self.spread[labels])[:, 0]
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_scan(name: str, rng, emb: Embeddings, identity):
    from om3db.records import IngestReport, IngestResult, InstanceRecord, View
    from om3db.relations import Relation, RelationConfig, ScanRelations
    from om3db.relations.geometry import Gravity, instance_geometry

    labels = rng.choice(CLASSES, PER_SCAN, p=emb.weights)
    vecs = emb.vectors(labels, rng)
    geom = instance_geometry(rng.uniform(0, 0.3, (20, 3)))
    insts, rels = [], []
    for i in range(PER_SCAN):
        lo = rng.uniform(0, 4, 3)
        insts.append(
            InstanceRecord(
                mask_index=i, point_indices=np.arange(i * 10, i * 10 + 10, dtype=np.int32), bbox_min=lo,
                bbox_max=lo + 0.5, centroid=lo + 0.25, score=0.9,
                views=(View(frame_id=0, visible_pixels=100, crop_boxes=((0, 0, 10, 10),)),),
                view_vectors={}, vectors={"siglip": vecs[i]},
            )
        )  # fmt: skip
        if rng.uniform() < 0.3:  # resting on an instance of one of its support classes, when the scan has one
            support = np.flatnonzero(np.isin(labels, emb.supports[labels[i]]))
            support = support[support != i]
            if len(support):
                j = int(rng.choice(support))
                rels += [Relation(i, j, "on", 0.9, 0.0, 0.0, 0.8), Relation(i, j, "above", 0.9, 0.0, 0.0, 0.8)]
        for j in rng.choice(PER_SCAN, 2, replace=False).tolist():
            if j != i:
                d = float(rng.uniform(0, 1))
                rels += [Relation(i, j, "near", 1 - d / 2, d, 0.0, 0.0), Relation(j, i, "near", 1 - d / 2, d, 0.0, 0.0)]
    rel = ScanRelations(Gravity((0.0, 0.0, 1.0), "default"), [geom] * PER_SCAN, rels, RelationConfig())
    report = IngestReport(name, 1, 1, {}, PER_SCAN, [], {})
    return IngestResult(
        name, f"/bench/{name}", "0" * 64, {"view_vectors": False}, {"siglip": identity}, insts, report, 1000, 1,
        relations=rel,
    )  # fmt: skip


QUERIES = {
    "on, a pair that occurs": lambda a, emb: {"on": f"class {emb.supports[a][0]}"},
    "on, a random pair": lambda a, emb: {"on": f"class {(a * 7 + 3) % CLASSES}"},
    "near, within 0.5": lambda a, emb: {"near": f"class {(a * 7 + 3) % CLASSES}", "within": 0.5},
    "without": lambda a, emb: {"without": f"class {(a * 7 + 3) % CLASSES}"},
}


def bench_query(n: int, dim: int, queries: int, work: Path) -> list[dict]:
    """Latency of relational queries over a database of ``n`` instances (written once into ``work``:
    a later run with the same ``--work`` reuses it)."""
    import om3db

    emb = Embeddings(dim)
    enc = Encoder(emb.texts)
    path = work / f"db{n}-d{dim}"
    build = None
    if not (path / "done").exists():
        rng = np.random.default_rng(1)
        t = time.perf_counter()
        with om3db.connect(path) as db:
            for s in range(n // PER_SCAN):
                db._store.write_scan(fake_scan(f"s{s:06d}", rng, emb, enc.identity), settings={}, save=False)
            db._store.flush()
        build = time.perf_counter() - t
        (path / "done").write_text(f"{build:.1f}\n")
        print(f"{n}: written in {build:.1f} s", flush=True)
    rows = []
    with om3db.connect(path) as db:
        db.use_encoder("siglip", enc)
        kinds = db.index_kinds()
        for label, make in QUERIES.items():
            lat, groups, pairs, wrong = [], 0, 0, 0
            for q in range(queries + 3):
                a = q % CLASSES
                t = time.perf_counter()
                res = db.search(f"class {a}", k=10, **make(a, emb))
                if q >= 3:  # warm-up excluded
                    lat.append(time.perf_counter() - t)
                    groups += len(res)
                    pairs += sum(len(m.hits) for m in res)
                    if label == "without":
                        wrong += _holding(db, make(a, emb)["without"], [m.scan for m in res])
            lat_ms = np.array(lat) * 1000
            rows.append({
                "instances": n, "query": label, "p50_ms": float(np.percentile(lat_ms, 50)),
                "p99_ms": float(np.percentile(lat_ms, 99)), "queries": len(lat), "scans_returned_avg": groups / len(lat),
                "hits_avg": pairs / len(lat), "index": kinds, "dim": dim, "write_s": build,
                "wrong_scans": wrong if label == "without" else None,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _holding(db, text: str, scans: list[str]) -> int:
    """How many of these scans hold a match of ``text`` (similarity >= 0.5 x its best anywhere: the
    default ``match``), checked one scan at a time by plain searches: a ``without=`` answer must have none."""
    top = db.search(text, k=1)[0].score
    return sum(bool(db.search(text, k=1, scans=[s], min_score=0.5 * top)) for s in scans)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", action="store_true", help="Time relation building per ScanNet-size scan.")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="*", default=[])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--work", type=Path, default=None, help="Folder for the databases (default: a temp folder).")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    result = {}
    if args.build:
        result["build"] = bench_build(args.repeats)
    work = args.work or Path(tempfile.mkdtemp(prefix="om3db-relbench-"))
    result["query"] = [r for n in args.sizes for r in bench_query(n, args.dim, args.queries, work)]
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
