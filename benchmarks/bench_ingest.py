"""Benchmark: one scan's ingest with real-size models, per stage, and each encoder against the matmul peak.

Randomly initialised checkpoints of the real architectures (om3db.random_models, written once into
``--cache``) are loaded through the real loaders, so the compute is that of the real models (the
vectors mean nothing): ``--models full`` = SigLIP-SO400M/14@384, DINOv2-L/14, SAM ViT-H;
``--models cpu`` = the "cpu" preset's SigLIP-B/16@224, DINOv2-S/14 (box crops; SAM ViT-B measured);
``--models tiny`` = a smoke run of the pipeline's own overhead.

What one run measures, all in the same process (see benchmarks/README.md):

1. the matmul peak (2048^3) of float32 and, where the CPU has it natively, bfloat16;
2. per encoder (SigLIP and DINOv2 image towers, SAM's image encoder): seconds per crop / frame
   through the public call (``encode_images`` on ScanNet-size crops, ``set_image`` on a 1296x968
   frame), FLOPs per item, achieved TFLOP/s, and the efficiency = achieved / peak of its dtype, each
   repetition timed right after a peak measurement (shared machines: both see the same load);
   with ``--compare-dtypes`` in float32 and bfloat16 side by side;
3. one ingest of a synthetic scan: seconds per stage (read, proposals, views, SAM, crops, SigLIP,
   DINOv2, aggregation, store), crops/s, peak RSS;
4. bfloat16 against float32 vectors (``--agreement N``): per-vector cosine and top-5 agreement on a
   synthetic database of N objects x 6 views;
5. the projected seconds of a ScanNet-size scan (100 masks, 5 views, 3 levels) from the measured rates.

``--quick`` (tiny scan, 3 masks, 1 view, 2 repetitions) stays under 5 minutes where one SAM frame would
take more than 30 s at the measured peak (float32 ViT-H on a 2-core CPU: ~100 s) by box-cropping 1 mask
in its ingest, timing SAM's image encoder on one windowed and one global ViT block projected onto all
blocks (`measure_sam_blocks`), and the encoders on 1 (SigLIP) / 2 (DINOv2) crops per call.

    .venv/bin/python benchmarks/bench_ingest.py --models full --quick --json /tmp/quick.json   # < 5 min
    .venv/bin/python benchmarks/bench_ingest.py --models full --compare-dtypes --agreement 16 --json full.json
    .venv/bin/python benchmarks/bench_ingest.py --models tiny --size tiny --frame-step 2      # smoke run

A markdown summary goes to stdout, progress to stderr, everything to ``--json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _modelbench as mb  # noqa: E402

SCANNET_SCAN = {"masks": 100, "views": 5, "levels": 3, "frames": 250, "sam_rounds": 10}
"""What "a ScanNet-size scan" means in the projection: 100 masks, 5 views each, 3 crop levels (1,500
crops), 250 frames after the frame step (~2,500 frames at step 10), every one of them a chosen view of
some mask (one SAM encoding each), 10 SAM rounds per (mask, view): 5,000 prompts."""


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {mb.loadavg()} rss {mb.peak_rss_gb():.1f} GB] {msg}", file=sys.stderr)


class _Timed:
    """An encoder / SAM predictor whose public calls add their seconds to ``seconds``."""

    def __init__(self, inner, methods) -> None:
        self._inner, self.seconds, self._methods = inner, 0.0, set(methods)

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return attr(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t

        return timed


def _frame(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 256, 3) + rng.normal(0, 40, (968, 1296, 3)), 0, 255).astype(np.uint8)


def measure_encoder(kind: str, enc, *, reps: int, batch: int, warmup: bool = True) -> dict:
    """Efficiency of an image encoder through ``encode_images`` on ``batch`` ScanNet-size crops."""
    from PIL import Image

    crops = mb.sample_crops(batch, seed=1)
    pixels = enc.processor(images=[Image.fromarray(crops[0])], return_tensors="pt")["pixel_values"]
    per_crop = crop_flops(enc, pixels)
    row = mb.encoder_efficiency(
        lambda: enc.encode_images(crops),
        items=batch,
        flops_per_item=per_crop,
        dtype=enc.dtype_name,
        reps=reps,
        device=enc.device,
        warmup=warmup,
    )
    t = time.perf_counter()
    enc.processor(images=[Image.fromarray(c) for c in crops], return_tensors="pt")
    row["preprocess_s_per_item"] = round(
        (time.perf_counter() - t) / batch, 5
    )  # PIL resize + normalise, in the time above
    row.update(model=kind, batch=batch, fused_linears=enc.fused_linears, dtype_reason=enc.dtype_reason)
    row["crops_per_s"] = row["items_per_s"]
    return row


def crop_flops(enc, pixels) -> int:
    """FLOPs of one crop through ``enc._features``, counted on a meta-device copy of the model (no compute:
    a full-size SigLIP crop is ~10 s of float32 CPU time); counted on the real model if meta fails."""
    import torch

    real = enc.model
    try:
        with torch.device("meta"):
            enc.model = type(real)(real.config).eval()
        return mb.flops(lambda: enc._features(pixels.to(device="meta", dtype=enc.dtype)))
    except Exception:  # noqa: BLE001 - a model that cannot run on meta is counted for real
        enc.model = real
        return mb.flops(lambda: enc._features(pixels.to(device=enc.device, dtype=enc.dtype)))
    finally:
        enc.model = real


def measure_sam(sam, *, reps: int, prompts: int = 250, warmup: bool = True, blocks: bool = False) -> dict:
    """Efficiency of SAM's image encoder through ``set_image`` on a 1296x968 frame (``blocks``: on a sample
    of its blocks, `measure_sam_blocks`), and decoder s/prompt."""
    import numpy as np

    frame = _frame(2)
    if blocks:
        row = measure_sam_blocks(sam, reps=reps)
        if sam._features is None:  # no frame encoded: the decoder's cost does not depend on the embedding's values
            import torch

            from om3db.sam import _resize_shape

            side = sam.image_size // 16
            chans = list(sam.encoder.neck.parameters())[-1].shape[0]  # the neck ends in a LayerNorm of its width
            sam._features = torch.zeros(1, chans, side, side, device=sam.device, dtype=getattr(torch, sam.dtype))
            sam._original_size, sam._input_size = frame.shape[:2], _resize_shape(*frame.shape[:2], sam.image_size)
    else:
        row = mb.encoder_efficiency(
            lambda: sam.set_image(frame),
            items=1,
            flops_per_item=nominal_sam_flops(sam),
            dtype=sam.dtype,
            reps=reps,
            device=sam.device,
            warmup=warmup,
        )
        row["method"] = "set_image on a 1296x968 frame"
    row.update(model="sam_image_encoder", model_type=sam.model_type, fused=sam.fused, dtype_reason=sam.dtype_reason)
    row["frames_per_s"] = row["items_per_s"]
    rng = np.random.default_rng(0)
    m = prompts // 10
    coords = np.stack([rng.uniform(0, 1296, (m, 10, 5)), rng.uniform(0, 968, (m, 10, 5))], axis=-1)
    times = []
    for _ in range(1 if prompts < 100 else 2):
        t = time.perf_counter()
        sam.predict_best(coords, np.ones((m, 10, 5), np.int64))
        times.append(time.perf_counter() - t)
    row["decoder_s_per_prompt"] = round(min(times) / prompts, 5)
    row["decoder_prompts_per_call"] = sam.decode_chunk
    return row


def _meta_sam_encoder(sam):
    """A plain (unfused) copy of ``sam``'s image encoder on the meta device: for counting published FLOPs."""
    import torch

    with torch.device("meta"):
        if sam.model_type == "transformers":
            from transformers import SamModel

            return SamModel(sam.model.config).vision_encoder
        from om3db.sam import build_sam_model, infer_sam_config

        return build_sam_model(infer_sam_config(sam.model.state_dict())).image_encoder


