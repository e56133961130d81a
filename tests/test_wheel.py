"""The wheel a user installs: built from a clean copy of the checkout, installed with its dependencies
(``-c constraints.txt``) into a fresh virtual environment, then ``om3db demo`` run from outside the checkout.

Minutes, not seconds: pip resolves and installs the whole stack (from its cache after the first run). It
needs the package index or a warm pip cache, like the README's commands; the PIP_* environment is passed on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# checkout folder -> folder inside the wheel (setup.py maps cli/ and migrations/, docs/install.md "Packaging")
INSTALLED_AS = {"om3db": "om3db", "cli": "om3db_cli", "migrations": "om3db/migrations"}
PACKAGE_DATA = ["om3db/data/scannet200.json", "om3db/migrations/script.py.mako"]
# not build inputs: environments, build outputs, caches, demo output
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "om3db-*"
)

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(1800)]


def _run(cmd: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; on failure, fail the test with the command, its exit status and its output."""
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} ran past {timeout:.0f} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    if out.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}")
    return out.stdout


def _expected_files(src: Path) -> set[str]:
    expected = set(PACKAGE_DATA)
    for folder, target in INSTALLED_AS.items():
        for py in (src / folder).rglob("*.py"):
            expected.add(f"{target}/{py.relative_to(src / folder).as_posix()}")
    return expected


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built with ``pip wheel --no-deps`` from a copy of the checkout (no stale ``build/`` reused);
    the copy is kept beside it as ``src/``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_COPIED)
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(src)],
        cwd=tmp,
        timeout=600,
    )
    (built,) = (tmp / "dist").glob("om3db-*.whl")
    return built


def test_wheel_holds_every_module_and_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_expected_files(wheel.parent.parent / "src") - names)
    assert not missing, f"{wheel.name} lacks {missing} (is a folder missing its __init__.py?)"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "cli/", "migrations/"))]


def test_installed_wheel_runs_the_demo(wheel, tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work, timeout=300)
    py = venv / "bin" / "python"
    _run(
        [str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(wheel)], cwd=work, timeout=1200
    )

    # the pinned CPU torch, not a newer CUDA build pulled in beside it (docs/install.md, "CPU")
    installed = json.loads(_run([str(py), "-m", "pip", "list", "--format=json"], cwd=work, timeout=120))
    versions = {d["name"].lower(): d["version"] for d in installed}
    pinned = next(line for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    assert versions["torch"].split("+")[0] == pinned.removeprefix("torch=="), versions["torch"]
    assert not [n for n in versions if n.startswith("nvidia-")], sorted(versions)

    # outside the checkout, with nothing of it on the path: the wheel's own files run
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    where = _run(
        [str(py), "-c", "import om3db, om3db_cli; print(om3db.__file__, om3db_cli.__file__)"],
        cwd=work,
        timeout=120,
        env=env,
    )
    assert str(REPO) not in where and str(venv) in where, where

    out = _run(
        [str(venv / "bin" / "om3db"), "demo", "--out", str(work / "demo"), "--json"], cwd=work, timeout=600, env=env
    )
    result = json.loads(out)
    assert [(o["scan"], o["status"]) for o in result["ingested"]] == [
        ("synth_0_0", "ingested"),
        ("synth_0_1", "ingested"),
    ]
    assert result["random_weights"] is True
    assert len(result["text_hits"]) == 5 and len(result["image_hits"]) == 5, out
