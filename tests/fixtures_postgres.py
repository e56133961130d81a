"""A real PostgreSQL server for the test session, and the database targets the backend-parametrised tests use.

The server is Debian's ``postgresql`` (``.ci/run`` installs it when missing): ``initdb`` in a temporary
folder, started with ``pg_ctl`` on 127.0.0.1 only (a free port, its Unix socket inside that folder),
password authentication over TCP, and stopped (folder deleted) when the session ends. Started on first
use only, so a run without PostgreSQL-parametrised tests never starts it. When run as root the server
runs as the ``postgres`` user (initdb refuses root).

``db_target`` gives each test a fresh database: a SQLite folder, or a new PostgreSQL database plus a
local folder for the FAISS cache. ``db_target.connect(**kw)`` opens it the way a user would.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_USER = "om3db"
PG_PASSWORD = "s3cret-pw"  # noqa: S105 - a throwaway password of a throwaway test server
BACKENDS = ["sqlite", "postgresql"]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return cands[-1] if cands else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running test server: ``url(dbname)``; ``create_db()`` makes a fresh database."""

    host: str
    port: int
    folder: Path
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    def url(self, dbname: str = "postgres", *, password: str = PG_PASSWORD) -> str:
        return f"postgresql://{PG_USER}:{password}@{self.host}:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def create_db(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_db(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_pg_server(*, fsync: bool = False) -> PgServer:
    """initdb + pg_ctl start on 127.0.0.1 (see the module docstring); stop it with :func:`stop_pg_server`."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail(
            "PostgreSQL is not installed (no initdb / pg_ctl): the PostgreSQL-parametrised tests need it. "
            "Install it with `apt-get install -y postgresql` (.ci/run does)",
            pytrace=False,
        )
    folder = Path(tempfile.mkdtemp(prefix="om3db-pg-"))
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    (folder / "pw").write_text(PG_PASSWORD + "\n")
    if as_root:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pw", "postgres")
    data = folder / "data"
    subprocess.run(
        [*run_as, initdb, "-D", str(data), "-U", PG_USER, f"--pwfile={folder / 'pw'}", "--auth=scram-sha-256"]
        + ["--no-sync", "-E", "UTF8", "--locale=C"],
        check=True,
        capture_output=True,
    )
    for attempt in range(5):
        port = _free_port()
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync={'on' if fsync else 'off'}"
        opts += " -c max_connections=200 -c shared_buffers=128MB"
        proc = subprocess.run(
            [*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(folder / "log"), "-w", "-t", "60", "start"],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            return PgServer("127.0.0.1", port, folder)
        if attempt == 4:
            log = (folder / "log").read_text() if (folder / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {proc.stderr}\n{log[-2000:]}")
        time.sleep(0.5)
    raise AssertionError("unreachable")


def stop_pg_server(server: PgServer) -> None:
    pg_ctl = _pg_bin("pg_ctl")
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*run_as, pg_ctl, "-D", str(server.folder / "data"), "-m", "immediate", "-w", "stop"], check=False)
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server (started on first use, stopped at the end)."""
    server = start_pg_server()
    yield server
    stop_pg_server(server)


@pytest.fixture
def pg_url(pg_server):
    """A URL (with password) of a fresh, empty PostgreSQL database, dropped after the test."""
    name = pg_server.create_db()
    yield pg_server.url(name)
    pg_server.drop_db(name)


@dataclass
class DbTarget:
    """Where a test's database lives: ``connect_arg`` is what ``om3db.connect`` takes (a folder or a URL),
    ``kwargs`` the rest (``vectors=`` for PostgreSQL); ``root`` is the folder holding the FAISS files."""

    backend: str
    root: Path
    connect_arg: str
    kwargs: dict

    def connect(self, **kw):
        import om3db

        return om3db.connect(self.connect_arg, **self.kwargs, **kw)

    def store(self, **kw):
        """An ``om3db.store.Store`` on this target (``url=`` set for PostgreSQL)."""
        from om3db.store import Store

        url = self.connect_arg if self.backend == "postgresql" else None
        return Store(self.root, url=url, **kw)

    def code(self) -> str:
        """Python source of the ``om3db.connect`` arguments, for child processes."""
        return ", ".join([repr(self.connect_arg), *(f"{k}={v!r}" for k, v in self.kwargs.items())])

    def sibling(self, name: str) -> DbTarget:
        """Another folder for the FAISS files of the same database (PostgreSQL: a second machine)."""
        root = self.root.parent / name
        if self.backend == "sqlite":
            return self
        return DbTarget(self.backend, root, self.connect_arg, {**self.kwargs, "vectors": str(root)})


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_target(request, backend, tmp_path) -> DbTarget:
    """A fresh database on the parametrised backend (``backend``: sqlite | postgresql)."""
    root = tmp_path / "db"
    if backend == "sqlite":
        return DbTarget(backend, root, str(root), {})
    url = request.getfixturevalue("pg_url")
    return DbTarget(backend, root, url, {"vectors": str(root)})
