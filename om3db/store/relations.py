"""The store's relation tables: gravity per scan, geometry per instance, relations with evidence.

Written in the same transaction as their scan (``write_relations`` from ``Store.write_scan``), or later
by ``set_relations`` (``om3db reindex`` for scans ingested before relations existed). The relational
join of a query runs here (``relation_pairs``), so ``database`` and ``query`` never touch SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import NotFoundError

__all__ = ["StoreRelations", "write_relations"]


def write_relations(conn, scan_id: int, rel) -> int:
    """Insert a scan's gravity, geometry and relation rows (``rel``: ``ScanRelations``); returns the
    relation count. Instance ids are the scan's, in insertion order (the order of ``result.instances``)."""
    from sqlalchemy import insert, select

    from .models import InstanceGeometryRow, InstanceRow, RelationRow, ScanGravityRow

    ids = [
        r[0]
        for r in conn.execute(select(InstanceRow.id).where(InstanceRow.scan_id == scan_id).order_by(InstanceRow.id))
    ]
    if len(ids) != len(rel.geometry):
        raise ValueError(f"scan {scan_id}: {len(rel.geometry)} geometries for {len(ids)} instances")
    g = rel.gravity
    settings = {
        "config": rel.config.to_dict(),
        "seconds": round(float(rel.seconds), 4),
        "floor_inliers": g.floor_inliers,
    }
    conn.execute(
        insert(ScanGravityRow),
        [
            {
                "scan_id": scan_id,
                "up_x": g.up[0],
                "up_y": g.up[1],
                "up_z": g.up[2],
                "source": g.source,
                "settings": settings,
            }
        ],
    )
    if ids:
        conn.execute(
            insert(InstanceGeometryRow),
            [
                {
                    "instance_id": i,
                    "scan_id": scan_id,
                    "min_x": m.aabb_min[0],
                    "min_y": m.aabb_min[1],
                    "min_z": m.aabb_min[2],
                    "max_x": m.aabb_max[0],
                    "max_y": m.aabb_max[1],
                    "max_z": m.aabb_max[2],
                    "yaw": m.yaw,
                    "box": {"center": list(m.obb_center), "extent": list(m.obb_extent)},
                    "footprint_area": m.footprint_area,
                    "volume": m.volume,
                    "footprint": np.ascontiguousarray(m.footprint, dtype="<f4").tobytes(),
                    "sample": np.ascontiguousarray(m.sample, dtype="<f4").tobytes(),
                }  # fmt: skip
                for i, m in zip(ids, rel.geometry, strict=True)
            ],
        )
    rows = [
        {
            "scan_id": scan_id,
            "subject_id": ids[r.subject],
            "object_id": ids[r.object],
            "relation": r.relation,
            "score": float(r.score),
            "distance": float(r.distance),
            "gap": float(r.gap),
            "overlap": float(r.overlap),
        }  # fmt: skip
        for r in rel.relations
    ]
    if rows:
        conn.execute(insert(RelationRow), rows)
    return len(rows)


