"""The Python examples in README.md and docs/python-api.md run, verbatim, offline.

Convention for an example (a ```python block) to run here:

- Each file's blocks run in order in one fresh interpreter, sharing variables, like a notebook, in a
  temporary working directory that holds:

  - ``scans/``: two tiny synthetic scans, ``synth_0_0`` and ``synth_0_1``, with mask files;
  - ``mug.jpg``: a photo to search by (a crop of a synthetic frame);
  - ``sam_vit_h_4b8939.pth``: a SAM checkpoint (tiny random weights, the original format).

  Nothing else: a database such as ``my-db`` exists once an earlier block of the same file made it.
- The Hugging Face hub ids in ``HUB_MODELS`` resolve, offline, through the real loading code, to tiny
  randomly initialised models of that kind: the test fills a Hugging Face cache (``HF_HUB_CACHE``) with
  them. Scores are therefore meaningless: print them, do not assert on them. Another hub id fails to load.
- A block that cannot run this way (needs real weights, a GPU, a ScanNet download, a running service)
  is preceded by ``<!-- doctest: skip -->`` (a reason may follow ``skip``); skipped blocks are listed in
  the test's output.
- A failing block's traceback names the document and the line in it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/python-api.md"]

# hub id -> kind of tiny random model served under that id
HUB_MODELS = {
    "google/siglip-so400m-patch14-384": "siglip",
    "google/siglip-base-patch16-224": "siglip",
    "facebook/dinov2-large": "dinov2",
    "facebook/dinov2-base": "dinov2",
    "facebook/dinov2-small": "dinov2",
}
FAKE_COMMIT = "0" * 40  # the snapshot's "commit": what the stored encoder identity records as revision

FENCE = re.compile(r"^```(\w*)[^\n]*$")
SKIP = re.compile(r"^<!--\s*doctest:\s*skip\b.*-->$")

# Runs in the child: execute each block with the document's line numbers, in one namespace.
RUNNER = """
import json, sys
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for doc, line, code in blocks:
    print(f"--- {doc}:{line}", flush=True)
    exec(compile("\\n" * (line - 1) + code, doc, "exec"), namespace)
"""


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line of the block's first code line, code, skip) for each ```python block of a Markdown text."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].startswith("```")), len(lines))
        if lang == "python":
            prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            blocks.append((start + 1, "\n".join(lines[start:end]) + "\n", bool(SKIP.match(prev))))
        i = end + 1
    return blocks


def test_python_blocks_parser():
    text = (
        "# t\n```python\na = 1\n```\n\n<!-- doctest: skip needs a GPU -->\n\n```python\nb = 2\n```\n```bash\nls\n```\n"
    )
    assert python_blocks(text) == [(3, "a = 1\n", False), (9, "b = 2\n", True)]


def _hub_snapshot(cache: Path, hub_id: str, source: Path) -> None:
    """Lay ``source`` out as the cached snapshot of ``hub_id`` (huggingface_hub's cache layout)."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    shutil.copytree(source, repo / "snapshots" / FAKE_COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory, synth_root, tiny_siglip_dir, tiny_dinov2_dir, tiny_sam_path):
    """(template working directory, environment) for running the examples."""
    from PIL import Image

    from om3db.scan import read_scan

    root = tmp_path_factory.mktemp("docs")
    cache, work = root / "hf", root / "work"
    for hub_id, kind in HUB_MODELS.items():
        _hub_snapshot(cache, hub_id, {"siglip": tiny_siglip_dir, "dinov2": tiny_dinov2_dir}[kind])
    shutil.copytree(synth_root, work / "scans")
    shutil.copy(tiny_sam_path, work / "sam_vit_h_4b8939.pth")
    scan = read_scan(work / "scans" / "synth_0_0", masks=False)
    color = scan.frames[0].color()
    h, w = color.shape[:2]
    Image.fromarray(color[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]).save(work / "mug.jpg")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OM3DB_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(root / "hf-home"), HF_HUB_CACHE=str(cache))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return work, env


@pytest.mark.parametrize("doc", DOCS)
def test_doc_examples_run(doc, docs_env, tmp_path):
    template, env = docs_env
    blocks = python_blocks((REPO / doc).read_text())
    run = [(doc, line, code) for line, code, skip in blocks if not skip]
    skipped = [f"{doc}:{line}" for line, _, skip in blocks if skip]
    if skipped:
        print(f"skipped (<!-- doctest: skip -->): {', '.join(skipped)}")
    if not run:
        pytest.fail(f"{doc} has no runnable ```python block")
    work = tmp_path / "work"
    shutil.copytree(template, work)
    out = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(run),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, f"an example in {doc} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
