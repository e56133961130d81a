"""Benchmark: om3db view selection against a straightforward reference that follows OpenMask3D.

The reference (:func:`reference_counts`) does what OpenMask3D's ``PointProjector`` does
(openmask3d/mask_features_computation/features_extractor.py): a (views x points) visibility array,
a (views x points x 2) array of projected pixels, then a (views x masks x H x W) boolean array
filled by a loop over every (view, mask) pair, summed over H and W, ``argsort`` for the top k.
It fixes the same bugs om3db fixes (z > 0, depth 0, axis scaling, rounding) and uses the same
projection function (``om3db.views.project_points``) so both produce identical output; only the
visibility-counting algorithm differs.

Run (see docs/benchmarks.md, "View selection"):

    .venv/bin/python benchmarks/bench_views.py --size scannet --repeats 3 --ref-frames 50

Each implementation runs in its own subprocess per repeat (time) and once more under tracemalloc
(peak of traced numpy/Python allocations); ru_maxrss of that process is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from om3db.views import project_points


def reference_counts(
    scan, masks: np.ndarray, *, vis_threshold: float = 0.2, frame_limit: int | None = None
) -> np.ndarray:
    """(F, M) int visible-pixel counts, OpenMask3D's way (views x masks x H x W boolean array).

    Mirrors ``PointProjector`` in OpenMask3D/openmask3d, ``openmask3d/mask_features_computation/
    features_extractor.py``: ``get_visible_points_view`` (every one of the N scene points projected in
    every view into a (views x N) visibility array and a (views x N x 2) pixel array, depth test
    against the decoded depth PNG), ``get_visible_points_in_view_in_mask`` (for every view i and mask j:
    ``masks[:, j] * visible_points_view[i] > 0`` over all N points, the selected pixels set True in
    ``in_view_in_mask[i, j]``, an H x W plane) and ``get_top_k_indices_per_mask``
    (``.sum(axis=2).sum(axis=2)``, then ``argsort``). ``masks`` is used in the dtype the caller holds it:
    OpenMask3D's ``InstanceMasks3D`` keeps what ``torch.load`` returns (the float16 points x masks array
    of its mask files), so its per-(view, mask) expression ``(masks[:, j] * visible) > 0`` runs in float16;
    some forks convert to bool first (``--ref-masks bool``). Differences, none of which slows it down:
    :func:`om3db.views.project_points` (element-wise float64, the same arithmetic om3db uses, as fast as
    their homogeneous matmul) with the bugs om3db fixes (z > 0, depth 0, rounding instead of
    truncation), so the counts are identical.
    """
    frames = scan.frames[:frame_limit]
    n = scan.num_points
    intr = scan.depth_intrinsics
    h, w = intr.height, intr.width
    visible_points_view = np.zeros((len(frames), n), dtype=bool)
    projected_points = np.zeros((len(frames), n, 2), dtype=np.int64)
    for i, frame in enumerate(frames):
        depth = frame.depth()
        u, v, z = project_points(scan.points, np.linalg.inv(frame.pose), intr)
        with np.errstate(invalid="ignore"):
            uv = np.stack([np.rint(u), np.rint(v)], axis=1)
        uv[~np.isfinite(uv)] = -1
        projected_points[i] = uv.astype(np.int64)
        pp = projected_points[i]
        inside = (z > 0) & (pp[:, 0] >= 0) & (pp[:, 0] < w) & (pp[:, 1] >= 0) & (pp[:, 1] < h)
        d = depth[pp[inside, 1], pp[inside, 0]]
        visible_points_view[i][inside] = (d > 0) & (np.abs(d - z[inside]) <= vis_threshold)
    num_masks = masks.shape[1]
    in_view_in_mask = np.zeros((len(frames), num_masks, h, w), dtype=bool)
    for i in range(len(frames)):
        for j in range(num_masks):
            sel = (masks[:, j] * visible_points_view[i]) > 0
            pp = projected_points[i][sel]
            if len(pp):
                in_view_in_mask[i, j, pp[:, 1], pp[:, 0]] = True
    return in_view_in_mask.sum(axis=2).sum(axis=2)


def reference_top_k(counts: np.ndarray, k: int = 5) -> list[list[int]]:
    """Per mask the top-k frame indices (ties: earlier frame), zero-visibility views dropped."""
    order = np.argsort(-counts, axis=0, kind="stable")[:k, :].T
    return [[int(f) for f in row if counts[f, j] > 0] for j, row in enumerate(order)]


# --------------------------------------------------------------------------- benchmark driver


def _worker(args) -> dict:
    from om3db.scan import read_scan
    from om3db.views import compute_visibility, select_views

    if args.trace:
        tracemalloc.start()
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    clock = _Clock(times, cpu)
    t, c = time.perf_counter(), time.process_time()
    scan = read_scan(args.scan)
    masks = with_blob_proposals(scan.points, scan.masks, args.proposals)
    if args.frames:
        scan = _prefix(scan, args.frames)
    clock.stop("load_scan", t, c)
    if args.trace:
        tracemalloc.reset_peak()
    if args.impl == "fast":
        t, c = time.perf_counter(), time.process_time()
        vis = compute_visibility(scan, masks)
        clock.stop("visibility", t, c)
        t, c = time.perf_counter(), time.process_time()
        top = reference_top_k(vis.counts, 5)
        clock.stop("top_k", t, c)
        t, c = time.perf_counter(), time.process_time()
        select_views(scan, masks, visibility=vis)
        clock.stop("prompts_boxes", t, c)
        counts = vis.counts
        if not args.trace:
            out_profile = _profile(scan, masks)
    else:
        t, c = time.perf_counter(), time.process_time()
        held = masks.astype(np.float16 if args.ref_masks == "float16" else bool)  # as loaded, before timing
        t, c = time.perf_counter(), time.process_time()
        counts = reference_counts(scan, held)
        clock.stop("visibility", t, c)
        t, c = time.perf_counter(), time.process_time()
        top = reference_top_k(counts, 5)
        clock.stop("top_k", t, c)
    out = {"times": times, "cpu": cpu, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.trace:
        out["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    if args.impl == "fast" and not args.trace:
        out["profile_cpu_ms_per_frame"] = out_profile
    out["checksum"] = [int(counts.sum()), top]
    out["frames"], out["masks"], out["points"] = len(scan.frames), int(masks.shape[1]), scan.num_points
    return out


def _profile(scan, masks: np.ndarray) -> dict[str, float]:
    """CPU ms per frame of each stage of ``compute_visibility``, run one stage at a time on one thread:
    depth PNG decode, projection + depth test, (mask, pixel) counting."""
    from om3db.views import MaskMembership, _Projector, mask_pixel_counts

    member = MaskMembership.from_dense(masks)
    in_mask = np.flatnonzero(member.indptr[1:] > member.indptr[:-1])
    projector, intr, n = _Projector(scan.points[in_mask]), scan.depth_intrinsics, len(scan.frames)
    scratch = np.empty(intr.width * intr.height, dtype=np.int64)
    decode = project = count = 0.0
    for f in scan.frames:  # one frame at a time: holding every depth would inflate the RSS peak
        t0 = time.process_time()
        d = f.depth()
        t1 = time.process_time()
        sub, pix = projector.visible(f.world_to_camera, d, intr, 0.2)
        t2 = time.process_time()
        mask_pixel_counts(member, in_mask[sub], pix, scratch.size, scratch)
        t3 = time.process_time()
        decode, project, count = decode + t1 - t0, project + t2 - t1, count + t3 - t2
    return {
        "decode_depth_png": 1e3 * decode / n,
        "project_and_depth_test": 1e3 * project / n,
        "count_mask_pixels": 1e3 * count / n,
        "points_projected": int(in_mask.size),
    }


class _Clock:
    def __init__(self, wall: dict, cpu: dict) -> None:
        self.wall, self.cpu = wall, cpu

    def stop(self, stage: str, t0: float, c0: float) -> None:
        self.wall[stage] = time.perf_counter() - t0
        self.cpu[stage] = time.process_time() - c0


def with_blob_proposals(points: np.ndarray, masks: np.ndarray, total: int, seed: int = 0) -> np.ndarray:
    """GT masks plus random ball-shaped proposals (radius 0.3-1.0 m around random scene points) up to
    ``total`` columns: overlapping class-agnostic masks like a proposal network's, deterministic."""
    extra = total - masks.shape[1]
    if extra <= 0:
        return masks
    rng = np.random.default_rng(seed)
    centres = points[rng.choice(len(points), extra, replace=False)]
    radii = rng.uniform(0.3, 1.0, extra)
    blobs = np.stack([((points - c) ** 2).sum(axis=1) <= r * r for c, r in zip(centres, radii, strict=True)], axis=1)
    return np.concatenate([masks, blobs], axis=1)


