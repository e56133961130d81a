"""The public API: ``om3db.connect(path)`` -> ``Database``.

A database is a directory: ``om3db.sqlite`` (the source of truth), ``indexes/*.faiss`` (derived, each with
its change log ``*.faiss.log``) and
``write.lock``. ``connect(None)`` uses ``$OM3DB_DB`` or ``./om3db-data``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, NotFoundError
from .query import Filters, check_encoder, label_vectors, search_space
from .records import IngestReport

__all__ = [
    "connect",
    "upgrade_database",
    "Database",
    "Hit",
    "ScanInfo",
    "Instance",
    "Label",
    "IngestOutcome",
    "DEFAULT_DB",
    "DEFAULT_TEMPLATE",
]

DEFAULT_DB = "om3db-data"
"""Database folder used when neither a path nor ``$OM3DB_DB`` is given (relative to the cwd)."""
DEFAULT_TEMPLATE = "a {} in a scene"
DEFAULT_MODELS = {"siglip": "google/siglip-so400m-patch14-384", "dinov2": "facebook/dinov2-large"}
_SAVE_EVERY_S = 60.0
"""During a long ingest, index files are saved at most this often (and always at the end)."""
Progress = Callable[[str, str, int, int], None]
"""progress(scan name, stage, done, total): stage "scans" counts scans; others come from ingest."""


@dataclass(frozen=True)
class Hit:
    """One search result."""

    instance_id: int
    scan: str
    score: float
    """Cosine similarity to the query (mean: instance vector; max: best view)."""
    point_count: int
    bbox_min: tuple[float, float, float]
    """World metres."""
    bbox_max: tuple[float, float, float]
    centroid: tuple[float, float, float]
    frame_id: int | None
    """Best view: the best-matching view (max aggregation) or the most visible one (mean)."""
    crop_box: tuple[int, int, int, int] | None
    """Level-0 crop box of that view, colour pixels (x0, y0, x1, y1), x1/y1 exclusive."""
    point_indices: np.ndarray | None = field(default=None, repr=False)
    """(P,) int32 indices into the scan's PLY vertices, when asked for (``with_points=True``)."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["point_indices"] = None if self.point_indices is None else self.point_indices.tolist()
        return d


@dataclass(frozen=True)
class ScanInfo:
    name: str
    path: str
    fingerprint: str
    status: str
    """'ingesting' | 'ready'."""
    instances: int
    frame_count: int
    num_points: int
    settings: dict = field(repr=False)
    updated_at: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class View:
    frame_id: int
    visible_pixels: int
    crop_boxes: list
    """[[x0, y0, x1, y1], ...] per crop level."""
    inlier: bool


@dataclass(frozen=True)
class Instance:
    """One stored instance with its geometry."""

    id: int
    scan: str
    scan_path: str
    mask_index: int
    point_count: int
    score: float
    """Proposal confidence."""
    bbox_min: tuple[float, float, float]
    bbox_max: tuple[float, float, float]
    centroid: tuple[float, float, float]
    views: tuple[View, ...]
    point_indices: np.ndarray = field(repr=False)
    """(P,) int32 indices into the scan's PLY vertices (file order)."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["point_indices"] = self.point_indices.tolist()
        return d


@dataclass(frozen=True)
class Label:
    """An instance's best class from a vocabulary."""

    instance_id: int
    label: str
    label_index: int
    score: float
    point_indices: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class IngestOutcome:
    """What ``Database.ingest`` did with one scan."""

    scan: str
    path: str
    status: str
    """'ingested' | 'skipped' (fingerprint and settings unchanged)."""
    instances: int
    seconds: float
    report: IngestReport | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d


