"""The store: SQLAlchemy models + Alembic migrations (SQLite by default) and FAISS vector indexes.

The only code in om3db that talks to SQLite or FAISS. SQLite is the source of truth; every FAISS
index is derived from the ``vector_blocks`` table and can be rebuilt from it at any time.
"""

from __future__ import annotations

from .catalog import CHECKPOINT_HOOKS, LEVELS, Store, pack_indices, unpack_indices, upgrade_database
from .reads import versions
from .vectors import DEFAULT_IVF_THRESHOLD, IndexChoice, VectorIndex, gpu_count, recall_at_k

__all__ = [
    "Store",
    "upgrade_database",
    "versions",
    "VectorIndex",
    "IndexChoice",
    "LEVELS",
    "CHECKPOINT_HOOKS",
    "DEFAULT_IVF_THRESHOLD",
    "gpu_count",
    "recall_at_k",
    "pack_indices",
    "unpack_indices",
]