class StoreRelations:
    """Relation reads and writes of :class:`om3db.store.Store` (mixed in)."""

    def set_relations(self, scan: str, rel) -> int:
        """Replace one ready scan's gravity, geometry and relations (writer lock taken); returns the count."""
        from sqlalchemy import delete, select

        from .models import InstanceGeometryRow, RelationRow, ScanGravityRow, ScanRow

        with self.lock:
            with self.session() as s, s.begin():
                self._lock_writes(s)
                scan_id = s.scalar(select(ScanRow.id).where(ScanRow.name == scan, ScanRow.status == "ready"))
                if scan_id is None:
                    raise NotFoundError(f"{self.where}: no scan named {scan!r}")
                for table in (RelationRow, InstanceGeometryRow, ScanGravityRow):
                    s.execute(delete(table).where(table.scan_id == scan_id))
                return write_relations(s.connection(), scan_id, rel)

    def scans_without_relations(self, names: Sequence[str] | None = None) -> list[str]:
        """Ready scans (of ``names``, or all) with no relations built: ingested before they existed."""
        from sqlalchemy import select

        from .models import ScanGravityRow, ScanRow

        q = (
            select(ScanRow.name)
            .outerjoin(ScanGravityRow, ScanGravityRow.scan_id == ScanRow.id)
            .where(ScanRow.status == "ready", ScanGravityRow.scan_id.is_(None))
            .order_by(ScanRow.name)
        )
        if names is not None:
            q = q.where(ScanRow.name.in_(list(names)))
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]

    def relation_thresholds(self, name: str) -> list[float]:
        """The distinct values of ``RelationConfig.<name>`` the stored scans' relations were built with.

        Remembered per (gravity rows, newest scan id, vector-space generations): reading every scan's
        settings took ~25 ms per query at 10,000 scans; they change only when a scan is written (its vectors:
        a generation), removed or given relations by reindex (a gravity row)."""
        from sqlalchemy import func, select

        from .models import ScanGravityRow, SpaceRow

        value = ScanGravityRow.settings["config"][name].as_float()
        with self.engine.connect() as conn:
            key = tuple(conn.execute(select(func.count(), func.max(ScanGravityRow.scan_id))).one())
            key += (conn.execute(select(func.sum(SpaceRow.generation))).scalar(),)
            cache = self.__dict__.setdefault("_thresholds", {})
            if name not in cache or cache[name][0] != key:
                found = conn.execute(select(value).distinct().where(value.is_not(None))).scalars()
                cache[name] = (key, sorted(float(v) for v in found))
        return list(cache[name][1])

    def gravity(self, scan: str) -> dict | None:
        """{"up": (x, y, z), "source": ..., "settings": ...} of a ready scan, None before relations were built."""
        from sqlalchemy import select

        from .models import ScanGravityRow, ScanRow

        q = select(ScanGravityRow).join(ScanRow, ScanRow.id == ScanGravityRow.scan_id).where(ScanRow.name == scan)
        with self.session() as s:
            r = s.scalars(q).first()
            if r is None:
                return None
            return {"up": (r.up_x, r.up_y, r.up_z), "source": r.source, "settings": dict(r.settings or {})}

    def instance_geometry(self, instance_id: int) -> dict | None:
        """An instance's gravity-frame geometry (JSON-able), None when not built."""
        from .models import InstanceGeometryRow

        with self.session() as s:
            r = s.get(InstanceGeometryRow, int(instance_id))
            if r is None:
                return None
            sample = np.frombuffer(r.sample, dtype="<f4").reshape(-1, 3)
            return {
                "aabb_min": (r.min_x, r.min_y, r.min_z),
                "aabb_max": (r.max_x, r.max_y, r.max_z),
                "z_range": (r.min_z, r.max_z),
                "yaw": r.yaw,
                "box": dict(r.box),
                "footprint": np.frombuffer(r.footprint, dtype="<f4").reshape(-1, 2).tolist(),
                "footprint_area": r.footprint_area,
                "volume": r.volume,
                "sample_points": len(sample),
            }

    def relation_rows(self, scan: str) -> list[dict]:
        """Every stored relation of a ready scan, by (relation, subject, object)."""
        from sqlalchemy import select

        from .models import RelationRow, ScanRow

        q = (
            select(RelationRow)
            .join(ScanRow, ScanRow.id == RelationRow.scan_id)
            .where(ScanRow.name == scan, ScanRow.status == "ready")
            .order_by(RelationRow.relation, RelationRow.subject_id, RelationRow.object_id)
        )
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def relation_pairs(
        self,
        relation: str,
        subjects: Sequence[int] | None = None,
        objects: Sequence[int] | None = None,
        *,
        max_distance: float | None = None,
    ) -> list[tuple]:
        """The join of a relational query, as tuples (subject_id, object_id, scan name, score, distance,
        gap, overlap): stored ``relation`` rows in ready scans from any of ``subjects`` (by the (relation,
        subject_id) index) to any of ``objects`` (None: any), or with ``subjects`` None from any instance to
        ``objects`` (by the (relation, object_id) index); distance at most ``max_distance``. The ids are
        bound as one parameter (`_in_ids`). ``same_scan`` (subjects needed): every pair of distinct
        instances of one ready scan (score 1, evidence: centroid distance)."""
        if subjects is None:
            if relation == "same_scan" or objects is None:
                raise ValueError("relation_pairs needs subjects for same_scan, and subjects or objects")
            return self._stored_pairs(relation, "object_id", sorted({int(i) for i in objects}), max_distance)
        subjects = sorted({int(i) for i in subjects})
        wanted = None if objects is None else {int(i) for i in objects}
        if not subjects or wanted is not None and not wanted:
            return []
        if relation == "same_scan":
            rows = self._same_scan_pairs(subjects, max_distance)
        else:
            rows = self._stored_pairs(relation, "subject_id", subjects, max_distance)
        return rows if wanted is None else [r for r in rows if r[1] in wanted]

    def _same_scan_pairs(self, subjects: list[int], max_distance: float | None) -> list[tuple]:
        from sqlalchemy import select
        from sqlalchemy.orm import aliased

        from .models import InstanceRow, ScanRow

        a, b = aliased(InstanceRow), aliased(InstanceRow)
        q = (
            select(a.id, b.id, ScanRow.name, a.centroid_x, a.centroid_y, a.centroid_z,
                   b.centroid_x, b.centroid_y, b.centroid_z)
            .join(b, (b.scan_id == a.scan_id) & (b.id != a.id))
            .join(ScanRow, ScanRow.id == a.scan_id)
            .where(self._in_ids(a.id, "ids"), ScanRow.status == "ready")
        )  # fmt: skip
        with self.engine.connect() as conn:
            rows = conn.execute(q, {"ids": self._ids_value(subjects)}).all()
        out = []
        for r in rows:
            d = float(np.linalg.norm(np.subtract(r[3:6], r[6:9])))
            if max_distance is None or d <= max_distance:
                out.append((r[0], r[1], r[2], 1.0, d, float("nan"), float("nan")))
        return out

    def scans_of(self, ids) -> set[str]:
        """The names of the (ready) scans holding any of these instance ids."""
        from sqlalchemy import select

        from .models import InstanceRow, ScanRow

        if not len(ids):
            return set()
        q = (
            select(ScanRow.name)
            .distinct()
            .join(InstanceRow, InstanceRow.scan_id == ScanRow.id)
            .where(self._in_ids(InstanceRow.id, "ids"), ScanRow.status == "ready")
        )
        with self.engine.connect() as conn:
            return set(conn.execute(q, {"ids": self._ids_value(ids)}).scalars())

    def _stored_pairs(self, relation: str, side: str, ids: list[int], max_distance: float | None) -> list[tuple]:
        """Stored ``relation`` rows whose ``side`` ('subject_id' or 'object_id') is one of ``ids``, in ready
        scans, by the (relation, side) index: (subject_id, object_id, scan name, score, distance, gap, overlap)."""
        from sqlalchemy import select

        from .models import RelationRow, ScanRow

        r = RelationRow
        if not ids:
            return []
        q = (
            select(r.subject_id, r.object_id, ScanRow.name, r.score, r.distance, r.gap, r.overlap)
            .join(ScanRow, ScanRow.id == r.scan_id)
            .where(r.relation == relation, self._in_ids(getattr(r, side), "ids"), ScanRow.status == "ready")
        )
        if max_distance is not None:
            q = q.where(r.distance <= float(max_distance))
        with self.engine.connect() as conn:
            return conn.execute(q, {"ids": self._ids_value(ids)}).all()

    def _in_ids(self, column, name: str):
        """``column IN`` a list of ids bound as ONE parameter ``name`` (`_ids_value`): a JSON array read by
        SQLite's json_each, an array on PostgreSQL. Thousands of ids bound one by one cost more to render
        and bind than the lookups themselves (docs/benchmarks.md, relations)."""
        from sqlalchemy import BigInteger, any_, bindparam, func, literal_column, select

        if self.engine.dialect.name == "sqlite":
            return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(name))))
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == any_(bindparam(name, type_=ARRAY(BigInteger)))

    def _ids_value(self, ids):
        import json

        ids = np.asarray(ids, dtype=np.int64).tolist()
        return json.dumps(ids) if self.engine.dialect.name == "sqlite" else ids

    def instance_scans(self, ids: Sequence[int]) -> dict[int, str]:
        """Instance id -> the name of its (ready) scan."""
        from sqlalchemy import select

        from .models import InstanceRow, ScanRow

        if not len(ids):
            return {}
        q = (
            select(InstanceRow.id, ScanRow.name)
            .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
            .where(self._in_ids(InstanceRow.id, "ids"), ScanRow.status == "ready")
        )
        with self.engine.connect() as conn:
            return dict(conn.execute(q, {"ids": self._ids_value(ids)}).all())


def _row(r) -> dict:
    return {
        "subject_id": int(r.subject_id),
        "object_id": int(r.object_id),
        "relation": r.relation,
        "score": float(r.score),
        "distance": float(r.distance),
        "gap": float(r.gap),
        "overlap": float(r.overlap),
    }
