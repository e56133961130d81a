"""``SpaceIndex``: one vector space's FAISS index as this process holds it.

The store keeps one per (space, level). Each owns what used to be five parallel dicts: the in-memory
index and the generation it reflects, whether it must be saved, whether its kind (exact / IVF) is due
for a rebuild, the generation steps not persisted yet, what this process knows is on disk (index file
+ change log), and the background add in flight on the worker thread.

Generations: every SQLite transaction that changes a space's vectors bumps the space row's generation;
the index file records the generation it reflects in its header and its change log (``indexlog``) holds
the steps after it. ``load`` / ``catch_up`` bring an index to a wanted generation or say they cannot
(None), in which case the store rebuilds it from SQLite.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .indexlog import Step, append_steps, log_path, read_steps
from .vectors import VectorIndex

__all__ = ["SpaceIndex", "AddWorker", "apply_step", "replay"]


def _faiss_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


class AddWorker:
    """The one thread that runs deferred FAISS adds (FAISS releases the GIL, so an IVF's list assignment
    overlaps the next scan's encoding and SQLite transaction; docs/benchmarks.md). One OpenMP thread on
    it (a per-thread setting): the other core runs the writer. Made on first use, again in a forked
    child (which inherits no threads)."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._executor = None

    def submit(self, fn) -> Future:
        if self._executor is None or self._pid != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            self._pid = os.getpid()
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="om3db-faiss-add", initializer=_faiss_threads, initargs=(1,)
            )
        return self._executor.submit(fn)

    def shutdown(self) -> None:
        if self._executor is not None and self._pid == os.getpid():
            self._executor.shutdown()
        self._executor = None


def apply_step(index: VectorIndex, step: Step) -> None:
    index.remove(step.removed)
    if len(step.added_ids):
        index.add(step.added, step.added_ids)


def replay(index: VectorIndex, steps: list[Step], generation: int, target: int) -> int:
    """Apply the steps that continue ``generation`` up to ``target``; returns the generation reached."""
    for step in steps:
        if generation >= target:
            break
        if step.from_generation == generation:
            apply_step(index, step)
            generation = step.to_generation
        elif step.to_generation > generation:
            break  # a gap: the log does not continue this generation
    return generation


