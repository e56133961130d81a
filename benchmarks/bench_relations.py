"""Spatial relations: relation building per ScanNet-size scan, and relational query latency.

1. Building: gravity + geometry + relations of a synthetic ScanNet-size scan (``om3db.synth`` size
   "scannet": 38 objects + floor + 4 walls as instances, as ScanNet masks include them), repeated.
2. Querying: a database of N synthetic instances (100 per scan, 50 classes; vectors = class centre +
   noise; per scan ~0.3 ``on`` and ~4 ``near`` relations per instance) written through Store.write_scan;
   then ``db.search("class A", on="class B")`` and ``near=..., within=0.5`` p50 / p99 (two vector
   searches of ``candidates`` each, one join in SQLite, hits fetched, grouped by scan).

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
    """Texts 'class K' -> class centre K (the bench's stand-in for SigLIP's text tower)."""

    def __init__(self, centres: np.ndarray):
        from om3db.records import EncoderIdentity

        self.centres = centres
        self.identity = EncoderIdentity("bench/relations", "bench", centres.shape[1], "l2", "bench")

    def encode_texts(self, texts):
        return np.stack([self.centres[int(t.split("class ")[1].split()[0])] for t in texts])


def fake_scan(name: str, rng, centres: np.ndarray, identity):
    from om3db.records import IngestReport, IngestResult, InstanceRecord, View
    from om3db.relations import Relation, RelationConfig, ScanRelations
    from om3db.relations.geometry import Gravity, instance_geometry

    labels = rng.integers(0, CLASSES, PER_SCAN)
    vecs = centres[labels] + 0.35 * rng.standard_normal((PER_SCAN, centres.shape[1])).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
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
        if rng.uniform() < 0.3:
            j = int(rng.integers(0, PER_SCAN))
            if j != i:
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


def bench_query(n: int, dim: int, queries: int, work: Path) -> list[dict]:
    import om3db

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLASSES, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    enc = Encoder(centres)
    path = work / f"db{n}"
    t = time.perf_counter()
    with om3db.connect(path) as db:
        for s in range(n // PER_SCAN):
            db._store.write_scan(fake_scan(f"s{s:06d}", rng, centres, enc.identity), settings={}, save=False)
        db._store.flush()
    build = time.perf_counter() - t
    print(f"{n}: written in {build:.1f} s", flush=True)
    rows = []
    with om3db.connect(path) as db:
        db.use_encoder("siglip", enc)
        kinds = db.index_kinds()
        for label, kw in (("on", {}), ("near within 0.5", {"within": 0.5})):
            lat, groups = [], 0
            for q in range(queries + 3):
                a, b = q % CLASSES, (q * 7 + 3) % CLASSES
                rel = {"near": f"class {b}"} if "near" in label else {"on": f"class {b}"}
                t = time.perf_counter()
                res = db.search(f"class {a}", k=10, **rel, **kw)
                if q >= 3:  # warm-up excluded
                    lat.append(time.perf_counter() - t)
                groups += len(res)
            lat_ms = np.array(lat) * 1000
            rows.append({
                "instances": n, "query": label, "p50_ms": float(np.percentile(lat_ms, 50)),
                "p99_ms": float(np.percentile(lat_ms, 99)), "queries": len(lat), "scans_returned_avg": groups / len(lat),
                "index": kinds, "dim": dim, "write_s": build,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


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