def _prefix(scan, n: int):
    import dataclasses

    return dataclasses.replace(scan, frames=scan.frames[:n])


def _run(scan: Path, impl: str, frames: int, trace: bool, proposals: int, ref_masks: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--scan",
        str(scan),
        "--frames",
        str(frames),
        "--proposals",
        str(proposals),
        "--ref-masks",
        ref_masks,
    ]
    if trace:
        cmd.append("--trace")
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict], mem: dict) -> dict:
    stages = runs[0]["times"].keys()
    med = {s: statistics.median(r["times"][s] for r in runs) for s in stages}
    med_cpu = {s: statistics.median(r["cpu"][s] for r in runs) for s in stages}
    prof = {
        k: statistics.median(r["profile_cpu_ms_per_frame"][k] for r in runs)
        for k in runs[0].get("profile_cpu_ms_per_frame", {})
    }
    return {
        "median_s": med,
        "median_cpu_s": med_cpu,
        "rss_peak_mb": max(r["rss_peak_mb"] for r in runs + [mem]),
        "traced_peak_mb": mem["traced_peak_mb"],
        "profile_cpu_ms_per_frame": prof,
        "cpu_s_per_run": [r["cpu"]["visibility"] + r["cpu"]["top_k"] for r in runs],
        "checksum": runs[0]["checksum"],
        "frames": runs[0]["frames"],
        "masks": runs[0]["masks"],
        "points": runs[0]["points"],
    }


