"""Append-only change log beside a saved FAISS index: small writes cost bytes in proportion to the change.

A saved index file holds a space at some generation G. Rewriting the whole file after every ingest would
cost bytes in proportion to the database (at 1M instances with per-view vectors, tens of GB per ingest), so
a write that changes a space by a small fraction instead appends one record per generation step to
``<index file>.log``: the FAISS ids removed, then the ids and float16 vectors added. Opening the space
loads the file and replays the records that continue its generation (G -> G+1 -> ...). The store rewrites
the file and deletes the log once the log outgrows a fraction of the file (``Store.log_fraction``), and
whenever the index kind or IVF training changes.

Record: an 8-byte magic, then little-endian u64 from-generation, u64 to-generation, u64 removed count,
u64 added count, u32 vector dim, u32 CRC-32 of the payload, then the payload: removed ids (int64), added
ids (int64), added vectors (float16, added x dim). Every append is fsynced before the store reports the
write saved, so only the last record can be torn (a crash mid-append); readers stop at the first record
that is short or fails its CRC, and the next writer truncates the log there before appending.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Step", "append_steps", "read_steps", "log_path"]

_MAGIC = b"OM3DLOG1"
_HEAD = struct.Struct("<8sQQQQII")


@dataclass(frozen=True)
class Step:
    """One generation step of a space: ids removed, then ids and vectors added."""

    from_generation: int
    to_generation: int
    removed: np.ndarray
    """(R,) int64 FAISS ids."""
    added_ids: np.ndarray
    """(A,) int64 FAISS ids."""
    added: np.ndarray
    """(A, D) float16 vectors, as stored in SQLite."""

    def nbytes(self) -> int:
        return _HEAD.size + 8 * (len(self.removed) + len(self.added_ids)) + self.added.nbytes


def log_path(index_path: str | Path) -> Path:
    path = Path(index_path)
    return path.with_name(path.name + ".log")


def _encode(step: Step, dim: int) -> bytes:
    removed = np.ascontiguousarray(step.removed, dtype="<i8")
    ids = np.ascontiguousarray(step.added_ids, dtype="<i8")
    vecs = np.ascontiguousarray(step.added, dtype="<f2").reshape(len(ids), dim)
    payload = removed.tobytes() + ids.tobytes() + vecs.tobytes()
    head = _HEAD.pack(
        _MAGIC, step.from_generation, step.to_generation, len(removed), len(ids), dim, zlib.crc32(payload)
    )
    return head + payload


def read_steps(path: str | Path, dim: int) -> tuple[list[Step], int]:
    """The complete records of a log, in order, and the byte offset where they end (0: no log)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    steps, at = [], 0
    while at + _HEAD.size <= len(data):
        magic, g0, g1, nrem, nadd, d, crc = _HEAD.unpack_from(data, at)
        size = 8 * (nrem + nadd) + 2 * nadd * d
        end = at + _HEAD.size + size
        if magic != _MAGIC or d != dim or end > len(data):
            break
        payload = memoryview(data)[at + _HEAD.size : end]
        if zlib.crc32(payload) != crc:
            break
        removed = np.frombuffer(payload, dtype="<i8", count=nrem).astype(np.int64)
        ids = np.frombuffer(payload, dtype="<i8", count=nadd, offset=8 * nrem).astype(np.int64)
        vecs = np.frombuffer(payload, dtype="<f2", count=nadd * d, offset=8 * (nrem + nadd)).reshape(nadd, d)
        steps.append(Step(int(g0), int(g1), removed, ids, vecs))
        at = end
    return steps, at


def append_steps(path: str | Path, steps: list[Step], dim: int, *, at: int) -> int:
    """Write ``steps`` at byte ``at`` (the end of the log's complete records, dropping any torn tail) and
    fsync; returns the new end."""
    blob = b"".join(_encode(s, dim) for s in steps)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, at)
        os.lseek(fd, at, os.SEEK_SET)
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return at + len(blob)
