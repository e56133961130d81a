"""Arrangement scenes: instance point sets with exact relation ground truth (``on``, ``in``, ``near``).

A separate scene kind (nothing here touches ``build_scene``, so every scan the generator wrote before
is byte-identical). Each scene is a floor and stations of objects built from the same surface meshes
as the rendered scenes (``mesh.object_parts``): a box with a cylinder on it (gap 0), a box with a sphere
hovering 4.9 cm above it (on, at a 5 cm threshold), a box with a cone 5.1 cm above it (above, not on),
an open box (no lid) holding a small box (in), and lone objects. Points are the mesh vertices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .mesh import object_parts, room_parts
from .scene import PALETTE, SynthObject

__all__ = ["Arrangement", "arrangement_scene", "near_truth"]


@dataclass(frozen=True)
class Arrangement:
    """An arrangement scene (world metres, z up)."""

    seed: int
    points: np.ndarray = field(repr=False)
    """(N, 3) float64: the floor, then every instance's points."""
    instances: list[np.ndarray] = field(repr=False)
    """Per instance its (P, 3) float64 points."""
    classes: list[str]
    """Per instance its class (colour name)."""
    on: frozenset[tuple[int, int]]
    """(subject, object) pairs with subject resting on object (gap <= 5 cm, footprint over it)."""
    inside: frozenset[tuple[int, int]]
    """(subject, object) pairs with subject inside the open box object."""
    above: frozenset[tuple[int, int]]
    """(subject, object) pairs stacked by construction (each ``on`` pair, and the 5.1 cm one)."""


def _points(obj: SynthObject, spacing: float, open_top: bool = False) -> np.ndarray:
    parts = object_parts(obj, spacing)
    if open_top:
        parts = parts[:4]  # a box without its lid
    return np.concatenate([v for v, _ in parts]).astype(np.float64)


def arrangement_scene(seed: int, *, spacing: float = 0.02) -> Arrangement:
    """A deterministic arrangement for ``seed``: four stations plus two lone objects on a 6 x 6 m floor."""
    rng = np.random.default_rng([int(seed), 4242])
    colours = list(PALETTE)
    objs: list[tuple[SynthObject, bool]] = []
    on, inside, above = set(), set(), set()
    centres: list[np.ndarray] = []

    def place(radius: float) -> tuple[float, float]:
        for _ in range(1000):
            c = rng.uniform(-2.4, 2.4, 2)
            if all(np.linalg.norm(c - o) > radius + 0.75 for o in centres):
                centres.append(c)
                return float(c[0]), float(c[1])
        raise RuntimeError("arrangement: no room left")  # not reachable with these sizes

    def add(shape, size, centre, base, yaw=0.0, open_top=False) -> int:
        name = colours[len(objs) % len(colours)]
        objs.append((SynthObject(len(objs), name, shape, size, PALETTE[name], centre, base, yaw, -1), open_top))
        return len(objs) - 1

    for top_shape, gap in (("cylinder", 0.0), ("sphere", 0.049), ("cone", 0.051)):
        sx, sy, sz = (round(float(v), 3) for v in rng.uniform([0.35, 0.35, 0.3], [0.6, 0.6, 0.7]))
        centre = place(np.hypot(sx, sy) / 2)
        box = add("box", (sx, sy, sz), centre, 0.0, round(float(rng.uniform(0, np.pi)), 4))
        d = round(float(rng.uniform(0.15, 0.25)), 3)
        top = add(top_shape, (d, d, d if top_shape == "sphere" else 0.25), centre, sz + gap)
        above.add((top, box))
        if gap <= 0.05:
            on.add((top, box))
    centre = place(0.45)
    crate = add("box", (0.6, 0.6, 0.4), centre, 0.0, 0.3, open_top=True)
    inner = add("box", (0.2, 0.2, 0.15), centre, 0.0, 0.0)
    inside.add((inner, crate))
    for shape in ("sphere", "cylinder"):
        d = round(float(rng.uniform(0.2, 0.4)), 3)
        add(shape, (d, d, d if shape == "sphere" else 0.5), place(d / 2), 0.0)
    instances = [_points(o, spacing, open_top) for o, open_top in objs]
    floor, _ = room_parts(6.0, 6.0, 2.5, 0.05)
    points = np.concatenate([floor[0].astype(np.float64), *instances])
    return Arrangement(
        int(seed),
        points,
        instances,
        [o.class_name for o, _ in objs],
        frozenset(on),
        frozenset(inside),
        frozenset(above),
    )


def near_truth(instances: list[np.ndarray], threshold: float) -> frozenset[tuple[int, int]]:
    """Every ordered pair whose minimum point distance is at most ``threshold`` (brute force, all pairs)."""
    from scipy.spatial.distance import cdist

    out = set()
    for i in range(len(instances)):
        for j in range(i + 1, len(instances)):
            if cdist(instances[i], instances[j]).min() <= threshold:
                out |= {(i, j), (j, i)}
    return frozenset(out)
