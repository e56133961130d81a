"""``om3db demo`` and ``om3db models random``: the offline example and random demo checkpoints."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

models_app = typer.Typer(
    help="Model checkpoints: write randomly initialised ones for offline runs.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")

    @app.command()
    def demo(
        out: Annotated[
            str, typer.Option("--out", help="Folder for the demo's scans, models and database.")
        ] = "om3db-demo",
        siglip: Annotated[
            Optional[str], typer.Option("--siglip", help="SigLIP hub id or local directory (default: random weights).")
        ] = None,
        dinov2: Annotated[
            Optional[str], typer.Option("--dinov2", help="DINOv2 hub id or local directory (default: random weights).")
        ] = None,
        sam: Annotated[
            Optional[str], typer.Option("--sam", help="SAM checkpoint (.pth); default: box crops without SAM.")
        ] = None,
        query: Annotated[str, typer.Option("--query", help="Text to search for.")] = "red object",
        json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    ) -> None:
        """Synthesise two scans, ingest them and search by text and image: no download needed."""
        from om3db.demo import run_demo

        from .db_cmds import _Bars, _echo_json, _hits_table
        from .options import local_path

        out = local_path(out, "--out")
        for name, value in (("--siglip", siglip), ("--dinov2", dinov2), ("--sam", sam)):
            local_path(value, name)
        with _Bars(enabled=not json_out) as bars:
            result = run_demo(out, siglip=siglip, dinov2=dinov2, sam=sam, query=query, progress=bars.update)
        if json_out:
            _echo_json(
                {
                    "scans": [str(p) for p in result.scans],
                    "db": str(result.db_path),
                    "models": result.models,
                    "random_weights": result.random_weights,
                    "ingested": [o.to_dict() for o in result.outcomes],
                    "text_query": result.text_query,
                    "text_hits": [h.to_dict() for h in result.text_hits],
                    "image_query": str(result.image_query) if result.image_query else None,
                    "image_hits": [h.to_dict() for h in result.image_hits],
                }
            )
            return
        typer.echo(f"Scans: {', '.join(str(p) for p in result.scans)}")
        typer.echo(f"Database: {result.db_path}")
        for o in result.outcomes:
            typer.echo(f"  {o.scan}: {o.status}, {o.instances} instances, {o.seconds:.1f} s")
        typer.echo(f"Models: SigLIP {result.models['siglip']}, DINOv2 {result.models['dinov2']}")
        if result.random_weights:
            typer.echo(
                "NOTE: real weights cannot be downloaded here, so these are RANDOMLY INITIALISED tiny SigLIP and\n"
                "DINOv2 models of the real architectures, loaded through the real loading code. The whole pipeline\n"
                "ran for real (views, crops, embeddings, SQLite + FAISS, search) but the scores mean nothing:\n"
                "rerun with --siglip/--dinov2 pointing at real checkpoints for meaningful results."
            )
        _hits_table(f'Text search: "{result.text_query}"', result.text_hits)
        if result.image_query is not None:
            _hits_table(f"Image search: {result.image_query} (the top text hit's crop)", result.image_hits)
        typer.echo(f'Try: om3db search --db {result.db_path} "{result.text_query}"')

    @models_app.command("random")
    def models_random(
        out: Annotated[str, typer.Argument(help="Folder to write siglip/, dinov2/ and sam.pth into.")],
        size: Annotated[
            str,
            typer.Option(
                "--size",
                help="tiny (seconds, CPU), cpu (the cpu preset's SigLIP-B/16, DINOv2-S/14, SAM ViT-B) or full "
                "(SO400M, DINOv2-L, SAM ViT-H; ~4.5 GB).",
            ),
        ] = "tiny",
        seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
        json_out: Annotated[bool, typer.Option("--json", help="Print the written paths as JSON.")] = False,
    ) -> None:
        """Write randomly initialised SigLIP, DINOv2 and SAM checkpoints (real architectures, meaningless weights)."""
        from om3db.errors import ConfigError
        from om3db.random_models import MAX_SEED, write_random_models

        from .options import local_path

        if size not in ("tiny", "full", "cpu"):
            raise ConfigError(f"--size {size!r}: not a choice; choose tiny, cpu or full")
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seed {seed}: must be in 0..{MAX_SEED}")
        paths = write_random_models(local_path(out, "OUT"), size=size, seed=seed)
        if json_out:
            from .db_cmds import _echo_json

            _echo_json({k: str(v) for k, v in paths.items()})
            return
        for kind, path in paths.items():
            typer.echo(f"{kind}: {path}")
        typer.echo("These weights are random: use them to exercise the pipeline offline, not for real search.")