def _bench(
    scan: Path, prefix: int, repeats: int, ref_repeats: int, proposals: int, ref_masks: str
) -> tuple[dict, dict, dict]:
    """(om3db on all frames, om3db on the prefix, reference on the prefix). Repeats are interleaved
    (fast, fast, ref, fast, fast, ref, ...) so a change in the machine's load hits both sides alike."""
    jobs = [("fast", 0), ("fast", prefix), ("ref", prefix)]
    runs: dict[tuple[str, int], list[dict]] = {j: [] for j in jobs}
    for r in range(max(repeats, ref_repeats)):
        for impl, frames in jobs:
            if r < (ref_repeats if impl == "ref" else repeats):
                runs[(impl, frames)].append(_run(scan, impl, frames, False, proposals, ref_masks))
    return tuple(_summary(runs[j], _run(scan, j[0], j[1], True, proposals, ref_masks)) for j in jobs)  # type: ignore[return-value]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="scannet", choices=["tiny", "scannet"])
    p.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-repeats", type=int, default=3)
    p.add_argument("--ref-frames", type=int, default=50, help="frames the reference runs on (0: all)")
    p.add_argument(
        "--proposals",
        type=int,
        default=0,
        help="total masks: the GT masks plus random overlapping ball proposals (0: GT masks only)",
    )
    p.add_argument(
        "--ref-masks",
        default="float16",
        choices=["float16", "bool"],
        help="dtype the reference holds the masks in: float16 as OpenMask3D loads its mask files, or bool",
    )
    p.add_argument("--worker", choices=["fast", "ref"])
    p.add_argument("--scan", type=Path)
    p.add_argument("--frames", type=int, default=0)
    p.add_argument("--trace", action="store_true")
    args = p.parse_args()
    if args.worker:
        print(
            json.dumps(
                _worker(
                    argparse.Namespace(
                        impl=args.worker,
                        scan=args.scan,
                        frames=args.frames,
                        trace=args.trace,
                        proposals=args.proposals,
                        ref_masks=args.ref_masks,
                    )
                )
            )
        )
        return

    from om3db.synth import write_scans

    out = args.cache / f"views-{args.size}-{args.seed}"
    scans = sorted(out.glob("*/intrinsic")) if out.is_dir() else []
    scan = scans[0].parent if scans else write_scans(out, scans=1, seed=args.seed, size=args.size, masks=True)[0]
    nref = args.ref_frames or 10**9
    fast_all, fast_pre, ref_pre = _bench(scan, nref, args.repeats, args.ref_repeats, args.proposals, args.ref_masks)
    nref = fast_pre["frames"]
    assert fast_pre["checksum"] == ref_pre["checksum"], "fast and reference disagree"
    sel = lambda r, k="median_s": r[k]["visibility"] + r[k]["top_k"]  # noqa: E731
    report = {
        "loadavg_1m_end": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "reference_masks_dtype": args.ref_masks,
        "scan": str(scan),
        "points": fast_all["points"],
        "masks": fast_all["masks"],
        "frames": fast_all["frames"],
        "fast_all_frames": fast_all,
        "fast_prefix": fast_pre,
        "reference_prefix": ref_pre,
        "prefix_frames": nref,
        "speedup_on_prefix_wall": sel(ref_pre) / sel(fast_pre),
        "speedup_on_prefix_cpu": sel(ref_pre, "median_cpu_s") / sel(fast_pre, "median_cpu_s"),
        "outputs_identical_on_prefix": True,
    }
    for r in (fast_all, fast_pre, ref_pre):
        r.pop("checksum")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