class SpaceIndex:
    """One space's index in this process: load, catch up, note steps, persist, deferred adds."""

    def __init__(self, name: str, level: str, path: Path, *, use_gpu: bool | None) -> None:
        self.name, self.level, self.path = name, level, path
        self.use_gpu = use_gpu
        self.index: VectorIndex | None = None
        self.generation = -1
        """The generation ``index`` reflects (meaningful only when ``index`` is set)."""
        self.dirty = False
        """The in-memory index is ahead of the file + log."""
        self.reshape = False
        """Its kind (exact / IVF) or IVF training is due for a rebuild at the next ``Store.flush()``."""
        self._steps: list[Step] | None = None
        self._full_save = False
        """A whole-file save is due (the index was rebuilt), whatever steps are noted."""
        self._disk: tuple[int, int, int] | None = None
        """(index file generation, end of the log's complete records, generation file + log reach)."""
        self._pending: tuple[int, Future] | None = None
        """(pid, Future) of this space's background add, settled before any use of the index."""

    @property
    def label(self) -> str:
        return f"{self.name}.{self.level}"

    def hold(self, index: VectorIndex, generation: int) -> None:
        self.index, self.generation = index, generation

    def forget(self) -> None:
        """Drop everything this process believed about the index (its next use reloads or rebuilds it)."""
        self.index, self.generation = None, -1
        self.dirty = self.reshape = self._full_save = False
        self._steps = None
        self._disk = None

    # -- deferred adds ------------------------------------------------------------------------

    def add_later(self, worker: AddWorker, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add to the held index on the worker thread (call :meth:`settle` first); settled before the next use."""
        index = self.index
        self._pending = (os.getpid(), worker.submit(lambda: index.add(vectors, ids)))

    def settle(self) -> Exception | None:
        """Wait for this space's background add. If it failed (or this is a forked child, whose copy of
        the index the add may or may not have reached), forget the index: SQLite holds the rows, so its
        next use rebuilds it. Returns the failure (the store reports it), else None."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pid, future = pending
        if pid == os.getpid():
            try:
                future.result()
                return None
            except Exception as exc:  # noqa: BLE001 - returned, reported by the store as a StoreError
                self.forget()
                return exc
        self.forget()
        return None

    # -- disk -----------------------------------------------------------------------------------

    def load(self, target: int) -> VectorIndex | None:
        """The index at generation ``target`` from its file + log (not kept: see :meth:`hold`), or None."""
        head = VectorIndex.read_header(self.path)
        base = None if head is None else head.get("generation")
        if base is None or base > target:  # no header, or no generation in it: damaged, rebuilt from SQLite
            return None
        try:
            index, _ = VectorIndex.load(self.path, use_gpu=self.use_gpu)
        except StoreError:
            return None
        steps, end = read_steps(log_path(self.path), index.dim)
        reached = replay(index, steps, base, target)
        if reached != target:
            return None
        self._know_disk(base, steps, end, reached)
        return index

    def catch_up(self, target: int) -> VectorIndex | None:
        """The held index brought to ``target`` through the log (another writer's changes), or None.
        The caller has settled the background add."""
        if self.index is None or self.generation > target:
            return None
        if self.generation == target:
            return self.index
        steps, end = read_steps(log_path(self.path), self.index.dim)
        if replay(self.index, steps, self.generation, target) != target:
            self.index, self.generation = None, -1  # partly replayed: no longer at any known generation
            return None
        self.generation = target
        head = VectorIndex.read_header(self.path)
        if head is None:
            self._disk = None
        else:
            self._know_disk(int(head.get("generation", -1)), steps, end, target)
        return self.index

    def _know_disk(self, base_generation: int, steps: list[Step], end: int, reached: int) -> None:
        """Record the disk state when file + log end exactly at ``reached`` (else forget it: the next
        persist rewrites the file rather than append after records this process has not applied)."""
        last = steps[-1].to_generation if steps else base_generation
        self._disk = (base_generation, end, reached) if last == reached else None

    def note_step(self, step: Step) -> None:
        if self._full_save:
            return
        if self._steps is None:
            self._steps = []
        self._steps.append(step)

    def mark_full_save(self) -> None:
        self._full_save, self._steps = True, None

    def persist(self, log_fraction: float) -> None:
        """Bring the file + log to the held index: append the pending steps to the log when they continue
        what is on disk and keep the log under ``log_fraction`` of the file's size, else rewrite the file
        (atomically)."""
        index, generation = self.index, self.generation
        steps = None if self._full_save else self._steps
        self._steps, self._full_save, self.dirty = None, False, False
        disk = self._disk
        if steps is not None and disk is not None and disk[2] == generation and not steps:
            return  # nothing changed since the disk state
        head = VectorIndex.read_header(self.path)
        if steps and disk is not None and steps[0].from_generation == disk[2] and steps[-1].to_generation == generation:
            base_gen, end, _ = disk
            log = log_path(self.path)
            size = log.stat().st_size if log.exists() else 0
            grow = sum(s.nbytes() for s in steps)
            if (
                head is not None
                and head.get("generation") == base_gen
                and size >= end
                and end + grow <= log_fraction * self.path.stat().st_size
            ):
                end = append_steps(log, steps, index.dim, at=end)
                self._disk = (base_gen, end, generation)
                return
        if head is not None and head.get("generation", -1) > generation:
            # another writer has saved a newer state since this process's writes: keep it, drop ours
            self._disk = None
            self.index, self.generation = None, -1
            return
        index.save(self.path, {"generation": generation})
        log_path(self.path).unlink(missing_ok=True)
        self._disk = (generation, 0, generation)
