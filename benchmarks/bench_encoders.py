"""Benchmark: crops/s and matmul-peak efficiency of each encoder architecture, per dtype, side by side.

The trade-off table of docs/models.md ("Presets"): SigLIP-B/16@224 against SigLIP-SO400M/14@384,
DINOv2-S/B/L/14, SAM ViT-B against ViT-H (segment-anything .pth and transformers SamModel), each through
its public call (``encode_images`` on ScanNet-size crops, ``set_image`` on a 1296x968 frame), random
weights of the real architectures, each timed between two matmul-peak windows of its dtype
(benchmarks/_modelbench.py).

    .venv/bin/python benchmarks/bench_encoders.py --json /tmp/encoders.json
    .venv/bin/python benchmarks/bench_encoders.py --only siglip:base dinov2:small --dtypes float32 bfloat16

``--dtypes`` defaults to float32 plus bfloat16 where the CPU computes it natively.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _modelbench as mb  # noqa: E402
import bench_ingest as bi  # noqa: E402

ARCHITECTURES = [
    ("siglip", "base"),
    ("siglip", "so400m"),
    ("dinov2", "small"),
    ("dinov2", "base"),
    ("dinov2", "large"),
    ("sam", "vit_b"),
    ("sam_hf", "vit_b"),
    ("sam", "vit_h"),
]
"""(kind, size) pairs measured by default; "sam" is the segment-anything .pth, "sam_hf" transformers' SamModel."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help="kind:size pairs, e.g. siglip:base sam_hf:vit_b")
    p.add_argument("--dtypes", nargs="*", default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="crops per encode_images call")
    p.add_argument("--json", type=Path)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "om3db-bench")
    p.add_argument("--no-fuse", action="store_true", help="plain transformers / segment-anything modules")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, one per core); see benchmarks/README.md",
    )
    p.add_argument("--no-alloc-env", action="store_true")
    args = p.parse_args()
    mb.tune_allocator_env(not args.no_alloc_env)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from om3db.embed import load_dinov2, load_siglip
    from om3db.sam import load_sam

    info = mb.machine()
    dtypes = args.dtypes or (["float32", "bfloat16"] if info["bf16_native"] else ["float32"])
    archs = [tuple(s.split(":")) for s in args.only] if args.only else ARCHITECTURES
    res = {"machine": info, "alloc_env": mb.alloc_env_state(), "fuse": not args.no_fuse, "rows": []}
    print("| model | dtype | items/s | s/item | GFLOP/item | achieved TFLOP/s | peak TFLOP/s | efficiency | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, size in archs:
        path = mb.random_checkpoint(args.cache / "models", kind, size)
        for dtype in dtypes:
            t = time.perf_counter()
            if kind in ("sam", "sam_hf"):
                model = load_sam(path, device="cpu", dtype=dtype, fuse=not args.no_fuse)
                load_s = time.perf_counter() - t
                row = bi.measure_sam(model, reps=args.reps, prompts=40)
            else:
                loader = load_siglip if kind == "siglip" else load_dinov2
                model = loader(path, device="cpu", dtype=dtype, fuse=not args.no_fuse)
                load_s = time.perf_counter() - t
                row = bi.measure_encoder(kind, model, reps=args.reps, batch=args.batch)
            row.update(kind=kind, size=size, load_s=round(load_s, 1))
            res["rows"].append(row)
            print(
                f"| {kind} {size} | {dtype} | {row['items_per_s']} | {row['seconds_per_item']} | {row['gflop_per_item']} | "
                f"{row['achieved_tflops']} | {row['peak_tflops']} | {row['efficiency']} | {row['loadavg_1m']} |",
                flush=True,
            )
            del model
            gc.collect()
    res["peak_rss_gb"] = round(mb.peak_rss_gb(), 2)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
