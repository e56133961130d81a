"""Database API end to end on synthetic scans with the FAKE colour encoder; ingest skip / force / rm."""

from __future__ import annotations

import numpy as np
import pytest

import om3db
from om3db.errors import ConfigError, NotFoundError
from tests.fakes import FakeColorEncoder


def _config():
    from om3db.crops import CropConfig
    from om3db.ingest import IngestConfig

    return IngestConfig(frame_step=4, crop=CropConfig(mode="box"))


@pytest.fixture(scope="module")
def ingested(synth_root, tmp_path_factory):
    """A database with both synthetic scans ingested (siglip and dinov2 spaces from the fake encoder)."""
    path = tmp_path_factory.mktemp("dbs") / "db"
    enc = FakeColorEncoder()
    with om3db.connect(path) as db:
        out = db.ingest(synth_root, config=_config(), siglip=enc, dinov2=enc)
    return path, out, enc


def _object_of(hit_points: np.ndarray, scan_dir) -> dict:
    from om3db.synth import load_gt

    gt = load_gt(scan_dir)
    overlap = gt.masks[hit_points].sum(axis=0)
    return gt.objects[int(overlap.argmax())]


def test_text_colour_returns_that_object_first(ingested, synth_root):
    from om3db.synth import load_gt

    path, out, enc = ingested
    assert [(o.scan, o.status) for o in out] == [("synth_0_0", "ingested"), ("synth_0_1", "ingested")]
    with om3db.connect(path) as db:
        checked = 0
        for scan in ("synth_0_0", "synth_0_1"):
            for obj in load_gt(synth_root / scan).objects:
                top = db.search(text=obj["class_name"], k=3, scans=[scan], with_points=True, encoder=enc)[0]
                assert _object_of(top.point_indices, synth_root / scan)["class_name"] == obj["class_name"]
                checked += 1
        assert checked >= 10
        # across scans, with max aggregation: the red object (only in one scan) comes first
        red_scans = [
            s for s in ("synth_0_0", "synth_0_1") if "red" in {o["class_name"] for o in load_gt(synth_root / s).objects}
        ]
        hit = db.search(text="red", k=2, aggregation="max", with_points=True, encoder=enc)[0]
        assert hit.scan in red_scans and _object_of(hit.point_indices, synth_root / hit.scan)["class_name"] == "red"


def test_image_query_and_label(ingested, synth_root):
    path, _, enc = ingested
    red = np.zeros((8, 8, 3), np.uint8)
    red[:] = enc.palette["red"]
    with om3db.connect(path) as db:
        green = red.copy()
        green[:] = enc.palette["green"]
        hit = db.search(image=green, k=1, scans="synth_0_0", with_points=True, encoder=enc)[0]
        assert _object_of(hit.point_indices, synth_root / hit.scan)["class_name"] == "green"
        labels = db.label("synth_0_0", list(enc.palette), template="{}", encoder=enc)
        assert len(labels) == db.scans()[0].instances
        right = [_object_of(lab.point_indices, synth_root / "synth_0_0")["class_name"] == lab.label for lab in labels]
        assert sum(right) >= len(labels) - 1


def test_reingest_skips_unchanged_and_force_replaces(ingested, synth_root):
    path, _, enc = ingested
    with om3db.connect(path) as db:
        before = {s.name: s.instances for s in db.scans()}
        out = db.ingest(synth_root, config=_config(), siglip=enc, dinov2=enc)
        assert [o.status for o in out] == ["skipped", "skipped"]
        calls = []
        out = db.ingest(
            synth_root / "synth_0_1",
            config=_config(),
            siglip=enc,
            dinov2=enc,
            force=True,
            progress=lambda *a: calls.append(a),
        )
        assert [o.status for o in out] == ["ingested"]
        assert ("synth_0_1", "scans", 0, 1) in calls and any(c[1] == "embed" for c in calls)
        assert {s.name: s.instances for s in db.scans()} == before
        info = db.info()
        assert info["instances"] == sum(before.values()) and info["gpus"] == 0
        counts = {(s["name"], s["level"]): s["vectors"] for s in info["spaces"]}
        assert counts[("siglip", "instance")] == sum(before.values())


def test_remove_then_scans_and_errors(synth_root, tmp_path):
    enc = FakeColorEncoder()
    with om3db.connect(tmp_path / "db") as db:
        db.ingest(synth_root / "synth_0_0", config=_config(), siglip=enc, dinov2=False)
        n = db.scans()[0].instances
        assert db.remove("synth_0_0") == n
        assert db.scans() == []
        assert db._store.index("siglip", "instance").ntotal == 0
        with pytest.raises(NotFoundError, match="no scan named 'synth_0_0'"):
            db.remove("synth_0_0")
        with pytest.raises(ConfigError, match="no scans"):
            db.ingest(tmp_path, config=_config(), siglip=enc, dinov2=False)


def test_ephemeral_and_default_path(tmp_path, monkeypatch):
    with om3db.connect(ephemeral=True) as db:
        where = db.path
        assert (where / "om3db.sqlite").exists()
        with pytest.raises(NotFoundError, match="no instance-level vector space 'siglip'"):
            db.search(text="red", encoder=FakeColorEncoder())
    assert not where.exists()
    monkeypatch.setenv("OM3DB_DB", str(tmp_path / "env-db"))
    with om3db.connect() as db:
        assert db.path == tmp_path / "env-db"
    monkeypatch.delenv("OM3DB_DB")
    monkeypatch.chdir(tmp_path)
    with om3db.connect() as db:
        assert db.path.resolve() == (tmp_path / "om3db-data").resolve()


def test_connect_to_a_file_is_refused(tmp_path):
    from om3db.errors import StoreError

    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError) as err:
        om3db.connect(tmp_path / "f")
    assert str(err.value) == f"{tmp_path / 'f'}: is a file, not a database folder. Give the database's folder"
    (tmp_path / "d").mkdir()
    import sqlite3

    sqlite3.connect(tmp_path / "d" / "om3db.sqlite").execute("create table other (x int)")
    with pytest.raises(StoreError, match="holds tables that are not an om3db database"):
        om3db.connect(tmp_path / "d")
