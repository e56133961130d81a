"""Engine creation (SQLite: WAL + foreign keys per connection; PostgreSQL through psycopg 3) and the Alembic
runner used on open."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..errors import ConfigError, SchemaOutOfDateError, StoreError

__all__ = [
    "make_engine",
    "current_revision",
    "head_revision",
    "upgrade",
    "downgrade",
    "check_schema",
    "is_postgres_url",
    "redact_url",
    "mask_url",
    "check_url",
    "probe",
    "probe_url",
]

_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
MIGRATION_LOCK_KEY = 0x6F6D3364_0002
"""PostgreSQL advisory lock key taken by migrations (two processes creating one new database)."""


def is_postgres_url(url) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://`` / ``postgres://``, psycopg driver)."""
    return isinstance(url, str) and url.startswith(_PG_SCHEMES)


def _driver_url(url: str) -> str:
    """PostgreSQL URLs go through psycopg 3 (SQLAlchemy's default driver for postgresql:// is psycopg2)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def redact_url(url: str) -> str:
    """The URL as messages show it: the password replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return mask_url(url)


def mask_url(url: str) -> str:
    """Any text shaped like a URL, with what may be a password (after the user's ``:``, up to the last ``@``)
    replaced by ``***``; for URLs too malformed to parse (a password may hold ``@`` or ``/``: masking too
    much is safe, too little is not)."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    if ":" not in userinfo:
        return url
    return f"{head}://{userinfo.split(':', 1)[0]}:***@{host}"


_INSTALL_PG = "Install it with: pip install 'om3db[postgres]' (psycopg 3)"
_DRIVERS = {"postgresql": ("psycopg",)}
"""Drivers om3db connects through, per SQLAlchemy dialect (an installed psycopg 3)."""


def check_url(url: str) -> None:
    """Refuse a database URL that cannot be parsed (a port that is not a number, a broken IPv6 host, no
    scheme) or that names a PostgreSQL driver om3db does not use, with a ConfigError naming the URL
    without its password. SQLite file URLs pass."""
    from urllib.parse import urlsplit

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = mask_url(url)
    fix = "Give a URL like postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
    try:
        if not url.startswith("sqlite"):
            urlsplit(url).port  # noqa: B018 - a port that is not a number, an unclosed IPv6 bracket raise here
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{shown}: not a database URL. {fix}") from None
    except ValueError as exc:
        raise ConfigError(f"{shown}: not a valid database URL ({exc}). {fix}") from None
    dialect, _, driver = parsed.drivername.partition("+")
    if dialect == "postgres":
        dialect = "postgresql"
    if dialect not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"{shown}: a {dialect} database: om3db keeps its metadata in SQLite (a folder) or PostgreSQL. {fix}"
        )
    if dialect in _DRIVERS and driver and driver not in _DRIVERS[dialect]:
        raise ConfigError(
            f"{shown}: the {parsed.drivername} driver is not supported: om3db connects to PostgreSQL through "
            "psycopg 3. Start the URL with postgresql://, postgres:// or postgresql+psycopg://"
        )


_DAMAGE = ("malformed", "not a database", "could not decode", "file is encrypted", "disk image")


def _name_damage(engine, path: str):
    """A damaged SQLite file surfaces on any statement (a page or a text that no longer decodes): raise it
    as one StoreError naming the file and the repair, wherever the statement ran. Other errors (busy,
    disk full) pass through to the code that knows what they mean."""
    from sqlalchemy import event

    @event.listens_for(engine, "handle_error")
    def _damaged(context) -> None:
        detail = " ".join(str(context.original_exception).split())
        if any(word in detail.lower() for word in _DAMAGE):
            raise StoreError(
                f"{path}: the database file is damaged ({detail[:200]}). `om3db check` tells what is affected; "
                "restore the file from a backup, or re-ingest the affected scans into a new database"
            ) from context.original_exception

    return engine


def make_engine(url: str, *, read_only: bool = False):
    """A SQLAlchemy engine; SQLite connections get WAL, foreign keys and a busy timeout; PostgreSQL goes
    through psycopg 3 with a connect timeout and pings pooled connections before use.

    read_only: SQLite on a folder that cannot be written (a read-only mount): opened ``immutable``, so
    SQLite creates no ``-shm`` / ``-wal`` files and sets nothing."""
    from sqlalchemy import create_engine, event

    if url.startswith("sqlite") and read_only:
        path = url.split("sqlite:///", 1)[1]
        return _name_damage(create_engine(f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true"), path)
    if url.startswith("sqlite"):
        engine = _name_damage(create_engine(url, connect_args={"timeout": 60}), url.split("sqlite:///", 1)[-1])

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            # 64 KiB pages: float16 vector blobs (2-4 KiB) fit in-page instead of overflow chains, ~2.5x
            # the blob write rate (docs/benchmarks.md). Only a new file takes it (ignored once in WAL mode).
            cur.execute("PRAGMA page_size=65536")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    check_url(url)
    if is_postgres_url(url):
        from .pglock import application_name

        args = {"connect_timeout": 10, "application_name": application_name()}
        try:
            return create_engine(_driver_url(url), connect_args=args, pool_pre_ping=True)
        except ImportError as exc:
            raise ConfigError(f"{redact_url(url)}: the PostgreSQL driver is missing ({exc}). {_INSTALL_PG}") from None
    return create_engine(url)


def _without_password(text: str, password: str) -> str:
    """``text`` with the password masked wherever it stands as a token (between non-word characters, as in
    a URL or conninfo), and anywhere at all when it is long enough not to be part of ordinary words (a
    one-letter password must not turn every "p" of a driver's message into ``***``)."""
    import re

    if len(password) >= 8:
        return text.replace(password, "***")
    return re.sub(rf"(?<!\w){re.escape(password)}(?!\w)", "***", text)


def _connect_problem(exc, password: str | None) -> tuple[str, str]:
    """(what went wrong, the fix) for a failed connection, without the password."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    if password:
        text = _without_password(text, password)
    low = text.lower()
    if (
        "password authentication failed" in low
        or "no password supplied" in low
        or "role" in low
        and "does not exist" in low
    ):
        return f"the server refused the login ({text})", "Check the user name and password in the URL"
    if "database" in low and "does not exist" in low:
        return f"no such database ({text})", "Create it (createdb NAME, or CREATE DATABASE) or fix the URL"
    return (
        f"cannot connect to the database server ({text})",
        "Check that the server is running and that the host and port are right",
    )


def probe(engine, where: str) -> None:
    """Open one connection; a server that does not answer or refuses the login raises StoreError naming
    ``where`` (the URL without its password) and the fix."""
    from sqlalchemy.exc import DBAPIError

    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        if engine.dialect.name == "sqlite":  # a damaged or unreadable file, not a server: the store names it
            raise
        what, fix = _connect_problem(exc, engine.url.password)
        raise StoreError(f"{where}: {what}. {fix}") from None


def probe_url(url: str | None) -> None:
    """:func:`probe` a PostgreSQL URL with a throwaway engine (nothing for SQLite or None)."""
    if url is None or not is_postgres_url(url):
        return
    engine = make_engine(url)
    try:
        probe(engine, redact_url(url))
    finally:
        engine.dispose()


def _config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__import__("om3db.migrations").migrations.__file__).parent))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this version of om3db."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(None)).get_current_head()


def current_revision(engine) -> str | None:
    """The revision a database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def known_revisions() -> set[str]:
    """Every migration revision shipped with this version of om3db."""
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_config(None)).walk_revisions()}


