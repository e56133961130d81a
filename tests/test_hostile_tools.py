"""Hostile input to the tool commands (audit of eval / synth / models random / demo / convert / --ray): each CLI
case runs the real ``om3db`` entry point and asserts the exit status and the exact ``Error: ...`` line (never an
``unexpected ...`` one), and that a refused command creates nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from om3db_cli.main import main

from om3db.errors import ConfigError, EvaluationError
from om3db.evaluate import ScenePredictions, instance_ap, load_vocabulary, save_predictions


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, args: list, message: str) -> None:
    assert run(capsys, *args) == (1, "", f"Error: {message}\n")


# -- eval: a tiny case of one scene ------------------------------------------------------------------


@pytest.fixture
def case(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    gt = np.zeros(600, dtype=np.int64)
    gt[:200], gt[200:400] = 1001, 2001
    Path("gt").mkdir()
    np.savetxt("gt/scene0.txt", gt, fmt="%d")
    masks = np.zeros((600, 2), bool)
    masks[:200, 0] = masks[200:400, 1] = True
    save_predictions("pred/scene0.npz", ScenePredictions(masks, np.array([1, 1]), np.array([0.5, 0.9])))
    Path("classes.json").write_text(json.dumps([{"id": 1, "name": "cup"}, {"id": 2, "name": "box"}]))
    Path("afile").write_text("x")
    return tmp_path


def files(*extra) -> list:
    return ["eval", "files", "pred", "--gt", "gt", "--vocabulary", "classes.json", "--json", *extra]


LIMIT = "9223372036854774"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("v.txt", b"", "v.txt: the vocabulary file holds no class names; write one class name per line"),
        (
            "v.txt",
            b"# only a comment\n\n",
            "v.txt: the vocabulary file holds no class names; write one class name per line",
        ),
        ("v.txt", b"cup\ncup\n", "v.txt: vocabulary has duplicate class names ['cup']; give each class its own name"),
        (
            "v.txt",
            b"\xff\xfecup\n",
            "v.txt: the vocabulary file is not UTF-8 text (byte 0); expected a classes.json or a text file of class "
            "names, one per line",
        ),
        (
            "v.txt",
            b'[{"id": 1, "name": "cup"}]\n',
            "v.txt: holds JSON but is read as a text file of names (one per line); name it .json",
        ),
        ("v.json", b"[]", "v.json: vocabulary is empty; give at least one class"),
        (
            "v.json",
            b'[{"id": 1, "name": "cup"}, {"id": 1, "name": "box"}]',
            "v.json: vocabulary has duplicate class ids [1]; give each class its own id",
        ),
        ("v.json", b'[{"id": 1, "name": ""}]', "v.json: entry 0: the class name is blank; give each class a name"),
        (
            "v.json",
            b'[{"id": 1, "name": " cup "}]',
            "v.json: entry 0: the class name ' cup ' has surrounding spaces or control characters; write it plainly",
        ),
        (
            "v.json",
            b'[{"id": 1, "name": 2}]',
            "v.json: entry 0: the name 2 is not a string; give each class a text name",
        ),
        (
            "v.json",
            b'[{"id": 1.7, "name": "cup"}]',
            f"v.json: entry 0: class id 1.7 is not an integer in 1..{LIMIT}; give the GT label id (0 means unlabelled)",
        ),
        (
            "v.json",
            b'[{"id": "3", "name": "cup"}]',
            f'v.json: entry 0: class id "3" is not an integer in 1..{LIMIT}; give the GT label id (0 means unlabelled)',
        ),
        (
            "v.json",
            b'[{"id": true, "name": "cup"}]',
            f"v.json: entry 0: class id true is not an integer in 1..{LIMIT}; give the GT label id (0 means unlabelled)",
        ),
        (
            "v.json",
            b'[{"id": 0, "name": "cup"}]',
            f"v.json: entry 0: class id 0 is not an integer in 1..{LIMIT}; give the GT label id (0 means unlabelled)",
        ),
        (
            "v.json",
            b'{"id": 1}',
            'v.json: holds a JSON dict, not a list of classes; expected JSON [{"id": 1, "name": "chair"}, ...]',
        ),
    ],
)
def test_eval_vocabulary_file_refused(case, capsys, name, content, message):
    Path(name).write_bytes(content)
    refused(capsys, [*files(), "--vocabulary", name], message)


def test_eval_vocabulary_folder_refused(case, capsys):
    Path("vdir").mkdir()
    refused(
        capsys,
        [*files(), "--vocabulary", "vdir"],
        "vdir: is a folder without gt/classes.json; give 'scannet200', a classes.json, a text file of names or a "
        "synthetic scan folder",
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("", "gt/scene0.txt: ground truth holds no ids; expected one integer per point (PLY vertex)"),
        (" ".join(["0"] * 600), "gt/scene0.txt: ground truth has 600 columns; expected one integer per line"),
    ],
)
def test_eval_gt_of_the_wrong_shape(case, capsys, lines, message):
    Path("gt/scene0.txt").write_text(lines)
    refused(capsys, files(), message)


def _preds(**arrays) -> None:
    masks = np.zeros((600, 2), bool)
    masks[:200, 0] = masks[200:400, 1] = True
    base = {"masks": masks, "classes": np.array([1, 1]), "scores": np.array([0.5, 0.9])}
    np.savez("pred/scene0.npz", **{**base, **arrays})


MASKS = np.zeros((600, 2))
MASKS[:200, 0] = 1


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"scores": np.array([np.nan, 0.9])}, "the score of mask 0 is nan; expected finite confidences"),
        ({"scores": np.array([0.5, np.inf])}, "the score of mask 1 is inf; expected finite confidences"),
        ({"scores": np.array(["a", "b"])}, "scores has dtype <U1; expected real numbers (confidences)"),
        (
            {"masks": MASKS * 0.3},
            "masks hold 0.3 (200 values other than 0 and 1); expected binary masks (threshold soft masks before "
            "saving them)",
        ),
        ({"masks": MASKS.astype(str)}, "masks has dtype <U32; expected bool or 0/1 numbers"),
        (
            {"classes": np.array([2**63 + 1, 1], dtype=np.uint64)},
            "class id 9223372036854775809 is out of range; expected vocabulary ids",
        ),
    ],
)
def test_eval_prediction_values_that_are_not_what_they_seem(case, capsys, arrays, message):
    _preds(**arrays)
    refused(capsys, files(), f"pred/scene0.npz: {message}")


def test_eval_scannet_txt_prediction_values(case, capsys):
    Path("pred/scene0.npz").unlink()
    Path("pred/m").mkdir()
    np.savetxt("pred/m/a.txt", np.r_[np.full(200, 7), np.zeros(400)].astype(int), fmt="%d")
    Path("pred/scene0.txt").write_text("m/a.txt 1 0.5\n")
    refused(
        capsys,
        files(),
        "pred/m/a.txt: not a mask (line 1 of pred/scene0.txt): values other than 0 and 1; expected one 0/1 per point",
    )
    np.savetxt("pred/m/a.txt", np.r_[np.ones(200), np.zeros(400)].astype(int), fmt="%d")
    Path("pred/scene0.txt").write_text("m/a.txt 1 nan\n")
    refused(capsys, files(), "pred/scene0.txt: line 1: confidence nan is not a finite number")


def test_instance_ap_api_refuses_soft_masks_and_nan_scores():
    gt = {"s": np.r_[np.full(150, 1001), np.zeros(150, np.int64)]}
    soft = {"pred_masks": np.full((300, 1), 0.5), "pred_classes": [1], "pred_scores": [0.9]}
    with pytest.raises(EvaluationError, match=r"^scene s: masks hold 0.5 \(300 values other than 0 and 1\)"):
        instance_ap({"s": soft}, gt, class_ids=[1], class_names=["cup"])
    nan = {"pred_masks": np.ones((300, 1), bool), "pred_classes": [1], "pred_scores": [float("nan")]}
    with pytest.raises(EvaluationError, match=r"^scene s: the score of mask 0 is nan"):
        instance_ap({"s": nan}, gt, class_ids=[1], class_names=["cup"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plot", "afile"], "afile: exists and is not a folder. Give a folder for the plots"),
        (["--plot", "afile/x"], "afile/x: cannot create the plot folder (afile is a file). Give a folder path"),
        (["--min-region-size", "-1"], "--min-region-size -1: must be >= 0 (points)"),
        (
            ["--exclude", "wal"],
            "--exclude 'wal': not a class of the vocabulary classes.json; give one of its names (--exclude '' "
            "evaluates every class)",
        ),
    ],
)
def test_eval_files_options(case, capsys, extra, message):
    refused(capsys, files(*extra), message)


def test_eval_plot_figure_name_taken_by_a_folder(case, capsys):
    Path("plots/per_class_ap.png").mkdir(parents=True)
    refused(
        capsys,
        files("--plot", "plots"),
        "plots/per_class_ap.png: is a folder, so the figure cannot be written. Move it away",
    )


def test_eval_plot_unwritable_is_a_config_error(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from om3db import plots

    def denied(self, path, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Figure, "savefig", denied)
    result = type("R", (), {"miou": 0.5, "iou": (0.5,), "class_names": ("cup",)})()
    with pytest.raises(ConfigError) as err:
        plots.plot_semantic(result, tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'semantic_iou.png'}: cannot write the figure (Permission denied). Give another plot folder"
    )


# -- eval instances / semantic against a database (CLI db of the two tiny synthetic scans) ---------------


@pytest.fixture(scope="module")
def eval_db(tmp_path_factory, synth_root, tiny_siglip_dir, tiny_dinov2_dir) -> Path:
    db = tmp_path_factory.mktemp("hostiletools") / "db"
    argv = ["ingest", synth_root, "--db", db, "--siglip", tiny_siglip_dir, "--dinov2", tiny_dinov2_dir]
    assert main([str(a) for a in [*argv, "--frame-step", "5", "--json"]]) == 0
    return db


def semantic(eval_db, synth_root, *extra) -> list:
    voc = Path(synth_root) / "synth_0_0"
    return ["eval", "semantic", "--gt", synth_root, "--db", eval_db, "--vocabulary", voc, "--json", *extra]


def test_eval_semantic_refusals_write_nothing(eval_db, synth_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    Path("bin.txt").write_bytes(b"\xff\xfe")
    Path("empty.txt").write_text("")
    Path("dup.txt").write_text("red\nred\n")
    Path("taken/synth_0_0.npy").mkdir(parents=True)
    args = semantic(eval_db, synth_root)
    cases = [
        (["--novel", "bin.txt"], "bin.txt: the class split file is not UTF-8 text (byte 0); expected a JSON list or one class name per line"),
        (["--novel", "empty.txt"], "empty.txt: the class split holds no class names; give at least one novel class"),
        (["--novel", "dup.txt"], "dup.txt: the class split names ['red'] more than once; list each class once"),
        (["--export", "afile"], "afile: exists and is not a folder; give a folder to export the labels into"),
        (["--export", "afile/x"], "afile/x: cannot create the export folder (afile is a file); give a folder path"),
        (["--export", "taken"], "taken/synth_0_0.npy: is a folder; move it away or export elsewhere"),
        (["--fill", "bogus", "--export", "new"], "--fill 'bogus': not a choice; choose none or nearest"),
        (["--format", "bogus", "--export", "new"], "--format 'bogus': not a choice; choose npy or ply"),
        (["--aggregation", "x"], "--aggregation 'x': not a choice; choose mean or max"),
    ]  # fmt: skip
    for extra, message in cases:
        refused(capsys, [*args, *extra], message)
    assert not Path("new").exists() and sorted(p.name for p in Path("taken").iterdir()) == ["synth_0_0.npy"]


def test_eval_semantic_gt_of_another_point_count(eval_db, synth_root, tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    ids = (Path(synth_root) / "synth_0_0" / "gt" / "instances.txt").read_text().splitlines()[:100]
    (tmp_path / "gt" / "synth_0_0.txt").write_text("\n".join(ids) + "\n")
    args = semantic(eval_db, synth_root)
    args[args.index("--gt") + 1] = tmp_path / "gt"
    n = len((Path(synth_root) / "synth_0_0" / "gt" / "instances.txt").read_text().splitlines())
    refused(
        capsys,
        args,
        f"scan synth_0_0: the database has {n} points but the ground truth has 100; use the GT file of this scan's PLY",
    )


def test_eval_semantic_vocabulary_of_wall_and_floor_only(eval_db, synth_root, tmp_path, capsys):
    (tmp_path / "wf.txt").write_text("wall\nfloor\n")
    args = semantic(eval_db, synth_root)
    args[args.index("--vocabulary") + 1] = tmp_path / "wf.txt"
    code, out, _ = run(capsys, *args)
    assert code == 0 and set(json.loads(out)["iou"]) == {"wall", "floor"}  # semantic IoU counts every class


def test_eval_instances_options(eval_db, synth_root, tmp_path, capsys):
    voc = Path(synth_root) / "synth_0_0"
    args = ["eval", "instances", "--gt", synth_root, "--db", eval_db, "--vocabulary", voc, "--json"]
    refused(capsys, [*args, "--protocol", "x"], "--protocol 'x': not a choice; choose constant or similarity")
    refused(capsys, [*args, "--aggregation", "avg"], "--aggregation 'avg': not a choice; choose mean or max")
    (tmp_path / "plots" / "ap_vs_iou.png").mkdir(parents=True)  # refused before any scan is labelled
    refused(
        capsys,
        [*args, "--plot", tmp_path / "plots"],
        f"{tmp_path / 'plots' / 'ap_vs_iou.png'}: is a folder, so the figure cannot be written. Move it away",
    )
    code, out, _ = run(capsys, *args, "--aggregation", "max", "--aggregation", "max", "--protocol", "constant")
    assert code == 0 and list(json.loads(out)["results"]) == ["constant/max"]


def test_vocabulary_api_names_the_file(tmp_path):
    (tmp_path / "v.txt").write_text("cup\ncup\n")
    with pytest.raises(EvaluationError, match=r"v\.txt: vocabulary has duplicate class names \['cup'\]"):
        load_vocabulary(tmp_path / "v.txt")


# -- synth ---------------------------------------------------------------------------------------------


def test_synth_refusals_create_nothing(tmp_path, capsys, synth_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    scan = Path(synth_root) / "synth_0_0"
    before = sorted(p.relative_to(scan) for p in scan.rglob("*"))
    cases = [
        (["--scans", "-3"], "out", "--scans -3: must be >= 1"),
        (["--seed", "-1"], "out", "--seed -1: must be >= 0"),
        (["--size", "huge"], "out", "--size 'huge': not a choice; choose tiny or scannet"),
        ([], "afile", "afile: exists and is not a folder. Pass a folder to write the scans into"),
        ([], "afile/sub", "afile/sub: cannot be created: afile is a file. Pass a folder to write the scans into"),
        ([], scan, f"{scan}: is a scan folder itself. Write the synthetic scans into a folder of their own"),
        ([], scan / "color", f"{scan / 'color'}: is inside the scan {scan}. Write the synthetic scans into a folder of their own"),
    ]  # fmt: skip
    for extra, out, message in cases:
        refused(capsys, ["synth", out, "--scans", "1", *extra], message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert sorted(p.relative_to(scan) for p in scan.rglob("*")) == before


def test_synth_too_many_scans_for_the_disk(tmp_path, capsys, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=2_000_000_000))
    refused(
        capsys,
        ["synth", tmp_path / "out", "--scans", "100000000"],
        f"100000000 tiny scans need about 500,000.0 GB but {tmp_path} has 2.0 GB free; write fewer scans or free space",
    )
    assert not (tmp_path / "out").exists()


def test_synth_interrupted_leaves_no_partial_scan(tmp_path, monkeypatch):
    from om3db.synth import writer

    calls = []

    def boom(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)

    real = writer._save_png
    monkeypatch.setattr(writer, "_save_png", boom)
    with pytest.raises(KeyboardInterrupt):
        writer.write_scans(tmp_path, scans=1, seed=3)
    assert list(tmp_path.iterdir()) == []  # no scan folder with gt/scene.json but missing frames


# -- models random / demo ------------------------------------------------------------------------------


def test_models_random_refusals(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    Path("mine").mkdir()
    Path("mine/keep.txt").write_text("real weights")
    cases = [
        (["afile"], "afile: exists and is not a folder; give a new or empty folder for the checkpoints"),
        (["afile/sub"], "afile/sub: cannot be created: afile is a file; give a folder path"),
        (["mine"], "mine: is not empty (keep.txt) and was not written by `om3db models random`; give a new or empty folder (nothing in it is replaced)"),
        (["out", "--size", "huge"], "--size 'huge': not a choice; choose tiny, cpu or full"),
        (["out", "--seed", "-5"], "--seed -5: must be in 0..9223372036854775807"),
        (["out", "--seed", "99999999999999999999"], "--seed 99999999999999999999: must be in 0..9223372036854775807"),
    ]  # fmt: skip
    for args, message in cases:
        refused(capsys, ["models", "random", *args], message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]
    assert sorted(p.name for p in Path("mine").iterdir()) == ["keep.txt"]


def test_models_random_rewrites_its_own_output(tmp_path, capsys):
    for _ in range(2):
        code, _out, _err = run(capsys, "models", "random", tmp_path / "m", "--json")
        assert code == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "dinov2",
        "om3db_random_models.json",
        "sam.pth",
        "siglip",
    ]


def test_demo_refusals_create_nothing(tmp_path, capsys, monkeypatch, tiny_siglip_dir, tiny_dinov2_dir):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    cases = [
        (["--out", "afile"], "afile: exists and is not a folder; give a folder for the demo"),
        (["--out", "afile/x"], "afile/x: cannot be created: afile is a file; give a folder path for the demo"),
        (["--out", "d", "--query", "  "], "the text query is empty: say what to look for, e.g. 'a mug'"),
        (
            ["--out", "d", "--sam", "nothere.pth"],
            "nothere.pth: SAM checkpoint not found. Pass an original checkpoint (sam_vit_h_4b8939.pth), a transformers "
            "SAM directory or hub id (facebook/sam-vit-base), or write a random one with `om3db models random DIR`",
        ),
        (
            ["--out", "d", "--siglip", tiny_siglip_dir, "--dinov2", "./nothere"],
            "./nothere: model directory not found. Pass an existing directory written by save_pretrained, a Hugging "
            "Face hub id, or write a random demo checkpoint with `om3db models random DIR`",
        ),
    ]
    for args, message in cases:
        refused(capsys, ["demo", *args], message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# -- convert -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "bogus"], "--format 'bogus': not a capture format; choose one of auto, scannet, nerfstudio, record3d, arkitscenes, replica, scannetpp, scanner3d"),
        (["--depth-scale", "0"], "--depth-scale 0: must be in (0, 65535] depth units per metre (1000: mm)"),
        (["--depth-scale", "inf"], "--depth-scale inf: must be in (0, 65535] depth units per metre (1000: mm)"),
        (["--voxel-size", "nan"], "--voxel-size nan: must be a finite number of metres > 0"),
        (["--depth-max", "-1"], "--depth-max -1: must be a finite number of metres > 0"),
        (["--min-confidence", "7"], "--min-confidence 7: must be 0, 1 or 2 (ARKit low, medium, high)"),
        (["--pose-scale", "-2"], "--pose-scale -2: must be a finite number of metres per pose unit > 0"),
        (["--fused-dir", "afile"], "--fused-dir afile: exists and is not a folder. Give a folder path"),
        (["--fused-dir", "afile/y"], "--fused-dir afile/y: cannot be created: afile is a file. Give a folder path"),
    ],
)  # fmt: skip
def test_convert_options(tmp_path, capsys, monkeypatch, synth_root, extra, message):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    refused(capsys, ["convert", Path(synth_root) / "synth_0_0", "dst", *extra], message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_convert_destination_under_a_file(tmp_path, capsys, monkeypatch, synth_root):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    refused(
        capsys,
        ["convert", Path(synth_root) / "synth_0_0", "afile/x"],
        "DST afile/x: cannot be created: afile is a file. Give a folder path",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# -- --ray ---------------------------------------------------------------------------------------------

USAGE = (
    "Use 'local', 'auto', HOST:PORT of the head node (port 6379 by default) or ray://HOST:PORT (Ray Client, port 10001)"
)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray", "127.0.0.1:99999"], f"127.0.0.1:99999: port 99999 is out of range (1..65535). {USAGE}"),
        (["--ray", "10.0.0.5:0"], f"10.0.0.5:0: port 0 is out of range (1..65535). {USAGE}"),
        (["--ray", "http://10.0.0.5:80"], f"http://10.0.0.5:80: not a Ray address (http:// is not Ray's scheme). {USAGE}"),
        (["--ray", "::1:6379"], f"::1:6379: the host '::1' holds ':' (an IPv6 host goes in brackets: [::1]:6379). {USAGE}"),
        (["--ray", "ho st:6379"], f"ho st:6379: the host 'ho st' is not a host name. {USAGE}"),
        (["--ray", "[]:6379"], f"[]:6379: the host '[]' is not a host name. {USAGE}"),
        (["--ray-workers", "2"], "--ray-workers 2: needs --ray (local, or the address of a Ray cluster)"),
        (["--ray", "local", "--ray-workers", "0"], "--ray-workers 0: must be >= 1 (Ray actors)"),
        (["--ray", "local", "--ray-workers", "-1"], "--ray-workers -1: must be >= 1 (Ray actors)"),
    ],
)  # fmt: skip
def test_ray_options_refused_before_the_database(tmp_path, capsys, synth_root, extra, message):
    refused(capsys, ["ingest", synth_root, "--db", tmp_path / "db", *extra], message)
    assert not (tmp_path / "db").exists()


def test_ray_not_installed_refused_before_the_database(tmp_path, capsys, synth_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the extra
    refused(
        capsys,
        ["ingest", synth_root, "--db", tmp_path / "db", "--ray", "local"],
        "Ray is not installed: install it with pip install 'om3db[ray]' (or pip install ray)",
    )
    assert not (tmp_path / "db").exists()
