"""`om3db ingest` on scans without mask files: om3db's own proposer makes the instances (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from om3db_cli.main import main

import om3db
from om3db.proposals import classagnostic_ap
from om3db.synth import load_gt, write_scans


@pytest.fixture(scope="module")
def maskless_root(tmp_path_factory):
    """Two tiny scans without <scan>_masks.pt: one with sensor depth, one without (depth rendered)."""
    root = tmp_path_factory.mktemp("maskless")
    write_scans(root / "sensor", scans=1, seed=0, masks=False, masks2d=True)
    write_scans(root / "nodepth", scans=1, seed=1, masks=False, masks2d=True, depth=False)
    return root


def _scan_ap(db, scan_name: str, scan_dir) -> dict:
    gt = load_gt(scan_dir)
    insts = db.instances(scan_name)
    pred = np.zeros((len(gt.gt_ids), len(insts)), bool)
    for j, inst in enumerate(insts):
        pred[inst.point_indices, j] = True
    room = tuple(i for i, name in gt.class_names.items() if name in ("wall", "floor"))  # proposals target objects
    return classagnostic_ap(pred, np.array([i.score for i in insts], np.float32), gt.gt_ids, ignore_labels=room)


def test_cli_ingest_without_mask_files_scores_as_stated(
    maskless_root, tmp_path, tiny_siglip_dir, tiny_dinov2_dir, capsys
):
    db_path = tmp_path / "db"
    code = main(
        [
            "ingest",
            str(maskless_root),
            "--db",
            str(db_path),
            "--siglip",
            str(tiny_siglip_dir),
            "--dinov2",
            str(tiny_dinov2_dir),
            "--frame-step",
            "2",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [o["status"] for o in out] == ["ingested", "ingested"]
    with om3db.connect(db_path) as db:
        infos = {s.name: s for s in db.scans()}
        for scan_dir, min_ap50 in (
            (maskless_root / "nodepth" / "synth_1_0", 0.85),
            (maskless_root / "sensor" / "synth_0_0", 0.9),
        ):
            info = infos[scan_dir.name]
            ingest_settings = info.settings["ingest"]
            # the proposer and its parameters are recorded with the scan
            assert ingest_settings["mask_source"] == "proposer"
            record = ingest_settings["masks"]
            assert record["proposer"] == "om3db.proposals" and record["source"] == "DiskMasks"
            assert record["config"]["lift"] and record["config"]["superpoints"]
            assert record["info"]["depth"] == ("rendered" if "nodepth" in str(scan_dir) else "sensor")
            # scores are the proposer's confidences, not a constant
            scores = [i.score for i in db.instances(info.name)]
            assert all(0.0 < s <= 1.0 for s in scores)
            res = _scan_ap(db, info.name, scan_dir)
            assert res["ap50"] >= min_ap50, (info.name, res)


def test_ingest_without_masks_or_2d_masks_is_refused_and_stores_nothing(
    tmp_path, tiny_siglip_dir, tiny_dinov2_dir, capsys
):
    scan = write_scans(tmp_path / "scans", scans=1, seed=2, masks=False)[0]
    db_path = tmp_path / "db"
    code = main(
        ["ingest", str(scan), "--db", str(db_path), "--siglip", str(tiny_siglip_dir), "--dinov2", str(tiny_dinov2_dir)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == (
        f"Error: {scan}: the scan has no class-agnostic masks (no <scan>_masks.pt/.npy/.npz) and no 2D masks for "
        "om3db's proposer (no masks2d/ folder). Put a points x masks file in the scan folder, write "
        "masks2d/<frame_id>.png instance-id maps, pass a SAM checkpoint (automatic 2D masks), or pass masks= to ingest_scan"
    )
    with om3db.connect(db_path) as db:
        assert db.scans(include_incomplete=True) == []


def test_moss_refinement_option_is_recorded(tmp_path, tiny_siglip, tiny_dinov2):
    from om3db.ingest import IngestConfig

    scan_dir = write_scans(tmp_path / "scans", scans=1, seed=0, masks=True, masks2d=True)[0]
    with om3db.connect(ephemeral=True) as db:
        db.ingest(
            scan_dir, config=IngestConfig(frame_step=2, refine_masks=True), siglip=tiny_siglip, dinov2=tiny_dinov2
        )
        settings = db.scans()[0].settings["ingest"]
        assert settings["refine_masks"] is True and settings["mask_source"] == "scan"
        assert settings["masks"]["refiner"] == "om3db.proposals.refine_masks"
        # GT masks refined with GT 2D masks stay (nearly) the GT objects
        gt = load_gt(scan_dir)
        for inst in db.instances(scan_dir.name):
            truth = np.flatnonzero(gt.masks[:, inst.mask_index])
            inter = np.intersect1d(inst.point_indices, truth).size
            assert inter / np.union1d(inst.point_indices, truth).size >= 0.9


def test_scan_that_stores_no_instance_says_why(tmp_path, tiny_siglip_dir, tiny_dinov2_dir, capsys):
    """2D masks that are all background: the scan is committed with no instance, and the CLI says why
    (the proposer's reason, also in the JSON report); masks that all fall under min_points say so too."""
    from PIL import Image

    from om3db.ingest import IngestConfig

    scan = write_scans(tmp_path / "scans", scans=1, seed=3, masks=False, masks2d=True)[0]
    pngs = sorted((scan / "masks2d").glob("*.png"))
    assert pngs
    for png in pngs:
        Image.fromarray(np.zeros_like(np.asarray(Image.open(png)))).save(png)
    args = ["ingest", str(scan), "--db", str(tmp_path / "db"), "--siglip", str(tiny_siglip_dir)]
    args += ["--dinov2", str(tiny_dinov2_dir), "--frame-step", "4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"Note: {scan.name}: no instance stored: the 2D source 'disk:masks2d' gave no mask in any frame" in err
    assert main([*args, "--force", "--json"]) == 0
    (out,) = json.loads(capsys.readouterr().out)
    assert out["instances"] == 0 and out["report"]["proposer"]["frames_without_masks"] == out["report"]["frames_used"]
    assert "empty_reason" in out["report"]["proposer"]

    masked = write_scans(tmp_path / "masked", scans=1, seed=3, masks=True)[0]
    with om3db.connect(ephemeral=True) as db:
        (kept,) = db.ingest(masked, config=IngestConfig(frame_step=4), siglip=tiny_siglip_dir, dinov2=False)
        (none,) = db.ingest(
            masked, config=IngestConfig(frame_step=4, min_points=10**9), siglip=tiny_siglip_dir, dinov2=False
        )
    assert kept.instances > 0 and kept.report.empty_reason() is None and kept.report.proposer == {}
    m = none.report.masks_total
    assert none.instances == 0 and m > 0
    assert none.report.empty_reason() == f"all {m} masks were dropped: {m} under min_points"


def test_editing_the_2d_masks_re_ingests_a_scan_that_reads_them(tmp_path, tiny_siglip_dir):
    """The proposer's masks2d/ are an input: changing one re-ingests the scan (unchanged: skipped); a scan
    whose mask file is used as it is does not read them, so editing them there changes nothing."""
    from PIL import Image

    from om3db.ingest import IngestConfig

    maskless = write_scans(tmp_path / "a", scans=1, seed=4, masks=False, masks2d=True)[0]
    masked = write_scans(tmp_path / "b", scans=1, seed=5, masks=True, masks2d=True)[0]
    config = IngestConfig(frame_step=4)
    with om3db.connect(tmp_path / "db") as db:

        def statuses():
            return [
                o.status for o in db.ingest([maskless, masked], config=config, siglip=tiny_siglip_dir, dinov2=False)
            ]

        assert statuses() == ["ingested", "ingested"]
        assert statuses() == ["skipped", "skipped"]
        for scan in (maskless, masked):
            png = sorted((scan / "masks2d").glob("*.png"))[0]
            ids = np.asarray(Image.open(png)).copy()
            ids[: ids.shape[0] // 2] = 0  # the top half loses its objects
            Image.fromarray(ids).save(png)
        assert statuses() == ["ingested", "skipped"]
        assert statuses() == ["skipped", "skipped"]


def test_a_bad_scan_in_a_multi_scan_ingest_says_what_was_committed_and_what_was_not_tried(
    tmp_path, tiny_siglip_dir, capsys
):
    """Three scans, the second with a garbage pose: the ingest stops there in one Error line that says the
    first was committed and one scan was not tried; fixed, the same command skips the first and does the rest."""
    a, b, c = write_scans(tmp_path / "scans", scans=3, seed=6)
    pose = sorted((b / "pose").glob("*.txt"))[0]
    good = pose.read_text()
    pose.write_text("hello world\n")
    args = ["ingest", str(tmp_path / "scans"), "--db", str(tmp_path / "db"), "--siglip", str(tiny_siglip_dir)]
    args += ["--dinov2", "none", "--frame-step", "4", "--json"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {pose}: ") and err.count("\n") == 1, err
    assert err.endswith(
        f" (Ingest stopped at this scan, which was not written. Committed before it: {a.name}. Not tried: 1 "
        "scan(s) after it. Fix it, or move it away, and run the same command again: committed scans are skipped.)\n"
    ), err
    with om3db.connect(tmp_path / "db") as db:
        assert [s.name for s in db.scans(include_incomplete=True)] == [a.name]
    pose.write_text(good)
    assert main(args) == 0
    assert [o["status"] for o in json.loads(capsys.readouterr().out)] == ["skipped", "ingested", "ingested"]
