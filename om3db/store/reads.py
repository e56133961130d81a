"""The store's read side: scans, instances, filter ids, index facts. Every SELECT the rest of om3db
needs lives here (``Store`` inherits it), so ``database`` and ``query`` never touch SQL.

Only scans with status 'ready' are visible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import StoreError
from ..results import Instance, ScanInfo
from .writer import unpack_indices, unpack_views

__all__ = ["StoreReads"]


def _geometry(r) -> dict:
    return {
        "point_count": int(r.point_count),
        "bbox_min": (r.bbox_min_x, r.bbox_min_y, r.bbox_min_z),
        "bbox_max": (r.bbox_max_x, r.bbox_max_y, r.bbox_max_z),
        "centroid": (r.centroid_x, r.centroid_y, r.centroid_z),
    }


class StoreReads:
    """Read queries of :class:`om3db.store.Store` (mixed in; uses ``self.engine``, ``self.session``)."""

    def scan_infos(self, *, include_incomplete: bool = False, names: Sequence[str] | None = None) -> list[ScanInfo]:
        """Scans by name with their instance counts (only 'ready' ones unless ``include_incomplete``)."""
        from sqlalchemy import func, select

        from .models import InstanceRow, ScanRow

        q = (
            select(ScanRow, func.count(InstanceRow.id))
            .outerjoin(InstanceRow, InstanceRow.scan_id == ScanRow.id)
            .group_by(ScanRow.id)
            .order_by(ScanRow.name)
        )
        if not include_incomplete:
            q = q.where(ScanRow.status == "ready")
        if names is not None:
            q = q.where(ScanRow.name.in_(list(names)))
        from sqlalchemy.exc import DatabaseError

        try:
            with self.session() as s:
                return self._scan_rows(s, q)
        except DatabaseError as exc:  # e.g. a text column no longer decodes: the file is damaged
            from .catalog import _database_error

            raise _database_error(exc, self.where) from exc
        except ValueError as exc:  # a JSON column no longer parses: the file is damaged
            raise StoreError(
                f"{self.where}: not a readable om3db database (a scan's settings are damaged: {exc}). Restore it "
                "from a backup, or move it away and re-ingest the scans into a new one"
            ) from exc

    @staticmethod
    def _scan_rows(s, q) -> list[ScanInfo]:
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

    def instances(
        self, *, ids: Iterable[int] | None = None, scan: str | None = None, with_points: bool = True
    ) -> list[Instance]:
        """Stored instances of ready scans, by id: those in ``ids`` and / or of the scan named ``scan``.

        with_points: decode the point indices (False leaves ``point_indices`` None; cheaper)."""
        from sqlalchemy import select

        from .models import InstanceRow, ScanRow

        q = (
            select(InstanceRow, ScanRow.name, ScanRow.path)
            .join(ScanRow, ScanRow.id == InstanceRow.scan_id)
            .where(ScanRow.status == "ready")
            .order_by(InstanceRow.id)
        )
        if ids is not None:
            q = q.where(InstanceRow.id.in_([int(i) for i in ids]))
        if scan is not None:
            q = q.where(ScanRow.name == scan)
        with self.session() as s:
            return [self._instance(r, name, path, with_points) for r, name, path in s.execute(q)]

    def _instance(self, r, scan: str, path: str, with_points: bool) -> Instance:
        try:
            views = tuple(unpack_views(r.views))
            points = unpack_indices(r.point_indices) if with_points else None
        except Exception as exc:  # noqa: BLE001 - any decoding failure is damage, named below
            raise StoreError(
                f"{self.root}: instance {r.id} of scan {scan!r} is damaged ({type(exc).__name__}: {exc}). "
                "Re-ingest that scan (or remove it); `om3db check` lists all damage"
            ) from exc
        return Instance(r.id, scan, path, r.mask_index, r.score, views, points, **_geometry(r))

    def filter_ids(
        self,
        *,
        scans: Sequence[str] | None = None,
        min_points: int = 0,
        region: tuple | None = None,
        region_mode: str = "intersects",
    ) -> np.ndarray:
        """(n,) int64 ids of the instances of ready scans passing every given filter.

        region: ((xmin, ymin, zmin), (xmax, ymax, zmax)) world metres; region_mode "intersects" keeps
        instances whose bbox overlaps it, "centroid" those whose centroid lies inside it."""
        from sqlalchemy import select

        from .models import InstanceRow as Inst
        from .models import ScanRow

        q = select(Inst.id).join(ScanRow, ScanRow.id == Inst.scan_id).where(ScanRow.status == "ready")
        if scans is not None:
            q = q.where(ScanRow.name.in_(list(scans)))
        if min_points:
            q = q.where(Inst.point_count >= min_points)
        if region is not None:
            (x0, y0, z0), (x1, y1, z1) = region
            if region_mode == "centroid":
                q = q.where(
                    Inst.centroid_x.between(x0, x1), Inst.centroid_y.between(y0, y1), Inst.centroid_z.between(z0, z1)
                )
            else:
                q = q.where(
                    Inst.bbox_min_x <= x1,
                    Inst.bbox_max_x >= x0,
                    Inst.bbox_min_y <= y1,
                    Inst.bbox_max_y >= y0,
                    Inst.bbox_min_z <= z1,
                    Inst.bbox_max_z >= z0,
                )
        with self.engine.connect() as conn:
            return np.fromiter(conn.execute(q).scalars(), dtype=np.int64)

    def scan_list_text(self, limit: int = 10) -> str:
        """The ready scans' names for a message: "a, b, c and 4 more" (or "none")."""
        names = [s.name for s in self.scan_infos()]
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return ", ".join(names[:limit]) + more if names else "none"

    def index_kinds(self) -> dict[str, str]:
        """'space.level' -> the index kind recorded for it ('flat' exact search or 'ivf')."""
        return {f"{r.name}.{r.level}": r.index_kind for r in self.spaces()}

    def schema_revision(self) -> str | None:
        from .schema import current_revision

        return current_revision(self.engine)

    def space_summaries(self) -> list[dict]:
        """Per vector space: its encoder (model id, revision, dim), vectors held and index kind."""
        out = []
        for row in self.spaces():
            index = self.index(row.name, row.level)
            out.append(
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
        return out


def versions() -> dict:
    """Versions of the storage packages, the faiss build and the GPUs it sees."""
    import faiss
    import sqlalchemy

    from .vectors import gpu_count

    return {
        "faiss": faiss.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "faiss_gpu_build": hasattr(faiss, "StandardGpuResources"),
        "gpus": gpu_count(),
    }
