"""The ``om3db`` command. Library errors become one ``Error: ...`` line and exit code 1, here only."""

from __future__ import annotations

import sys

import typer

from om3db.errors import Om3dbError

from . import convert_cmd, db_cmds, demo_cmd, eval_cmd, synth_cmd

app = typer.Typer(
    name="om3db",
    help="Open-vocabulary 3D scene database: ingest RGB-D scans, search object instances by text or image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Open-vocabulary 3D scene database: ingest RGB-D scans, search object instances by text or image."""


# Each module adds its commands to `app`; they stay import-light (no torch at import).
for _module in (synth_cmd, db_cmds, eval_cmd, demo_cmd, convert_cmd):
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning om3db errors into ``Error: ...`` and exit status 1."""
    try:
        app(args=argv, standalone_mode=False)
    except Om3dbError as exc:
        typer.echo(f"Error: {exc}", err=True)
        return 1
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:
        # usage errors (typer vendors its own click): print "Usage: ... Error: ..." and exit 2
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper around :func:`main`."""
    sys.exit(main())
