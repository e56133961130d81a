"""Dtype and model presets through Database.ingest and the CLI: the dtype each model ran in (and why) is
in the ingest outcome, the stored scan settings and ``om3db info``; a bfloat16 request on a CPU that only
emulates it, an unknown dtype and an unknown preset are refused before anything is stored."""

from __future__ import annotations

import json

import pytest
from om3db_cli.main import main

import om3db
from om3db.errors import ConfigError


def _ingest(db, root, siglip, dinov2, **kw):
    with om3db.connect(db) as d:
        return d.ingest(root, siglip=str(siglip), dinov2=str(dinov2), **kw)


@pytest.mark.parametrize(("bf16", "want"), [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_follows_the_cpu_and_is_reported(tmp_path, tiny_scan_path, tiny_siglip_dir, tiny_dinov2_dir,
                                                    fake_cpu, bf16, want):  # fmt: skip
    fake_cpu(bf16)
    (out,) = _ingest(tmp_path / "db", tiny_scan_path, tiny_siglip_dir, tiny_dinov2_dir)
    assert out.status == "ingested"
    assert {out.compute[m]["dtype"] for m in ("siglip", "dinov2")} == {want}
    assert "auto" in out.compute["siglip"]["reason"]
    with om3db.connect(tmp_path / "db") as d:
        (info,) = d.scans()
        assert info.settings["compute"]["siglip"]["dtype"] == want  # kept with the scan
        assert d.info()["compute"]["dtype"] == want


def test_refused_dtype_and_preset_store_nothing(tmp_path, tiny_scan_path, tiny_siglip_dir, tiny_dinov2_dir, fake_cpu):
    fake_cpu(False)  # an AVX2-only CPU: bfloat16 is emulated there
    db = tmp_path / "db"
    with pytest.raises(ConfigError, match=r"dtype 'bfloat16' refused: this CPU, .*Fake AMD EPYC.*no native bfloat16"):
        _ingest(db, tiny_scan_path, tiny_siglip_dir, tiny_dinov2_dir, dtype="bfloat16")
    with pytest.raises(ConfigError, match="unknown model preset 'tiny'"):
        _ingest(db, tiny_scan_path, tiny_siglip_dir, tiny_dinov2_dir, models="tiny")
    with om3db.connect(db) as d:
        assert d.scans() == []


def test_cli_dtype_option(tmp_path, tiny_scan_path, tiny_siglip_dir, tiny_dinov2_dir, capsys, fake_cpu):
    fake_cpu(True)
    db = tmp_path / "db"
    common = ["--db", str(db), "--siglip", str(tiny_siglip_dir), "--dinov2", str(tiny_dinov2_dir)]
    assert main(["ingest", str(tiny_scan_path), *common, "--dtype", "bogus"]) == 1
    assert "bogus" in capsys.readouterr().err
    assert main(["ingest", str(tiny_scan_path), *common, "--dtype", "float32", "--json"]) == 0
    (out,) = json.loads(capsys.readouterr().out)
    assert out["compute"]["siglip"]["dtype"] == "float32" and out["compute"]["siglip"]["reason"] == "float32 requested"
