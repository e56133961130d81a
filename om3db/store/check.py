"""``Store.check()``: is every part of the database readable and consistent, and what repairs it.

Checks, without changing anything: SQLite's own integrity check; every instance's packed point
indices (decode, within the scan's point count, as many as its point count), views and geometry (finite,
box minimum below maximum); every vector block (sizes match its count and the space's dimension, ids are
this scan's instances); every FAISS index (file + change log load, reach SQLite's generation, hold
exactly SQLite's ids, and per id the same float16 vector, compared by digest). Each problem names the scan / instance / space
and the repair: ``om3db reindex`` for index files (derived data), re-ingesting (or removing) a scan
for damaged rows, a backup for a damaged SQLite file. Spatial relations: each scan's up axis (finite,
unit, a known source), one geometry row per instance (finite numbers, footprint and sample blobs that
decode), every relation between two instances of its own scan, a known relation, finite evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import StoreError
from .vectors import code_digests
from .writer import unpack_indices, unpack_views, view_owner

__all__ = ["CheckReport", "Problem", "StoreCheck"]

REINDEX = "run `om3db reindex` (index files are rebuilt from SQLite; nothing is lost)"
REINGEST = "re-ingest that scan (force=True; or remove it)"
RESTORE = "restore om3db.sqlite from a backup, or move it away and re-ingest the scans into a new database"


@dataclass(frozen=True)
class Problem:
    """One thing found wrong."""

    where: str
    """'database', 'scan NAME', 'instance ID (scan NAME)' or 'index SPACE.LEVEL'."""
    problem: str
    repair: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}. Repair: {self.repair}"


@dataclass(frozen=True)
class CheckReport:
    """What ``check`` looked at and found."""

    scans: int
    instances: int
    vectors: int
    indexes: int
    problems: tuple[Problem, ...] = field(default=())
    relations: int = 0
    """Relation rows looked at."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "scans": self.scans,
            "instances": self.instances,
            "vectors": self.vectors,
            "indexes": self.indexes,
            "relations": self.relations,
            "problems": [{"where": p.where, "problem": p.problem, "repair": p.repair} for p in self.problems],
        }


_GEOMETRY = tuple(f"{k}_{a}" for k in ("bbox_min", "bbox_max", "centroid") for a in "xyz")


def _bad_geometry(values) -> str | None:
    """What is wrong with an instance row's bbox_min, bbox_max, centroid (9 numbers), or None."""
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    if not np.isfinite(v).all():
        names = [n for n, x in zip(_GEOMETRY, v, strict=True) if not np.isfinite(x)]
        return f"non-finite geometry ({', '.join(names)})"
    if (v[0:3] > v[3:6]).any():
        return "its box minimum exceeds its maximum"
    return None


def _unusable_index_file(path, generation: int) -> str:
    """Why an index file (+ its change log) does not give the database's generation of the index."""
    from .vectors import VectorIndex

    healed = (
        "an open that can write (the next search or ingest while no other process holds the write lock) "
        "rebuilds and saves it; until then every open rebuilds it in memory"
    )
    if not path.exists():
        return f"its file is missing (never saved, e.g. an ingest interrupted before its first save): {healed}"
    head = VectorIndex.read_header(path)
    if head is None:
        return f"its file is damaged (no index header): {healed}"
    if int(head.get("generation", -1)) > generation:
        return f"its file is ahead of the database (generation {head.get('generation')} > {generation}): {healed}"
    try:
        VectorIndex.load(path, use_gpu=False)
    except StoreError:
        return f"its file is damaged (it does not load): {healed}"
    return (
        f"its file and change log stop before the database's changes (an ingest interrupted or crashed before "
        f"saving them): {healed}"
    )


