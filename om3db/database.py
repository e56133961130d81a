"""The public API: ``om3db.connect(path)`` -> ``Database``.

A database is a directory: ``om3db.sqlite`` (the source of truth), ``indexes/*.faiss`` (derived, each with
its change log ``*.faiss.log``) and ``write.lock``. ``connect(None)`` uses ``$OM3DB_DB`` or ``./om3db-data``.

This module orchestrates; it runs no SQL and no FAISS call itself: the store (``om3db.store``) does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import ConfigError, Interrupted, NotFoundError, StoreError
from .query import DEFAULT_TEMPLATE, Filters, Query, check_encoder, label_vectors, search_space
from .results import Hit, IngestOutcome, Instance, Label, ScanInfo

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
    "DEFAULT_MODELS",
]

DEFAULT_DB = "om3db-data"
"""Database folder used when neither a path nor ``$OM3DB_DB`` is given (relative to the cwd)."""
DEFAULT_MODELS = {"siglip": "google/siglip-so400m-patch14-384", "dinov2": "facebook/dinov2-large"}
"""Encoders of a new database's spaces when an ingest names none."""
_SAVE_EVERY_S = 60.0
"""During a long ingest, index files are saved at most this often (and always at the end)."""
Progress = Callable[[str, str, int, int], None]
"""progress(scan name, stage, done, total): stage "scans" counts scans; others come from ingest."""


_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:/")
"""A URL scheme (two letters or more, so a Windows drive letter is not one), also after Path() folded '//'."""


def _root(path) -> Path:
    _check_path(path)
    return Path(path if path is not None else os.environ.get("OM3DB_DB") or DEFAULT_DB)


def _folder(path) -> Path:
    """The database folder of ``path`` (not a PostgreSQL URL): refused when it looks like another URL."""
    root = _root(path)
    if _URL_LIKE.match(str(path if path is not None else root)):
        raise _url_refused(str(path if path is not None else root))
    return root


