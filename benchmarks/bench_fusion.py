"""Benchmark: TSDF fusion of a ScanNet-size synthetic scan (250 frames, 640x480 depth, 1296x968 colour).

What a capture without a scene PLY costs at ingest: the time and peak memory of ``om3db.fusion.fuse`` over
every frame, and how good the fused points are against the exact ground truth of the synthetic scene:
distance to the true surface, depth residual when reprojected into the frames (bilinear, in the frames'
own depth maps), and coverage (true mesh vertices seen within 5 m in the fused frames that have a fused
point within 2 cm).

Run (see docs/benchmarks.md, "Fusion"):

    .venv/bin/python benchmarks/bench_fusion.py --scan /tmp/om3db_bench_synth/synth_0_0 --voxels 0.02 0.01

Without ``--scan`` a ScanNet-size synthetic scan is written first (~3 min here). Each configuration runs
in its own subprocess (clean peak RSS: ``ru_maxrss``, before and after fusion); ``--json`` for rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(scan_dir: str, voxel: float, step: int, residual_every: int, residual_offset: int = 0) -> dict:
    """One fusion in this (fresh) process; returns timings, memory and quality."""
    from om3db._o3d import open3d
    from om3db.fusion import FusionConfig, depth_residuals, fuse
    from om3db.scan import read_scan
    from om3db.synth import build_scene, load_gt

    t0 = time.perf_counter()
    scan = read_scan(scan_dir, masks=False)
    frames = scan.frames[::step]
    t_read = time.perf_counter() - t0
    open3d()  # import cost outside the timed fusion
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    cloud = fuse(frames, scan.depth_intrinsics, scan.color_intrinsics, config=FusionConfig(voxel_size=voxel))
    t_fuse = time.perf_counter() - t0
    rss_peak = _rss_mb()
    held = scan.frames[residual_offset::residual_every]
    res = depth_residuals(cloud.vertices, held, scan.depth_intrinsics)
    row = {
        "scan": Path(scan_dir).name,
        "voxel_m": voxel,
        "frames": len(frames),
        "depth_size": f"{scan.depth_intrinsics.width}x{scan.depth_intrinsics.height}",
        "color_size": f"{scan.color_intrinsics.width}x{scan.color_intrinsics.height}",
        "read_s": round(t_read, 2),
        "fuse_s": round(t_fuse, 2),
        "integrate_s": cloud.info["seconds"]["integrate"],
        "extract_s": cloud.info["seconds"]["extract"],
        "ms_per_frame": round(1000 * cloud.info["seconds"]["integrate"] / len(frames), 1),
        "rss_before_mb": round(rss_before),
        "rss_peak_mb": round(rss_peak),
        "points": len(cloud.vertices),
        "residual_frames": "not fused" if step > 1 and residual_offset % step else "fused",
        "reproj_residual_mm_median": round(float(np.median(res)) * 1000, 2),
        "reproj_residual_mm_p90": round(float(np.percentile(res, 90)) * 1000, 2),
    }
    if not (Path(scan_dir) / "gt" / "scene.json").is_file():  # real data: no exact surface to compare with
        return row
    o3d = open3d()
    gt = load_gt(scan_dir)
    scene = build_scene(gt.scene["seed"], gt.scene["size"], gt.scene["index"])
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(scene.vertices), o3d.core.Tensor(scene.faces.astype(np.uint32)))
    dist = rc.compute_distance(o3d.core.Tensor(cloud.vertices)).numpy()
    from scipy.spatial import cKDTree

    from om3db.synth import gt_point_visibility

    seen = np.zeros(len(scene.vertices), bool)  # true vertices visible within depth_max in some fused frame
    for f in frames[::residual_every]:
        z = (scene.vertices - f.pose[:3, 3]) @ f.pose[:3, 2]
        seen |= gt_point_visibility(scan_dir, f.frame_id) & (z <= FusionConfig().depth_max)
    cover, _ = cKDTree(cloud.vertices).query(scene.vertices[seen], distance_upper_bound=0.02)
    return {
        **row,
        "gt_mesh_points": len(scene.vertices),
        "dist_to_surface_mm_median": round(float(np.median(dist)) * 1000, 2),
        "dist_to_surface_mm_p90": round(float(np.percentile(dist, 90)) * 1000, 2),
        "coverage_2cm": round(float(np.isfinite(cover).mean()), 4),
        "seen_gt_points": int(seen.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scan", help="a ScanNet-size synthetic scan folder (om3db synth --size scannet)")
    ap.add_argument("--real", nargs="*", default=[], help="real ScanNet-layout scans to fuse too (no ground truth)")
    ap.add_argument("--voxels", type=float, nargs="+", default=[0.02])
    ap.add_argument("--real-voxel", type=float, default=0.005, help="voxel for --real scans (close-range captures)")
    ap.add_argument("--step", type=int, default=1, help="fuse every n-th frame (1: all 250)")
    ap.add_argument("--residual-every", type=int, default=10, help="frames used for the reprojection residual")
    ap.add_argument("--residual-offset", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.scan, args.voxels[0], args.step, args.residual_every, args.residual_offset)))
        return
    scan = args.scan
    if scan is None:
        from om3db.synth import write_scans

        scan = str(write_scans(tempfile.mkdtemp(prefix="om3db-bench-fusion-"), scans=1, size="scannet")[0])
    rows = []
    # real scans: fuse the even frames, measure the residual in the odd ones (not fused)
    runs = [(scan, v, args.step, args.residual_every, 0) for v in args.voxels] + [
        (r, args.real_voxel, 2, 2, 1) for r in args.real
    ]
    for scan_dir, voxel, step, every, offset in runs:
        cmd = [sys.executable, __file__, "--child", "--scan", scan_dir, "--voxels", str(voxel), "--step", str(step)]
        cmd += ["--residual-every", str(every), "--residual-offset", str(offset)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"voxel {voxel}: {rows[-1]}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    cols = list(dict.fromkeys(c for r in rows for c in r))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    main()