def newer_error(where: str, revision: str) -> SchemaOutOfDateError:
    """The error for a database at a revision this om3db does not know (made by a newer om3db)."""
    return SchemaOutOfDateError(
        f"{where}: database schema revision {revision} is newer than this om3db knows (newest {head_revision()}). "
        "Upgrade om3db"
    )


def upgrade(engine, revision: str = "head") -> None:
    """Run the shipped migrations up to ``revision`` (default: the newest)."""
    from alembic import command

    with _migrating(engine) as conn:
        command.upgrade(_config(conn), revision)


def downgrade(engine, revision: str) -> None:
    """Run the shipped migrations down to ``revision``."""
    from alembic import command

    with _migrating(engine) as conn:
        command.downgrade(_config(conn), revision)


class _migrating:  # noqa: N801 - used as a context manager
    """A connection in one transaction for migrations.

    SQLite: foreign keys are switched off around it (they can only be switched outside a transaction).
    Batch migrations copy a table, drop the original and rename the copy; with foreign keys on, the drop
    would cascade-delete every row referring to the table. ``foreign_key_check`` must be clean before
    the commit.
    """

    def __init__(self, engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"

    def __enter__(self):
        self.conn = self.engine.connect()
        if self.sqlite:
            self.conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            self.conn.commit()
        self.tx = self.conn.begin()
        if self.engine.dialect.name == "postgresql":  # one migrator at a time; released with the transaction
            self.conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.sqlite:
                bad = self.conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if bad:
                    self.tx.rollback()
                    raise StoreError(
                        f"migration left {len(bad)} rows with dangling foreign keys (first: {bad[0]}); "
                        "nothing was changed"
                    )
            if exc_type is None:
                self.tx.commit()
            else:
                self.tx.rollback()
        finally:
            if self.sqlite:
                self.conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                self.conn.commit()
            self.conn.close()


def _has_tables(engine) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(engine).get_table_names())