def _differing_ids(index: tuple[np.ndarray, np.ndarray], stored: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Ids whose digest differs between the index and SQLite (both hold the same ids, in any order)."""
    (a_ids, a_dig), (b_ids, b_dig) = index, stored
    a, b = np.argsort(a_ids, kind="stable"), np.argsort(b_ids, kind="stable")
    return a_ids[a][a_dig[a] != b_dig[b].astype(np.uint64)]


class StoreCheck:
    """``check()`` of :class:`om3db.store.Store` (mixed in)."""

    def check(self) -> CheckReport:
        from sqlalchemy.exc import SQLAlchemyError

        problems: list[Problem] = []
        problems += self._check_sqlite()
        if problems:  # a damaged file: reading rows would only add noise
            return CheckReport(0, 0, 0, 0, tuple(problems))
        try:
            n_scans, n_inst, owners, found = self._check_rows()
            problems += found
            n_vec, n_idx, found = self._check_vectors(owners)
            problems += found
            n_rel, found = self._check_relations(owners)
            problems += found
        except StoreError as exc:  # rows SQLite itself can no longer read (a damaged page or text)
            return CheckReport(0, 0, 0, 0, (*problems, Problem("database", str(exc), RESTORE)))
        except SQLAlchemyError as exc:  # a damaged schema (a column renamed by flipped bytes, ...)
            cause = getattr(exc, "orig", None) or exc
            problem = f"SQLite cannot read its tables ({type(cause).__name__}: {cause})"
            return CheckReport(0, 0, 0, 0, (*problems, Problem("database", problem, RESTORE)))
        return CheckReport(n_scans, n_inst, n_vec, n_idx, tuple(problems), n_rel)

    def _check_relations(self, owners: dict[int, str]) -> tuple[int, list[Problem]]:
        from sqlalchemy import select

        from ..relations import RELATIONS
        from .models import InstanceGeometryRow as Geo
        from .models import RelationRow, ScanGravityRow, ScanRow

        problems: list[Problem] = []
        n_rel = 0
        with self.engine.connect() as conn:
            names = dict(conn.execute(select(ScanRow.id, ScanRow.name).where(ScanRow.status == "ready")).all())
            with_gravity = set()
            for r in conn.execute(select(ScanGravityRow)):
                if r.scan_id not in names:
                    continue
                with_gravity.add(names[r.scan_id])
                up = np.array([r.up_x, r.up_y, r.up_z], dtype=np.float64)
                if not np.isfinite(up).all() or abs(np.linalg.norm(up) - 1) > 1e-3:
                    problems.append(
                        Problem(f"scan {names[r.scan_id]}", f"up axis {up.tolist()} is not a unit vector", REINGEST)
                    )
                if r.source not in ("capture", "floor", "default"):
                    problems.append(
                        Problem(f"scan {names[r.scan_id]}", f"unknown up-axis source {r.source!r}", REINGEST)
                    )
            geo_of: dict[str, int] = {}
            for g in conn.execute(select(Geo)):
                scan = owners.get(g.instance_id)
                if scan is None:
                    continue
                geo_of[scan] = geo_of.get(scan, 0) + 1
                where = f"instance {g.instance_id} (scan {scan})"
                nums = [g.min_x, g.min_y, g.min_z, g.max_x, g.max_y, g.max_z, g.yaw, g.footprint_area, g.volume]
                if not np.isfinite(np.asarray(nums, dtype=np.float64)).all():
                    problems.append(Problem(where, "its gravity-frame geometry has non-finite numbers", REINGEST))
                if len(g.footprint or b"") % 8 or len(g.sample or b"") % 12:
                    problems.append(Problem(where, "its footprint or point sample blob is damaged", REINGEST))
            per_scan: dict[str, int] = {}
            for scan in owners.values():
                per_scan[scan] = per_scan.get(scan, 0) + 1
            for scan in sorted(with_gravity):
                if geo_of.get(scan, 0) != per_scan.get(scan, 0):
                    problems.append(
                        Problem(
                            f"scan {scan}",
                            f"{geo_of.get(scan, 0)} instance geometries for {per_scan.get(scan, 0)} instances",
                            REINGEST,
                        )
                    )
            cols = (RelationRow.id, RelationRow.scan_id, RelationRow.subject_id, RelationRow.object_id, RelationRow.relation,
                    RelationRow.score, RelationRow.distance, RelationRow.gap, RelationRow.overlap)  # fmt: skip
            for rid, scan_id, s_id, o_id, relation, *evidence in conn.execute(select(*cols)):
                scan = names.get(scan_id)
                if scan is None:
                    continue
                n_rel += 1
                where = f"relation {rid} (scan {scan})"
                if owners.get(s_id) != scan or owners.get(o_id) != scan or s_id == o_id:
                    problems.append(
                        Problem(where, f"joins instances {s_id} and {o_id}, not two of this scan's", REINGEST)
                    )
                if relation not in RELATIONS:
                    problems.append(Problem(where, f"unknown relation {relation!r}", REINGEST))
                if not np.isfinite(np.asarray(evidence, dtype=np.float64)).all():
                    problems.append(Problem(where, f"evidence is not finite ({evidence})", REINGEST))
        return n_rel, problems

    def _check_sqlite(self) -> list[Problem]:
        from sqlalchemy import text

        if self.engine.dialect.name != "sqlite":
            return []
        try:
            with self.engine.connect() as conn:
                rows = [r[0] for r in conn.execute(text("PRAGMA integrity_check"))]
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding
            return [Problem("database", f"SQLite cannot read the file ({exc})", RESTORE)]
        if rows != ["ok"]:
            return [Problem("database", f"SQLite integrity check: {'; '.join(rows[:5])}", RESTORE)]
        return []

    def _check_rows(self):
        from sqlalchemy import select

        from .models import InstanceRow, ScanRow

        problems = []
        owners: dict[int, str] = {}
        with self.engine.connect() as conn:
            scans = {
                r.id: (r.name, r.num_points) for r in conn.execute(select(ScanRow).where(ScanRow.status == "ready"))
            }
            cols = (InstanceRow.id, InstanceRow.scan_id, InstanceRow.point_indices, InstanceRow.views)
            cols += (InstanceRow.point_count, *(getattr(InstanceRow, c) for c in _GEOMETRY))
            for iid, scan_id, packed, views, point_count, *geometry in conn.execute(select(*cols)):
                if scan_id not in scans:
                    continue
                name, num_points = scans[scan_id]
                owners[iid] = name
                where = f"instance {iid} (scan {name})"
                bad = _bad_geometry(geometry)
                if bad:
                    problems.append(Problem(where, bad, REINGEST))
                try:
                    idx = unpack_indices(packed)
                    if len(idx) and (idx.min() < 0 or idx.max() >= num_points):
                        problems.append(
                            Problem(where, f"point indices outside the scan's {num_points} points", REINGEST)
                        )
                    elif point_count != len(idx):
                        problems.append(
                            Problem(where, f"point count {point_count} but {len(idx)} point indices", REINGEST)
                        )
                except Exception as exc:  # noqa: BLE001 - any decoding failure is the finding
                    problems.append(Problem(where, f"point indices do not decode ({type(exc).__name__})", REINGEST))
                try:
                    unpack_views(views)
                except Exception as exc:  # noqa: BLE001
                    problems.append(Problem(where, f"views do not decode ({type(exc).__name__})", REINGEST))
        return len(scans), len(owners), owners, problems

    def _check_vectors(self, owners: dict[int, str]):
        from sqlalchemy import select

        from .models import ScanRow, VectorBlock
        from .spaceindex import SpaceIndex

        problems = []
        total = 0
        spaces = self.spaces()
        for row in spaces:
            label = f"{row.name}.{row.level}"
            q = (
                select(VectorBlock.ids, VectorBlock.data, VectorBlock.count, ScanRow.name)
                .join(ScanRow, ScanRow.id == VectorBlock.scan_id)
                .where(VectorBlock.space_id == row.id, ScanRow.status == "ready")
            )
            ids_parts, digest_parts = [], []
            damaged = False
            with self.engine.connect() as conn:
                for ids, data, count, scan in conn.execute(q):
                    if len(ids) != 8 * count or len(data) != 2 * count * row.dim:
                        problems.append(
                            Problem(
                                f"scan {scan}",
                                f"its {label} vector block is damaged ({len(ids)} id bytes, {len(data)} vector "
                                f"bytes for {count} vectors of dim {row.dim})",
                                REINGEST,
                            )
                        )
                        damaged = True
                        continue
                    part = np.frombuffer(ids, dtype="<i8").astype(np.int64)
                    inst = part if row.level == "instance" else view_owner(part)
                    strangers = [int(i) for i in np.unique(inst) if owners.get(int(i)) != scan]
                    if strangers:
                        problems.append(
                            Problem(
                                f"scan {scan}",
                                f"its {label} vectors name instances it does not hold ({strangers[:5]})",
                                REINGEST,
                            )
                        )
                    ids_parts.append(part)
                    digest_parts.append(code_digests(np.frombuffer(data, np.uint8).reshape(count, 2 * row.dim)))
            held_ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int64)
            held = np.sort(held_ids)
            total += len(held)
            if damaged:
                continue  # the index cannot be compared with rows that do not decode
            sp = SpaceIndex(row.name, row.level, self.index_path(row.name, row.level), use_gpu=False)
            index = sp.load(row.generation)
            if index is None:
                problems.append(Problem(f"index {label}", _unusable_index_file(sp.path, row.generation), REINDEX))
            elif not np.array_equal(np.sort(index.ids()), held):
                problems.append(
                    Problem(
                        f"index {label}",
                        f"holds {index.ntotal} vectors, the database {len(held)}, or other ids",
                        REINDEX,
                    )
                )
            else:
                differ = _differing_ids(index.digests(), (held_ids, np.concatenate(digest_parts or [[]])))
                if len(differ):
                    problems.append(
                        Problem(
                            f"index {label}",
                            f"{len(differ)} of its vectors differ from the database's (ids {differ[:5].tolist()}): "
                            "searches would score them wrongly",
                            REINDEX,
                        )
                    )
        return total, len(spaces), problems
