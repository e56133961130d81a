"""Spatial relations between instances: gravity, per-instance geometry, relations, and the relational
queries built on them (docs/python-api.md, "Spatial relations")."""

from .build import RELATIONS, Relation, RelationConfig, ScanRelations, compute_relations, scan_relations
from .geometry import Gravity, InstanceGeometry, gravity_rotation, gravity_up, instance_geometry

__all__ = [
    "RELATIONS",
    "Relation",
    "RelationConfig",
    "ScanRelations",
    "Gravity",
    "InstanceGeometry",
    "compute_relations",
    "scan_relations",
    "gravity_up",
    "gravity_rotation",
    "instance_geometry",
]