def _create_locked(engine, where: str, *, create: bool) -> bool:
    """PostgreSQL: create the schema under the migration lock, deciding again once it is held (several
    processes may open a new database at once). True when another process created it first."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    with _migrating(engine) as conn:
        if MigrationContext.configure(conn).get_current_revision() is not None:
            return True
        if inspect(conn).get_table_names():
            raise StoreError(f"{where}: holds tables that are not an om3db database. Use another database")
        if not create:
            raise StoreError(f"{where}: no om3db database here. Create one by ingesting scans into it")
        command.upgrade(_config(conn), "head")
    return False


def check_schema(engine, where: str, *, create: bool) -> None:
    """Create an empty database's schema; refuse a database at another revision.

    ``where`` names the database in messages (its folder or URL without the password). A server that
    does not answer or refuses the login raises StoreError before anything is written.
    """
    probe(engine, where)
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None and engine.dialect.name == "postgresql":
        if _create_locked(engine, where, create=create):  # another process created it meanwhile: check it
            check_schema(engine, where, create=create)
        return
    if current is None:
        if _has_tables(engine):
            raise StoreError(f"{where}: holds tables that are not an om3db database. Use another folder")
        if not create:
            raise StoreError(f"{where}: no om3db database here. Create one by ingesting scans into it")
        upgrade(engine)
        return
    if current not in known_revisions():
        raise newer_error(where, current)
    raise out_of_date_error(where, current, head)


def out_of_date_error(where: str, revision: str, head: str) -> SchemaOutOfDateError:
    """The error for a database at an older revision: the Python fix in its message, the shell command in
    ``upgrade_command`` / ``cli_message`` (what ``om3db`` prints, docs/cli.md)."""
    problem = f"{where}: database schema is out of date (revision {revision}, this om3db needs {head})"
    error = SchemaOutOfDateError(
        f"{problem}. Upgrade it with om3db.upgrade_database({where!r}) (the CLI's `om3db db upgrade`)"
    )
    error.upgrade_command = f"om3db db upgrade --db {shlex.quote(where)}"
    error.cli_message = f"{problem}. Run: {error.upgrade_command}"
    return error
