"""The writer lock: one writing process per database directory (fcntl lock on ``write.lock``).

Readers never take it (SQLite WAL lets them read during a write). The holder writes its pid, host and
command into the file so a waiting writer can name it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import DatabaseBusyError, StoreError

__all__ = ["WriterLock", "ReadOnlyError"]


class ReadOnlyError(StoreError):
    """The database folder cannot be written (permissions or a read-only mount): readers still work."""


class WriterLock:
    """Re-entrant (within one object) exclusive lock on ``<db>/write.lock``."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown process"
        except OSError:
            return "unknown process"

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        import fcntl

        if self._fd is not None:
            self._depth += 1
            return True
        if self.path.exists() and not self.path.is_file():
            raise StoreError(
                f"{self.path}: is not a file. om3db keeps its writer lock there: remove it (nothing is lost)"
            )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ReadOnlyError(
                    f"{self.path.parent}: the database is read-only here ({exc.strerror}): it can be searched but "
                    "not written. Write into a copy, or make the folder writable"
                ) from exc
            raise StoreError(f"{self.path}: cannot open the writer lock ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)[:200]})".encode())
        self._fd = fd
        self._depth = 1
        return True

    def acquire(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds (default: the lock's timeout), then raise DatabaseBusyError."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise DatabaseBusyError(
                    f"{self.path.parent}: another process is writing to this database ({self.holder()}). "
                    "Wait for it to finish, or stop it, then retry"
                )
            time.sleep(0.05)

    def release(self) -> None:
        import fcntl

        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