def _blocks(encoder) -> list:
    return list(getattr(encoder, "blocks", None) or encoder.layers)  # segment-anything / transformers


def nominal_sam_flops(sam) -> int:
    """FLOPs of SAM's image encoder as published (plain attention), counted on a meta-device copy: the fused
    attention's extra head columns (om3db.fused._sam_attention) are not useful work and are not counted."""
    import torch

    encoder = _meta_sam_encoder(sam)
    x = torch.zeros(1, 3, sam.image_size, sam.image_size, device="meta")
    return mb.flops(lambda: encoder(x))


def sam_frame_estimate_s(sam, peak_tflops: float) -> float:
    """Seconds one ``set_image`` would take at the matmul peak: what decides a quick run's SAM measurement."""
    return nominal_sam_flops(sam) / (peak_tflops * 1e12)


def measure_sam_blocks(sam, *, reps: int) -> dict:
    """SAM's image encoder measured on a sample of its ViT blocks (the first windowed and the first global
    one), each between two peak windows like `measure_sam`, projected onto the whole encoder as
    ``sum(blocks of a kind x s per block of that kind)``: for quick runs where one float32 ViT-H frame
    takes minutes. Patch embedding and neck (~0.3 % of the FLOPs) are left out of time and FLOPs."""
    import torch

    blocks, meta_blocks = _blocks(sam.encoder), _blocks(_meta_sam_encoder(sam))
    side = sam.image_size // 16
    dim = blocks[0].attn.qkv.in_features
    rows, time_s, flops = {}, 0.0, 0
    for kind, pick in (("windowed", lambda b: b.window_size > 0), ("global", lambda b: b.window_size == 0)):
        idx = [i for i, b in enumerate(blocks) if pick(b)]
        if not idx:
            continue
        x = torch.randn(1, side, side, dim, device=sam.device).to(getattr(torch, sam.dtype))
        block, meta_x = blocks[idx[0]], torch.zeros(1, side, side, dim, device="meta")
        per_block = mb.flops(lambda b=meta_blocks[idx[0]], x=meta_x: b(x))
        row = mb.encoder_efficiency(
            lambda b=block, x=x: b(x), items=1, flops_per_item=per_block, dtype=sam.dtype, reps=reps, device=sam.device
        )
        rows[kind] = {**row, "blocks": len(idx)}
        time_s += len(idx) * row["seconds_per_item"]
        flops += len(idx) * per_block
    achieved = flops / time_s / 1e12
    peak = sum(r["peak_tflops"] * r["blocks"] * r["seconds_per_item"] for r in rows.values()) / time_s
    return {
        "dtype": sam.dtype,
        "method": "block sample (1 windowed + 1 global ViT block, projected onto all blocks)",
        "seconds_per_item": round(time_s, 3),
        "items_per_s": round(1 / time_s, 4),
        "gflop_per_item": round(flops / 1e9, 2),
        "achieved_tflops": round(achieved, 4),
        "peak_tflops": round(peak, 4),
        "efficiency": round(achieved / peak, 3),
        "block_rows": rows,
        "loadavg_1m": mb.loadavg(),
    }