def _check_path(path) -> None:
    """Refuse a database path that is not a folder path or URL: another type, or an empty string (which
    ``Path`` would silently read as the current folder)."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ConfigError(
            f"the database path must be a folder (str or pathlib.Path) or a postgresql:// URL, got "
            f"{type(path).__name__} {path!r}"
        )
    if isinstance(path, str) and not path.strip():
        raise ConfigError(
            f"the database path is empty ({path!r}). Give the database's folder (or leave it out for "
            f"$OM3DB_DB, else ./{DEFAULT_DB})"
        )


_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
"""What a PostgreSQL URL may start with: om3db connects through psycopg 3 only."""


def _url_refused(text: str) -> ConfigError:
    """The error for a path that looks like a URL but is not a PostgreSQL URL om3db can use (its password
    masked)."""
    from .store.schema import mask_url as _mask

    scheme = text.split(":", 1)[0]
    supported = ", ".join(_PG_SCHEMES)
    if scheme.lower().startswith(("postgresql+", "postgres+")):
        return ConfigError(
            f"{_mask(text)}: the {scheme}:// driver is not supported: om3db connects to PostgreSQL through psycopg 3. "
            f"Write the URL with one of {supported}"
        )
    return ConfigError(
        f"{_mask(text)}: looks like a URL ({scheme}://), but a database is a folder here or a PostgreSQL URL "
        f"({supported}). Give a folder path or a PostgreSQL URL"
    )


def _pg_url(path) -> str | None:
    """``path`` (or ``$OM3DB_DB`` when None) when it is a PostgreSQL URL, else None."""
    target = path if path is not None else os.environ.get("OM3DB_DB")
    return target if isinstance(target, str) and target.startswith(_PG_SCHEMES) else None


def _vectors_dir(url: str, vectors) -> Path:
    """The local folder of a PostgreSQL database's FAISS files: ``vectors``, ``$OM3DB_VECTORS``, else
    ``~/.cache/om3db/<host>-<port>-<database>`` (``$XDG_CACHE_HOME`` honoured)."""
    import re
    from urllib.parse import urlsplit

    if vectors is not None or os.environ.get("OM3DB_VECTORS"):
        return Path(vectors if vectors is not None else os.environ["OM3DB_VECTORS"])
    parts = urlsplit(url)
    try:
        host, port = parts.hostname or "localhost", parts.port or 5432
    except ValueError:  # a malformed port: Store names the URL in its error
        host, port = "localhost", 5432
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{host}-{port}-{parts.path.lstrip('/') or 'postgres'}")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "om3db" / slug


def connect(
    path: str | Path | None = None,
    *,
    vectors: str | Path | None = None,
    ephemeral: bool = False,
    url: str | None = None,
    lock_timeout: float = 10.0,
    ivf_threshold: int | None = None,
    use_gpu: bool | None = None,
    create: bool = True,
    repair: bool = True,
) -> Database:
    """Open (or create) a database directory, or a PostgreSQL database.

    path: the folder; None uses ``$OM3DB_DB`` or ``./om3db-data``. A PostgreSQL URL
    (``postgresql://user:password@host:port/dbname``, also as ``$OM3DB_DB``) keeps all metadata and vectors
    on that server (psycopg 3); several processes and machines may read and write it at once.
    vectors: with a PostgreSQL URL, this machine's folder for the FAISS index files: a cache, rebuilt or
    caught up from the server on open. Default ``$OM3DB_VECTORS``, else ``~/.cache/om3db/<host>-<port>-<db>``.
    create: False refuses a folder that holds no database (NotFoundError) instead of creating one.
    ephemeral: a fresh temporary folder, deleted on ``close()`` (tests, notebooks).
    url: a SQLAlchemy URL for the metadata (e.g. PostgreSQL); the folder still holds the indexes.
    lock_timeout: seconds a writer waits for another writer before DatabaseBusyError.
    ivf_threshold: vectors per space past which IVF replaces exact search.
    repair: rebuild damaged or stale index files on open (False leaves every file as it is: ``check``).

    Refused with ConfigError before anything is opened or created: a path that is not a str / PathLike or is
    empty, a URL that does not parse or names another database or PostgreSQL driver (the password masked in
    the message), ``vectors`` without a PostgreSQL URL, ``ephemeral=True`` with a path or URL, flags that are
    not bools, a negative or non-finite ``lock_timeout``, an ``ivf_threshold`` that is not an integer >= 1.
    """
    from .store import DEFAULT_IVF_THRESHOLD, Store
    from .store.schema import check_url

    _check_options(path, vectors, ephemeral, url, lock_timeout, ivf_threshold, use_gpu, create, repair)
    if url is not None:
        check_url(url)
    if not ephemeral and url is None and _pg_url(path) is not None:
        url = _pg_url(path)
        check_url(url)  # before the vectors folder is derived from it
        root = _vectors_dir(url, vectors)
    elif ephemeral:
        root = Path(tempfile.mkdtemp(prefix="om3db-"))
    else:
        root = _folder(path)
        if vectors is not None:
            raise ConfigError(
                f"vectors={str(vectors)!r} is the FAISS cache folder of a PostgreSQL database, but {root} is a "
                "folder database (it keeps its index files inside it). Leave vectors out, or give a postgresql:// "
                "URL as the path"
            )
        if not create and url is None and not (root / "om3db.sqlite").is_file():
            raise NotFoundError(f"{root}: no om3db database here. Create one by ingesting scans into it")
    store = Store(
        root,
        url=url,
        lock_timeout=lock_timeout,
        use_gpu=use_gpu,
        ivf_threshold=DEFAULT_IVF_THRESHOLD if ivf_threshold is None else ivf_threshold,
        repair=repair,
    )
    return Database(store, ephemeral=ephemeral)


def upgrade_database(
    path: str | Path | None = None, *, url: str | None = None, lock_timeout: float = 10.0
) -> tuple[str | None, str]:
    """Run the shipped migrations on a database folder (or a PostgreSQL URL); returns (revision before,
    revision after). A database that is not om3db's, or at a revision this om3db does not know, is
    refused before any change; a migration that fails is rolled back (StoreError)."""
    from .store import upgrade_database as upgrade
    from .store.schema import check_url

    _check_path(path)
    _check_timeout(lock_timeout)
    if url is not None:
        check_url(url)
    if url is None and _pg_url(path) is not None:
        url = _pg_url(path)
        check_url(url)
        return upgrade(_vectors_dir(url, None), url=url, lock_timeout=lock_timeout)
    return upgrade(_folder(path), url=url, lock_timeout=lock_timeout)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _check_timeout(lock_timeout) -> None:
    if (
        isinstance(lock_timeout, bool)
        or not isinstance(lock_timeout, (int, float, np.integer, np.floating))
        or not np.isfinite(lock_timeout)
        or lock_timeout < 0
    ):
        raise ConfigError(f"lock_timeout must be a number of seconds >= 0, got {lock_timeout!r}")


def _check_options(path, vectors, ephemeral, url, lock_timeout, ivf_threshold, use_gpu, create, repair) -> None:
    """connect()'s options, refused before anything is opened or created when they are not what they seem."""
    for name, value in (("ephemeral", ephemeral), ("create", create), ("repair", repair)):
        if not _is_bool(value):
            raise ConfigError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    if use_gpu is not None and not _is_bool(use_gpu):
        raise ConfigError(f"use_gpu must be True, False or None (when a GPU is present), got {use_gpu!r}")
    _check_timeout(lock_timeout)
    if ivf_threshold is not None and (
        isinstance(ivf_threshold, bool) or not isinstance(ivf_threshold, (int, np.integer)) or ivf_threshold < 1
    ):
        raise ConfigError(
            f"ivf_threshold must be a whole number of vectors >= 1 (or None for the default), got {ivf_threshold!r}"
        )
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"url must be a database URL string, got {type(url).__name__} {url!r}")
    if vectors is not None and not isinstance(vectors, (str, os.PathLike)):
        raise ConfigError(f"vectors must be a folder (str or pathlib.Path), got {type(vectors).__name__} {vectors!r}")
    if ephemeral and (path is not None or url is not None or vectors is not None):
        given = ", ".join(n for n, v in (("path", path), ("url", url), ("vectors", vectors)) if v is not None)
        raise ConfigError(
            f"ephemeral=True makes a new temporary database, but {given} was given too. Leave {given} out, or "
            "drop ephemeral=True to open that database"
        )
    _check_path(path)


