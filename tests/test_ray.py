"""Ray ingest (om3db.distributed) on a local 2-CPU Ray cluster started once for this module: equal to a
serial ingest (SQLite and PostgreSQL), failures retried then reported per scan, bad addresses refused
before anything is written, the CLI's --ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import om3db
from om3db.crops import CropConfig
from om3db.errors import ConfigError
from om3db.ingest import IngestConfig
from tests.fakes import FakeColorEncoder

REPO = Path(__file__).resolve().parents[1]
BOX = IngestConfig(frame_step=5, crop=CropConfig(mode="box"))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs (the workers import tests.* through PYTHONPATH)."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    yield ray
    ray.shutdown()


class FlakyEncoder(FakeColorEncoder):
    """A FAKE encoder whose first image batch fails once per ``flag`` file (a worker crash stand-in)."""

    def __init__(self, flag: Path, scan_marker: str | None = None) -> None:
        super().__init__()
        self.flag = str(flag)

    def encode_images(self, images):
        import os

        if not os.path.exists(self.flag):
            Path(self.flag).write_text("failed once")
            raise RuntimeError("transient failure")
        return super().encode_images(images)


def _everything(db) -> dict:
    """Scans, instances and every space's (ids, float32 vectors): what a serial and a Ray ingest must share."""
    store = db._store
    out = {
        "scans": [(s.name, s.instances, s.fingerprint, s.settings["key"]) for s in db.scans()],
        "instances": [
            (
                i.id,
                i.scan,
                i.point_count,
                i.bbox_min,
                i.bbox_max,
                i.point_indices.tolist(),
                [v.frame_id for v in i.views],
            )
            for s in db.scans()
            for i in db.instances(s.name)
        ],
    }
    vectors = {}
    for row in store.spaces():
        vecs, ids = store.stored_vectors(row)
        vectors[f"{row.name}.{row.level}"] = (ids, vecs)
    return out, vectors


def test_ray_ingest_equals_serial(ray_cluster, db_target, synth_root):
    """2 workers: the same scans, instances (ids included) and vectors as a serial ingest into SQLite, and
    unchanged scans skipped by the workers as serially. The FAKE colour encoder keeps this fast; the tiny
    real models are compared below."""
    enc = FakeColorEncoder()
    with om3db.connect(db_target.root.parent / "serial") as db:
        serial = db.ingest(synth_root, config=BOX, siglip=enc, dinov2=False)
        want, want_vecs = _everything(db)
    with db_target.connect() as db:
        got = db.ingest(synth_root, config=BOX, siglip=enc, dinov2=False, ray="local", ray_workers=2)
        assert [(o.scan, o.status, o.instances) for o in got] == [(o.scan, o.status, o.instances) for o in serial]
        have, have_vecs = _everything(db)
        assert have == want
        assert sorted(have_vecs) == sorted(want_vecs) == ["siglip.instance", "siglip.view"]
        for space, (ids, vecs) in want_vecs.items():
            np.testing.assert_array_equal(have_vecs[space][0], ids)
            np.testing.assert_allclose(have_vecs[space][1], vecs, atol=1e-5, rtol=0)
        index = db._store.index("siglip", "instance")
        assert sorted(index.ids().tolist()) == sorted(want_vecs["siglip.instance"][0].tolist())
        if db_target.backend == "postgresql":  # (once: each Ray ingest starts its workers anew)
            again = db.ingest(synth_root, config=BOX, siglip=enc, dinov2=False, ray="local", ray_workers=2)
            assert [o.status for o in again] == ["skipped", "skipped"]


def test_ray_results_equal_serial_within_1e5(ray_cluster, synth_root, tiny_siglip, tiny_dinov2):
    """Tiny random SigLIP + DINOv2 (real loaders) on 2 workers: every instance and view vector the workers
    send back (float32, before storage) within 1e-5 of a serial run, in plan order."""
    from om3db.distributed import run_plan_ray
    from om3db.ingest import plan_ingest, run_plan

    encoders = {"siglip": tiny_siglip, "dinov2": tiny_dinov2}
    plan = plan_ingest(synth_root, config=IngestConfig(frame_step=10), encoders=encoders)
    serial, remote = [], []
    run_plan(plan, stored={}, write=lambda r, s: serial.append((r, s)))
    run_plan_ray(plan, stored={}, write=lambda r, s: remote.append((r, s)), address="local", workers=2)
    same = [(r.scan, s["key"], s["ingest"], r.fingerprint) for r, s in serial]
    assert [(r.scan, s["key"], s["ingest"], r.fingerprint) for r, s in remote] == same  # the report has timings
    for (a, _), (b, _) in zip(serial, remote, strict=True):
        assert [
            (x.mask_index, x.point_count if hasattr(x, "point_count") else len(x.point_indices)) for x in a.instances
        ] == [(y.mask_index, y.point_count if hasattr(y, "point_count") else len(y.point_indices)) for y in b.instances]
        for x, y in zip(a.instances, b.instances, strict=True):
            assert [v.frame_id for v in x.views] == [v.frame_id for v in y.views]
            for space in encoders:
                np.testing.assert_allclose(y.vectors[space], x.vectors[space], atol=1e-5, rtol=0)
                np.testing.assert_allclose(y.view_vectors[space], x.view_vectors[space], atol=1e-5, rtol=0)


def test_failures_retried_then_reported_per_scan(ray_cluster, tmp_path, synth_root):
    """A task that fails once (the flaky encoder) is retried and commits; a scan that fails every time (a
    broken pose file) is reported with its error after the retries; nothing of it is written."""
    scans = tmp_path / "scans"
    shutil.copytree(synth_root, scans)
    pose = sorted((scans / "synth_0_0" / "pose").iterdir())[0]
    pose.write_text("this is not a pose\n")
    enc = FlakyEncoder(tmp_path / "flag")
    with om3db.connect(tmp_path / "db") as db:
        out = db.ingest(scans, config=BOX, siglip=enc, dinov2=False, ray="local", ray_workers=2)
        assert [(o.scan, o.status) for o in out] == [("synth_0_0", "failed"), ("synth_0_1", "ingested")]
        assert out[0].error.startswith("ScanError: ") and str(pose) in out[0].error
        assert (tmp_path / "flag").exists()  # synth_0_1's first try did fail; its retry committed
        assert [s.name for s in db.scans()] == ["synth_0_1"]


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "nonsense"])
def test_bad_ray_address_refused_before_anything_is_written(tmp_path, synth_root, address):
    enc = FakeColorEncoder()
    with om3db.connect(tmp_path / "db") as db:
        with pytest.raises(ConfigError) as err:
            db.ingest(synth_root, config=BOX, siglip=enc, dinov2=False, ray=address)
        assert str(err.value).startswith(f"{address}: ")
        assert db.scans() == []


def test_cli_ingest_ray(ray_cluster, tmp_path, synth_root, tiny_siglip_dir, capsys):
    from om3db_cli.main import main

    args = ["ingest", str(synth_root), "--db", str(tmp_path / "db"), "--siglip", str(tiny_siglip_dir)]
    args += ["--dinov2", "none", "--frame-step", "20", "--json", "--ray"]
    assert main([*args, "local", "--ray-workers", "2"]) == 0
    out = capsys.readouterr()
    assert [(o["scan"], o["status"]) for o in json.loads(out.out)] == [
        ("synth_0_0", "ingested"),
        ("synth_0_1", "ingested"),
    ]
    args[3] = str(tmp_path / "other")
    assert main([*args, "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: 127.0.0.1:1: no Ray cluster answers at this address (Connection refused)")
    assert not (tmp_path / "other").exists()  # refused before the database was created
