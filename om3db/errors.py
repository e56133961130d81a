"""One hierarchy of typed errors. Every message names the file / scan / instance and the fix."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "Om3dbError",
    "ConfigError",
    "ScanError",
    "MaskFileError",
    "ModelLoadError",
    "StoreError",
    "SchemaOutOfDateError",
    "EncoderMismatchError",
    "NotFoundError",
    "DatabaseBusyError",
    "EvaluationError",
    "Interrupted",
]


class Om3dbError(Exception):
    """Base class of every error om3db raises on purpose."""


class ConfigError(Om3dbError, ValueError):
    """An option or configuration value is invalid."""


class ScanError(Om3dbError):
    """A scan on disk is missing something or holds something unreadable.

    ``path`` is the offending file or folder; the message is ``"<path>: <problem>. <fix>"``.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        message = f"{self.path}: {problem}"
        if fix:
            message += f". {fix}"
        super().__init__(message)


class MaskFileError(ScanError):
    """A class-agnostic mask file cannot be used."""


class ModelLoadError(Om3dbError):
    """A model checkpoint could not be found or loaded."""


class StoreError(Om3dbError):
    """The database or its vector indexes cannot be used as asked."""


class SchemaOutOfDateError(StoreError):
    """The database schema is older (or newer) than this version of om3db expects.

    The message gives the Python fix (``om3db.upgrade_database(PATH)``); a command line shows
    ``cli_message`` instead, which gives the shell command."""

    upgrade_command: str | None = None
    """The shell command that migrates the database (``om3db db upgrade --db PATH``); None when it cannot be
    upgraded (its schema is newer than this om3db)."""
    cli_message: str | None = None
    """The message as a command line shows it: ``PATH: database schema is out of date (revision R, this om3db
    needs H). Run: om3db db upgrade --db PATH``; None where the message itself applies."""


class EncoderMismatchError(StoreError):
    """A query or an ingest uses another encoder than the one a vector space was built with."""


class NotFoundError(StoreError, KeyError):
    """A scan or instance named by the user is not in the database."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DatabaseBusyError(StoreError):
    """Another process holds the write lock of the database."""


class EvaluationError(Om3dbError):
    """Predictions and ground truth cannot be evaluated together."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (a ``KeyboardInterrupt``, so generic ``except Exception`` handlers do not
    swallow it). ``Database.ingest`` re-raises a Ctrl-C as this, with ``committed`` set to the scans it
    had committed (each scan commits atomically; the one in progress was rolled back). The CLI's signal
    handlers raise it for SIGINT and SIGTERM."""

    def __init__(self, signum: int = 2, committed: tuple[str, ...] | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.committed = None if committed is None else tuple(committed)
        """Scans committed by the interrupted ingest (None: not an ingest, or not known)."""

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell's convention."""
        return 128 + self.signum
