"""Evaluation figures as PNG files (matplotlib, Agg: no display). ``om3db eval ... --plot DIR`` writes them.

Needs matplotlib (``pip install 'om3db[view]'``). Each function returns the paths it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import ConfigError

SPLIT_COLOURS = {"head": "#d62728", "common": "#ff7f0e", "tail": "#1f77b4"}
OTHER_COLOUR = "#7f7f7f"


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: pip install 'om3db[view]' (or pip install matplotlib)") from exc
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


PLOT_FILES = ("per_class_ap.png", "ap_vs_iou.png", "semantic_iou.png", "confusion_summary.png")


def check_plot_dir(out: str | Path) -> Path:
    """Refuse a plot folder that cannot be one (checked before any work; creates nothing): a path that is a
    file or lies under a file, or a folder in which a figure's name is taken by a folder."""
    out = Path(out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        if existing == out:
            raise ConfigError(f"{out}: exists and is not a folder. Give a folder for the plots")
        raise ConfigError(f"{out}: cannot create the plot folder ({existing} is a file). Give a folder path")
    for name in PLOT_FILES:
        if (out / name).is_dir():
            raise ConfigError(f"{out / name}: is a folder, so the figure cannot be written. Move it away")
    return out


def _out_dir(out: str | Path) -> Path:
    out = check_plot_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot create the plot folder ({exc.strerror})") from exc
    return out


def _save(fig, path: Path) -> Path:
    try:
        fig.savefig(path)
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot write the figure ({exc.strerror or exc}). Give another plot folder"
        ) from None
    return path


def plot_instance(
    results: Mapping[str, object], out: str | Path, *, splits: Mapping[str, Sequence[str]] | None = None
) -> list[Path]:
    """``per_class_ap.png`` (AP50 per class with GT, bars coloured by head / common / tail split, one
    panel per result) and ``ap_vs_iou.png`` (AP at each IoU threshold, one line per result).

    results: ``{"constant/mean": InstanceAPResult, ...}``; splits: ``{"head": (class names), ...}``."""
    if not results:
        raise ConfigError("nothing to plot: no evaluation results")
    out = _out_dir(out)
    split_of = {name: split for split, names in (splits or {}).items() for name in names}
    first = next(iter(results.values()))
    with_gt = [i for i, c in enumerate(first.classes) if c.num_gt]
    order = sorted(with_gt, key=lambda i: -np.nan_to_num(first.classes[i].ap50, nan=-1))
    names = [first.classes[i].name for i in order]
    fig = _figure(max(6.0, 0.28 * len(names) + 2), 2.2 + 2.0 * len(results))
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    colours = [SPLIT_COLOURS.get(split_of.get(n, ""), OTHER_COLOUR) for n in names]
    for ax, (key, r) in zip(axes, results.items(), strict=True):
        values = [100 * np.nan_to_num(r.classes[i].ap50, nan=0.0) for i in order]
        ax.bar(range(len(names)), values, color=colours)
        ax.set_ylabel("AP50 (%)")
        ax.set_title(f"{key}: AP {100 * r.ap:.1f}  AP50 {100 * r.ap50:.1f}  AP25 {100 * r.ap25:.1f}", fontsize=9)
        ax.set_xticks(range(len(names)), names if ax is axes[-1] else [""] * len(names), rotation=90, fontsize=7)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylim(0, 100)
    from matplotlib.patches import Patch

    legend = [Patch(color=c, label=s) for s, c in SPLIT_COLOURS.items() if s in (splits or {})]
    if legend:
        axes[0].legend(handles=legend, fontsize=8, loc="upper right")
    fig.suptitle(f"Per-class AP50, {len(names)} classes with ground truth, {len(first.scenes)} scenes", fontsize=10)
    written = [_save(fig, out / "per_class_ap.png")]

    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for key, r in results.items():
        if r.ap_per_threshold:
            ax.plot(r.thresholds, [100 * np.nan_to_num(a, nan=0.0) for a in r.ap_per_threshold], marker="o", label=key)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (%)")
    ax.set_title("AP vs IoU threshold", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "ap_vs_iou.png"))
    return written


