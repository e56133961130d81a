"""The ``om3db`` command. Library errors become one ``Error: ...`` line and exit code 1, here only."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import typer
import typer.main

from om3db.errors import Interrupted, Om3dbError

from . import convert_cmd, db_cmds, demo_cmd, eval_cmd, synth_cmd, view_cmd

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
for _module in (synth_cmd, db_cmds, eval_cmd, demo_cmd, convert_cmd, view_cmd):
    _module.register(app)


_BUG_HINT = (
    "This is a bug in om3db: please report it with the command you ran and this message "
    "(OM3DB_DEBUG=1 shows the traceback)"
)


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(signum)


def _interrupted_message(exc: KeyboardInterrupt) -> tuple[str, int]:
    signum = getattr(exc, "signum", signal.SIGINT)
    name = signal.Signals(signum).name
    message = f"Interrupted ({name})."
    committed = getattr(exc, "committed", None)
    if committed is not None and committed:
        message += (
            f" Committed before stopping: {', '.join(committed)} (each scan commits whole; the scan in progress"
            " was rolled back). Run the same command again to resume: committed scans are skipped."
        )
    elif committed is not None:
        message += " No scan was committed; the scan in progress was rolled back. Run the same command again."
    return message, 128 + int(signum)


def _ingest_so_far(exc: Exception) -> str:
    """What an ingest stopped by this error had committed and had not tried yet (``run_plan`` sets both)."""
    committed, not_tried = getattr(exc, "committed", None), getattr(exc, "not_tried", None)
    if not committed and not not_tried:
        return ""
    text = " (Ingest stopped at this scan, which was not written."
    if committed:
        text += f" Committed before it: {', '.join(committed)}."
    if not_tried:
        text += f" Not tried: {len(not_tried)} scan(s) after it."
    return text + " Fix it, or move it away, and run the same command again: committed scans are skipped.)"


class _TooLongTextWarning(logging.Filter):
    """Drops transformers' "Token indices sequence length is longer than ..." warning: the tokenizer logs it
    while om3db counts a text's tokens, and om3db then refuses the text with its own ``Error:`` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token indices sequence length")


_TOO_LONG_FILTER = _TooLongTextWarning()


def _quiet_library_logs() -> None:
    # the logger transformers' tokenizers log through (logging.getLogger: transformers need not be imported)
    logger = logging.getLogger("transformers.tokenization_utils_base")
    if _TOO_LONG_FILTER not in logger.filters:
        logger.addFilter(_TOO_LONG_FILTER)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app. Every om3db error becomes one ``Error: ...`` line and exit status 1;
    usage errors exit 2; SIGINT / SIGTERM exit 130 / 143 saying what was committed; anything unexpected
    is one line with a bug-report hint (``OM3DB_DEBUG=1`` re-raises it with its traceback)."""
    _quiet_library_logs()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # (signal handlers: main thread only)
        previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    # typer's own runner turns KeyboardInterrupt into a silent exit 130 (and SIGTERM would look the same):
    # the click command runs here, so an interrupt reaches the handler below with what it knows
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with command.make_context("om3db", [str(a) for a in args]) as ctx:
            command.invoke(ctx)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except Om3dbError as exc:  # (an error may word itself for a shell: the command to run, not the Python call)
        typer.echo(f"Error: {getattr(exc, 'cli_message', None) or exc}{_ingest_so_far(exc)}", err=True)
        return 1
    except KeyboardInterrupt as exc:
        message, code = _interrupted_message(exc)
        typer.echo(message, err=True)
        return code
    except typer.Abort as exc:
        typer.echo("Aborted.", err=True)
        return _unexpected(exc.__cause__) if exc.__cause__ is not None else 1
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        # usage errors (typer vendors its own click): print "Usage: ... Error: ..." and exit 2
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        return _unexpected(exc)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _unexpected(exc: BaseException) -> int:
    if os.environ.get("OM3DB_DEBUG"):
        raise exc
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    typer.echo(f"Error: unexpected {type(exc).__name__}{': ' + detail if detail else ''}. {_BUG_HINT}", err=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper around :func:`main`."""
    sys.exit(main())
