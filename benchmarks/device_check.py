"""One pass over what om3db needs a GPU for; run through benchmarks/device_check.sh (see its header).

Sections, each independent (a failure or a missing package is recorded as ``status: "skipped"`` with the
reason, and the report keeps the same keys):

- ``faiss``: FAISS search over N clustered 1152-d unit vectors (1M on a GPU): build and add rate of an
  exact (flat) and an IVF index (nlist = 2·sqrt(N), the store's rule), single-query and batch-32 latency
  p50 / p99, recall@10 against exact CPU search. GPU indexes when faiss has GPU support, else CPU
  (``backend`` says which); without faiss at all, exact search with torch matmul + top-k on the device.
- ``encoders``: SigLIP / DINOv2 / SAM image encoder efficiency against the matmul peak of their dtype
  (bench_ingest.py's measurement).
- ``ingest``: one synthetic scan through om3db's pipeline (``mode: "pipeline"``: read, proposals,
  views, SAM, crops, SigLIP, DINOv2, aggregation, store), or, where the pipeline's packages (open3d,
  faiss, sqlalchemy, scikit-learn) are missing, the model stages alone at the same counts on synthetic
  frames (``mode: "model-stages"``).

``--dry-run``: toy sizes on the CPU (tiny models, 4k vectors): the same steps and the same report keys,
in well under a minute; a test runs it on every push.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _modelbench as mb  # noqa: E402

REPORT_KEYS = ("dry_run", "device", "install", "faiss", "encoders", "ingest", "seconds", "started", "finished")
"""Top-level keys of report.json, the same in a dry run and on a GPU."""


def _log(msg: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _skipped(exc: BaseException | str, **keys) -> dict:
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return {"status": "skipped", "reason": reason.splitlines()[0] if reason else "", **keys}


def clustered_vectors(n: int, dim: int, *, seed: int = 0, queries: int = 0):
    """(n, dim) float32 unit vectors in n/300 clusters around a shared mean direction, and queries near them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    k = max(4, n // 300)
    mean = rng.normal(size=dim).astype(np.float32)
    centres = rng.normal(size=(k, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = 0.5 * mean / np.linalg.norm(mean) * math.sqrt(dim) / 8 + centres[rng.integers(0, k, m)]
        x += rng.normal(scale=0.5, size=(m, dim)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = out[rng.integers(0, n, queries)] + rng.normal(scale=0.05, size=(queries, dim)).astype(np.float32)
    return out, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _latencies(search, queries, batch: int) -> dict:
    single = []
    for q in queries:
        t = time.perf_counter()
        search(q[None])
        single.append((time.perf_counter() - t) * 1e3)
    batched = []
    for s in range(0, len(queries) - batch + 1, batch):
        t = time.perf_counter()
        search(queries[s : s + batch])
        batched.append((time.perf_counter() - t) * 1e3 / batch)
    q = statistics.quantiles
    return {
        "queries": len(queries),
        "single_p50_ms": round(statistics.median(single), 4),
        "single_p99_ms": round(q(single, n=100)[98] if len(single) > 1 else single[0], 4),
        "batch_size": batch,
        "batch_p50_ms_per_query": round(statistics.median(batched), 4) if batched else None,
        "batch_p99_ms_per_query": round(q(batched, n=100)[98], 4) if len(batched) > 1 else None,
    }


def _recall(found, truth) -> float:
    return float(sum(len(set(a) & set(b)) for a, b in zip(found, truth, strict=True)) / truth.size)


def faiss_section(n: int, dim: int, nq: int, dry_run: bool) -> dict:
    import numpy as np

    t = time.perf_counter()
    xb, xq = clustered_vectors(n, dim, queries=nq)
    gen_s = time.perf_counter() - t
    out = {"status": "ok", "n": n, "dim": dim, "vector_gen_s": round(gen_s, 2)}
    if importlib.util.find_spec("faiss") is None:
        return {**out, **_torch_search(xb, xq, dry_run)}
    import faiss

    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and not dry_run
    out["backend"] = "faiss-gpu" if gpu else "faiss-cpu"
    truth_index = faiss.IndexFlatIP(dim)
    truth_index.add(xb)
    t = time.perf_counter()
    _, truth = truth_index.search(xq, 10)
    out["cpu_exact_search_s_per_query"] = round((time.perf_counter() - t) / nq, 5)
    res = faiss.StandardGpuResources() if gpu else None
    nlist = max(1, int(2 * math.sqrt(n)))
    indexes = {}
    for name in ("flat", "ivf"):
        t = time.perf_counter()
        if name == "flat":
            index = faiss.GpuIndexFlatIP(res, dim) if gpu else faiss.IndexFlatIP(dim)
            train_s = 0.0
        else:
            quantizer = faiss.IndexFlatIP(dim)
            cpu_ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index = faiss.index_cpu_to_gpu(res, 0, cpu_ivf) if gpu else cpu_ivf
            sample = xb[np.random.default_rng(1).choice(n, min(n, nlist * 40), replace=False)]
            index.train(sample)
            train_s = time.perf_counter() - t
        t_add = time.perf_counter()
        index.add(xb)
        add_s = time.perf_counter() - t_add
        if name == "ivf":
            index.nprobe = 16
        _, found = index.search(xq, 10)
        indexes[name] = {
            "train_s": round(train_s, 3),
            "add_s": round(add_s, 3),
            "add_rate_per_s": round(n / add_s, 1),
            "recall_at_10": round(_recall(found, truth), 4),
            **({"nlist": nlist, "nprobe": 16} if name == "ivf" else {}),
            **_latencies(lambda q, index=index: index.search(q, 10), xq, 32),
        }
    out["indexes"] = indexes
    return out


def _torch_search(xb, xq, dry_run: bool) -> dict:
    """Exact search with torch (matmul + top-k) on the device: what a GPU without faiss can do."""
    import numpy as np
    import torch

    dev = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    dt = torch.float16 if dev == "cuda" else torch.float32
    t = time.perf_counter()
    base = torch.as_tensor(xb, device=dev).to(dt)
    add_s = time.perf_counter() - t
    truth = np.argsort(-(xq @ xb.T), axis=1)[:, :10]

    def search(q):
        scores = torch.as_tensor(q, device=dev).to(dt) @ base.T
        out = torch.topk(scores, 10, dim=1).indices.cpu().numpy()
        return out

    found = search(xq)
    return {
        "backend": f"torch-{dev} (faiss not installed)",
        "indexes": {
            "flat": {
                "train_s": 0.0,
                "add_s": round(add_s, 3),
                "add_rate_per_s": round(len(xb) / add_s, 1),
                "recall_at_10": round(_recall(found, truth), 4),
                **_latencies(search, xq, 32),
            }
        },
    }


def encoders_section(paths: dict, dtype: str, dry_run: bool) -> dict:
    import bench_ingest as bi

    from om3db.embed import load_dinov2, load_siglip
    from om3db.sam import load_sam

    reps = 1 if dry_run else 3
    out = {}
    for kind, loader, batch in (
        ("siglip", load_siglip, 4 if dry_run else 32),
        ("dinov2", load_dinov2, 8 if dry_run else 64),
    ):
        enc = loader(paths[kind], dtype=dtype)
        out[kind] = bi.measure_encoder(kind, enc, reps=reps, batch=batch)
        del enc
    sam = load_sam(paths["sam"], dtype=dtype)
    out["sam"] = bi.measure_sam(sam, reps=reps, prompts=20 if dry_run else 250)
    return {"status": "ok", **out}


def _pipeline_packages() -> list[str]:
    return [m for m in ("open3d", "faiss", "sqlalchemy", "alembic", "sklearn") if importlib.util.find_spec(m) is None]


def ingest_section(paths: dict, dtype: str, dry_run: bool, cache: Path) -> dict:
    missing = _pipeline_packages()
    if not missing:
        import bench_ingest as bi

        from om3db.embed import load_dinov2, load_siglip
        from om3db.sam import load_sam

        args = argparse.Namespace(
            size="tiny" if dry_run else "scannet",
            frame_step=5 if dry_run else 10,
            masks=3 if dry_run else 0,
            top_k=2 if dry_run else 5,
            levels=3,
            cache=cache,
        )
        encoders = {
            "siglip": load_siglip(paths["siglip"], dtype=dtype),
            "dinov2": load_dinov2(paths["dinov2"], dtype=dtype),
        }
        sam = load_sam(paths["sam"], dtype=dtype)
        row = bi.run_ingest(args, paths, encoders, sam, None)
        return {"status": "ok", "mode": "pipeline", "dtype": dtype, **row}
    return {"status": "ok", "mode": "model-stages", "missing_packages": missing, **_model_stages(paths, dtype, dry_run)}


def _model_stages(paths: dict, dtype: str, dry_run: bool) -> dict:
    """SAM (encode + 10 rounds per (mask, view)), crops, SigLIP and DINOv2 at a scan's counts on synthetic frames."""
    import numpy as np

    from om3db.embed import load_dinov2, load_siglip
    from om3db.sam import load_sam

    masks, views, levels, frames = (3, 2, 3, 4) if dry_run else (100, 5, 3, 250)
    rng = np.random.default_rng(0)
    shape = (242, 324, 3) if dry_run else (968, 1296, 3)
    sam = load_sam(paths["sam"], dtype=dtype)
    pairs = masks * views
    per_frame = [pairs // frames + (1 if f < pairs % frames else 0) for f in range(frames)]
    stages = {"sam": 0.0, "crops": 0.0, "siglip": 0.0, "dinov2": 0.0}
    crops = []
    for f in range(frames):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        t = time.perf_counter()
        sam.set_image(image)
        m = per_frame[f]
        if m:
            pts = np.stack([rng.uniform(0, shape[1], (m, 10, 5)), rng.uniform(0, shape[0], (m, 10, 5))], axis=-1)
            sam.predict_best(pts, np.ones((m, 10, 5), np.int64))
        stages["sam"] += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(m * levels):
            h, w = rng.integers(60, min(400, shape[0]), 2)
            crops.append(image[:h, :w].copy())
        stages["crops"] += time.perf_counter() - t
    del sam
    for kind, loader in (("siglip", load_siglip), ("dinov2", load_dinov2)):
        enc = loader(paths[kind], dtype=dtype)
        t = time.perf_counter()
        enc.encode_images(crops)
        stages[kind] = time.perf_counter() - t
        del enc
    total = sum(stages.values())
    return {
        "dtype": dtype,
        "masks": masks,
        "frames_used": frames,
        "crops": len(crops),
        "seconds_per_stage": {k: round(v, 3) for k, v in stages.items()},
        "total_s": round(total, 2),
        "crops_per_s": {k: round(len(crops) / stages[k], 2) for k in ("siglip", "dinov2") if stages[k] > 0},
    }


def _markdown(report: dict) -> str:
    lines = [f"# om3db device check{' (dry run)' if report['dry_run'] else ''}", "", f"Device: {report['device']}", ""]
    fa = report["faiss"]
    lines.append(f"## FAISS ({fa.get('backend', fa.get('reason'))}), N = {fa.get('n')}")
    if fa.get("status") == "ok":
        lines += [
            "",
            "| index | add/s | recall@10 | single p50 ms | single p99 ms | batch-32 p50 ms/q | build s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in fa["indexes"].items():
            lines.append(
                f"| {name} | {r['add_rate_per_s']} | {r['recall_at_10']} | {r['single_p50_ms']} | {r['single_p99_ms']} | "
                f"{r['batch_p50_ms_per_query']} | {r['train_s'] + r['add_s']:.2f} |"
            )
    en = report["encoders"]
    lines += ["", "## Encoders", ""]
    if en.get("status") == "skipped":
        lines.append(f"skipped: {en['reason']}")
    else:
        lines += [
            "| encoder | dtype | items/s | achieved TFLOP/s | peak TFLOP/s | efficiency |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for k, r in en.items():
            if isinstance(r, dict) and "efficiency" in r:
                lines.append(
                    f"| {k} | {r['dtype']} | {r['items_per_s']} | {r['achieved_tflops']} | {r['peak_tflops']} | {r['efficiency']} |"
                )
    ing = report["ingest"]
    lines += ["", f"## Ingest ({ing.get('mode', ing.get('reason'))})", ""]
    if ing.get("status") == "ok":
        lines.append(f"{ing['crops']} crops, {ing['total_s']} s, crops/s {ing['crops_per_s']}")
        lines += ["", "| stage | s |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in ing["seconds_per_stage"].items()]
    lines.append(f"\nTotal {report['seconds']} s")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--install-log", type=Path, default=None)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "om3db-device-check")
    args = p.parse_args()
    start = time.perf_counter()
    report: dict = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    report["install"] = (
        json.loads(args.install_log.read_text()) if args.install_log and args.install_log.exists() else {}
    )

    from om3db.hardware import resolve_device, resolve_dtype

    device = resolve_device("cpu" if args.dry_run else "auto")
    report["device"] = mb.machine() | {"device": str(device)}
    _log(f"device {report['device']}")
    try:
        n, nq = (8192, 64) if args.dry_run else (1_000_000, 1000)
        report["faiss"] = faiss_section(n, 64 if args.dry_run else 1152, nq, args.dry_run)
    except Exception as exc:  # noqa: BLE001 - every section reports instead of stopping the check
        traceback.print_exc()
        report["faiss"] = _skipped(exc)
    _log("faiss done")
    dtype = resolve_dtype("auto", device)[0]  # CUDA: bfloat16; CPU: bfloat16 only where native
    sizes = ("tiny", "tiny", "tiny") if args.dry_run else ("so400m", "large", "vit_h")
    try:
        cache = args.cache / "models"
        paths = {
            "siglip": mb.random_checkpoint(cache, "siglip", sizes[0]),
            "dinov2": mb.random_checkpoint(cache, "dinov2", sizes[1]),
            "sam": mb.random_checkpoint(cache, "sam_hf", sizes[2]),  # transformers SAM: no segment-anything needed
        }
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        paths = None
        report["encoders"] = report["ingest"] = _skipped(exc)
    if paths is not None:
        for key, fn in (
            ("encoders", lambda: encoders_section(paths, dtype, args.dry_run)),
            ("ingest", lambda: ingest_section(paths, dtype, args.dry_run, args.cache)),
        ):
            try:
                report[key] = fn()
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                report[key] = _skipped(exc)
            _log(f"{key} done")
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "report.md").write_text(_markdown(report))
    _log(f"wrote {args.out / 'report.json'} and report.md in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