def _instance(r) -> Instance:
    from .store import unpack_indices
    from .store.writer import unpack_views

    views = tuple(View(v.frame_id, v.visible_pixels, v.crop_boxes, v.inlier) for v in unpack_views(r.views))
    return Instance(
        r.id,
        r.scan.name,
        r.scan.path,
        r.mask_index,
        r.point_count,
        r.score,
        _bmin(r),
        _bmax(r),
        _cen(r),
        views,
        unpack_indices(r.point_indices),
    )


def connect(
    path: str | Path | None = None,
    *,
    ephemeral: bool = False,
    url: str | None = None,
    lock_timeout: float = 10.0,
    ivf_threshold: int | None = None,
    use_gpu: bool | None = None,
    create: bool = True,
) -> Database:
    """Open (or create) a database directory.

    path: the folder; None uses ``$OM3DB_DB`` or ``./om3db-data``.
    create: False refuses a folder that holds no database (NotFoundError) instead of creating one.
    ephemeral: a fresh temporary folder, deleted on ``close()`` (tests, notebooks).
    url: a SQLAlchemy URL for the metadata (e.g. PostgreSQL); the folder still holds the indexes.
    lock_timeout: seconds a writer waits for another writer before DatabaseBusyError.
    ivf_threshold: vectors per space past which IVF replaces exact search.
    """
    from .store import DEFAULT_IVF_THRESHOLD, Store

    if ephemeral:
        root = Path(tempfile.mkdtemp(prefix="om3db-"))
    else:
        root = Path(path if path is not None else os.environ.get("OM3DB_DB") or DEFAULT_DB)
        if not create and url is None and not (root / "om3db.sqlite").is_file():
            raise NotFoundError(
                f"{root}: no om3db database here. Ingest scans first: om3db ingest SCANS_DIR --db {root}"
            )
    store = Store(
        root,
        url=url,
        lock_timeout=lock_timeout,
        use_gpu=use_gpu,
        ivf_threshold=DEFAULT_IVF_THRESHOLD if ivf_threshold is None else ivf_threshold,
    )
    return Database(store, ephemeral=ephemeral)


def upgrade_database(
    path: str | Path | None = None, *, url: str | None = None, lock_timeout: float = 10.0
) -> tuple[str | None, str]:
    """Run the shipped migrations on a database folder; returns (revision before, revision after)."""
    from .store.lock import WriterLock
    from .store.schema import current_revision, head_revision, make_engine, upgrade

    root = Path(path if path is not None else os.environ.get("OM3DB_DB") or DEFAULT_DB)
    sqlite = root / "om3db.sqlite"
    if url is None and not sqlite.exists():
        raise NotFoundError(f"{root}: no om3db database here (no om3db.sqlite). Check --db / OM3DB_DB")
    engine = make_engine(url or f"sqlite:///{sqlite.resolve()}")
    try:
        with WriterLock(root / "write.lock", timeout=lock_timeout):
            before = current_revision(engine)
            upgrade(engine)
        return before, head_revision()
    finally:
        engine.dispose()


def _sam_key(sam) -> str | None:
    if sam is None:
        return None
    return str(sam) if isinstance(sam, (str, Path)) else type(sam).__name__


