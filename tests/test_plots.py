"""``om3db eval --plot`` and om3db.plots: PNG figures that are real images with content, and the benchmark plot helper."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from om3db_cli.main import main
from PIL import Image

from tests.test_evaluate_cli import _write_case

REPO = Path(__file__).resolve().parents[1]


def _is_figure(path: Path, min_colours: int = 4) -> None:
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= 200
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) >= min_colours, f"{path} looks blank"


def test_eval_files_plot(tmp_path, capsys):
    _write_case(tmp_path)
    out = tmp_path / "plots"
    code = main(["eval", "files", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--vocabulary", str(tmp_path / "classes.json"), "--json", "--plot", str(out)])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # the JSON stays clean: "wrote ..." lines go to stderr
    assert f"wrote {out / 'per_class_ap.png'}" in captured.err
    for name in ("per_class_ap.png", "ap_vs_iou.png"):
        _is_figure(out / name)


def test_plot_instance_colours_by_split(tmp_path):
    from om3db.evaluate.instance import ClassAP, InstanceAPResult
    from om3db.plots import SPLIT_COLOURS, plot_instance

    classes = tuple(ClassAP(i, n, 0.1 * i, 0.2 * i, 0.3 * i, 1, 1) for i, n in enumerate(["a", "b", "c"], 1))
    r = InstanceAPResult(0.2, 0.4, 0.6, classes, scenes=("s",), ap_per_threshold=tuple(np.linspace(0.5, 0.1, 10)))
    paths = plot_instance({"x": r, "y": r}, tmp_path, splits={"head": ("c",), "common": ("b",), "tail": ("a",)})
    assert [p.name for p in paths] == ["per_class_ap.png", "ap_vs_iou.png"]
    pixels = {tuple(p) for p in np.asarray(Image.open(paths[0]).convert("RGB")).reshape(-1, 3)}
    for colour in SPLIT_COLOURS.values():
        assert tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5)) in pixels


def test_semantic_plot_and_confusion(tmp_path):
    from om3db.evaluate.semantic import semantic_miou
    from om3db.plots import confusion, plot_semantic

    truth = {"s": np.array([0, 0, 0, 1, 1, 2, -1])}
    pred = {"s": np.array([0, 1, -1, 1, 1, 0, 2])}
    m = confusion(pred, truth, 3)
    assert m.tolist() == [[1, 1, 0, 1], [0, 2, 0, 0], [1, 0, 0, 0]]
    result = semantic_miou(pred, truth, class_names=["cup", "box", "mug"])
    paths = plot_semantic(result, tmp_path / "sem", pred=pred, truth=truth)
    assert [p.name for p in paths] == ["semantic_iou.png", "confusion_summary.png"]
    for p in paths:
        _is_figure(p)


def test_plot_folder_that_is_a_file(tmp_path):
    from om3db.errors import ConfigError
    from om3db.evaluate.semantic import semantic_miou
    from om3db.plots import plot_semantic

    (tmp_path / "f").write_text("x")
    result = semantic_miou({"s": np.array([0])}, {"s": np.array([0])}, class_names=["a"])
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        plot_semantic(result, tmp_path / "f")


def test_benchmark_figures(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import _plots
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    rows = [
        {"system": "om3db exact", "n": 10000, "p50_ms": 0.6, "recall@10": 1.0, "batch_ms_per_query": 0.6},
        {"system": "om3db IVF nlist=200 nprobe=4", "n": 10000, "p50_ms": 0.04, "recall@10": 0.95, "batch_ms_per_query": 0.03},
        {"system": "om3db IVF nlist=200 nprobe=8", "n": 10000, "p50_ms": 0.07, "recall@10": 0.99, "batch_ms_per_query": 0.05},
        {"system": "LanceDB IVF_HNSW_SQ", "n": 10000, "p50_ms": 1.5, "recall@10": 0.9, "batch_ms_per_query": 1.0},
    ]  # fmt: skip
    out = tmp_path / "q.json"
    out.write_text(json.dumps({"rows": rows}))
    _is_figure(_plots.plot_query(out))
    w = tmp_path / "w.json"
    w.write_text(
        json.dumps(
            {"rows": [{"shape": "a) siglip instance only", "writes": 21000, "writes_flush": 12000, "raw": 160000}]}
        )
    )
    _is_figure(_plots.plot_write(w))


def test_semantic_report_carries_labels_for_the_confusion_plot(tmp_path):
    from om3db.evaluate import Vocabulary, semantic_from_database
    from om3db.plots import confusion, plot_semantic
    from tests.test_evaluate_db import FakeLabel, FakeLabelDB

    gt = np.zeros(600, dtype=np.int64)
    gt[:200], gt[200:400] = 1001, 2001
    db = FakeLabelDB(
        {
            ("s", "mean"): [
                FakeLabel(1, "cup", 0, 0.5, np.arange(0, 200)),
                FakeLabel(2, "cup", 0, 0.9, np.arange(200, 300)),
            ]
        },
        {"s": 600},
    )
    seen = []
    rep = semantic_from_database(
        db, {"s": gt}, Vocabulary(ids=(1, 2), names=("cup", "box")), progress=lambda *a: seen.append(a)
    )
    assert seen == [("s", "label", 1, 1)]
    m = confusion(rep.predicted, rep.truth, 2)
    assert m.tolist() == [[200, 0, 0], [100, 0, 100]]  # box: 100 points called cup, 100 unlabelled
    assert [p.name for p in plot_semantic(rep.result, tmp_path, pred=rep.predicted, truth=rep.truth)] == [
        "semantic_iou.png",
        "confusion_summary.png",
    ]


def test_progress_bars_only_on_a_terminal(monkeypatch):
    """eval / export / reindex draw rich bars on a terminal; none with --json or when stderr is not a TTY."""
    from om3db_cli.db_cmds import _Bars

    assert not _Bars(enabled=True).enabled  # pytest captures stderr: not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert not _Bars(enabled=False).enabled  # --json
    with _Bars(enabled=True) as bars:
        assert bars.enabled
        bars.busy("reindex")
        bars.update("s", "label", 1, 2)
        assert set(bars._tasks) == {"busy", "label"}
