"""``Store``: the only code that writes SQLite rows and FAISS files.

Write protocol for one scan (crash-safe at every point):
1. one SQLite transaction: delete the scan's old rows, insert scan / instances / views / vectors,
   bump the generation of every touched vector space, flip the scan's status to 'ready', commit;
2. then update the in-memory FAISS indexes and save each one atomically (temp file + os.replace)
   with the generation it reflects in its header.
A crash before (1) commits leaves nothing; a crash between (1) and (2) leaves index files whose
generation is behind SQLite's, which ``open`` detects and repairs by rebuilding from SQLite.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import EncoderMismatchError, NotFoundError, StoreError
from ..records import EncoderIdentity, IngestResult
from .lock import WriterLock
from .vectors import DEFAULT_IVF_THRESHOLD, VectorIndex

__all__ = ["Store", "LEVELS", "CHECKPOINT_HOOKS", "pack_indices", "unpack_indices"]

LEVELS = ("instance", "view")
CHECKPOINT_HOOKS: list[Callable[[str], None]] = []
"""Called with a stage name ("rows_written", "committed", "index_saved") during a scan write: lets the
crash tests stop a real process at a precise point. Empty in normal use."""


def _checkpoint(stage: str) -> None:
    for hook in CHECKPOINT_HOOKS:
        hook(stage)


def pack_indices(indices: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(indices, dtype="<i4").tobytes(), 1)


def unpack_indices(blob: bytes) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype="<i4").astype(np.int32)


def _vec_blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f2").tobytes()


def identity_matches(stored: EncoderIdentity, other: EncoderIdentity) -> bool:
    """Same weights and recipe. A content hash revision is authoritative over the path it was loaded from."""
    same = (stored.revision, stored.dim, stored.normalization, stored.preprocessing) == (
        other.revision, other.dim, other.normalization, other.preprocessing)
    if not stored.revision.startswith("sha256:"):
        same = same and stored.model_id == other.model_id
    return same


class Store:
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
    ) -> None:
        from .schema import check_schema, make_engine  # noqa: PLC0415

        self.root = Path(root)
        if not self.root.exists():
            if not create:
                raise NotFoundError(f"{self.root}: no om3db database here. Create one with om3db ingest --db {self.root}")
            self.root.mkdir(parents=True)
        elif not self.root.is_dir():
            raise StoreError(f"{self.root}: is a file, not a database folder. Pass a folder to --db")
        (self.root / "indexes").mkdir(exist_ok=True)
        self.url = url or f"sqlite:///{(self.root / 'om3db.sqlite').resolve()}"
        self.engine = make_engine(self.url)
        self.lock = WriterLock(self.root / "write.lock", timeout=lock_timeout)
        self.ivf_threshold = ivf_threshold
        self.use_gpu = use_gpu
        self._indexes: dict[tuple[str, str], tuple[VectorIndex, int]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self.rebuilt: list[str] = []
        """Spaces whose index was rebuilt from SQLite on open (missing, stale or damaged files)."""
        if not self.lock.try_acquire():  # another process writes: open read-only, indexes load lazily
            check_schema(self.engine, str(self.root), create=False)
        else:
            try:
                check_schema(self.engine, str(self.root), create=create)
                self.rebuilt = self.repair()
            finally:
                self.lock.release()

    def session(self):
        from sqlalchemy.orm import Session  # noqa: PLC0415

        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        if self._dirty:
            with self.lock:
                self.flush()
        self._indexes.clear()
        self.lock.release()
        self.engine.dispose()

    # -- vector spaces ----------------------------------------------------------------------

    def index_path(self, name: str, level: str) -> Path:
        return self.root / "indexes" / f"{name}.{level}.faiss"

    def spaces(self) -> list:
        from sqlalchemy import select  # noqa: PLC0415

        from .models import SpaceRow  # noqa: PLC0415

        with self.session() as s:
            return list(s.scalars(select(SpaceRow).order_by(SpaceRow.name, SpaceRow.level)))

    def space(self, name: str, level: str):
        for row in self.spaces():
            if row.name == name and row.level == level:
                return row
        known = sorted({r.name for r in self.spaces()})
        raise NotFoundError(
            f"{self.root}: no {level}-level vector space {name!r} (spaces here: {', '.join(known) or 'none'}). "
            "Ingest scans with that encoder first"
        )

    @staticmethod
    def identity_of(row) -> EncoderIdentity:
        return EncoderIdentity(row.model_id, row.revision, row.dim, row.normalization, row.preprocessing)

    def stored_vectors(self, space_row, *, instance_ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) float32 vectors and (N,) int64 FAISS ids of a space, from SQLite (ready scans only).

        View spaces hold only inlier views (DBSCAN outliers are stored but not searched).
        """
        from sqlalchemy import select  # noqa: PLC0415

        from .models import InstanceRow, ScanRow, VectorRow, ViewRow  # noqa: PLC0415

        if space_row.level == "instance":
            q = select(VectorRow.instance_id, VectorRow.data)
        else:
            q = select(VectorRow.view_id, VectorRow.data).join(ViewRow, ViewRow.id == VectorRow.view_id)
            q = q.where(ViewRow.inlier.is_(True))
        q = q.join(InstanceRow, InstanceRow.id == VectorRow.instance_id).join(ScanRow, ScanRow.id == InstanceRow.scan_id)
        q = q.where(VectorRow.space_id == space_row.id, ScanRow.status == "ready").order_by(VectorRow.id)
        if instance_ids is not None:
            q = q.where(VectorRow.instance_id.in_(list(instance_ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        data = b"".join(r[1] for r in rows)
        vecs = np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(len(rows), space_row.dim)
        return vecs, ids

    def _build(self, space_row) -> VectorIndex:
        vecs, ids = self.stored_vectors(space_row)
        return VectorIndex.build(vecs, ids, ivf_threshold=self.ivf_threshold, use_gpu=self.use_gpu, dim=space_row.dim)

    def _record_choice(self, space_row, index: VectorIndex) -> None:
        from .models import SpaceRow  # noqa: PLC0415

        with self.session() as s, s.begin():
            row = s.get(SpaceRow, space_row.id)
            row.index_kind = index.choice.kind
            row.index_params = index.choice.params()

    def _save(self, space_row, index: VectorIndex, *, now: bool = True) -> None:
        key = (space_row.name, space_row.level)
        self._indexes[key] = (index, space_row.generation)
        if now:
            index.save(self.index_path(*key), {"generation": space_row.generation})
            self._dirty.discard(key)
        else:
            self._dirty.add(key)

    def flush(self) -> None:
        """Save the indexes changed by writes made with ``save=False`` (needs the writer lock)."""
        for key in sorted(self._dirty):
            index, generation = self._indexes[key]
            index.save(self.index_path(*key), {"generation": generation})
        self._dirty.clear()

    def repair(self, *, force: bool = False) -> list[str]:
        """Rebuild every index whose file is missing, damaged or behind SQLite (needs the writer lock)."""
        rebuilt = []
        for row in self.spaces():
            path = self.index_path(row.name, row.level)
            head = VectorIndex.read_header(path)
            index = None
            if not force and head is not None and head.get("generation") == row.generation:
                try:
                    index, _ = VectorIndex.load(path, use_gpu=self.use_gpu)
                except StoreError:
                    index = None
                if index is not None and index.ntotal != self._count(row):
                    index = None
            if index is None:
                index = self._build(row)
                self._record_choice(row, index)
                self._save(row, index)
                rebuilt.append(f"{row.name}.{row.level}")
            else:
                self._indexes[(row.name, row.level)] = (index, row.generation)
        return rebuilt

    def _count(self, space_row) -> int:
        from sqlalchemy import func, select  # noqa: PLC0415

        from .models import InstanceRow, ScanRow, VectorRow, ViewRow  # noqa: PLC0415

        q = select(func.count(VectorRow.id)).join(InstanceRow, InstanceRow.id == VectorRow.instance_id)
        q = q.join(ScanRow, ScanRow.id == InstanceRow.scan_id).where(
            VectorRow.space_id == space_row.id, ScanRow.status == "ready")
        if space_row.level == "view":
            q = q.join(ViewRow, ViewRow.id == VectorRow.view_id).where(ViewRow.inlier.is_(True))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def index(self, name: str, level: str) -> VectorIndex:
        """The current index of a space; reloaded (or rebuilt in memory) when another process changed it."""
        row = self.space(name, level)
        cached = self._indexes.get((name, level))
        if cached is not None and cached[1] == row.generation:
            return cached[0]
        path = self.index_path(name, level)
        head = VectorIndex.read_header(path)
        index = None
        if head is not None and head.get("generation") == row.generation:
            try:
                index, _ = VectorIndex.load(path, use_gpu=self.use_gpu)
            except StoreError:
                index = None
        if index is None:  # the writer has committed but not saved yet (or crashed): rebuild in memory
            index = self._build(row)
        self._indexes[(name, level)] = (index, row.generation)
        return index

    # -- writes -----------------------------------------------------------------------------

    def _ensure_spaces(self, s, encoders: dict[str, EncoderIdentity]) -> list:
        from sqlalchemy import func, select  # noqa: PLC0415

        from .models import SpaceRow, VectorRow  # noqa: PLC0415

        rows = []
        for name, ident in sorted(encoders.items()):
            for level in LEVELS:
                row = s.scalars(select(SpaceRow).where(SpaceRow.name == name, SpaceRow.level == level)).first()
                if row is None:
                    row = SpaceRow(name=name, level=level, model_id=ident.model_id, revision=ident.revision,
                                   dim=ident.dim, normalization=ident.normalization,
                                   preprocessing=ident.preprocessing, index_kind="flat", index_params={},
                                   generation=0)
                    s.add(row)
                    s.flush()
                elif not identity_matches(self.identity_of(row), ident):
                    used = s.scalar(select(func.count(VectorRow.id)).where(VectorRow.space_id == row.id))
                    if used:
                        raise EncoderMismatchError(
                            f"{self.root}: the {name!r} space was built with {self.identity_of(row).describe()}, "
                            f"this ingest uses {ident.describe()}. Ingest with the same encoder, or use another --db"
                        )
                    row.model_id, row.revision, row.dim = ident.model_id, ident.revision, ident.dim
                    row.normalization, row.preprocessing = ident.normalization, ident.preprocessing
                rows.append(row)
        return rows

    def _delete_scan_rows(self, s, scan_row) -> dict[int, tuple[list[int], list[int]]]:
        """Delete a scan (cascades); returns space id -> (instance ids, view ids) that left the indexes."""
        from sqlalchemy import delete, select  # noqa: PLC0415

        from .models import InstanceRow, ScanRow, VectorRow  # noqa: PLC0415

        gone: dict[int, tuple[list[int], list[int]]] = {}
        q = select(VectorRow.space_id, VectorRow.instance_id, VectorRow.view_id).join(
            InstanceRow, InstanceRow.id == VectorRow.instance_id).where(InstanceRow.scan_id == scan_row.id)
        for space_id, inst, view in s.execute(q):
            inst_ids, view_ids = gone.setdefault(space_id, ([], []))
            if view is None:
                inst_ids.append(inst)
            else:
                view_ids.append(view)
        s.execute(delete(ScanRow).where(ScanRow.id == scan_row.id))
        return gone

    def _bump(self, s, space_ids) -> None:
        from sqlalchemy import update  # noqa: PLC0415

        from .models import SpaceRow  # noqa: PLC0415

        if space_ids:
            s.execute(update(SpaceRow).where(SpaceRow.id.in_(list(space_ids)))
                      .values(generation=SpaceRow.generation + 1))

    def write_scan(self, result: IngestResult, *, settings: dict, save: bool = True) -> int:
        """Replace (or add) one scan atomically; returns its scan id. Takes the writer lock.

        save: write the changed FAISS files now; False defers that to ``flush()`` (batch ingests: saving
        rewrites whole index files). Either way SQLite is committed first, so a crash before the save
        only costs a rebuild on the next open.
        """
        from sqlalchemy import insert, select, update  # noqa: PLC0415

        from .models import InstanceRow, ScanRow, VectorRow, ViewRow  # noqa: PLC0415

        with self.lock:
            with self.session() as s, s.begin():
                spaces = self._ensure_spaces(s, result.encoders)
                old = s.scalars(select(ScanRow).where(ScanRow.name == result.scan)).first()
                gone = self._delete_scan_rows(s, old) if old is not None else {}
                scan = ScanRow(name=result.scan, path=str(result.scan_path), fingerprint=result.fingerprint,
                               frame_count=int(result.frame_count), num_points=int(result.num_points),
                               settings=settings, status="ingesting")
                s.add(scan)
                s.flush()
                inst_ids = self._insert_instances(s, scan.id, result)
                view_rows, view_ids = [], []
                for inst, iid in zip(result.instances, inst_ids, strict=True):
                    for rank, v in enumerate(inst.views):
                        view_rows.append(dict(instance_id=iid, rank=rank, frame_id=int(v.frame_id),
                                              visible_pixels=int(v.visible_pixels),
                                              crop_boxes=np.asarray(v.crop_boxes).astype(int).tolist(),
                                              inlier=bool(v.inlier)))
                if view_rows:
                    s.connection().execute(insert(ViewRow.__table__), view_rows)
                    view_ids = list(s.scalars(select(ViewRow.id).where(ViewRow.instance_id.in_(
                        select(InstanceRow.id).where(InstanceRow.scan_id == scan.id))).order_by(ViewRow.id)))
                added: dict[int, tuple[list, list, list]] = {}  # space id -> (faiss ids, vectors, is view)
                vec_rows = []
                vi = 0
                for inst, iid in zip(result.instances, inst_ids, strict=True):
                    nv = len(inst.views)
                    my_views = view_ids[vi : vi + nv]
                    for row in spaces:
                        if row.level == "instance":
                            v = np.asarray(inst.vectors[row.name], dtype=np.float32)
                            self._check_dim(row, v, result.scan)
                            vec_rows.append(dict(space_id=row.id, instance_id=iid, view_id=None, data=_vec_blob(v)))
                            added.setdefault(row.id, ([], []))[0].append(iid)
                            added[row.id][1].append(v)
                        else:
                            vv = np.asarray(inst.view_vectors[row.name], dtype=np.float32).reshape(-1, row.dim)
                            if len(vv) != nv:
                                raise StoreError(f"scan {result.scan}: mask {inst.mask_index} has {nv} views but "
                                                 f"{len(vv)} {row.name} view vectors. This is an ingest bug; report it")
                            for vid, view, v in zip(my_views, inst.views, vv, strict=True):
                                vec_rows.append(dict(space_id=row.id, instance_id=iid, view_id=vid, data=_vec_blob(v)))
                                if view.inlier:
                                    added.setdefault(row.id, ([], []))[0].append(vid)
                                    added[row.id][1].append(v)
                    vi += nv
                if vec_rows:
                    s.connection().execute(insert(VectorRow.__table__), vec_rows)
                self._bump(s, {r.id for r in spaces} | set(gone))
                s.execute(update(ScanRow).where(ScanRow.id == scan.id).values(status="ready"))
                _checkpoint("rows_written")
            _checkpoint("committed")
            self._apply(gone, added, save=save)
            if save:
                _checkpoint("index_saved")
            return scan.id

    @staticmethod
    def _check_dim(row, v: np.ndarray, scan: str) -> None:
        if v.shape != (row.dim,):
            raise StoreError(f"scan {scan}: {row.name} vector has shape {v.shape}, the space has dim {row.dim}. "
                             "This is an ingest bug; report it")

    def _insert_instances(self, s, scan_id: int, result: IngestResult) -> list[int]:
        from sqlalchemy import insert, select  # noqa: PLC0415

        from .models import InstanceRow  # noqa: PLC0415

        rows = []
        for inst in result.instances:
            lo, hi, c = (np.asarray(a, dtype=np.float64).reshape(3) for a in (inst.bbox_min, inst.bbox_max, inst.centroid))
            rows.append(dict(scan_id=scan_id, mask_index=int(inst.mask_index), point_count=int(len(inst.point_indices)),
                             bbox_min_x=lo[0], bbox_min_y=lo[1], bbox_min_z=lo[2],
                             bbox_max_x=hi[0], bbox_max_y=hi[1], bbox_max_z=hi[2],
                             centroid_x=c[0], centroid_y=c[1], centroid_z=c[2],
                             point_indices=pack_indices(inst.point_indices), score=float(inst.score)))
        if not rows:
            return []
        # executemany + ids read back in insertion order (we hold the writer lock): much faster than
        # RETURNING row by row
        s.connection().execute(insert(InstanceRow.__table__), rows)
        return list(s.scalars(select(InstanceRow.id).where(InstanceRow.scan_id == scan_id).order_by(InstanceRow.id)))

    def _apply(self, gone: dict, added: dict, *, save: bool = True) -> None:
        """After a commit: bring the touched indexes up to SQLite's generation and save them."""
        for row in self.spaces():
            if row.id not in gone and row.id not in added:
                continue
            cached = self._indexes.get((row.name, row.level))
            index = cached[0] if cached is not None else None
            expected = (cached[1] + 1) if cached is not None else None
            if index is None or expected != row.generation:
                index = self._build(row)  # another writer's change we have not seen: rebuild
            else:
                inst_ids, view_ids = gone.get(row.id, ([], []))
                index.remove(view_ids if row.level == "view" else inst_ids)
                ids, vecs = added.get(row.id, ([], []))
                if ids:
                    x = np.stack(vecs).astype("<f2").astype(np.float32)  # what a rebuild from SQLite would hold
                    index.add(x, np.asarray(ids, dtype=np.int64))
                if self._needs_new_kind(index):
                    index = self._build(row)
            if index.choice.kind != row.index_kind or index.choice.params() != (row.index_params or {}):
                self._record_choice(row, index)
            self._save(row, index, now=save)

    def _needs_new_kind(self, index: VectorIndex) -> bool:
        n = index.ntotal
        if index.choice.kind == "flat":
            return n >= self.ivf_threshold
        return n < self.ivf_threshold // 2 or n > 4 * max(index.choice.trained_on, 1)

    def remove_scan(self, name: str) -> int:
        """Delete a scan, its instances and vectors; returns the number of instances removed."""
        from sqlalchemy import func, select  # noqa: PLC0415

        from .models import InstanceRow, ScanRow  # noqa: PLC0415

        with self.lock:
            with self.session() as s, s.begin():
                row = s.scalars(select(ScanRow).where(ScanRow.name == name)).first()
                if row is None:
                    raise NotFoundError(f"{self.root}: no scan named {name!r}. List scans with: om3db scans --db {self.root}")
                count = s.scalar(select(func.count(InstanceRow.id)).where(InstanceRow.scan_id == row.id))
                gone = self._delete_scan_rows(s, row)
                self._bump(s, set(gone))
            self._apply(gone, {})
            return int(count)

    def reindex(self) -> list[str]:
        """Rebuild every FAISS index from SQLite (and re-choose flat / IVF); returns the spaces rebuilt."""
        with self.lock:
            return self.repair(force=True)
