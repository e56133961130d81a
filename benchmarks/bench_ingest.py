"""Benchmark: the whole ingest of one synthetic scan (views, crops, embeddings, aggregation).

Randomly initialised SigLIP / DINOv2 / SAM checkpoints are written once (om3db.random_models) and
loaded through the real loaders, so the compute is that of the real architectures (``--models full``:
SigLIP-SO400M/14@384, DINOv2-L/14, SAM ViT-H) or of tiny ones (``--models tiny``, a CPU smoke run
that measures the pipeline's own overhead). Box mode (no SAM) and SAM mode run on the same scan.

    .venv/bin/python benchmarks/bench_ingest.py --size tiny --models tiny --frame-step 2
    python benchmarks/bench_ingest.py --size scannet --models full --device cuda   # on a GPU machine

Prints one JSON object: seconds per stage (from the ingest report), total seconds, crops and crops/s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _models(root: Path, kind: str) -> dict[str, Path]:
    from om3db.random_models import write_random_dinov2, write_random_sam, write_random_siglip

    sizes = {"tiny": ("tiny", "tiny", "tiny"), "full": ("so400m", "large", "vit_h")}[kind]
    out = {
        "siglip": root / f"siglip-{sizes[0]}",
        "dinov2": root / f"dinov2-{sizes[1]}",
        "sam": root / f"sam-{sizes[2]}.pth",
    }
    if not out["siglip"].exists():
        write_random_siglip(out["siglip"], size=sizes[0], seed=0)
    if not out["dinov2"].exists():
        write_random_dinov2(out["dinov2"], size=sizes[1], seed=0)
    if not out["sam"].exists():
        write_random_sam(out["sam"], size=sizes[2], seed=0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=["tiny", "scannet"])
    p.add_argument("--models", default="tiny", choices=["tiny", "full"])
    p.add_argument("--device", default="auto")
    p.add_argument("--frame-step", type=int, default=10)
    p.add_argument("--modes", nargs="+", default=["box", "sam"], choices=["box", "sam"])
    p.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    args = p.parse_args()

    from om3db.crops import CropConfig
    from om3db.embed import load_dinov2, load_siglip
    from om3db.ingest import IngestConfig, ingest_scan
    from om3db.sam import load_sam
    from om3db.scan import read_scan
    from om3db.synth import write_scans

    out = args.cache / f"views-{args.size}-0"
    found = sorted(out.glob("*/intrinsic")) if out.is_dir() else []
    scan_dir = found[0].parent if found else write_scans(out, scans=1, seed=0, size=args.size)[0]
    paths = _models(args.cache / f"models-{args.models}", args.models)
    t = time.perf_counter()
    encoders = {
        "siglip": load_siglip(paths["siglip"], device=args.device),
        "dinov2": load_dinov2(paths["dinov2"], device=args.device),
    }
    sam = load_sam(paths["sam"], device=args.device) if "sam" in args.modes else None
    load_s = time.perf_counter() - t
    results = {
        "scan": str(scan_dir),
        "models": args.models,
        "device": args.device,
        "model_load_s": load_s,
        "loadavg_1m": os.getloadavg()[0],
        "runs": {},
    }
    for mode in args.modes:
        scan = read_scan(scan_dir)
        cfg = IngestConfig(frame_step=args.frame_step, crop=CropConfig(mode=mode))
        t = time.perf_counter()
        r = ingest_scan(scan, config=cfg, encoders=encoders, sam=sam if mode == "sam" else None)
        total = time.perf_counter() - t
        results["runs"][mode] = {
            "total_s": total,
            "seconds_per_stage": r.report.seconds_per_stage,
            "crops": r.report.crops,
            "crops_per_s": r.report.crops / max(total, 1e-9),
            "frames_used": r.report.frames_used,
            "instances": len(r.instances),
            "sam_encoder_calls": getattr(sam, "encoder_calls", None) if mode == "sam" else None,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
