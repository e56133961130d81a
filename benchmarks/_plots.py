"""Figures for the benchmark scripts: a PNG next to each JSON (``--out x.json`` -> ``x.png``).

``python benchmarks/_plots.py RESULT.json`` redraws one from a saved JSON (the kind is read from its rows).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _family(system: str) -> str:
    """Rows of one index family share a line: 'om3db IVF nlist=200 nprobe=4 (sweep)' -> 'om3db IVF'."""
    words = [w for w in system.split() if "=" not in w and not w.startswith("(")]
    return " ".join(words)


def plot_query(json_path: str | Path) -> Path:
    """bench_query.py: recall@10 vs p50 latency (log scale), one panel per N, one line per index family."""
    path = Path(json_path)
    rows = [r for r in json.loads(path.read_text())["rows"] if r.get("p50_ms") is not None]
    sizes = sorted({r["n"] for r in rows})
    fig = _figure(5.0 * len(sizes), 4.2)
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    for ax, n in zip(axes, sizes, strict=True):
        families: dict[str, list] = {}
        for r in rows:
            if r["n"] == n:
                families.setdefault(_family(r["system"]), []).append(r)
        for name, rs in sorted(families.items()):
            rs.sort(key=lambda r: r["p50_ms"])
            ax.plot([r["p50_ms"] for r in rs], [r["recall@10"] for r in rs], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per query (ms, log)")
        ax.set_ylabel("recall@10")
        ax.set_title(f"N = {n:,}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    out = path.with_suffix(".png")
    fig.savefig(out)
    return out


def plot_write(json_path: str | Path) -> Path:
    """bench_write.py: instances/s per shape: writes, writes + flush, and the raw sqlite3 ceiling."""
    path = Path(json_path)
    rows = json.loads(path.read_text())["rows"]
    fig = _figure(max(5.0, 2.2 * len(rows) + 1.5), 4.0)
    ax = fig.subplots()
    series = (
        ("writes", "writes", "#1f77b4"),
        ("writes_flush", "writes + flush", "#ff7f0e"),
        ("raw", "raw sqlite3", "#7f7f7f"),
    )
    width = 0.8 / len(series)
    for j, (key, label, colour) in enumerate(series):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        ax.bar(xs, [r.get(key) or 0 for r in rows], width, label=label, color=colour)
    ax.set_xticks(range(len(rows)), [r["shape"] for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("instances / s (log)")
    ax.set_title("Store write throughput", fontsize=10)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8)
    out = path.with_suffix(".png")
    fig.savefig(out)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        data = json.loads(Path(arg).read_text())
        kind = plot_query if data["rows"] and "p50_ms" in data["rows"][0] else plot_write
        print(kind(arg))
