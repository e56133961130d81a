"""Writers on PostgreSQL: the server's own locks instead of the folder's file lock.

On SQLite one process writes at a time (``WriterLock``, an fcntl lock held for a whole ingest). On
PostgreSQL several writers, on several machines, may ingest into one database at once:

- every write transaction (a scan's rows, a removal) first takes a *transaction-level advisory lock*
  (``pg_advisory_xact_lock``) on a key of the database, so the transactions that change vector spaces
  commit one after another and the spaces' generations step by one per transaction; the server
  releases it at commit or rollback, also when the writing process is killed;
- readers take no lock: MVCC shows them the last committed state;
- the FAISS files are a cache local to each machine (``vectors=`` folder). Processes sharing that folder
  take its file lock only while they write the files (``PgWriterLock.cache``), not for a whole ingest.

``PgWriterLock`` stands in for ``WriterLock`` in ``Store`` (``with store.lock:``, ``try_acquire`` /
``release``): holding it claims nothing on the server; the advisory lock is taken by :func:`lock_writes`
inside each write transaction.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ..errors import DatabaseBusyError
from .lock import WriterLock

__all__ = ["PgWriterLock", "lock_writes", "WRITER_LOCK_KEY", "application_name"]

WRITER_LOCK_KEY = 0x6F6D3364_0001
"""The advisory lock key of om3db writers (advisory locks are per database, so one key per database)."""


def application_name() -> str:
    """What this process calls itself on the server (``pg_stat_activity``), so a waiting writer can name it."""
    return f"om3db pid {os.getpid()} on {socket.gethostname()}"[:63]


class PgWriterLock:
    """The writer "lock" of a PostgreSQL-backed store: re-entrant and never contended in itself.

    ``cache`` is the file lock of the local FAISS folder, held while index files are written.
    """

    def __init__(self, path: str | Path, where: str, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.where = where
        self.timeout = float(timeout)
        self.cache = WriterLock(self.path, timeout=timeout)
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def holder(self) -> str:
        return self.cache.holder()

    def try_acquire(self) -> bool:
        self._depth += 1
        return True

    def acquire(self, timeout: float | None = None) -> None:
        self._depth += 1

    def release(self) -> None:
        if self._depth > 0:
            self._depth -= 1

    def __enter__(self) -> PgWriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(conn) -> str:
    from sqlalchemy import text

    rows = conn.execute(
        text(
            "SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = :key"
        ),
        {"key": WRITER_LOCK_KEY},
    ).all()
    if not rows:
        return "another session"
    app, addr, pid = rows[0]
    return f"{app or 'a client'} (server backend {pid}, from {addr or 'local socket'})"


def lock_writes(conn, *, timeout: float, where: str) -> None:
    """Take the writers' transaction-level advisory lock on ``conn`` (in its open transaction), waiting up
    to ``timeout`` seconds; then DatabaseBusyError naming ``where`` and the session holding it."""
    from sqlalchemy.exc import OperationalError

    ms = max(1, int(timeout * 1000))
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})")
    except OperationalError as exc:
        if getattr(getattr(exc, "orig", None), "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise DatabaseBusyError(
            f"{where}: another process is writing to this database ({_holder(conn)}). "
            "Wait for it to finish, or stop it, then retry"
        ) from None
    conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