def measure_peaks(device) -> dict:
    from om3db.hardware import detect_cpu

    peaks = {"float32": round(mb.matmul_peak("float32", device=device), 4)}
    if device.type == "cuda" or detect_cpu().bf16_native:
        peaks["bfloat16"] = round(mb.matmul_peak("bfloat16", device=device), 4)
    else:  # emulated: a small product is enough to see it (2048^3 takes ~15 s there)
        peaks["bfloat16_emulated_256"] = round(mb.matmul_peak("bfloat16", n=256, reps=1, device=device), 5)
        peaks["float32_256"] = round(mb.matmul_peak("float32", n=256, reps=3, device=device), 5)
    return peaks


def run_ingest(args, paths, encoders, sam, device) -> dict:
    """One synthetic scan through read -> ingest_scan -> store, with per-stage seconds."""
    import numpy as np

    import om3db
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig, ingest_scan
    from om3db.scan import read_scan
    from om3db.synth import write_scans

    out = args.cache / f"scan-{args.size}-0"
    found = sorted(out.glob("*/intrinsic")) if out.is_dir() else []
    scan_dir = found[0].parent if found else write_scans(out, scans=1, seed=0, size=args.size)[0]
    t = time.perf_counter()
    scan = read_scan(scan_dir)
    read_s = time.perf_counter() - t
    masks = np.asarray(scan.masks, dtype=bool)
    if args.masks:
        masks = masks[:, : args.masks]
    timed = {name: _Timed(enc, ["encode_images"]) for name, enc in encoders.items()}
    tsam = _Timed(sam, ["set_image", "predict_batch", "predict_best"]) if sam is not None else None
    cfg = IngestConfig(
        frame_step=args.frame_step,
        top_k=args.top_k,
        crop=CropConfig(mode="sam" if sam is not None else "box", levels=args.levels),
    )
    t = time.perf_counter()
    result = ingest_scan(scan, config=cfg, encoders=timed, sam=tsam, masks=masks)
    ingest_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp, om3db.connect(Path(tmp) / "db") as db:
        t = time.perf_counter()
        db.write(result)
        store_s = time.perf_counter() - t
    st = result.report.seconds_per_stage
    sam_s = tsam.seconds if tsam is not None else 0.0
    enc_s = {name: tm.seconds for name, tm in timed.items()}
    stages = {
        "read": read_s,
        "proposals": st.get("load", 0.0),
        "views": st.get("views", 0.0),
        "sam": sam_s,
        "crops": st.get("crops", 0.0) - sam_s,
        **enc_s,
        "embed_other": st.get("embed", 0.0) - sum(enc_s.values()),
        "aggregation": st.get("aggregate", 0.0),
        "store": store_s,
    }
    crops = result.report.crops
    return {
        "scan": str(scan_dir),
        "masks": int(masks.shape[1]),
        "instances": len(result.instances),
        "frames_used": result.report.frames_used,
        "sam_frames_encoded": getattr(sam, "encoder_calls", None),
        "crops": crops,
        "seconds_per_stage": {k: round(v, 3) for k, v in stages.items()},
        "total_s": round(read_s + ingest_s + store_s, 2),
        "crops_per_s": {name: round(crops / s, 3) for name, s in enc_s.items() if s > 0},
        "crops_per_s_whole_ingest": round(crops / (read_s + ingest_s + store_s), 3),
    }