def _sam_key(sam) -> str | None:
    if sam is None:
        return None
    return str(sam) if isinstance(sam, (str, Path)) else type(sam).__name__


_MAX_ID = 2**63 - 1
"""Instance ids are SQLite / PostgreSQL BIGINTs (and FAISS int64 ids): none is larger."""


def _open(method):
    """A public Database method: refused once the Database is closed (its connections and lock are gone;
    an ephemeral database's folder is deleted)."""

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        if self._closed:
            raise StoreError(
                f"{self._where}: this Database is closed. Open the database again with om3db.connect()"
                + (" (it was ephemeral: its folder was deleted on close)" if self._ephemeral else "")
            )
        return method(self, *args, **kwargs)

    return checked


class Database:
    """A catalogue of object instances across scans. Use ``om3db.connect`` to make one.

    Query encoders: a search without ``encoder=`` uses, per space, the encoder object given to this
    Database for it (by :meth:`ingest` or :meth:`use_encoder`), else the model the space was built with,
    loaded from the hub id / directory stored with the space. :meth:`query_encoder` says which.
    """

    def __init__(self, store, *, ephemeral: bool = False) -> None:
        self._store = store
        self.path = store.root
        self._where = store.where
        self._ephemeral = ephemeral
        self._closed = False
        self._models: dict[tuple[str, str], object] = {}
        self._given: dict[str, object] = {}
        """Space -> the encoder object given to this Database (ingest / use_encoder): the query default."""

    @_open
    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: every other method then raises StoreError."""
        return self._closed

    def close(self) -> None:
        """Release the connections and the lock (an ephemeral database's folder is deleted). Calling it
        again does nothing; any other method of a closed Database raises StoreError."""
        if self._closed:
            return
        self._closed = True
        self._store.close()
        if self._ephemeral:
            shutil.rmtree(self.path, ignore_errors=True)

    # -- encoders ---------------------------------------------------------------------------

    @_open
    def use_encoder(self, space: str, encoder) -> None:
        """Make ``encoder`` (an object, hub id or directory) this Database's query default for ``space``."""
        self._given[space] = self._encoder(space, encoder)

    @_open
    def query_encoder(self, space: str) -> str:
        """Which encoder a query of ``space`` without ``encoder=`` uses, and why (one line)."""
        if space in self._given:
            return f"{self._given[space].identity.describe()} (given to this Database)"
        try:
            row = self._store.space(space, "instance")
        except NotFoundError:
            return f"{DEFAULT_MODELS.get(space, '?')} (default; the space holds nothing yet)"
        return f"{row.model_id}@{row.revision} (the model the space was built with)"

    def _encoder(self, space: str, spec=None, *, dtype: str | None = None, preset: str | None = None):
        """An encoder object for a space: given, the session's, or loaded from a hub id / directory.

        dtype: None / "auto" (the hardware policy, om3db.hardware) or a dtype name; preset: the model set
        (``om3db.embed.MODEL_PRESETS``) a new space takes when no model is named."""
        if spec is not None and not isinstance(spec, (str, Path)):
            _check_encoder_object(space, spec)
            return spec
        if spec is None:
            if space in self._given and dtype is None:
                return self._given[space]
            try:
                spec = self._store.space(space, "instance").model_id
            except NotFoundError:
                from .embed import model_preset

                spec = model_preset(preset)[space] if preset is not None else DEFAULT_MODELS[space]
        key = (space, str(spec), dtype)
        if key not in self._models:
            from .embed import load_encoder

            self._models[key] = load_encoder(space, spec, **({} if dtype is None else {"dtype": dtype}))
        return self._models[key]

    # -- writes -----------------------------------------------------------------------------

    @_open
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
        format: str = "auto",  # noqa: A002 - the user-facing name (CLI --format)
        progress: Progress | None = None,
        ray: str | None = None,
        ray_workers: int | None = None,
        dtype: str | None = None,
        models: str | None = None,
        pose_scale: float | None = None,
    ) -> list[IngestOutcome]:
        """Ingest every scan at or below the given folder(s); one atomic commit per scan.

        siglip / dinov2: encoder objects, hub ids or local directories (None: the model the space was
        built with, else the default hub id; ``dinov2=False`` skips the image-image space).
        sam: a SAM predictor, a segment-anything checkpoint path or a transformers SAM hub id / directory
        (None: the ``models`` preset's, else box crops; False: box crops).
        format: the capture format of the scans, or "auto" (recognised from each folder's contents).
        pose_scale: metres per pose unit of nerfstudio captures with non-metric (COLMAP) poses (see
        :func:`om3db.scan.read_scan`); stored with each scan so later reads use it too.
        dtype: the encoders' and SAM's compute dtype: None / "auto" applies the hardware policy (bfloat16
        only where the CPU computes it natively, or on CUDA), "float32", "bfloat16", "float16" force one
        (a half dtype the CPU only emulates is refused). Vectors are float32 unit rows either way.
        models: a preset (``"cpu"`` | ``"full"``, om3db.embed.MODEL_PRESETS) for spaces not built yet and
        models not named; its SAM is used when ``sam`` is None.
        Scans whose fingerprint and settings are unchanged are skipped unless ``force``.
        Holds the writer lock for the whole call; index files are saved at the end (and every minute).
        ray: run the per-scan work on Ray actors (``om3db.distributed``): "local" starts Ray on this
        machine, else the address of a cluster to join; this process still commits scan by scan, in
        order. A scan that fails there after retries is returned with status "failed", the others commit.
        ray_workers: how many actors (default: one per GPU of the cluster, else one per CPU).
        """
        from .ingest import IngestConfig, ReadOptions

        if ray is not None:
            from .distributed import check_ray_address

            check_ray_address(ray)  # an address nobody answers at: refused before any work
        config = config or IngestConfig()
        read = ReadOptions(
            depth_scale=depth_scale, pose_convention=pose_convention, format=format, pose_scale=pose_scale
        )
        with self._store.lock:
            self._store.check_view_vectors(config.view_vectors)  # before any model loads or scan work
            stored = {s.name: s for s in self._store.scan_infos(include_incomplete=True)}
            try:
                out, plan = self._ingest_locked(
                    paths_or_root,
                    config=config,
                    stored=stored,
                    progress=progress,
                    models={"siglip": siglip, "dinov2": dinov2},
                    sam=sam,
                    dtype=None if dtype in (None, "auto") else dtype,
                    preset=models,
                    force=force,
                    read=read,
                    ray=ray,
                    ray_workers=ray_workers,
                )
            except KeyboardInterrupt as exc:
                # an index may have been mid-update in memory: forget them all (SQLite and the files on
                # disk are consistent; what the files lack is rebuilt from SQLite on the next open)
                self._store.forget_indexes()
                raise Interrupted(getattr(exc, "signum", 2), self._committed_since(stored)) from exc
            self._store.flush()  # index files once per call, not per scan (a crash only costs a rebuild)
            if progress is not None:
                progress("", "scans", len(plan.folders), len(plan.folders))
            return out

    def _ingest_locked(
        self,
        paths_or_root,
        *,
        config,
        stored,
        progress,
        models,
        sam,
        force,
        read,
        ray=None,
        ray_workers=None,
        dtype=None,
        preset=None,
    ):
        """The part of :meth:`ingest` under the writer lock: load the models, plan, run."""
        from .embed import compute_settings, model_preset
        from .ingest import plan_ingest, run_plan

        if dtype is not None:
            from .hardware import resolve_dtype

            resolve_dtype(dtype, "auto")  # a refused dtype is named before any model loads
        if preset is not None:
            model_preset(preset)  # an unknown preset, likewise
            if sam is None:
                sam = model_preset(preset)["sam"]
        if sam is False:  # box crops, whatever the preset says
            sam = None
        encoders = {
            space: self._encoder(space, spec, dtype=dtype, preset=preset)
            for space, spec in models.items()
            if spec is not False
        }
        for space, enc in encoders.items():
            _check_encoder_object(space, enc, needs="encode_images")  # an ingest embeds crops
        if isinstance(sam, (str, Path)):
            from .sam import load_sam

            sam_key, sam = str(sam), load_sam(sam, **({} if dtype is None else {"dtype": dtype}))
        else:
            sam_key = _sam_key(sam)
        plan = plan_ingest(
            paths_or_root,
            config=config,
            encoders=encoders,
            sam=sam,
            sam_key=sam_key,
            read=read,
            force=force,
            fused_dir=self.path / "fused",
        )
        self._given.update(encoders)
        last_save = [time.monotonic()]

        compute = compute_settings(encoders, sam)  # which dtype each model runs in, and why

        def write(result, settings: dict) -> None:
            settings = {**settings, "compute": compute}
            save = time.monotonic() - last_save[0] > _SAVE_EVERY_S
            self._store.write_scan(result, settings=settings, save=save)
            if save:
                last_save[0] = time.monotonic()

        if ray is not None:
            from .distributed import run_plan_ray

            out = run_plan_ray(plan, stored=stored, write=write, progress=progress, address=ray, workers=ray_workers)
            return [_with_compute(o, compute) for o in out], plan
        out = run_plan(plan, stored=stored, write=write, progress=progress)
        return [_with_compute(o, compute) for o in out], plan

    def _committed_since(self, before: dict) -> tuple[str, ...]:
        """Names of the scans written since ``before`` (name -> ScanInfo) was read."""

        def state(s):
            return (s.fingerprint, s.updated_at, s.instances, s.settings)

        now = self._store.scan_infos(include_incomplete=True)
        return tuple(s.name for s in now if s.name not in before or state(s) != state(before[s.name]))

    @_open
    def write(self, result, *, settings: dict | None = None) -> int:
        """Store an already computed ``IngestResult`` (replacing a scan of that name); returns its scan id."""
        return self._store.write_scan(result, settings={"key": None, "ingest": result.settings, **(settings or {})})

    @_open
    def remove(self, scan: str) -> int:
        """Delete a scan with its instances and vectors; returns how many instances were removed."""
        return self._store.remove_scan(scan)

    @_open
    def reindex(self, *, relations: bool = True) -> list[str]:
        """Rebuild every FAISS index from SQLite (re-choosing exact / IVF); returns the spaces rebuilt.

        relations: also build the spatial relations of scans ingested before they existed (their points are
        read again from the scan folder); see :attr:`relations_built` and :attr:`relations_failed`."""
        spaces = self._store.reindex()
        self.relations_built, self.relations_failed = self._build_missing_relations() if relations else ([], {})
        return spaces

    relations_built: list[str] = []
    """Scans whose relations the last :meth:`reindex` built."""
    relations_failed: dict[str, str] = {}
    """Scan -> why the last :meth:`reindex` could not build its relations (e.g. its folder is gone)."""

    def _build_missing_relations(self) -> tuple[list[str], dict[str, str]]:
        from .errors import Om3dbError
        from .relations import scan_relations

        done, failed = [], {}
        for name in self._store.scans_without_relations():
            info = self._store.scan_infos(names=[name])[0]
            try:
                scan = read_ingested_scan(info, self.path / "fused")
            except Om3dbError as exc:  # the scan's folder moved or changed: the others still get theirs
                failed[name] = f"{exc}. Put the scan back at {info.path} (or re-ingest it) and run reindex again"
                continue
            insts = self._store.instances(scan=name)
            rel = scan_relations(
                scan.points, [scan.points[i.point_indices] for i in insts], capture_up=scan.capture_info.get("up")
            )
            self._store.set_relations(name, rel)
            done.append(name)
        return done, failed

    @_open
    def check(self):
        """Check every part of the database without changing it: SQLite integrity, every stored blob
        decodes, every FAISS index agrees with SQLite. Returns a ``CheckReport`` whose problems name the
        scan / instance / index and the repair (``reindex`` for index files, re-ingesting a scan for
        damaged rows)."""
        return self._store.check()

    @_open
    def index_kinds(self) -> dict[str, str]:
        """'space.level' -> the kind of its index ('flat' exact search or 'ivf')."""
        return self._store.index_kinds()

    # -- reads ------------------------------------------------------------------------------

    @_open
    def query(self, text: str | None = None, image=None) -> Query:
        """A query to refine and run: ``db.query(text="a mug").where(scans=["kitchen"]).limit(5).to_list()``."""
        return Query(self, text=text, image=image)

    @_open
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
        filters: Filters | None = None,
        with_points: bool = False,
        encoder=None,
        space: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        on: str | None = None,
        near: str | None = None,
        inside: str | None = None,
        above: str | None = None,
        below: str | None = None,
        next_to: str | None = None,
        relation: tuple[str, str] | None = None,
        within: float | None = None,
        without: Sequence[str] | str = (),
        count_at_least: int | None = None,
        match: float = 0.5,
        candidates: int = 20000,
    ) -> list[Hit]:
        """The k instances most similar to a text (SigLIP) or an image (DINOv2, or ``space="siglip"``).

        Spatial relations (docs/python-api.md): ``on=``, ``near=``, ``inside=``, ``above=``, ``below=``,
        ``next_to=`` (one of them, a noun phrase) or ``relation=(name, text)``; ``within=`` metres;
        ``without=`` noun phrase(s) a scan must not hold; ``count_at_least=`` subjects per scan. With any of
        these the result is a list of ``SceneMatch`` (per scan, best first; k scans at most).

        region: ((xmin, ymin, zmin), (xmax, ymax, zmax)) world metres; region_mode "intersects" (bbox
        overlaps) or "centroid" (centroid inside). min_score: drop hits with a lower similarity.
        filters: a :class:`Filters` value instead of the separate filter arguments.
        encoder: the query encoder (object, hub id or directory); default: see :meth:`query_encoder`.
        """
        if filters is None:
            filters = Filters(
                scans=scans, min_points=min_points, region=region, region_mode=region_mode, min_score=min_score
            )
        q = Query(
            self,
            text=text,
            image=image,
            k=k,
            aggregation=aggregation,
            filters=filters,
            points=with_points,
            encoder=encoder,
            space=space,
            template=template,
            **_relation_args(on, near, inside, above, below, next_to, relation),
            max_distance=within,
            excluded=(without,) if isinstance(without, str) else tuple(without),
            min_count=count_at_least,
            match=match,
            candidates=candidates,
        )
        return q.to_list()

    @_open
    def relations(self, scan: str) -> list[dict]:
        """Every stored spatial relation of a scan: subject and object instance ids, relation, score and
        evidence (distance, gap, overlap). ``same_scan`` holds for every pair and is not listed."""
        self._known_scan(scan)
        if scan in self._store.scans_without_relations([scan]):
            from .relations.query import RelationsMissingError

            raise RelationsMissingError(
                f"{self.path}: scan {scan!r} has no spatial relations (ingested before om3db computed them). "
                "Run `om3db reindex` (db.reindex()) to build them"
            )
        return self._store.relation_rows(scan)

    @_open
    def instance_geometry(self, instance_id: int) -> dict | None:
        """An instance's geometry in its scan's gravity frame (aabb, z range, yaw box, footprint hull, volume),
        None before its scan's relations were built. An id that is not an integer >= 1 raises ConfigError,
        an unknown instance NotFoundError (as :meth:`instance`)."""
        iid = self._instance_id(instance_id)
        geometry = self._store.instance_geometry(iid)
        if geometry is None and not self._store.instances(ids=[iid], with_points=False):
            raise self._no_instance(instance_id)
        return geometry

    @_open
    def gravity(self, scan: str) -> dict | None:
        """A scan's up axis ({"up", "source", "settings"}), None before its relations were built; an
        unknown scan raises NotFoundError (as :meth:`relations`)."""
        up = self._store.gravity(scan)
        if up is None:
            self._known_scan(scan)
        return up

    def _known_scan(self, scan: str) -> None:
        if not isinstance(scan, str):
            raise ConfigError(f"a scan is named by a string (as scans() lists them), got {scan!r}")
        if not self._store.scan_infos(names=[scan]):
            raise NotFoundError(
                f"{self.path}: no scan named {scan!r}. The scans it holds: {self._store.scan_list_text()}"
            )

    @_open
    def _run_query(self, q: Query) -> list[Hit]:
        if q.is_relational:
            from .relations.query import run_relational

            self._store.space(q.space_name, "instance")
            return run_relational(self, q)
        space = q.space_name
        self._store.space(space, "instance")  # a clear error on an empty database before loading a model
        if q.filters.scans is not None:
            known = {s.name for s in self._store.scan_infos(names=q.filters.scans)}
            unknown = [s for s in q.filters.scans if s not in known]
            if unknown:
                raise NotFoundError(f"{self.path}: no scan named {', '.join(map(repr, unknown))}")
        vector = self._query_vector(space, q)
        allowed = None
        if q.filters.restricts_ids:
            f = q.filters
            allowed = self._store.filter_ids(
                scans=f.scans, min_points=f.min_points, region=f.region, region_mode=f.region_mode
            )
        raw = search_space(
            self._store, space, vector, k=q.k, aggregation=q.aggregation, allowed=allowed, min_score=q.filters.min_score
        )
        return self._hits(raw, q.points)

    def _query_vector(self, space: str, q: Query) -> np.ndarray:
        enc = self._encoder(space, q.encoder)
        check_encoder(self._store, space, enc.identity)
        if q.text is not None:
            if not hasattr(enc, "encode_texts"):
                raise ConfigError(f"the {space!r} encoder has no text tower; text queries use the 'siglip' space")
            return np.asarray(enc.encode_texts([q.template.format(q.text)]), dtype=np.float32)[0]
        _check_encoder_object(space, enc, needs="encode_images")
        image = q.image
        if isinstance(image, (str, Path)):
            from .images import DECODE_ERRORS, open_image

            def error(path, problem, fix):
                return ConfigError(f"{path}: the query image: {problem}. {fix or 'Pass a PNG or JPEG file'}")

            with open_image(image, error=error) as img:
                try:
                    image = np.asarray(img.convert("RGB"))
                except DECODE_ERRORS as exc:  # (a broken PNG chunk is a SyntaxError)
                    raise error(q.image, f"cannot be decoded ({exc})", "") from exc
        else:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
                raise ConfigError(f"image must be a path or an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        return np.asarray(enc.encode_images([np.asarray(image, dtype=np.uint8)]), dtype=np.float32)[0]

    def _hits(self, raw, with_points: bool) -> list[Hit]:
        from .store.writer import view_rank

        found = {i.id: i for i in self._store.instances(ids=[h.instance_id for h in raw], with_points=with_points)}
        hits = []
        for h in raw:
            inst = found.get(h.instance_id)
            if inst is None:  # removed between the index search and now
                continue
            rank = int(view_rank(h.view_id)) if h.view_id is not None else 0  # mean: the best view
            v = inst.views[rank] if rank < len(inst.views) else None
            hits.append(
                Hit(
                    inst.id,
                    inst.scan,
                    h.score,
                    None if v is None else v.frame_id,
                    None if v is None or not v.crop_boxes else tuple(v.crop_boxes[0]),
                    inst.point_indices,
                    point_count=inst.point_count,
                    bbox_min=inst.bbox_min,
                    bbox_max=inst.bbox_max,
                    centroid=inst.centroid,
                )
            )
        return hits

    @_open
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
        if isinstance(vocabulary, (str, bytes)):
            raise ConfigError(
                f"vocabulary is one string ({vocabulary!r}), not a list of class names: pass a list, e.g. "
                f"[{vocabulary!r}]"
            )
        vocabulary = list(vocabulary)
        if not vocabulary:
            raise ConfigError("vocabulary is empty: pass at least one class name")
        for name in vocabulary:
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"vocabulary holds {name!r}: every class name must be a non-blank string")
        enc = self._encoder("siglip", encoder)
        check_encoder(self._store, "siglip", enc.identity)
        insts = {i.id: i for i in self.instances(scan)}
        classes = np.asarray(enc.encode_texts([template.format(c) for c in vocabulary]), dtype=np.float32)
        ids, best, score = label_vectors(
            self._store, "siglip", np.array(sorted(insts), dtype=np.int64), classes, aggregation=aggregation
        )
        return [
            Label(int(i), vocabulary[int(b)], int(b), float(sc), insts[int(i)].point_indices)
            for i, b, sc in zip(ids, best, score, strict=True)
        ]

    @_open
    def scans(self, *, include_incomplete: bool = False) -> list[ScanInfo]:
        """Scans in the database, by name (only complete ones unless ``include_incomplete``)."""
        return self._store.scan_infos(include_incomplete=include_incomplete)

    @_open
    def instance(self, instance_id: int) -> Instance:
        """One instance with its views and point indices."""
        found = self._store.instances(ids=[self._instance_id(instance_id)])
        if not found:
            raise self._no_instance(instance_id)
        return found[0]

    def _instance_id(self, instance_id) -> int:
        """An instance id as a Python int: ConfigError when it is not an integer >= 1, NotFoundError past the
        largest id a database can hold (2**63 - 1)."""
        if isinstance(instance_id, bool) or not isinstance(instance_id, (int, np.integer)) or instance_id < 1:
            raise ConfigError(f"instance ids are integers >= 1 (as search returns them), got {instance_id!r}")
        if int(instance_id) > _MAX_ID:
            raise self._no_instance(instance_id)
        return int(instance_id)

    def _no_instance(self, instance_id) -> NotFoundError:
        return NotFoundError(f"{self.path}: no instance {instance_id}. Search first to get instance ids")

    @_open
    def instances(self, scan: str) -> list[Instance]:
        """Every instance of a (complete) scan, by id, with views and point indices."""
        self._known_scan(scan)
        return self._store.instances(scan=scan)

    @_open
    def export(self, hits: Sequence[Hit], out: str | Path) -> list[Path]:
        """Write, per scan with hits, ``<scan>_hits.ply`` (its points, hits in distinct colours, the rest
        grey) and per hit ``hit<rank>_<instance>.png`` (the level-0 crop of its best view)."""
        from PIL import Image

        from .ply import write_ply

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder. Export into a new or existing folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{out}: cannot create the export folder ({exc.strerror})") from exc
        written: list[Path] = []
        by_scan: dict[str, list[tuple[int, Hit]]] = {}
        for rank, h in enumerate(hits, 1):
            by_scan.setdefault(h.scan, []).append((rank, h))
        for scan_name, ranked in by_scan.items():
            info = self._store.scan_infos(names=[scan_name])
            if not info:
                raise NotFoundError(f"{self.path}: no scan named {scan_name!r}")
            scan = read_ingested_scan(info[0], self.path / "fused")
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
            write_ply(path, scan.points, colors)
            written.append(path)
        return sorted(written)

    @_open
    def info(self) -> dict:
        """Versions, faiss build and GPUs, database counts, and per vector space its encoder, the
        encoder queries use, and its index."""
        from . import __version__
        from .store import versions

        spaces = self._store.space_summaries()
        for s in spaces:
            s["query_encoder"] = self.query_encoder(s["name"])
        scans = self.scans()
        from .hardware import detect_cpu, resolve_device, resolve_dtype

        dtype, reason = resolve_dtype(None, "auto")
        return {
            "database": self._store.where,  # the folder, or the URL without its password
            "compute": {
                "device": str(resolve_device("auto")),
                "dtype": dtype,
                "reason": reason,
                "cpu": detect_cpu().describe(),
            },
            "schema_revision": self._store.schema_revision(),
            "om3db": __version__,
            **versions(),
            "scans": len(scans),
            "instances": sum(s.instances for s in scans),
            "spaces": spaces,
        }


