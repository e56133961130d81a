"""Shared helpers of the model benchmarks (bench_ingest.py, bench_encoders.py, device_check.sh).

- `tune_allocator_env`: re-exec the script with the allocator settings measured to matter on these
  VMs (transparent huge pages for torch's large tensors, glibc keeping freed memory) unless told not to;
- `matmul_peak`: the TFLOP/s of a square matmul in a dtype, the reference every encoder's efficiency
  is quoted against, measured in the same process;
- `encoder_efficiency`: an encoder's seconds per call, each call between two peak measurements
  as long as the call (at most 3 s), so that load from other jobs on a shared machine hits both
  alike (the ratio of each triple is the efficiency; medians are reported);
- `flops`: FLOPs of one call (torch's FlopCounterMode: matmuls, convolutions, attention);
- `random_checkpoints`: random checkpoints of the tiny / cpu / full architectures, written once into a cache.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ALLOC_ENV = {
    "THP_MEM_ALLOC_ENABLE": "1",  # torch: 2 MB-aligned large tensors with MADV_HUGEPAGE (fewer page faults)
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # glibc: tensors up to 32 MB from the heap, not fresh mmaps
    "MALLOC_TRIM_THRESHOLD_": str(4 << 30),  # glibc: keep freed memory instead of returning it page by page
}
"""Environment that the model benchmarks run under by default (``--no-alloc-env`` to compare)."""


def tune_allocator_env(enabled: bool) -> None:
    """Re-exec this process with `ALLOC_ENV` (once) when ``enabled`` and it is not set yet."""
    if not enabled or os.environ.get("OM3DB_BENCH_ALLOC_ENV") == "1":
        return
    env = {**os.environ, **ALLOC_ENV, "OM3DB_BENCH_ALLOC_ENV": "1"}
    os.execvpe(sys.executable, [sys.executable, *sys.argv], env)


def alloc_env_state() -> dict:
    return {k: os.environ.get(k) for k in ALLOC_ENV}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def machine() -> dict:
    """CPU model, torch capability and flags, threads, load average (om3db.hardware)."""
    import torch

    from om3db.hardware import detect_cpu

    cpu = detect_cpu()
    return {
        "cpu": cpu.name,
        "capability": cpu.capability,
        "flags": sorted(cpu.flags),
        "bf16_native": cpu.bf16_native,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def _sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: str, *, n: int = 2048, reps: int = 3, device="cpu", window_s: float | None = None) -> float:
    """TFLOP/s of an n x n x n matmul in ``dtype``: the median of ``reps`` products after one warm-up, or,
    with ``window_s``, all products run back to back for that many seconds (total FLOPs / total time), so
    that on a shared machine the peak sees the same load as a model call of that length."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    times = []
    with torch.inference_mode():
        a @ b
        start = time.perf_counter()
        while len(times) < reps + 1 or (window_s is not None and time.perf_counter() - start < window_s):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - t)
    if window_s is not None:
        return 2 * n**3 * (len(times) - 1) / sum(times[1:]) / 1e12
    return 2 * n**3 / statistics.median(times[1:]) / 1e12


def _register_flop_formulas() -> None:
    """FlopCounterMode knows neither the fused oneDNN linear (om3db.fused) nor CPU flash attention: teach it."""
    import math

    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

    lp = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if lp is not None and lp not in flop_registry and lp.default not in flop_registry:

        @register_flop_formula(lp)
        def _linear_pointwise_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
            return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]

    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None and cpu_flash not in flop_registry and cpu_flash.default not in flop_registry:

        @register_flop_formula(cpu_flash)
        def _cpu_flash_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(q_shape, k_shape, v_shape)


def flops(fn) -> int:
    """FLOPs of one call of ``fn()`` as torch's FlopCounterMode counts them (matmuls, convolutions, attention,
    the fused linears of om3db.fused)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    _register_flop_formulas()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def encoder_efficiency(
    fn,
    *,
    items: int,
    flops_per_item: float,
    dtype: str,
    reps: int = 3,
    device="cpu",
    max_window_s: float = 3.0,
    warmup: bool = True,
) -> dict:
    """Time ``fn()`` (which handles ``items`` crops / frames) ``reps`` times after a warm-up call; around each
    call measure the ``dtype`` matmul peak for as long as the call took (at most ``max_window_s``), before and
    after, so that both see the same load. Reports medians: s per item, items/s, achieved and peak TFLOP/s,
    efficiency = achieved / mean(peak before, peak after) per call."""
    import torch

    with torch.inference_mode():
        window = max_window_s
        if warmup:  # skip only when the caller already ran fn's shapes (e.g. an ingest just ran)
            t = time.perf_counter()
            fn()
            window = min(max(time.perf_counter() - t, 0.3), max_window_s)
        rows = []
        for _ in range(reps):
            before = matmul_peak(dtype, device=device, window_s=window)
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            elapsed = time.perf_counter() - t
            after = matmul_peak(dtype, device=device, window_s=window)
            window = min(max(elapsed, 0.3), max_window_s)
            peak = (before + after) / 2
            rows.append((elapsed / items, flops_per_item * items / elapsed / 1e12, peak))
    s, achieved, peak = (statistics.median(col) for col in zip(*rows, strict=True))
    return {
        "dtype": dtype,
        "seconds_per_item": round(s, 4),
        "items_per_s": round(1 / s, 3),
        "gflop_per_item": round(flops_per_item / 1e9, 2),
        "achieved_tflops": round(achieved, 4),
        "peak_tflops": round(peak, 4),
        "efficiency": round(statistics.median(a / p for _, a, p in rows), 3),
        "runs": [{"s_per_item": round(s, 4), "tflops": round(a, 4), "peak": round(p, 4)} for s, a, p in rows],
        "loadavg_1m": loadavg(),
    }


SIZES = {
    # preset -> (siglip size, dinov2 size, SAM .pth size)
    "tiny": ("tiny", "tiny", "tiny"),
    "cpu": ("base", "small", "vit_b"),
    "full": ("so400m", "large", "vit_h"),
}


def random_checkpoint(cache: Path, kind: str, size: str) -> Path:
    """A random checkpoint (siglip / dinov2 / sam / sam_hf) of an architecture size, written once into ``cache``."""
    from om3db.random_models import write_random_dinov2, write_random_sam, write_random_sam_hf, write_random_siglip

    writers = {
        "siglip": (write_random_siglip, f"siglip-{size}"),
        "dinov2": (write_random_dinov2, f"dinov2-{size}"),
        "sam": (write_random_sam, f"sam-{size}.pth"),
        "sam_hf": (write_random_sam_hf, f"sam-hf-{size}"),
    }
    write, name = writers[kind]
    path = Path(cache) / name
    if not path.exists():
        tmp = path.with_name(path.name + ".partial")
        write(tmp, size, 0)
        tmp.rename(path)  # a killed write never leaves a half checkpoint under the real name
    return path


def random_checkpoints(cache: Path, preset: str) -> dict[str, Path]:
    siglip, dinov2, sam = SIZES[preset]
    return {
        "siglip": random_checkpoint(cache, "siglip", siglip),
        "dinov2": random_checkpoint(cache, "dinov2", dinov2),
        "sam": random_checkpoint(cache, "sam", sam),
    }


def sample_crops(n: int, seed: int = 0):
    """``n`` RGB crops of ScanNet-like sizes (60..400 px a side), textured: what the encoders see."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(60, 400, 2)
        base = rng.integers(0, 256, 3)
        out.append(np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))
    return out
