"""SQLAlchemy 2 ORM models: the source of truth (FAISS indexes are derived from the ``vector_blocks`` table).

Portable types only (no SQLite-specific columns), so the same metadata works on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "ScanRow",
    "InstanceRow",
    "SpaceRow",
    "VectorBlock",
    "ScanGravityRow",
    "InstanceGeometryRow",
    "RelationRow",
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class ScanRow(Base):
    """One ingested scan. Only rows with status 'ready' are visible to queries."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    """sha256 of the scan's inputs (``Scan.fingerprint()``)."""
    frame_count: Mapped[int] = mapped_column(Integer)
    num_points: Mapped[int] = mapped_column(Integer)
    settings: Mapped[dict] = mapped_column(JSON)
    """{"key": what decides a re-ingest (config + encoders), "ingest": IngestResult.settings, "report": ...}."""
    status: Mapped[str] = mapped_column(String(16), default="ready")
    """Always 'ready' as written by this version (a scan's rows appear in the one transaction that writes
    them); queries only see 'ready' rows, so any other value a future version writes stays hidden."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now, onupdate=_now)

    instances: Mapped[list[InstanceRow]] = relationship(
        back_populates="scan", cascade="all, delete-orphan", passive_deletes=True
    )


class InstanceRow(Base):
    """One object instance of a scan (geometry in world metres)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    mask_index: Mapped[int] = mapped_column(Integer)
    point_count: Mapped[int] = mapped_column(Integer, index=True)
    bbox_min_x: Mapped[float] = mapped_column(Float)
    bbox_min_y: Mapped[float] = mapped_column(Float)
    bbox_min_z: Mapped[float] = mapped_column(Float)
    bbox_max_x: Mapped[float] = mapped_column(Float)
    bbox_max_y: Mapped[float] = mapped_column(Float)
    bbox_max_z: Mapped[float] = mapped_column(Float)
    centroid_x: Mapped[float] = mapped_column(Float)
    centroid_y: Mapped[float] = mapped_column(Float)
    centroid_z: Mapped[float] = mapped_column(Float)
    point_indices: Mapped[bytes] = mapped_column(LargeBinary)
    """Indices into the scan's PLY vertices, packed by ``writer.pack_indices`` (a codec byte, the first
    index, zlib of the gaps)."""
    score: Mapped[float] = mapped_column(Float)
    """Proposal confidence."""
    views: Mapped[bytes] = mapped_column(LargeBinary)
    """The chosen views, best first, packed by ``om3db.store.writer.pack_views`` (frame id, visible pixels,
    DBSCAN inlier flag and crop boxes per view); read them with ``unpack_views``."""

    scan: Mapped[ScanRow] = relationship(back_populates="instances")


class SpaceRow(Base):
    """A vector space: one encoder at one level ('instance' or 'view'), one FAISS index."""

    __tablename__ = "vector_spaces"
    __table_args__ = (UniqueConstraint("name", "level", name="uq_vector_spaces_name_level"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    """"siglip" | "dinov2"."""
    level: Mapped[str] = mapped_column(String(16))
    """'instance' (FAISS ids = instance ids) | 'view' (FAISS ids = ``view_key(instance id, rank)``)."""
    model_id: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    normalization: Mapped[str] = mapped_column(String(32))
    preprocessing: Mapped[str] = mapped_column(Text)
    index_kind: Mapped[str] = mapped_column(String(32), default="flat")
    """'flat' (exact) | 'ivf' (chosen automatically past a size threshold)."""
    index_params: Mapped[dict] = mapped_column(JSON, default=dict)
    """e.g. {"nlist": 1264, "nprobe": 4, "trained_on": 100000}."""
    generation: Mapped[int] = mapped_column(Integer, default=0)
    """Bumped in the same transaction as every change of this space's vectors; the FAISS file records
    the generation it reflects, so a crash between the SQLite commit and the FAISS save is detected."""


class VectorBlock(Base):
    """The float16 vectors one scan contributes to one space, with their FAISS ids: enough to rebuild
    every FAISS index from SQLite alone. Written in one piece per scan (a few large blobs instead of a
    row per vector) and deleted with its scan.

    Instance spaces: ids are instance ids. View spaces: ids are ``view_key(instance id, rank)`` and only
    DBSCAN-inlier views are kept (outliers take part in neither aggregation).
    """

    __tablename__ = "vector_blocks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    space_id: Mapped[int] = mapped_column(ForeignKey("vector_spaces.id", ondelete="CASCADE"), index=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    count: Mapped[int] = mapped_column(Integer)
    ids: Mapped[bytes] = mapped_column(LargeBinary)
    """(count,) little-endian int64 FAISS ids."""
    data: Mapped[bytes] = mapped_column(LargeBinary)
    """(count, dim) little-endian float16, row i for ids[i]."""


class ScanGravityRow(Base):
    """A scan's up axis and the settings its relations were built with. A ready scan without this row
    was ingested before relations existed (``om3db reindex`` builds them)."""

    __tablename__ = "scan_gravity"

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    up_x: Mapped[float] = mapped_column(Float)
    up_y: Mapped[float] = mapped_column(Float)
    up_z: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))
    """'capture' | 'floor' (RANSAC floor plane) | 'default' (+z assumed)."""
    settings: Mapped[dict] = mapped_column(JSON)
    """The ``RelationConfig`` used, and the seconds relation building took."""


class InstanceGeometryRow(Base):
    """One instance's geometry in its scan's gravity frame (metres)."""

    __tablename__ = "instance_geometry"

    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    min_x: Mapped[float] = mapped_column(Float)
    min_y: Mapped[float] = mapped_column(Float)
    min_z: Mapped[float] = mapped_column(Float)
    max_x: Mapped[float] = mapped_column(Float)
    max_y: Mapped[float] = mapped_column(Float)
    max_z: Mapped[float] = mapped_column(Float)
    yaw: Mapped[float] = mapped_column(Float)
    box: Mapped[dict] = mapped_column(JSON)
    """The yaw-oriented box: {"center": [x, y, z], "extent": [ex, ey, ez]}."""
    footprint_area: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    footprint: Mapped[bytes] = mapped_column(LargeBinary)
    """(H, 2) little-endian float32 convex hull in the floor plane."""
    sample: Mapped[bytes] = mapped_column(LargeBinary)
    """(S, 3) little-endian float32 voxel sample of the instance's points (gravity frame)."""


class RelationRow(Base):
    """``subject`` stands in ``relation`` to ``object`` (two instances of one scan), with its evidence."""

    __tablename__ = "relations"
    __table_args__ = (
        Index("ix_relations_relation_subject", "relation", "subject_id"),
        Index("ix_relations_relation_object", "relation", "object_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    object_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    relation: Mapped[str] = mapped_column(String(16))
    """on | in | near | next_to | above | below."""
    score: Mapped[float] = mapped_column(Float)
    distance: Mapped[float] = mapped_column(Float)
    """Minimum distance between the two instances' points (metres)."""
    gap: Mapped[float] = mapped_column(Float)
    """Subject bottom minus object top along up (metres)."""
    overlap: Mapped[float] = mapped_column(Float)
    """Fraction of the subject's footprint over the object's ('in': fraction inside its hull)."""
