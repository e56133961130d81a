"""om3db: an open-vocabulary 3D scene database.

``import om3db`` is cheap: heavy packages (torch, transformers, open3d, faiss, sqlalchemy) load
where they are used. Public names resolve lazily.
"""

from __future__ import annotations

import importlib

from .errors import (
    ConfigError,
    DatabaseBusyError,
    EncoderMismatchError,
    EvaluationError,
    Interrupted,
    MaskFileError,
    ModelLoadError,
    NotFoundError,
    Om3dbError,
    ScanError,
    SchemaOutOfDateError,
    StoreError,
)

__version__ = "0.1.0"

_LAZY = {
    "read_scan": "om3db.scan",
    "Scan": "om3db.scan",
    "Frame": "om3db.scan",
    "Intrinsics": "om3db.camera",
    "EncoderIdentity": "om3db.records",
    "InstanceRecord": "om3db.records",
    "IngestResult": "om3db.records",
    "IngestReport": "om3db.records",
    "IngestConfig": "om3db.ingest",
    "ingest_scan": "om3db.ingest",
    "connect": "om3db.database",
    "upgrade_database": "om3db.database",
    "Database": "om3db.database",
    "Query": "om3db.query",
    "Filters": "om3db.query",
    "DEFAULT_TEMPLATE": "om3db.query",
    "View": "om3db.records",
    "Geometry": "om3db.records",
    "Hit": "om3db.results",
    "ScanInfo": "om3db.results",
    "Instance": "om3db.results",
    "Label": "om3db.results",
    "IngestOutcome": "om3db.results",
    "IngestPlan": "om3db.ingest",
    "CheckReport": "om3db.store.check",
    "RelationConfig": "om3db.relations",
    "SceneMatch": "om3db.relations.query",
    "RelationHit": "om3db.relations.query",
}

__all__ = [
    "__version__",
    "ConfigError",
    "DatabaseBusyError",
    "EncoderMismatchError",
    "EvaluationError",
    "MaskFileError",
    "ModelLoadError",
    "NotFoundError",
    "Om3dbError",
    "ScanError",
    "SchemaOutOfDateError",
    "StoreError",
    "Interrupted",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'om3db' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
