"""The offline demo: synthetic scans -> ingest -> text and image search, with no download.

When no weights are given, randomly initialised SigLIP / DINOv2 models of the real architectures are
written and loaded through the real loaders: the pipeline is the real one, the scores are meaningless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """What the demo did, for the CLI to render."""

    scans: list[Path]
    db_path: Path
    models: dict[str, str]
    """Space -> the model it used (hub id or directory)."""
    random_weights: bool
    """True when randomly initialised checkpoints were used (scores carry no meaning)."""
    outcomes: list = field(repr=False)
    text_query: str = ""
    text_hits: list = field(default_factory=list, repr=False)
    image_query: Path | None = None
    image_hits: list = field(default_factory=list, repr=False)


def run_demo(
    out: str | Path,
    *,
    siglip: str | None = None,
    dinov2: str | None = None,
    sam: str | None = None,
    query: str = "red object",
    scans: int = 2,
    frame_step: int = 2,
    k: int = 5,
    progress: Callable[[str, str, int, int], None] | None = None,
) -> DemoResult:
    """Write ``scans`` tiny synthetic scans under ``out/scans``, ingest them into ``out/db`` and search.

    siglip / dinov2: hub ids or local directories; when both are None random tiny checkpoints are
    written to ``out/models`` and used. The image query is the best crop of the top text hit.
    """
    from PIL import Image

    from .database import connect
    from .embed import load_dinov2, load_siglip
    from .errors import ConfigError
    from .ingest import IngestConfig
    from .query import Query
    from .random_models import check_models_dir, write_random_models
    from .sam import load_sam
    from .scan import read_scan
    from .synth import write_scans

    out = Path(out)
    random_weights = siglip is None and dinov2 is None
    if not random_weights and (siglip is None or dinov2 is None):
        raise ConfigError("give both a SigLIP and a DINOv2 model (or neither, for random demo weights)")
    # everything that can be refused is refused before anything is written
    Query(None, text=query, k=k)  # (validation only: an empty query, k)
    _check_out(out)
    if random_weights:
        check_models_dir(out / "models")
    else:  # the encoders are loaded (and a bad model refused) before the scans are written
        siglip, dinov2 = load_siglip(siglip), load_dinov2(dinov2)
    if sam is not None:
        sam = load_sam(sam)
    scan_dirs = write_scans(out / "scans", scans=scans, seed=0, size="tiny", masks=True)
    if random_weights:
        written = write_random_models(out / "models", size="tiny")
        siglip, dinov2 = str(written["siglip"]), str(written["dinov2"])
    db_path = out / "db"
    with connect(db_path) as db:
        outcomes = db.ingest(
            out / "scans",
            config=IngestConfig(frame_step=frame_step),
            siglip=siglip,
            dinov2=dinov2,
            sam=sam,
            progress=progress,
        )
        text_hits = db.search(text=query, k=k)
        image_path, image_hits = None, []
        if text_hits and text_hits[0].crop_box is not None and text_hits[0].frame_id is not None:
            top = text_hits[0]
            scan = read_scan(next(p for p in scan_dirs if p.name == top.scan), masks=False)
            x0, y0, x1, y1 = top.crop_box
            image_path = out / "query.png"
            Image.fromarray(scan.frame(top.frame_id).color()[y0:y1, x0:x1]).save(image_path)
            image_hits = db.search(image=image_path, k=k)
    return DemoResult(
        scan_dirs,
        db_path,
        {"siglip": _model_name(siglip), "dinov2": _model_name(dinov2)},
        random_weights,
        outcomes,
        query,
        text_hits,
        image_path,
        image_hits,
    )


def _model_name(model) -> str:
    """The hub id or directory a model was given as (a loaded encoder carries it in its identity)."""
    return model if isinstance(model, str) else str(model.identity.model_id)


def _check_out(out: Path) -> None:
    from .errors import ConfigError

    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        if existing == out:
            raise ConfigError(f"{out}: exists and is not a folder; give a folder for the demo")
        raise ConfigError(f"{out}: cannot be created: {existing} is a file; give a folder path for the demo")
