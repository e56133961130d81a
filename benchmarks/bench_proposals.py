"""Benchmark the training-free proposer stage by stage on a synthetic scan (CPU).

    .venv/bin/python benchmarks/bench_proposals.py --size scannet --frame-step 10

Writes (or reuses) ``<out>/synth_<seed>_0`` with om3db.synth, links its GT 2D instance maps as the
scan's ``masks2d/`` (the disk source; SAM automatic masks are not timed: no GPU here), and reports
seconds and peak resident-memory growth per stage (sampled every 5 ms from /proc), plus
class-agnostic AP of the proposals against the scan's GT (walls and floor ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Stage:
    """Context manager: wall seconds and peak RSS growth (MiB) of a block."""

    def __init__(self, name: str, rows: list) -> None:
        self.name, self.rows = name, rows

    def __enter__(self):
        self.start_rss = self.peak = _rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        secs = time.perf_counter() - self.t0
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.rows.append(
            {"stage": self.name, "seconds": round(secs, 2), "peak_mib": round((self.peak - self.start_rss) / 2**20, 1)}
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="scannet", choices=["tiny", "scannet"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frame-step", type=int, default=10)
    ap.add_argument("--out", default="/tmp/om3db_bench_proposals")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from om3db.proposals import ProposalConfig, classagnostic_ap, refine_masks, scan_superpoints
    from om3db.proposals.lift import lift
    from om3db.proposals.masks2d import DiskMasks
    from om3db.proposals.observe import observe
    from om3db.scan import read_scan
    from om3db.synth import load_gt, write_scans

    out = Path(args.out)
    scan_dir = out / f"synth_{args.seed}_0"
    rows: list[dict] = []
    if not (scan_dir / "gt" / "instances.txt").is_file():
        with Stage("write synthetic scan (not part of the proposer)", rows):
            write_scans(out, scans=1, seed=args.seed, size=args.size)
    if not (scan_dir / "masks2d").exists():
        (scan_dir / "masks2d").symlink_to(scan_dir / "gt" / "instance2d")
    config = ProposalConfig()
    with Stage("read_scan", rows):
        scan = read_scan(scan_dir, frame_step=args.frame_step, masks=False)
    gt = load_gt(scan_dir)
    with Stage("superpoints (mesh graph)", rows):
        sp = scan_superpoints(scan, config)
    with Stage("observe, sensor depth", rows):
        obs = observe(scan, DiskMasks(), vis_threshold=config.vis_threshold, depth="sensor")
    with Stage("split + vote + merge", rows):
        res = lift(scan.points, sp, obs, config.lift)
    with Stage("observe, rendered depth", rows):
        obs_r = observe(scan, DiskMasks(), vis_threshold=config.vis_threshold, depth="rendered")
    with Stage("split + vote + merge (rendered)", rows):
        res_r = lift(scan.points, sp, obs_r, config.lift)
    with Stage("MOSS refine of the GT masks", rows):
        refine_masks(scan, gt.masks, source=DiskMasks(), superpoints=sp, config=config)
    ap_s = classagnostic_ap(res.masks, res.scores, gt.gt_ids, ignore_labels=(1, 2))
    ap_r = classagnostic_ap(res_r.masks, res_r.scores, gt.gt_ids, ignore_labels=(1, 2))
    summary = {
        "size": args.size,
        "points": scan.num_points,
        "frames": len(scan.frames),
        "frame_step": args.frame_step,
        "superpoints": int(sp.max()) + 1,
        "splits": res.num_splits,
        "proposals": int(res.masks.shape[1]),
        "gt_objects": gt.num_objects,
        "ap_sensor": ap_s,
        "ap_rendered": ap_r,
        "stages": rows,
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"{args.size} synthetic scan: {scan.num_points} points, {len(scan.frames)} frames (step {args.frame_step}), "
        f"{summary['superpoints']} superpoints, {res.num_splits} boundary splits, {res.masks.shape[1]} proposals "
        f"for {gt.num_objects} GT objects"
    )
    print("| stage | seconds | peak RSS growth (MiB) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']} | {r['peak_mib']} |")
    for name, a in (("sensor depth", ap_s), ("rendered depth", ap_r)):
        print(f"class-agnostic {name}: AP {a['ap']:.3f}  AP50 {a['ap50']:.3f}  AP25 {a['ap25']:.3f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