class Database:
    """A catalogue of object instances across scans. Use ``om3db.connect`` to make one."""

    def __init__(self, store, *, ephemeral: bool = False) -> None:
        self.store = store
        self.path = store.root
        self._ephemeral = ephemeral
        self._models: dict[tuple[str, str], object] = {}
        self._last: dict[str, object] = {}

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def close(self) -> None:
        self.store.close()
        if self._ephemeral:
            shutil.rmtree(self.path, ignore_errors=True)

    # -- encoders ---------------------------------------------------------------------------

    def _encoder(self, space: str, spec=None):
        """An encoder object for a space: given, cached, or loaded from a hub id / directory."""
        if spec is not None and not isinstance(spec, (str, Path)):
            self._last[space] = spec
            return spec
        if spec is None:
            if space in self._last:
                return self._last[space]
            try:
                spec = self.store.space(space, "instance").model_id
            except NotFoundError:
                spec = DEFAULT_MODELS[space]
        key = (space, str(spec))
        if key not in self._models:
            from .embed import load_encoder

            self._models[key] = load_encoder(space, spec)
        self._last[space] = self._models[key]
        return self._models[key]

    # -- writes -----------------------------------------------------------------------------

    def ingest(
        self,
        paths_or_root,
        *,
        config=None,
        siglip=None,
        dinov2=None,
        sam=None,
        force: bool = False,
        depth_scale: float = 1000.0,
        pose_convention: str = "opencv",
        progress: Progress | None = None,
    ) -> list[IngestOutcome]:
        """Ingest every scan at or below the given folder(s); one atomic commit per scan.

        siglip / dinov2: encoder objects, hub ids or local directories (None: the model the space was
        built with, else the default hub id; ``dinov2=False`` skips the image-image space).
        sam: a SAM predictor or checkpoint path (None: box crops).
        Scans whose fingerprint and settings are unchanged are skipped unless ``force``.
        Holds the writer lock for the whole call; index files are saved at the end (and every minute).
        """
        from .ingest import IngestConfig
        from .scan import find_scans

        config = config or IngestConfig()
        roots = [paths_or_root] if isinstance(paths_or_root, (str, Path)) else list(paths_or_root)
        folders = [p for r in roots for p in find_scans(r)]
        if not folders:
            raise ConfigError(f"no scan folders (with color/ and intrinsic/) found under {', '.join(map(str, roots))}")
        with self.store.lock:
            self.store.check_view_vectors(config.view_vectors)  # before any model loads or scan work
            encoders = {
                space: self._encoder(space, spec)
                for space, spec in (("siglip", siglip), ("dinov2", dinov2))
                if spec is not False
            }
            if isinstance(sam, (str, Path)):
                from .sam import load_sam

                sam_key, sam = str(sam), load_sam(sam)
            else:
                sam_key = _sam_key(sam)
            key = {
                "config": config.to_dict(has_sam=sam is not None),
                "encoders": {k: dataclasses.asdict(e.identity) for k, e in encoders.items()},
                "sam": sam_key,
                "read": {"depth_scale": depth_scale, "pose_convention": pose_convention},
            }
            existing = {s.name: s for s in self.scans(include_incomplete=True)}
            out: list[IngestOutcome] = []
            try:
                self._ingest_all(
                    folders, out, existing, key, config, encoders, sam, force, depth_scale, pose_convention, progress
                )
            finally:
                self.store.flush()  # index files once per call, not per scan (a crash only costs a rebuild)
            if progress is not None:
                progress("", "scans", len(folders), len(folders))
            return out

    def _ingest_all(
        self, folders, out, existing, key, config, encoders, sam, force, depth_scale, pose_convention, progress
    ) -> None:
        from .ingest import ingest_scan
        from .scan import read_scan

        last_save = time.monotonic()
        for i, folder in enumerate(folders):
            t0 = time.perf_counter()
            scan = read_scan(
                folder,
                frame_step=config.frame_step,
                depth_scale=depth_scale,
                depth="auto",
                pose_convention=pose_convention,
            )
            if progress is not None:
                progress(scan.name, "scans", i, len(folders))
            fingerprint = scan.fingerprint()
            old = existing.get(scan.name)
            if (
                not force
                and old is not None
                and old.status == "ready"
                and old.fingerprint == fingerprint
                and old.settings.get("key") == key
            ):
                out.append(IngestOutcome(scan.name, str(folder), "skipped", old.instances, 0.0))
                continue
            cb = (
                None
                if progress is None
                else (lambda stage, done, total, _n=scan.name: progress(_n, stage, done, total))
            )
            result = ingest_scan(scan, config=config, encoders=encoders, sam=sam, progress=cb)
            settings = {"key": key, "ingest": result.settings, "report": dataclasses.asdict(result.report)}
            save = time.monotonic() - last_save > _SAVE_EVERY_S
            self.store.write_scan(result, settings=settings, save=save)
            if save:
                last_save = time.monotonic()
            out.append(
                IngestOutcome(
                    scan.name, str(folder), "ingested", len(result.instances), time.perf_counter() - t0, result.report
                )
            )

    def write(self, result, *, settings: dict | None = None) -> int:
        """Store an already computed ``IngestResult`` (replacing a scan of that name); returns its scan id."""
        return self.store.write_scan(result, settings={"key": None, "ingest": result.settings, **(settings or {})})

    def remove(self, scan: str) -> int:
        """Delete a scan with its instances and vectors; returns how many instances were removed."""
        return self.store.remove_scan(scan)

    def reindex(self) -> list[str]:
        """Rebuild every FAISS index from SQLite (re-choosing exact / IVF); returns the spaces rebuilt."""
        return self.store.reindex()

    # -- reads ------------------------------------------------------------------------------

    def _query_vector(self, space: str, text, image, template: str, encoder) -> np.ndarray:
        enc = self._encoder(space, encoder)
        check_encoder(self.store, space, enc.identity)
        if text is not None:
            if not hasattr(enc, "encode_texts"):
                raise ConfigError(f"the {space!r} encoder has no text tower; text queries use the 'siglip' space")
            return np.asarray(enc.encode_texts([template.format(text)]), dtype=np.float32)[0]
        if isinstance(image, (str, Path)):
            from PIL import Image, UnidentifiedImageError

            try:
                image = np.asarray(Image.open(image).convert("RGB"))
            except (OSError, UnidentifiedImageError) as exc:
                raise ConfigError(f"{image}: cannot read the query image ({exc}). Pass a PNG or JPEG file") from exc
        return np.asarray(enc.encode_images([np.asarray(image, dtype=np.uint8)]), dtype=np.float32)[0]

    def search(
        self,
        text: str | None = None,
        image=None,
        *,
        k: int = 10,
        aggregation: str = "mean",
        scans: Sequence[str] | str | None = None,
        min_points: int = 0,
        region=None,
        region_mode: str = "intersects",
        min_score: float | None = None,
        with_points: bool = False,
        encoder=None,
        space: str | None = None,
        template: str = DEFAULT_TEMPLATE,
    ) -> list[Hit]:
        """The k instances most similar to a text (SigLIP) or an image (DINOv2, or ``space="siglip"``).

        region: ((xmin, ymin, zmin), (xmax, ymax, zmax)) world metres; region_mode "intersects" (bbox
        overlaps) or "centroid" (centroid inside). min_score: drop hits with a lower similarity.
        encoder: the query encoder (object, hub id or directory); default: the space's own model.
        """
        if (text is None) == (image is None):
            raise ConfigError("search needs exactly one of text= or image=")
        space = space or ("siglip" if text is not None else "dinov2")
        if text is not None and "{}" not in template:
            raise ConfigError(f"template must contain '{{}}' where the text goes, got {template!r}")
        filters = Filters(
            scans=(scans,) if isinstance(scans, str) else (tuple(scans) if scans is not None else None),
            min_points=min_points,
            region=region,
            region_mode=region_mode,
        )
        self.store.space(space, "instance")  # a clear error on an empty database before loading a model
        q = self._query_vector(space, text, image, template, encoder)
        raw = search_space(self.store, space, q, k=k, aggregation=aggregation, filters=filters, min_score=min_score)
        return self._hits(raw, with_points)

    def _hits(self, raw, with_points: bool) -> list[Hit]:
        from sqlalchemy import select

        from .store import unpack_indices
        from .store.models import InstanceRow, ScanRow
        from .store.writer import unpack_views, view_rank

        ids = [h.instance_id for h in raw]
        with self.store.session() as s:
            rows = {
                r.id: r
                for r in s.scalars(
                    select(InstanceRow).join(ScanRow).where(InstanceRow.id.in_(ids), ScanRow.status == "ready")
                )
            }
            names = dict(s.execute(select(ScanRow.id, ScanRow.name)).all())
        hits = []
        for h in raw:
            r = rows.get(h.instance_id)
            if r is None:  # removed between the index search and now
                continue
            views = unpack_views(r.views)
            rank = int(view_rank(h.view_id)) if h.view_id is not None else 0  # mean: the best view
            v = views[rank] if rank < len(views) else None
            hits.append(
                Hit(
                    r.id,
                    names[r.scan_id],
                    h.score,
                    r.point_count,
                    _bmin(r),
                    _bmax(r),
                    _cen(r),
                    None if v is None else v.frame_id,
                    None if v is None or not v.crop_boxes else tuple(v.crop_boxes[0]),
                    unpack_indices(r.point_indices) if with_points else None,
                )
            )
        return hits

    def label(
        self,
        scan: str,
        vocabulary: Sequence[str],
        *,
        template: str = DEFAULT_TEMPLATE,
        aggregation: str = "mean",
        encoder=None,
    ) -> list[Label]:
        """Each instance of a scan gets its best class from ``vocabulary`` (SigLIP text vs instance)."""
        from sqlalchemy import select

        from .store import unpack_indices
        from .store.models import InstanceRow, ScanRow

        if not vocabulary:
            raise ConfigError("vocabulary is empty: pass at least one class name")
        enc = self._encoder("siglip", encoder)
        check_encoder(self.store, "siglip", enc.identity)
        with self.store.session() as s:
            row = s.scalars(select(ScanRow).where(ScanRow.name == scan, ScanRow.status == "ready")).first()
            if row is None:
                raise NotFoundError(
                    f"{self.path}: no scan named {scan!r}. List scans with: om3db scans --db {self.path}"
                )
            insts = {i.id: i for i in s.scalars(select(InstanceRow).where(InstanceRow.scan_id == row.id))}
        classes = np.asarray(enc.encode_texts([template.format(c) for c in vocabulary]), dtype=np.float32)
        ids, best, score = label_vectors(
            self.store, "siglip", np.array(sorted(insts), dtype=np.int64), classes, aggregation=aggregation
        )
        return [
            Label(int(i), vocabulary[int(b)], int(b), float(sc), unpack_indices(insts[int(i)].point_indices))
            for i, b, sc in zip(ids, best, score, strict=True)
        ]

    def scans(self, *, include_incomplete: bool = False) -> list[ScanInfo]:
        """Scans in the database, by name (only complete ones unless ``include_incomplete``)."""
        from sqlalchemy import func, select

        from .store.models import InstanceRow, ScanRow

        q = (
            select(ScanRow, func.count(InstanceRow.id))
            .outerjoin(InstanceRow, InstanceRow.scan_id == ScanRow.id)
            .group_by(ScanRow.id)
            .order_by(ScanRow.name)
        )
        if not include_incomplete:
            q = q.where(ScanRow.status == "ready")
        with self.store.session() as s:
            return [
                ScanInfo(
                    r.name,
                    r.path,
                    r.fingerprint,
                    r.status,
                    int(n),
                    r.frame_count,
                    r.num_points,
                    r.settings or {},
                    r.updated_at.isoformat(timespec="seconds") if r.updated_at else "",
                )
                for r, n in s.execute(q)
            ]

    def instance(self, instance_id: int) -> Instance:
        """One instance with its views and point indices."""
        from .store.models import InstanceRow

        with self.store.session() as s:
            r = s.get(InstanceRow, int(instance_id))
            if r is None or r.scan.status != "ready":
                raise NotFoundError(f"{self.path}: no instance {instance_id}. Search first to get instance ids")
            return _instance(r)

    def instances(self, scan: str) -> list[Instance]:
        """Every instance of a (complete) scan, by id, with views and point indices."""
        from sqlalchemy import select

        from .store.models import InstanceRow, ScanRow

        with self.store.session() as s:
            row = s.scalars(select(ScanRow).where(ScanRow.name == scan, ScanRow.status == "ready")).first()
            if row is None:
                raise NotFoundError(f"{self.path}: no scan {scan!r}. See `om3db scans` for the scans it holds")
            return [
                _instance(r)
                for r in s.scalars(select(InstanceRow).where(InstanceRow.scan_id == row.id).order_by(InstanceRow.id))
            ]

    def export(self, hits: Sequence[Hit], out: str | Path) -> list[Path]:
        """Write, per scan with hits, ``<scan>_hits.ply`` (its points, hits in distinct colours, the rest
        grey) and per hit ``hit<rank>_<instance>.png`` (the level-0 crop of its best view)."""
        from PIL import Image

        from .scan import read_scan

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        by_scan: dict[str, list[tuple[int, Hit]]] = {}
        for rank, h in enumerate(hits, 1):
            by_scan.setdefault(h.scan, []).append((rank, h))
        for scan_name, ranked in by_scan.items():
            info = next((s for s in self.scans() if s.name == scan_name), None)
            if info is None:
                raise NotFoundError(f"{self.path}: no scan named {scan_name!r}")
            scan = read_scan(info.path, masks=False, check_all_images=False)
            colors = (scan.colors.astype(np.float32) * 0.3 + 60).astype(np.uint8)
            for rank, h in ranked:
                colors[self.instance(h.instance_id).point_indices] = _HIGHLIGHT[(rank - 1) % len(_HIGHLIGHT)]
                if h.frame_id is not None and h.crop_box is not None:
                    x0, y0, x1, y1 = h.crop_box
                    crop = scan.frame(h.frame_id).color()[y0:y1, x0:x1]
                    path = out / f"hit{rank}_{h.instance_id}.png"
                    Image.fromarray(crop).save(path)
                    written.append(path)
            path = out / f"{scan_name}_hits.ply"
            _write_ply(path, scan.points, colors)
            written.append(path)
        return sorted(written)

    def info(self) -> dict:
        """Versions, faiss build and GPUs, and database counts."""
        import faiss
        import sqlalchemy

        from . import __version__
        from .store import gpu_count
        from .store.schema import current_revision

        spaces = []
        for row in self.store.spaces():
            index = self.store.index(row.name, row.level)
            spaces.append(
                {
                    "name": row.name,
                    "level": row.level,
                    "model_id": row.model_id,
                    "revision": row.revision,
                    "dim": row.dim,
                    "vectors": index.ntotal,
                    "index": row.index_kind,
                    "index_params": row.index_params,
                }
            )
        scans = self.scans()
        return {
            "database": str(self.path),
            "schema_revision": current_revision(self.store.engine),
            "om3db": __version__,
            "faiss": faiss.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "faiss_gpu_build": hasattr(faiss, "StandardGpuResources"),
            "gpus": gpu_count(),
            "scans": len(scans),
            "instances": sum(s.instances for s in scans),
            "spaces": spaces,
        }


def _bmin(r) -> tuple[float, float, float]:
    return (r.bbox_min_x, r.bbox_min_y, r.bbox_min_z)


def _bmax(r) -> tuple[float, float, float]:
    return (r.bbox_max_x, r.bbox_max_y, r.bbox_max_z)


def _cen(r) -> tuple[float, float, float]:
    return (r.centroid_x, r.centroid_y, r.centroid_z)


_HIGHLIGHT = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


def _write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY with float xyz and uchar rgb per vertex (file order kept)."""
    rec = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    for i, a in enumerate("xyz"):
        rec[a] = points[:, i]
    for i, a in enumerate("rgb"):
        rec[a] = colors[:, i]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    with open(path, "wb") as fh:
        fh.write(header.encode())
        fh.write(rec.tobytes())