def confusion(pred: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray], num_classes: int) -> np.ndarray:
    """(C, C + 1) point counts: row = GT class index, column = predicted class index, last column
    unlabelled (-1). GT points of -1 are left out."""
    m = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    for scene, gt in truth.items():
        p = np.asarray(pred[scene]).astype(np.int64)
        g = np.asarray(gt).astype(np.int64)
        keep = g >= 0
        p = np.where(p[keep] < 0, num_classes, p[keep])
        m += np.bincount(g[keep] * (num_classes + 1) + p, minlength=m.size).reshape(m.shape)
    return m


def plot_semantic(
    result,
    out: str | Path,
    *,
    pred: Mapping[str, np.ndarray] | None = None,
    truth: Mapping[str, np.ndarray] | None = None,
) -> list[Path]:
    """``semantic_iou.png`` (IoU per class with GT or predictions, novel classes marked when there is a
    split) and, given the per-point labels, ``confusion_summary.png``: for each GT class the share of its
    points labelled right, as its most frequent wrong class (named), as other classes, or unlabelled."""
    out = _out_dir(out)
    sem = getattr(result, "semantic", result)
    novel = set(getattr(result, "novel", ()) or ())
    shown = [(n, v) for n, v in zip(sem.class_names, sem.iou, strict=True) if v == v]
    shown.sort(key=lambda x: -x[1])
    fig = _figure(max(6.0, 0.28 * len(shown) + 2), 4.0)
    ax = fig.subplots()
    ax.bar(
        range(len(shown)), [100 * v for _, v in shown], color=["#9467bd" if n in novel else "#2ca02c" for n, _ in shown]
    )
    ax.set_xticks(range(len(shown)), [n for n, _ in shown], rotation=90, fontsize=7)
    ax.set_ylabel("IoU (%)")
    title = f"Semantic IoU: mIoU {100 * sem.miou:.1f}"
    if sem is not result:
        title += f", base {100 * result.base_miou:.1f}, novel {100 * result.novel_miou:.1f} (purple), hIoU {100 * result.hiou:.1f}"
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, 100)
    written = [_save(fig, out / "semantic_iou.png")]
    if pred is None or truth is None:
        return written

    names = list(sem.class_names)
    m = confusion(pred, truth, len(names))
    rows = [i for i in np.argsort(-m.sum(axis=1)) if m[i].sum() > 0][:40]
    fig = _figure(9.0, 1.2 + 0.3 * len(rows))
    ax = fig.subplots()
    for y, i in enumerate(rows):
        total = m[i].sum()
        right, unlabelled = m[i, i], m[i, -1]
        wrong = m[i, :-1].copy()
        wrong[i] = 0
        top = int(np.argmax(wrong))
        parts = [(right, "#2ca02c", ""), (wrong[top], "#d62728", names[top] if wrong[top] else ""),
                 (wrong.sum() - wrong[top], "#ff9896", ""), (unlabelled, "#c7c7c7", "")]  # fmt: skip
        left = 0.0
        for count, colour, label in parts:
            share = count / total
            ax.barh(y, share, left=left, color=colour)
            if label and share > 0.08:
                ax.text(left + share / 2, y, label, ha="center", va="center", fontsize=6, color="white")
            left += share
    ax.set_yticks(range(len(rows)), [f"{names[i]} ({m[i].sum():,})" for i in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the class's GT points")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=c, label=t) for c, t in (("#2ca02c", "right class"), ("#d62728", "most frequent wrong class (named)"),
                                                      ("#ff9896", "other wrong classes"), ("#c7c7c7", "unlabelled"))],
        fontsize=7, loc="lower right",
    )  # fmt: skip
    ax.set_title("Confusion summary by GT class (largest classes first)", fontsize=10)
    written.append(_save(fig, out / "confusion_summary.png"))
    return written
