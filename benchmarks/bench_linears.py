"""Benchmark: plain ``F.linear`` (+ a separate GELU) against oneDNN's fused linear on every encoder shape.

What `om3db.fused.fuse_linears_for` decides per CPU kind and dtype: for each linear shape of
SigLIP-SO400M/14@384, DINOv2-L/14 and SAM ViT-H at the batch the encoders run (SigLIP 8 crops x 729
tokens, DINOv2 16 x 257, SAM one 1024x1024 frame = 64 x 64 tokens; inputs shaped as the models'
forwards have them, since ``F.linear`` takes another path for 2-D inputs), the time of

- *plain*: ``F.linear(x, W, b)`` then the MLP's GELU as its own pass (tanh form for SigLIP, exact
  for DINOv2 and SAM), what the unfused model runs;
- *fused*: ``torch.ops.mkldnn._linear_pointwise(x, W, b, act)`` (`om3db.fused.FusedLinear`),

alternating the two ``--reps`` times; the ratio is plain / fused (> 1: fusing is faster), median
over the repetitions. Random weights: the arithmetic is the real models'.

A second table times ``F.scaled_dot_product_attention`` (torch's CPU flash attention, what the
encoders run) on the encoders' attention shapes in each dtype, in TFLOP/s of the 4·B·H·N²·D it computes:
where it runs no faster in bfloat16 than in float32 (an AVX512-BF16 CPU without AMX), attention is
what keeps a bfloat16 encoder below the bfloat16 matmul peak. SAM's rows run the shapes the
fused SAM attention runs (`om3db.fused.fuse_sam_attention`): head dimension 80 + the appended 14 + 14
(windowed) or 64 + 64 (global) relative-position columns for q and k, and v padded to the same size
(the CPU flash kernel wants one head size); "nominal GFLOP" counts head dimension 80.

    .venv/bin/python benchmarks/bench_linears.py --dtypes float32 bfloat16 --json linears.json

A markdown table goes to stdout, everything to ``--json``. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _modelbench as mb  # noqa: E402

# (encoder, layer, input batch shape (as the model's forward has it), in, out, activation after it:
# "tanh" | "none" (exact GELU) | "")
SHAPES = [
    ("siglip-so400m", "q/k/v/o", (8, 729), 1152, 1152, ""),
    ("siglip-so400m", "fc1 + gelu(tanh)", (8, 729), 1152, 4304, "tanh"),
    ("siglip-so400m", "fc2", (8, 729), 4304, 1152, ""),
    ("dinov2-large", "q/k/v/o", (16, 257), 1024, 1024, ""),
    ("dinov2-large", "fc1 + gelu", (16, 257), 1024, 4096, "none"),
    ("dinov2-large", "fc2", (16, 257), 4096, 1024, ""),
    ("sam-vit-h", "qkv", (1, 64, 64), 1280, 3840, ""),
    ("sam-vit-h", "proj", (1, 64, 64), 1280, 1280, ""),
    ("sam-vit-h", "lin1 + gelu", (1, 64, 64), 1280, 5120, "none"),
    ("sam-vit-h", "lin2", (1, 64, 64), 5120, 1280, ""),
]


# (encoder, what, batch x heads, tokens, head dim as run, nominal head dim)
ATTENTION = [
    ("siglip-so400m", "8 crops", 8 * 16, 729, 72, 72),
    ("dinov2-large", "16 crops", 16 * 16, 257, 64, 64),
    ("sam-vit-h", "windowed block (25 windows)", 25 * 16, 196, 80 + 28, 80),
    ("sam-vit-h", "global block", 16, 4096, 80 + 128, 80),
]


def measure_attention(dtype_name: str, reps: int) -> list[dict]:
    import torch
    from torch.nn import functional as F  # noqa: N812

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    rows = []
    for encoder, what, bh, n, d, d_nominal in ATTENTION:
        q, k, v = (torch.randn(1, bh, n, d, generator=g).to(dtype) for _ in range(3))
        times = []
        with torch.inference_mode():
            F.scaled_dot_product_attention(q, k, v)
            for _ in range(reps):
                t = time.perf_counter()
                F.scaled_dot_product_attention(q, k, v)
                times.append(time.perf_counter() - t)
        s = statistics.median(times)
        gflop = 4 * bh * n * n * d / 1e9
        nominal = 4 * bh * n * n * d_nominal / 1e9
        row = {
            "dtype": dtype_name,
            "encoder": encoder,
            "what": what,
            "shape": f"{bh} x {n} x {d}",
            "s": round(s, 4),
            "gflop": round(gflop, 2),
            "tflops": round(gflop / s / 1e3, 4),
            "nominal_gflop": round(nominal, 2),
        }
        rows.append(row)
        print(f"[{time.strftime('%H:%M:%S')} load {mb.loadavg()}] {row}", file=sys.stderr)
    return rows


def measure(dtype_name: str, reps: int) -> list[dict]:
    import torch
    from torch.nn import functional as F  # noqa: N812

    from om3db.fused import fused_linear_available

    dtype = getattr(torch, dtype_name)
    available = fused_linear_available(dtype)
    rows = []
    g = torch.Generator().manual_seed(0)
    for encoder, layer, batch, k, n, act in SHAPES:
        m = math.prod(batch)
        x = torch.randn(*batch, k, generator=g).to(dtype)
        w = (torch.randn(n, k, generator=g) / k**0.5).to(dtype)
        b = torch.randn(n, generator=g).to(dtype)

        def plain(x=x, w=w, b=b, act=act):
            y = F.linear(x, w, b)
            return F.gelu(y, approximate=act) if act else y

        def fused(x=x, w=w, b=b, act=act):
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu" if act else "none", [], act)

        calls = {"plain": plain, "fused": fused} if available else {"plain": plain}
        times: dict[str, list[float]] = {name: [] for name in calls}
        with torch.inference_mode():
            for fn in calls.values():
                fn()  # warm-up: oneDNN builds its primitive on the first call
            for _ in range(reps):
                for name, fn in calls.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        gflop = 2 * m * k * n / 1e9
        row = {
            "dtype": dtype_name,
            "encoder": encoder,
            "layer": layer,
            "m": m,
            "k": k,
            "n": n,
            "gflop": round(gflop, 2),
            "plain_s": round(statistics.median(times["plain"]), 5),
            "plain_tflops": round(gflop / statistics.median(times["plain"]) / 1e3, 4),
        }
        if available:
            ratios = [p / f for p, f in zip(times["plain"], times["fused"], strict=True)]
            row |= {
                "fused_s": round(statistics.median(times["fused"]), 5),
                "fused_tflops": round(gflop / statistics.median(times["fused"]) / 1e3, 4),
                "plain_over_fused": round(statistics.median(ratios), 3),
            }
        rows.append(row)
        print(f"[{time.strftime('%H:%M:%S')} load {mb.loadavg()}] {row}", file=sys.stderr)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--peak-window", type=float, default=3.0, help="seconds of back-to-back 2048^3 products per peak")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from om3db import hardware

    res = {"machine": mb.machine(), "loadavg_start": mb.loadavg(), "rows": [], "attention": []}
    for dtype_name in args.dtypes:
        res["peak_tflops_" + dtype_name] = round(mb.matmul_peak(dtype_name, window_s=args.peak_window), 4)
        res["rows"] += measure(dtype_name, args.reps)
        res["attention"] += measure_attention(dtype_name, args.reps)
    res["loadavg_end"] = mb.loadavg()

    print(f"CPU: {hardware.detect_cpu().describe()}; load {res['loadavg_start']} -> {res['loadavg_end']}")
    print("peaks (TFLOP/s): " + ", ".join(f"{d} {res['peak_tflops_' + d]}" for d in args.dtypes))
    print()
    print("| dtype | encoder | layer | M x K x N | plain TFLOP/s | fused TFLOP/s | plain / fused |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in res["rows"]:
        fused = r.get("fused_tflops", "n/a (no oneDNN op)")
        ratio = r.get("plain_over_fused", "-")
        print(
            f"| {r['dtype']} | {r['encoder']} | {r['layer']} | {r['m']} x {r['k']} x {r['n']} "
            f"| {r['plain_tflops']} | {fused} | {ratio} |"
        )
    print()
    print("| dtype | encoder | attention | calls x tokens x head dim | s | TFLOP/s | nominal GFLOP |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in res["attention"]:
        print(
            f"| {r['dtype']} | {r['encoder']} | {r['what']} | {r['shape']} | {r['s']} | {r['tflops']} "
            f"| {r['nominal_gflop']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
