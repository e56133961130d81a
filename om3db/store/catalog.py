"""``Store``: the only code that writes SQLite rows and FAISS files.

Write protocol for one scan (crash-safe at every point):
1. one SQLite transaction: delete the scan's old rows, insert scan / instances / views / vectors,
   bump the generation of every touched vector space, flip the scan's status to 'ready', commit;
2. then update the in-memory FAISS indexes and persist each one: a small change is appended to the
   index's change log (``indexlog``: ids removed, ids and float16 vectors added, per generation step,
   fsynced), a large one (or a new index kind / IVF training) rewrites the index file atomically (temp
   file + os.replace) with the generation it reflects in its header and deletes the log.
With deferred saves (``save=False``) the adds of (2) run on a worker thread, overlapping the next scan's
(1), and are settled before any use of an index.
A crash before (1) commits leaves nothing; a crash between (1) and (2) leaves an index file + log whose
generation is behind SQLite's, which ``open`` detects and repairs by rebuilding from SQLite. A torn log
record (a crash mid-append) is ignored, so the same holds.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EncoderMismatchError, NotFoundError, StoreError
from ..records import EncoderIdentity, IngestResult
from .check import StoreCheck
from .indexlog import Step
from .lock import ReadOnlyError, WriterLock
from .pglock import PgWriterLock, lock_writes
from .reads import StoreReads
from .relations import StoreRelations, write_relations
from .spaceindex import AddWorker, SpaceIndex, apply_step
from .vectors import DEFAULT_IVF_THRESHOLD, VectorIndex
from .writer import pack_indices, pack_scan, unpack_indices, view_owner, write_rows_core, write_rows_sqlite

__all__ = ["Store", "LEVELS", "CHECKPOINT_HOOKS", "pack_indices", "unpack_indices"]

LEVELS = ("instance", "view")
CHECKPOINT_HOOKS: list[Callable[[str], None]] = []
"""Called with a stage name ("rows_written", "committed", "index_saved") during a scan write: lets the
crash tests stop a real process at a precise point. Empty in normal use."""


def _checkpoint(stage: str) -> None:
    for hook in CHECKPOINT_HOOKS:
        hook(stage)


@functools.cache
def _bump_statements():
    """Built once (statement construction cost more than running it): bump the generation of the
    spaces ``:ids``, the same returning the rows, and read the rows."""
    from sqlalchemy import bindparam, select, update

    from .models import SpaceRow

    table = SpaceRow.__table__
    ids = table.c.id.in_(bindparam("ids", expanding=True))
    bump = update(table).where(ids).values(generation=table.c.generation + 1)
    return bump, bump.returning(*table.c), select(table).where(ids)


@functools.cache
def _scan_statements():
    """Built once: find a scan's id by ``:name``; insert a scan row."""
    from sqlalchemy import bindparam, insert, select

    from .models import ScanRow

    table = ScanRow.__table__
    return select(table.c.id).where(table.c.name == bindparam("name")), insert(table)