def _object_views(objects: int, views: int):
    """``views`` windows of each of ``objects`` textured objects (object-major): a database with known neighbours."""
    import numpy as np

    out = []
    for o in range(objects):
        rng = np.random.default_rng(o)
        texture = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 50, (300, 300, 3)), 0, 255)
        for v in range(views):
            r = np.random.default_rng([o, v])
            (y, x), (h, w) = r.integers(0, 80, 2), r.integers(150, 220, 2)
            out.append(np.clip(texture[y : y + h, x : x + w] + r.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def agreement(kind: str, path: Path, enc16, objects: int, device) -> dict:
    """bfloat16 vs float32 vectors of the same crops: cosine per vector, same top-5 per query."""
    import numpy as np

    from om3db.embed import load_encoder

    images = _object_views(objects, 6)
    v16 = enc16.encode_images(images)
    enc32 = load_encoder(kind, path, device=str(device), dtype="float32")
    v32 = enc32.encode_images(images)
    del enc32
    gc.collect()
    cos = (v32 * v16).sum(axis=1)
    index = np.arange(len(images)).reshape(objects, 6)
    queries, database = v32[index[:, 0]], index[:, 1:].ravel()
    s32, s16 = queries @ v32[database].T, queries @ v16[database].T
    k = min(5, len(database))
    same = [set(a) == set(b) for a, b in zip(np.argsort(-s32, 1)[:, :k], np.argsort(-s16, 1)[:, :k], strict=True)]
    return {
        "model": kind,
        "crops": len(images),
        "cosine_min": round(float(cos.min()), 5),
        "cosine_median": round(float(np.median(cos)), 5),
        "top5_same": f"{sum(same)}/{len(same)}",
        "top5_same_fraction": round(sum(same) / len(same), 3),
    }


def _cast_bf16(enc):
    """A loaded float32 encoder turned bfloat16 in place (weights and inputs)."""
    import torch

    enc.model.to(torch.bfloat16)
    enc.dtype = torch.bfloat16
    return enc


def projection(encoders: dict, sam_row: dict | None) -> dict:
    """Seconds of a ScanNet-size scan (`SCANNET_SCAN`) from measured per-item rates."""
    s = SCANNET_SCAN
    crops = s["masks"] * s["views"] * s["levels"]
    out = {name: round(crops * row["seconds_per_item"], 1) for name, row in encoders.items()}
    if sam_row is not None:
        out["sam_encoder"] = round(s["frames"] * sam_row["seconds_per_item"], 1)
        out["sam_decoder"] = round(s["masks"] * s["views"] * s["sam_rounds"] * sam_row["decoder_s_per_prompt"], 1)
    out["total"] = round(sum(out.values()), 1)
    return {"assumptions": s, "crops": crops, "seconds": out}


def _markdown(res: dict) -> str:
    lines = [
        f"CPU: {res['machine']['cpu']} ({res['machine']['capability']}; bf16 native: {res['bf16_native']}); "
        f"threads {res['machine']['threads']}; peaks {res['peaks']}",
        "",
        "| encoder | dtype | items/s | GFLOP/item | achieved TFLOP/s | peak TFLOP/s | efficiency | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in res["encoders"].items():
        lines.append(
            f"| {key} | {row['dtype']} | {row['items_per_s']} | {row['gflop_per_item']} | {row['achieved_tflops']} | "
            f"{row['peak_tflops']} | {row['efficiency']} | {row['loadavg_1m']} |"
        )
    if res.get("ingest"):
        ing = res["ingest"]
        lines += [
            "",
            f"Ingest: {ing['masks']} masks, {ing['crops']} crops, {ing['total_s']} s, peak RSS {res['peak_rss_gb']} GB",
            "",
            "| stage | s |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v} |" for k, v in ing["seconds_per_stage"].items()]
    for row in res.get("agreement", []):
        how = f" ({row['bf16']})" if "bf16" in row else ""
        lines.append(
            f"\nbf16{how} vs fp32 {row['model']}: {row['crops']} crops, cosine min {row['cosine_min']}, "
            f"top-5 same {row['top5_same']}"
        )
    if res.get("projection"):
        lines.append(f"\nProjected ScanNet-size scan (s): {res['projection']['seconds']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny", choices=sorted(mb.SIZES))
    p.add_argument("--quick", action="store_true", help="a few masks and frames, 2 repetitions: < 5 min here")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--dtype", default="auto", help="ingest dtype: auto | float32 | bfloat16")
    p.add_argument("--compare-dtypes", action="store_true", help="encoder rows in float32 and bfloat16")
    p.add_argument("--agreement", type=int, default=None, help="objects (x 6 views) for bf16-vs-fp32; 0: skip")
    p.add_argument("--device", default="auto")
    p.add_argument("--size", default=None, choices=["tiny", "scannet"], help="synthetic scan size")
    p.add_argument("--frame-step", type=int, default=None)
    p.add_argument("--masks", type=int, default=None, help="first N masks of the scan (0: all)")
    p.add_argument("--top-k", type=int, default=None, help="views per mask")
    p.add_argument("--levels", type=int, default=3, help="crop levels")
    p.add_argument("--modes", nargs="+", default=None, choices=["box", "sam"])
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--skip", nargs="*", default=[], choices=["encoders", "ingest"])
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "om3db-bench")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's, one per core); see benchmarks/README.md",
    )
    p.add_argument("--no-alloc-env", action="store_true", help="do not set the allocator environment (mb.ALLOC_ENV)")
    args = p.parse_args()
    mb.tune_allocator_env(not args.no_alloc_env)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    quick = args.quick
    args.size = args.size or ("tiny" if quick else "scannet")
    args.frame_step = args.frame_step or (5 if quick else 10)
    masks_default = args.masks is None
    args.masks = (3 if quick else 0) if args.masks is None else args.masks
    args.top_k = args.top_k or (1 if quick else 5)
    reps = args.reps or (2 if quick else 3)
    sam_reps, prompts = (1, 40) if quick else (reps, 250)  # a ViT-H frame is tens of seconds on a CPU
    agree_objects = (0 if quick else 16) if args.agreement is None else args.agreement

    import torch

    from om3db.embed import load_dinov2, load_siglip, model_preset
    from om3db.hardware import resolve_device, resolve_dtype
    from om3db.sam import load_sam

    device = resolve_device(args.device)
    dtype, reason = resolve_dtype(args.dtype, device)
    info = mb.machine()
    res = {
        "cpu": info["cpu"],
        "bf16_native": info["bf16_native"],
        "machine": info,
        "alloc_env": mb.alloc_env_state(),
        "models": args.models,
        "quick": quick,
        "dtype": dtype,
        "dtype_reason": reason,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": mb.loadavg(),
    }
    _log(f"{info['cpu']} {info['capability']} bf16 native {info['bf16_native']}; ingest dtype {dtype} ({reason})")
    res["peaks"] = measure_peaks(device)
    _log(f"matmul peaks {res['peaks']}")
    t = time.perf_counter()
    paths = mb.random_checkpoints(args.cache / "models", args.models)
    res["checkpoint_write_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    encoders = {
        "siglip": load_siglip(paths["siglip"], device=str(device), dtype=args.dtype),
        "dinov2": load_dinov2(paths["dinov2"], device=str(device), dtype=args.dtype),
    }
    modes = args.modes or (["sam"] if model_preset("full" if args.models != "cpu" else "cpu")["sam"] else ["box"])
    want_sam = "sam" in modes or "encoders" not in args.skip
    sam = load_sam(paths["sam"], device=str(device), dtype=args.dtype) if want_sam else None
    res["model_load_s"] = round(time.perf_counter() - t, 1)
    _log(f"models loaded in {res['model_load_s']} s: {', '.join(str(v) for v in paths.values())}")

    # a quick run where one SAM frame would take more than 30 s at the matmul peak (float32 ViT-H on a CPU:
    # ~100 s here) box-crops in its ingest, measures SAM on a sample of its blocks and the encoders on 1-2 crops
    slow = (
        quick and sam is not None and sam_frame_estimate_s(sam, res["peaks"].get(dtype, res["peaks"]["float32"])) > 30
    )
    res["quick_slow_machine"] = slow
    if slow:
        modes = args.modes or ["box"]
        args.masks = 1 if masks_default else args.masks
    if "ingest" not in args.skip:  # first: it also warms every model up for the measurements below
        res["ingest"] = {}
        for mode in modes:
            if sam is not None:
                sam.encoder_calls = 0
            row = run_ingest(args, paths, encoders, sam if mode == "sam" else None, device)
            res["ingest"][mode] = row
            _log(f"ingest {mode}: {row}")
        res["ingest"] = res["ingest"][modes[-1]] if len(modes) == 1 else res["ingest"]
    warm = "ingest" not in args.skip

    res["encoders"] = {}
    batches = {"siglip": 1, "dinov2": 2} if slow else {"siglip": 4 if quick else 8, "dinov2": 8 if quick else 16}
    if "encoders" not in args.skip:
        for kind, enc in encoders.items():
            # always warmed up: the ingest fed other batch sizes, and oneDNN builds kernels per shape
            res["encoders"][f"{kind}/{dtype}"] = measure_encoder(kind, enc, reps=reps, batch=batches[kind])
            _log(f"{kind} {dtype}: {res['encoders'][f'{kind}/{dtype}']}")
        if sam is not None:
            res["encoders"][f"sam/{dtype}"] = measure_sam(
                sam,
                reps=2 if slow else sam_reps,
                prompts=12 if slow else prompts,
                warmup=not (warm and "sam" in modes),  # always 1024x1024
                blocks=slow,
            )
            _log(f"sam {dtype}: {res['encoders'][f'sam/{dtype}']}")
        other = "float32" if dtype != "float32" else ("bfloat16" if res["bf16_native"] else None)
        if args.compare_dtypes and other is not None:
            for kind, loader in (("siglip", load_siglip), ("dinov2", load_dinov2)):
                enc = loader(paths[kind], device=str(device), dtype=other)
                res["encoders"][f"{kind}/{other}"] = measure_encoder(kind, enc, reps=reps, batch=batches[kind])
                _log(f"{kind} {other}: {res['encoders'][f'{kind}/{other}']}")
                del enc
                gc.collect()
            other_sam = load_sam(paths["sam"], device=str(device), dtype=other)
            res["encoders"][f"sam/{other}"] = measure_sam(other_sam, reps=sam_reps, prompts=prompts)
            _log(f"sam {other}: {res['encoders'][f'sam/{other}']}")
            del other_sam
            gc.collect()
    per_encoder = {k.split("/")[0]: v for k, v in res["encoders"].items() if k.endswith(f"/{dtype}")}
    res["encoder_summary"] = {
        k: {key: v[key] for key in ("achieved_tflops", "peak_tflops", "efficiency", "dtype")}
        for k, v in per_encoder.items()
    }
    if agree_objects and dtype != "float32":
        res["agreement"] = [agreement(kind, paths[kind], enc, agree_objects, device) for kind, enc in encoders.items()]
        _log(f"agreement {res['agreement']}")
    elif agree_objects and args.agreement and not res["bf16_native"] and device.type == "cpu":
        # asked for on a CPU that only emulates bfloat16: the loaders refuse it here, so the float32 models are
        # cast by hand (the same bfloat16 arithmetic, emulated: several times slower) for this comparison only
        res["agreement"] = [
            {**agreement(kind, paths[kind], _cast_bf16(enc), agree_objects, device), "bf16": "emulated (cast by hand)"}
            for kind, enc in encoders.items()
        ]
        _log(f"agreement (emulated bfloat16) {res['agreement']}")
    if "siglip" in per_encoder and "dinov2" in per_encoder:
        res["projection"] = projection({k: per_encoder[k] for k in ("siglip", "dinov2")}, per_encoder.get("sam"))
    res["peak_rss_gb"] = round(mb.peak_rss_gb(), 2)
    res["loadavg_end"] = mb.loadavg()
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["median_efficiency"] = (
        round(statistics.median(v["efficiency"] for v in per_encoder.values()), 3) if per_encoder else None
    )
    for kind, row in per_encoder.items():  # the documented top-level keys, per encoder
        res[kind] = {key: row[key] for key in ("achieved_tflops", "peak_tflops", "efficiency", "dtype")}
    print(_markdown(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str))
    del torch


if __name__ == "__main__":
    main()