def _check_encoder_object(space: str, encoder, *, needs: str | None = None) -> None:
    """An encoder object must carry its identity and encode images and / or texts (docs/python-api.md,
    "Encoders"); ``needs``: the method this use calls."""
    from .records import EncoderIdentity

    methods = [needs] if needs else ["encode_images", "encode_texts"]
    if not isinstance(getattr(encoder, "identity", None), EncoderIdentity) or not any(
        callable(getattr(encoder, m, None)) for m in methods
    ):
        what = f"{needs}()" if needs else "encode_images() or encode_texts()"
        raise ConfigError(
            f"the {space!r} encoder must be a hub id, a model directory or an encoder object with .identity (an "
            f"om3db.records.EncoderIdentity) and {what}, got {type(encoder).__name__}. Load one with "
            f"om3db.embed.load_{space}(...)"
        )


def _with_compute(outcome: IngestOutcome, compute: dict) -> IngestOutcome:
    return dataclasses.replace(outcome, compute=compute) if outcome.status == "ingested" else outcome


def _relation_args(on, near, inside, above, below, next_to, relation) -> dict:
    """search()'s relation keywords as Query fields; at most one may be given."""
    given = [(n, t) for n, t in (("on", on), ("near", near), ("in", inside), ("above", above), ("below", below),
                                 ("next_to", next_to)) if t is not None]  # fmt: skip
    if relation is not None:
        if not (isinstance(relation, (tuple, list)) and len(relation) == 2):
            raise ConfigError(f"relation must be (name, noun phrase), e.g. ('on', 'a table'), got {relation!r}")
        given.append(tuple(relation))
    if len(given) > 1:
        raise ConfigError(f"one relation per query, got {', '.join(n for n, _ in given)}")
    return {"relation": given[0][0], "relation_object": given[0][1]} if given else {}


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


def read_ingested_scan(info: ScanInfo, fused_dir: Path):
    """Re-read a stored scan's folder as it was ingested (reindex, export, the viewer): depth "auto" (captures
    without sensor depth, e.g. 3D Scanner App, get rendered depth), the pose_scale stored in its read settings
    (depth-less nerfstudio captures need it), its fused PLY while that file is still there."""
    from .scan import read_scan

    fused = info.fused_ply if info.fused_ply and Path(info.fused_ply).is_file() else None
    return read_scan(
        info.path, masks=False, check_all_images=False, format=info.source_format, depth="auto",
        fused_dir=Path(fused_dir), ply=fused, pose_scale=_stored_pose_scale(info),
    )  # fmt: skip


def _stored_pose_scale(info) -> float | None:
    """The nerfstudio pose_scale a scan was ingested with (its re-reads need it), else None."""
    return (((info.settings or {}).get("key") or {}).get("read") or {}).get("pose_scale")
