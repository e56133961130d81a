"""``om3db view``: serve the local viewer page (om3db.viewer) until Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import DbOpt


def register(app: typer.Typer) -> None:
    @app.command()
    def view(
        db: DbOpt = None,
        host: Annotated[
            str, typer.Option("--host", help="Interface to listen on; 127.0.0.1 keeps the page on this machine.")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="TCP port; one in use is refused.")] = 8080,
        open_browser: Annotated[
            bool, typer.Option("--open/--no-open", help="Open the page in the default web browser.")
        ] = False,
        max_points: Annotated[
            int, typer.Option("--max-points", help="Points per scan sent to the browser at most (downsampled).")
        ] = 200_000,
    ) -> None:
        """Serve a page: pick a scan, search by text or image live, see the hits in 3D and as a ranked list."""
        import threading
        import webbrowser

        from om3db.viewer import ViewerConfig, start_viewer

        _check_options(host, max_points)
        viewer = start_viewer(db, config=ViewerConfig(host=host, port=port, max_points=max_points))
        try:
            typer.echo(f"om3db view: serving {viewer.url} (Ctrl-C stops)", err=True)
            if open_browser:
                webbrowser.open(viewer.url)
            threading.Event().wait()
        except KeyboardInterrupt:
            typer.echo("om3db view: stopped", err=True)
        finally:
            viewer.stop()


def _check_options(host: str, max_points: int) -> None:
    """Name the option at fault before the viewer starts: its own checks say ``max_points``, and a host
    that cannot be bound would be reported as the port's fault."""
    import socket

    from om3db.errors import ConfigError

    if max_points < 1:
        raise ConfigError(f"--max-points must be >= 1 (points per scan sent to the browser), got {max_points}")
    if not host.strip():
        raise ConfigError("--host is empty: give an address of this machine, e.g. 127.0.0.1 or 0.0.0.0")
    try:  # port 0: any free port, so only the host is tested
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError as exc:
        raise ConfigError(
            f"--host {host} cannot be listened on ({exc.strerror or exc}): it is not an address of this machine. "
            "Give one of its addresses, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from exc
