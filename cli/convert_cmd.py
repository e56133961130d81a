"""``om3db convert``: write any supported capture as a ScanNet / OpenMask3D scan folder."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import local_path

_FORMATS = "auto, scannet, nerfstudio, record3d, arkitscenes, replica, scannetpp, scanner3d"


def _check_options(fmt, depth_scale, voxel_size, depth_max, min_confidence, pose_scale) -> None:
    """The options, each named as typed, refused before the capture is read."""
    import math

    from om3db.errors import ConfigError

    if fmt not in _FORMATS.split(", "):
        raise ConfigError(f"--format {fmt!r}: not a capture format; choose one of {_FORMATS}")
    if not (math.isfinite(depth_scale) and 0 < depth_scale <= 65535):
        raise ConfigError(f"--depth-scale {depth_scale:g}: must be in (0, 65535] depth units per metre (1000: mm)")
    for option, value in (("--voxel-size", voxel_size), ("--depth-max", depth_max)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{option} {value:g}: must be a finite number of metres > 0")
    if min_confidence not in (0, 1, 2):
        raise ConfigError(f"--min-confidence {min_confidence}: must be 0, 1 or 2 (ARKit low, medium, high)")
    if pose_scale is not None and not (math.isfinite(pose_scale) and pose_scale > 0):
        raise ConfigError(f"--pose-scale {pose_scale:g}: must be a finite number of metres per pose unit > 0")


def _check_folder(path, option: str) -> None:
    """A folder the command may create: not a file, not under a file."""
    from om3db.errors import ConfigError

    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        if existing != path:
            raise ConfigError(f"{option} {path}: cannot be created: {existing} is a file. Give a folder path")
        if option != "DST":  # (DST: the library's own message, "exists and is not an empty folder")
            raise ConfigError(f"{option} {path}: exists and is not a folder. Give a folder path")


def register(app: typer.Typer) -> None:
    @app.command()
    def convert(
        src: Annotated[str, typer.Argument(help="Capture folder, or a Record3D .r3d file.")],
        dst: Annotated[str, typer.Argument(help="ScanNet-layout folder to write (new or empty).")],
        format: Annotated[  # noqa: A002 - the option's name
            str, typer.Option("--format", help=f"Capture format: {_FORMATS}.")
        ] = "auto",
        depth_scale: Annotated[
            float, typer.Option("--depth-scale", help="Units per metre of the written depth PNGs.")
        ] = 1000.0,
        voxel_size: Annotated[
            float, typer.Option("--voxel-size", help="TSDF voxel (m) when the capture has no point cloud.")
        ] = 0.02,
        depth_max: Annotated[float, typer.Option("--depth-max", help="Fusion ignores depth beyond this (m).")] = 5.0,
        min_confidence: Annotated[
            int, typer.Option("--min-confidence", help="Drop depth below this ARKit confidence (0 low .. 2 high).")
        ] = 1,
        pose_scale: Annotated[
            Optional[float],
            typer.Option(
                "--pose-scale",
                help="Metres per pose unit of a nerfstudio capture with non-metric (COLMAP) poses; needed without depth.",
            ),
        ] = None,
        fused_dir: Annotated[
            Optional[str], typer.Option("--fused-dir", help="Cache folder for fused clouds (default: user cache).")
        ] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Write a capture (nerfstudio, Record3D, ARKitScenes, Replica, ScanNet++, 3D Scanner App) as a ScanNet folder."""
        import json

        from om3db.captures.convert import convert_capture
        from om3db.fusion import FusionConfig

        src, dst = local_path(src, "SRC"), local_path(dst, "DST")
        fused_dir = local_path(fused_dir, "--fused-dir")
        _check_options(format, depth_scale, voxel_size, depth_max, min_confidence, pose_scale)
        _check_folder(dst, "DST")
        if fused_dir is not None:
            _check_folder(fused_dir, "--fused-dir")
        fusion = FusionConfig(voxel_size=voxel_size, depth_max=depth_max)
        kwargs = dict(
            format=format,
            depth_scale=depth_scale,
            fused_dir=fused_dir,
            fusion=fusion,
            min_confidence=min_confidence,
            pose_scale=pose_scale,
        )
        from rich.console import Console

        console = Console(stderr=True)
        if json_out or not console.is_terminal:  # no bar (nor its stray newline) when stderr is not a terminal
            result = convert_capture(src, dst, **kwargs)
        else:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("reading (and fusing)", total=None)
                result = convert_capture(
                    src,
                    dst,
                    **kwargs,
                    progress=lambda stage, done, total: bar.update(
                        task, description=stage, completed=done, total=total
                    ),
                )
        if json_out:
            typer.echo(json.dumps(result.to_dict(), indent=1))
            return
        typer.echo(f"wrote {result.path} ({result.source_format}, {result.frames_written} frames)")
        if result.frames_skipped:
            typer.echo(f"  {len(result.frames_skipped)} frames without a usable pose were not written")
        if result.fused_ply is not None:
            typer.echo(f"  scene points fused from the depth maps ({result.fused_ply})")
        if result.depth == "none":
            typer.echo("  no sensor depth: om3db renders depth from the PLY")
        if result.depth_out_of_range:
            typer.echo(f"  {result.depth_out_of_range} depth pixels beyond the 16-bit range were written as 0")