def _mode_message(root, kept: bool, keep: bool) -> str:
    have = "keeps per-view vectors" if kept else "stores instance vectors only"
    return (
        f"{root}: this database {have} (IngestConfig.view_vectors={kept}), this ingest uses "
        f"view_vectors={keep}. The choice is per database: ingest with view_vectors={kept}, or into another database"
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sql_failures() -> tuple:
    from sqlalchemy.exc import DBAPIError

    return (DBAPIError, OSError)


def _database_error(exc: Exception, where) -> Exception:
    """SQLAlchemy's errors on open as one StoreError naming the database (om3db errors pass through)."""
    from sqlalchemy.exc import DatabaseError, OperationalError

    if not isinstance(exc, (DatabaseError, OperationalError)):
        return exc
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    if "readonly" in detail or "unable to open" in detail:
        return StoreError(f"{where}: cannot open the database ({detail}). Check the folder's permissions")
    return StoreError(
        f"{where}: not a readable om3db database ({detail}): the file is damaged or not a database. "
        "Restore it from a backup, or move it away and re-ingest the scans into a new one"
    )


def identity_matches(stored: EncoderIdentity, other: EncoderIdentity) -> bool:
    """Same weights and recipe. A content hash revision is authoritative over the path it was loaded from."""
    same = (stored.revision, stored.dim, stored.normalization, stored.preprocessing) == (
        other.revision,
        other.dim,
        other.normalization,
        other.preprocessing,
    )
    if not stored.revision.startswith("sha256:"):
        same = same and stored.model_id == other.model_id
    return same


_pins = threading.local()
"""Per thread: Store id -> its vector-space rows, inside ``Store.pinned_spaces``."""


class Store(StoreReads, StoreCheck, StoreRelations):
    """A database directory: ``om3db.sqlite`` (or ``url``), ``indexes/*.faiss`` and ``write.lock``."""

    def __init__(
        self,
        root: str | Path,
        *,
        url: str | None = None,
        create: bool = True,
        lock_timeout: float = 10.0,
        ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
        use_gpu: bool | None = None,
        log_fraction: float = 0.25,
        raw_sqlite: bool = True,
        repair: bool = True,
    ) -> None:
        """root: the database folder; url: a SQLAlchemy URL for the metadata (default: SQLite in root).
        create: make the folder and schema when missing (False: NotFoundError).
        lock_timeout: seconds a writer waits for another writer before DatabaseBusyError.
        ivf_threshold: vectors per space past which IVF replaces exact search.
        use_gpu: FAISS on GPU (None: when one is present).
        log_fraction: a write is appended to an index's change log while the log stays under this
        fraction of the index file's size; past it the file is rewritten and the log dropped.
        raw_sqlite: on SQLite, insert rows through the DBAPI cursor (False: the portable SQLAlchemy Core
        path, what other databases use; kept selectable so tests compare the two).
        repair: on open, rebuild index files that are missing, damaged or behind SQLite (False: leave
        them, e.g. to report them with ``check()``; searches then rebuild them in memory).
        """
        from .schema import check_schema, make_engine, probe_url

        probe_url(url)  # PostgreSQL: a server that does not answer, or refuses the login, before any folder is made
        self.root = Path(root)
        if not self.root.exists():
            if not create:
                raise NotFoundError(f"{self.root}: no om3db database here. Create one by ingesting scans into it")
            try:
                self.root.mkdir(parents=True)
            except OSError as exc:
                raise StoreError(f"{self.root}: cannot create the database folder ({exc.strerror})") from exc
        elif not self.root.is_dir():
            raise StoreError(f"{self.root}: is a file, not a database folder. Give the database's folder")
        from .schema import is_postgres_url, redact_url

        self.postgres = is_postgres_url(url)
        """PostgreSQL metadata: writers take the server's advisory lock per transaction (``pglock``), the
        folder is this machine's FAISS cache and its file lock is held only while index files are written."""
        self.where = redact_url(url) if self.postgres else str(self.root)
        """How messages name the database: its folder, or (PostgreSQL) its URL without the password."""
        self.lock = (
            PgWriterLock(self.root / "write.lock", self.where, timeout=lock_timeout)
            if self.postgres
            else WriterLock(self.root / "write.lock", timeout=lock_timeout)
        )
        try:
            writer = self.lock.try_acquire()
            self.read_only = False
        except ReadOnlyError:  # a read-only folder or mount: a normal deployment for readers
            writer, self.read_only = False, True
        sqlite = self.root / "om3db.sqlite"
        if url is None and sqlite.is_file() and sqlite.stat().st_size == 0:
            self.lock.release()
            raise StoreError(
                f"{sqlite}: the database file is empty (0 bytes), so it holds no scans: damaged or truncated? "
                "Restore it from a backup, or move it away to start a new database"
            )
        if url is None and sqlite.is_file() and _foreign_tables(sqlite):
            self.lock.release()
            raise StoreError(f"{self.where}: holds tables that are not an om3db database. Use another folder")
        if not self.read_only:
            try:
                (self.root / "indexes").mkdir(exist_ok=True)
            except OSError as exc:
                self.lock.release()
                raise StoreError(f"{self.root / 'indexes'}: cannot create the index folder ({exc.strerror})") from exc
        self.url = url or f"sqlite:///{sqlite.resolve()}"
        self.engine = make_engine(self.url, read_only=self.read_only)
        self.ivf_threshold = ivf_threshold
        self.use_gpu = use_gpu
        self.log_fraction = log_fraction
        self.raw_sqlite = raw_sqlite
        self._spaces: dict[tuple[str, str], SpaceIndex] = {}
        """This process's view of each space's FAISS index (made on first use)."""
        self._worker = AddWorker()
        self.rebuilt: list[str] = []
        """Spaces whose index was rebuilt from SQLite on open (missing, stale or damaged files)."""
        try:
            if not writer:  # another process writes (or the folder is read-only): indexes load lazily
                check_schema(self.engine, self.where, create=False)
            else:
                try:
                    check_schema(self.engine, self.where, create=create)
                    self.rebuilt = self.repair() if repair else []
                finally:
                    self.lock.release()
        except Exception as exc:
            self.engine.dispose()
            raise _database_error(exc, sqlite if url is None else self.where) from exc

    def session(self):
        from sqlalchemy.orm import Session

        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self._settle()
        self._worker.shutdown()
        if any(sp.dirty or sp.reshape for sp in self._spaces.values()):
            with self.lock:
                self.flush()
        self._spaces.clear()
        self.lock.release()
        self.engine.dispose()

    # -- vector spaces ----------------------------------------------------------------------

    def index_path(self, name: str, level: str) -> Path:
        return self.root / "indexes" / f"{name}.{level}.faiss"

    def spaces(self) -> list:
        from sqlalchemy import select

        from .models import SpaceRow

        pinned = getattr(_pins, "spaces", {}).get(id(self))
        if pinned is not None:
            return pinned
        # plain rows (read-only attributes), not ORM objects: every search reads them to see the
        # space's generation, and an ORM session cost ~1.5 ms a call (docs/benchmarks.md, relations)
        table = SpaceRow.__table__
        with self.engine.connect() as conn:
            return list(conn.execute(select(table).order_by(table.c.name, table.c.level)))

    @contextmanager
    def pinned_spaces(self):
        """Within this block, this thread reads the vector spaces' rows (their generations) once: the many
        searches of one relational query see one state of every index instead of re-reading it per search.
        Other threads (a writer among them) are not affected."""
        pins = _pins.__dict__.setdefault("spaces", {})
        if id(self) in pins:  # nested: the outer block's state
            yield
            return
        pins[id(self)] = self.spaces()
        try:
            yield
        finally:
            del pins[id(self)]

    def space(self, name: str, level: str):
        rows = self.spaces()
        for row in rows:
            if row.name == name and row.level == level:
                return row
        if level == "view" and any(r.name == name for r in rows):
            raise ConfigError(
                f"{self.root}: stores instance vectors only (ingested with IngestConfig.view_vectors=False), so "
                f"the {name!r} space cannot serve aggregation='max'. Use aggregation='mean', or ingest into another "
                "database with view_vectors=True"
            )
        known = sorted({r.name for r in rows})
        raise NotFoundError(
            f"{self.root}: no {level}-level vector space {name!r} (spaces here: {', '.join(known) or 'none'}). "
            "Ingest scans with that encoder first"
        )

    @staticmethod
    def identity_of(row) -> EncoderIdentity:
        return EncoderIdentity(row.model_id, row.revision, row.dim, row.normalization, row.preprocessing)

    def stored_vectors(
        self, space_row, *, instance_ids: Iterable[int] | None = None, dtype=np.float32
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) vectors and (N,) int64 FAISS ids of a space, from SQLite (ready scans only).

        instance_ids: only these instances' vectors (view spaces: their inlier views). Only the blocks
        of the scans holding them are read. dtype: float32, or float16 for the stored values as they are.
        """
        from sqlalchemy import select

        from .models import InstanceRow, ScanRow, VectorBlock

        q = (
            select(VectorBlock.ids, VectorBlock.data, VectorBlock.count, ScanRow.name)
            .join(ScanRow, ScanRow.id == VectorBlock.scan_id)
            .where(VectorBlock.space_id == space_row.id, ScanRow.status == "ready")
            .order_by(VectorBlock.id)
        )
        wanted = None
        if instance_ids is not None:
            wanted = np.unique(np.asarray(list(instance_ids), dtype=np.int64))
            scans = select(InstanceRow.scan_id).where(InstanceRow.id.in_(wanted.tolist())).distinct()
            q = q.where(VectorBlock.scan_id.in_(scans))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        for r in rows:
            if len(r[0]) != 8 * r[2] or len(r[1]) != 2 * r[2] * space_row.dim:
                raise StoreError(
                    f"{self.root}: the {space_row.name}.{space_row.level} vectors of scan {r[3]!r} are damaged "
                    f"({len(r[0])} id bytes and {len(r[1])} vector bytes for {r[2]} vectors of dim {space_row.dim}). "
                    f"Re-ingest that scan (or remove it); `om3db check` lists all damage"
                )
        ids = np.frombuffer(b"".join(r[0] for r in rows), dtype="<i8").astype(np.int64)
        vecs = np.frombuffer(bytearray().join(r[1] for r in rows), dtype="<f2").reshape(len(ids), space_row.dim)
        if wanted is not None:
            keep = np.isin(ids if space_row.level == "instance" else view_owner(ids), wanted)
            ids, vecs = ids[keep], vecs[keep]
        return vecs.astype(dtype, copy=False), ids

    def _build(self, space_row) -> tuple[VectorIndex, int]:
        """The space's index built from the database, and the generation it reflects (read before and
        after the vectors until they agree: another writer may commit meanwhile, PostgreSQL writers do
        not wait for a reader)."""
        from sqlalchemy import select

        from .models import SpaceRow

        def generation() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(select(SpaceRow.generation).where(SpaceRow.id == space_row.id)).scalar_one())

        while True:
            before = generation()
            vecs, ids = self.stored_vectors(space_row, dtype=np.float16)
            if generation() == before:
                break
        index = VectorIndex.build(vecs, ids, ivf_threshold=self.ivf_threshold, use_gpu=self.use_gpu, dim=space_row.dim)
        return index, before

    def _writing_files(self):
        """Held while index files are written: on PostgreSQL the cache folder's file lock (other processes
        may share the folder); on SQLite the writer lock already is."""
        import contextlib

        return self.lock.cache if self.postgres else contextlib.nullcontext()

    def _lock_writes(self, s) -> None:
        """PostgreSQL: the writers' transaction-level advisory lock, first thing in a write transaction."""
        if self.postgres:
            lock_writes(s.connection(), timeout=self.lock.timeout, where=self.where)

    def _record_choice(self, space_row, index: VectorIndex) -> None:
        from .models import SpaceRow

        if index.choice.kind == space_row.index_kind and index.choice.params() == (space_row.index_params or {}):
            return  # unchanged: no write (a PostgreSQL reader must not wait on a writer's row lock)
        with self.session() as s, s.begin():
            row = s.get(SpaceRow, space_row.id)
            row.index_kind = index.choice.kind
            row.index_params = index.choice.params()

    def forget_indexes(self) -> None:
        """Drop every in-memory index (after an interrupted write): their next use reloads or rebuilds."""
        for sp in self._spaces.values():
            sp.settle()
            sp.forget()

    def _space_index(self, name: str, level: str) -> SpaceIndex:
        key = (name, level)
        if key not in self._spaces:
            self._spaces[key] = SpaceIndex(name, level, self.index_path(name, level), use_gpu=self.use_gpu)
        return self._spaces[key]

    def _settle(self) -> None:
        """Settle every space's background add; a failure is raised (after forgetting the indexes it
        touched, so their next use rebuilds them from SQLite)."""
        failed = [(sp.label, err) for sp in self._spaces.values() if (err := sp.settle()) is not None]
        if failed:
            names = sorted(label for label, _ in failed)
            raise StoreError(
                f"{self.root}: adding vectors to the in-memory indexes of {names} failed ({failed[0][1]}); "
                "the rows are committed and the indexes will be rebuilt from SQLite"
            ) from failed[0][1]

    def _save(self, space_row, index: VectorIndex, *, now: bool = True, generation: int | None = None) -> None:
        sp = self._space_index(space_row.name, space_row.level)
        sp.hold(index, space_row.generation if generation is None else generation)
        sp.dirty = True
        if now:
            with self._writing_files():
                sp.persist(self.log_fraction)

    def _load(self, space_row, target: int | None = None) -> VectorIndex | None:
        """The space's index at generation ``target`` (default: the row's) from its file + log, or None."""
        sp = self._space_index(space_row.name, space_row.level)
        return sp.load(space_row.generation if target is None else target)

    def _catch_up(self, space_row, target: int) -> VectorIndex | None:
        """This process's held index of the space brought to ``target`` through the log, or None."""
        self._settle()
        return self._space_index(space_row.name, space_row.level).catch_up(target)

    def flush(self) -> None:
        """Save the indexes changed by writes made with ``save=False`` (needs the writer lock).

        Spaces that crossed the exact/IVF threshold or outgrew their IVF training during those writes
        are rebuilt from SQLite here, once, instead of in the middle of a batch of writes.
        """
        self._settle()
        for key in sorted(k for k, sp in self._spaces.items() if sp.reshape):
            sp = self._spaces[key]
            row = self.space(*key)
            index, generation = self._build(row)
            self._record_choice(row, index)
            sp.hold(index, generation)
            sp.reshape = False
            sp.mark_full_save()
            sp.dirty = True
        for key in sorted(k for k, sp in self._spaces.items() if sp.dirty):
            with self._writing_files():
                self._spaces[key].persist(self.log_fraction)

    def repair(self, *, force: bool = False) -> list[str]:
        """Rebuild every index whose file is missing, damaged or behind SQLite (needs the writer lock)."""
        self._settle()
        rebuilt = []
        for row in self.spaces():
            index = None if force else self._load(row)
            if index is not None and index.ntotal != self._count(row):
                index = None
            if index is None:
                index, generation = self._build(row)
                self._record_choice(row, index)
                self._space_index(row.name, row.level).mark_full_save()
                self._save(row, index, generation=generation)
                rebuilt.append(f"{row.name}.{row.level}")
            else:
                self._space_index(row.name, row.level).hold(index, row.generation)
        return rebuilt

    def _count(self, space_row) -> int:
        from sqlalchemy import func, select

        from .models import ScanRow, VectorBlock

        q = select(func.coalesce(func.sum(VectorBlock.count), 0)).join(ScanRow, ScanRow.id == VectorBlock.scan_id)
        q = q.where(VectorBlock.space_id == space_row.id, ScanRow.status == "ready")
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def index(self, name: str, level: str) -> VectorIndex:
        """The current index of a space; reloaded (or rebuilt in memory) when another process changed it."""
        row = self.space(name, level)
        index, generation = self._catch_up(row, row.generation) or self._load(row), row.generation
        if index is None:  # the writer has committed but not saved yet (or crashed): rebuild in memory
            index, generation = self._build(row)
        self._space_index(name, level).hold(index, generation)
        return index

    # -- writes -----------------------------------------------------------------------------

    def views_kept(self) -> bool | None:
        """Whether this database stores per-view vectors (None: nothing ingested yet).

        The choice (``IngestConfig.view_vectors``) is per database, fixed by its first ingest: it is
        recorded by which vector-space rows exist (view-level spaces only when views are kept).
        """
        spaces = self.spaces()
        return any(r.level == "view" for r in spaces) if spaces else None

    def check_view_vectors(self, keep: bool) -> None:
        """Refuse an ingest whose ``view_vectors`` choice differs from this database's."""
        kept = self.views_kept()
        if kept is not None and kept != bool(keep):
            raise ConfigError(_mode_message(self.root, kept, bool(keep)))

    def _ensure_spaces(self, s, encoders: dict[str, EncoderIdentity], keep_views: bool) -> list:
        from sqlalchemy import func, select

        from .models import SpaceRow, VectorBlock

        # the common case, every space there with the same encoder: plain rows, no ORM objects (this runs
        # once per scan, and ORM loading cost as much as writing 40 instances; docs/benchmarks.md)
        existing = {(r.name, r.level): r for r in s.execute(select(SpaceRow.__table__))}
        if existing:
            kept = any(level == "view" for _, level in existing)
            if kept != keep_views:
                raise ConfigError(_mode_message(self.root, kept, keep_views))
        wanted = [(name, level) for name in sorted(encoders) for level in (LEVELS if keep_views else ("instance",))]
        if all(k in existing and identity_matches(self.identity_of(existing[k]), encoders[k[0]]) for k in wanted):
            return [existing[k] for k in wanted]
        existing = {(r.name, r.level): r for r in s.scalars(select(SpaceRow))}
        rows = []
        for name, level in wanted:
            ident = encoders[name]
            row = existing.get((name, level))
            if row is None:
                row = SpaceRow(
                    name=name,
                    level=level,
                    model_id=ident.model_id,
                    revision=ident.revision,
                    dim=ident.dim,
                    normalization=ident.normalization,
                    preprocessing=ident.preprocessing,
                    index_kind="flat",
                    index_params={},
                    generation=0,
                )
                s.add(row)
                s.flush()
            elif not identity_matches(self.identity_of(row), ident):
                used = s.scalar(select(func.count(VectorBlock.id)).where(VectorBlock.space_id == row.id))
                if used:
                    raise EncoderMismatchError(
                        f"{self.root}: the {name!r} space was built with {self.identity_of(row).describe()}, "
                        f"this ingest uses {ident.describe()}. Ingest with the same encoder, or into another database"
                    )
                row.model_id, row.revision, row.dim = ident.model_id, ident.revision, ident.dim
                row.normalization, row.preprocessing = ident.normalization, ident.preprocessing
            rows.append(row)
        return rows

    def _delete_scan_rows(self, s, scan_id: int) -> dict[int, np.ndarray]:
        """Delete a scan (cascades); returns space id -> the FAISS ids that left that space."""
        from sqlalchemy import delete, select

        from .models import ScanRow, VectorBlock

        parts: dict[int, list[bytes]] = {}
        for space_id, ids in s.execute(
            select(VectorBlock.space_id, VectorBlock.ids).where(VectorBlock.scan_id == scan_id)
        ):
            parts.setdefault(space_id, []).append(ids)
        s.execute(delete(ScanRow).where(ScanRow.id == scan_id))
        return {k: np.frombuffer(b"".join(v), dtype="<i8").astype(np.int64) for k, v in parts.items()}

    def _bump(self, s, space_ids) -> list:
        """Bump the generation of these spaces; returns their rows as they are after the bump."""
        if not space_ids:
            return []
        bump, bump_returning, read = _bump_statements()
        ids = {"ids": sorted(space_ids)}
        if s.get_bind().dialect.update_returning:  # SQLite >= 3.35, PostgreSQL: one statement
            rows = s.execute(bump_returning, ids).all()
        else:
            s.execute(bump, ids)
            rows = s.execute(read, ids).all()
        return sorted(rows, key=lambda r: (r.name, r.level))

    def write_scan(self, result: IngestResult, *, settings: dict, save: bool = True) -> int:
        """Replace (or add) one scan atomically; returns its scan id. Takes the writer lock.

        save: write the changed FAISS files now; False defers that to ``flush()`` (batch ingests) and
        runs the FAISS adds on a worker thread while the caller goes on (settled before the next use of
        any index). Either way SQLite is committed first, so a crash before the save only costs a
        rebuild on the next open.

        Whether per-view vectors are stored follows ``result.settings["view_vectors"]`` (default True);
        it must match the database's choice (:meth:`views_kept`).
        """
        keep_views = bool(result.settings.get("view_vectors", True))
        batch = pack_scan(result, keep_views)  # validated and encoded before any transaction
        with self.lock:
            try:
                with self.session() as s, s.begin():
                    self._lock_writes(s)
                    spaces = self._ensure_spaces(s, result.encoders, keep_views)
                    find_scan, insert_scan = _scan_statements()
                    old = s.execute(find_scan, {"name": result.scan}).scalar()
                    gone = self._delete_scan_rows(s, old) if old is not None else {}
                    # written 'ready': the scan's rows become visible to readers only with the commit
                    scan_id = s.execute(
                        insert_scan,
                        {
                            "name": result.scan,
                            "path": str(result.scan_path),
                            "fingerprint": result.fingerprint,
                            "frame_count": int(result.frame_count),
                            "num_points": int(result.num_points),
                            "settings": settings,
                            "status": "ready",
                        },
                    ).inserted_primary_key[0]
                    conn = s.connection()
                    raw = self.raw_sqlite and conn.dialect.name == "sqlite"
                    added = (write_rows_sqlite if raw else write_rows_core)(conn, scan_id, batch, spaces)
                    if getattr(result, "relations", None) is not None:  # same transaction as the scan
                        write_relations(conn, scan_id, result.relations)
                    touched = self._bump(s, {r.id for r in spaces} | set(gone))
                    _checkpoint("rows_written")
            except Exception as exc:  # disk full, I/O error, lost server: nothing of this scan is committed
                if not isinstance(exc, _sql_failures()):
                    raise
                raise StoreError(
                    f"{self.where}: writing scan {result.scan!r} failed ({_first_line(exc)}). Nothing of it was "
                    "committed (scans written before it are); fix the cause (e.g. free disk space) and run the "
                    "same ingest again to resume"
                ) from exc
            _checkpoint("committed")
            try:
                self._apply(touched, gone, added, save=save)
            except OSError as exc:  # e.g. disk full while saving an index file: SQLite holds the scan
                self.forget_indexes()
                raise StoreError(
                    f"{self.where}: scan {result.scan!r} is committed, but saving its vector index failed "
                    f"({exc.strerror or exc}). The index is rebuilt from the database on the next open; free disk "
                    "space first"
                ) from exc
            if save:
                _checkpoint("index_saved")
            return int(scan_id)

    def _apply(self, touched: list, gone: dict, added: dict, *, save: bool = True) -> None:
        """After a commit: bring the touched spaces' indexes (rows as committed) up to date and save them.

        With ``save=False`` the adds run on the worker thread (submitted after every space is handled, so
        they overlap what the caller does next) and are settled before the next use of any index;
        removals and everything else happen here."""
        self._settle()
        later = []
        for row in touched:
            sp = self._space_index(row.name, row.level)
            generation = row.generation  # a rebuild may see later commits (PostgreSQL writers)
            # the index as it was before this write: held, or caught up through the log with another
            # writer's changes, or loaded from file + log
            index = self._catch_up(row, row.generation - 1) or self._load(row, row.generation - 1)
            if index is None:
                index, generation = self._build(row)  # nothing on disk continues to this write: rebuild
                sp.mark_full_save()
            else:
                removed = np.asarray(gone.get(row.id, ()), dtype=np.int64)
                none_added = (np.zeros(0, np.int64), np.zeros((0, index.dim), np.float16))
                added_ids, added_vecs = added.get(row.id, none_added)
                step = Step(row.generation - 1, row.generation, removed, added_ids, added_vecs)
                if save:
                    apply_step(index, step)
                else:  # the add goes to the worker thread
                    index.remove(step.removed)
                    if len(added_ids):
                        later.append((sp, added_vecs, added_ids))
                sp.note_step(step)
                if self._needs_new_kind(index, index.ntotal + (0 if save else len(added_ids))):
                    if save:
                        index, generation = self._build(row)
                        sp.mark_full_save()
                    else:  # deferred writes: rebuild once, at flush()
                        sp.reshape = True
            if index.choice.kind != row.index_kind or index.choice.params() != (row.index_params or {}):
                self._record_choice(row, index)
            self._save(row, index, now=save, generation=generation)
        for sp, vectors, ids in later:
            sp.add_later(self._worker, vectors, ids)

    def _needs_new_kind(self, index: VectorIndex, n: int) -> bool:
        if index.choice.kind == "flat":
            return n >= self.ivf_threshold
        return n < self.ivf_threshold // 2 or n > 4 * max(index.choice.trained_on, 1)

    def remove_scan(self, name: str) -> int:
        """Delete a scan, its instances and vectors; returns the number of instances removed."""
        from sqlalchemy import func, select

        from .models import InstanceRow, ScanRow

        with self.lock:
            with self.session() as s, s.begin():
                self._lock_writes(s)
                row = s.scalars(select(ScanRow).where(ScanRow.name == name)).first()
                if row is None:
                    raise NotFoundError(
                        f"{self.root}: no scan named {name!r}. The scans it holds: {self.scan_list_text()}"
                    )
                count = s.scalar(select(func.count(InstanceRow.id)).where(InstanceRow.scan_id == row.id))
                gone = self._delete_scan_rows(s, row.id)
                touched = self._bump(s, set(gone))
            self._apply(touched, gone, {})
            return int(count)

    def reindex(self) -> list[str]:
        """Rebuild every FAISS index from SQLite (and re-choose flat / IVF); returns the spaces rebuilt."""
        with self.lock:
            return self.repair(force=True)


