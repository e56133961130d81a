"""``om3db synth``: write synthetic scans with exact ground truth."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        out: Annotated[str, typer.Argument(help="Folder to write the scans into (created).")],
        scans: Annotated[int, typer.Option("--scans", help="Number of scans.")] = 2,
        seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same scans.")] = 0,
        size: Annotated[
            str, typer.Option("--size", help="tiny (tests, seconds) or scannet (benchmark scale).")
        ] = "tiny",
        masks: Annotated[
            bool, typer.Option("--masks/--no-masks", help="Write the GT masks as <scan>_masks.pt.")
        ] = True,
        masks2d: Annotated[
            bool,
            typer.Option(
                "--masks2d", help="Also write the GT 2D instance maps as masks2d/<id>.png (input of om3db's proposer)."
            ),
        ] = False,
        depth: Annotated[
            bool,
            typer.Option(
                "--depth/--no-depth", help="Write sensor depth (--no-depth: om3db renders depth from the mesh)."
            ),
        ] = True,
        json_out: Annotated[bool, typer.Option("--json", help="Print the written scan folders as JSON.")] = False,
    ) -> None:
        """Write synthetic RGB-D scans (ScanNet layout) rendered with open3d, with exact ground truth."""
        import json

        from om3db.synth import write_scans

        from .options import local_path

        out = local_path(out, "OUT")
        from om3db.errors import ConfigError

        if scans < 1:
            raise ConfigError(f"--scans {scans}: must be >= 1")
        if seed < 0:
            raise ConfigError(f"--seed {seed}: must be >= 0")
        if size not in ("tiny", "scannet"):
            raise ConfigError(f"--size {size!r}: not a choice; choose tiny or scannet")
        from rich.console import Console

        console = Console(stderr=True)
        if json_out or not console.is_terminal:  # no bar (nor its stray newline on stdout) off a terminal
            paths = write_scans(out, scans=scans, seed=seed, size=size, masks=masks, masks2d=masks2d, depth=depth)
        else:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("rendering frames", total=None)
                paths = write_scans(
                    out, scans=scans, seed=seed, size=size, masks=masks, masks2d=masks2d, depth=depth,
                    progress=lambda _stage, done, total: bar.update(task, completed=done, total=total),
                )  # fmt: skip
        if json_out:
            typer.echo(json.dumps([str(p) for p in paths]))
        else:
            for p in paths:
                typer.echo(f"wrote {p}")