def upgrade_database(root: str | Path, *, url: str | None = None, lock_timeout: float = 10.0) -> tuple[str | None, str]:
    """Run the shipped migrations on a database folder (under the writer lock); returns (revision
    before, revision after).

    Refused before any change: a database with tables but no om3db schema revision (another program's
    database, or one whose revision record was lost), and a revision this om3db does not know (a newer
    om3db's). A migration that fails is rolled back and raised as StoreError naming the database."""
    import contextlib

    from .schema import head_revision, is_postgres_url, make_engine, probe_url, redact_url

    probe_url(url)
    root = Path(root)
    sqlite = root / "om3db.sqlite"
    if url is None and not sqlite.exists():
        raise NotFoundError(f"{root}: no om3db database here (no om3db.sqlite)")
    where = redact_url(url) if url is not None else str(root)
    engine = make_engine(url or f"sqlite:///{sqlite.resolve()}")
    try:
        # PostgreSQL: migrations take the server's advisory lock (schema.MIGRATION_LOCK_KEY) instead
        pg = url is not None and is_postgres_url(url)
        with contextlib.nullcontext() if pg else WriterLock(root / "write.lock", timeout=lock_timeout):
            try:
                reader = engine if url is not None else _plain_sqlite(sqlite)
                try:
                    before = _check_upgradable(reader, where)
                finally:
                    if reader is not engine:
                        reader.dispose()
                _migrate(engine, where, before)
            except Exception as exc:
                error = _database_error(exc, sqlite if url is None else where)
                if error is exc:
                    raise
                raise error from exc
        return before, head_revision()
    finally:
        engine.dispose()


def _foreign_tables(path: Path) -> bool:
    """True when the SQLite file holds tables but no om3db schema record: looked at read-only, before
    om3db's engine would switch the file to WAL mode. A file that cannot be read says False here (the
    engine's own open then names the damage)."""
    from sqlalchemy import inspect

    engine = _plain_sqlite(path)
    try:
        names = inspect(engine).get_table_names()
    except Exception:  # noqa: BLE001 - damage is reported by the normal open, with its repair
        return False
    finally:
        engine.dispose()
    return bool(names) and "alembic_version" not in names


def _plain_sqlite(path: Path):
    """An engine that reads a SQLite file without changing it: none of om3db's per-connection settings (WAL
    journal mode is a property of the file), so a file that is not om3db's is left exactly as it was."""
    from sqlalchemy import create_engine

    return create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")


def _check_upgradable(engine, where: str) -> str:
    """The guards of ``schema.check_schema`` for an upgrade: refuse what is not an om3db database at a
    revision this om3db knows; returns its revision."""
    from sqlalchemy import inspect

    from .schema import current_revision, known_revisions, newer_error

    revision = current_revision(engine)
    if revision is None:
        tables = set(inspect(engine).get_table_names())
        if "alembic_version" in tables:
            raise StoreError(
                f"{where}: the database records no schema revision (its alembic_version table is empty), so "
                "which migrations it needs is unknown. Nothing was changed. Restore the database from a backup, "
                "or re-ingest the scans into a new one"
            )
        if tables:
            raise StoreError(
                f"{where}: holds tables that are not an om3db database ({', '.join(sorted(tables)[:5])}). "
                "Nothing was changed. Give an om3db database"
            )
        raise NotFoundError(f"{where}: no om3db database here (no om3db tables). Create one by ingesting scans into it")
    if revision not in known_revisions():
        raise newer_error(where, revision)
    return revision


def _migrate(engine, where: str, before: str) -> None:
    """Run the migrations; a failure (the tables do not match the recorded revision, a lost connection)
    becomes a StoreError saying whether the rollback left the database as it was."""
    from .schema import current_revision, upgrade

    try:
        upgrade(engine)
    except Exception as exc:  # noqa: BLE001 - re-raised below as a StoreError naming the database
        if isinstance(exc, StoreError):
            raise
        try:
            after = current_revision(engine)
        except Exception:  # noqa: BLE001 - the connection itself is gone: say so instead
            after = "unknown"
        state = (
            f"Nothing was changed (the database is still at revision {before})"
            if after == before
            else f"The database now records revision {after}"
        )
        raise StoreError(
            f"{where}: upgrading the schema from revision {before} failed ({_first_line(exc)}): its tables do not "
            f"match what revision {before} should hold, or the connection failed. {state}. If the connection "
            "failed, run the upgrade again; else restore the database from a backup, or re-ingest the scans into a "
            "new one"
        ) from exc
