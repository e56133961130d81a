"""Class vocabularies (ScanNet200 shipped as data, or custom) and ground-truth loading.

Ground truth is one integer per scene point (PLY vertex order): ``label_id * 1000 + instance + 1``,
0 for unlabelled points (the ScanNet / OpenMask3D ``<scene>.txt`` convention).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import EvaluationError

__all__ = ["Vocabulary", "scannet200", "load_vocabulary", "load_gt", "load_gt_file"]

SPLITS = ("head", "common", "tail")


@dataclass(frozen=True)
class Vocabulary:
    """An ordered class vocabulary: the names prompted to the text encoder and their GT ids."""

    ids: tuple[int, ...]
    """GT label id of each class (the ``label_id`` in ``label_id * 1000 + instance + 1``)."""
    names: tuple[str, ...]
    """Class name of each id, same order; the text prompted is ``template.format(name)``."""
    evaluated: frozenset[int] = frozenset()
    """Ids that get an AP; GT points of the other ids count as void. Empty means all ids."""
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Optional named groups of class names (ScanNet200: head / common / tail) averaged separately."""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise EvaluationError(
                f"vocabulary has {len(self.ids)} ids but {len(self.names)} names; give one id per name"
            )
        if not self.ids:
            raise EvaluationError("vocabulary is empty; give at least one class")
        if len(set(self.ids)) != len(self.ids):
            dup = sorted({i for i in self.ids if self.ids.count(i) > 1})
            raise EvaluationError(f"vocabulary has duplicate class ids {dup}; give each class its own id")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise EvaluationError(f"vocabulary has duplicate class names {dup}; give each class its own name")
        if not self.evaluated:
            object.__setattr__(self, "evaluated", frozenset(self.ids))
        unknown = sorted(set(self.evaluated) - set(self.ids))
        if unknown:
            raise EvaluationError(f"evaluated ids {unknown} are not in the vocabulary")

    @property
    def evaluated_ids(self) -> tuple[int, ...]:
        """Evaluated ids in vocabulary order."""
        return tuple(i for i in self.ids if i in self.evaluated)

    def name_of(self, class_id: int) -> str:
        """Name of a class id."""
        return self.names[self.ids.index(int(class_id))]

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...], *, first_id: int = 1) -> Vocabulary:
        """A vocabulary with ids ``first_id, first_id + 1, ...`` in the order given."""
        return cls(ids=tuple(range(first_id, first_id + len(names))), names=tuple(names))


def scannet200() -> Vocabulary:
    """ScanNet200: 200 classes with their official ids, 198 evaluated (all but wall and floor)."""
    data = json.loads(resources.files("om3db.data").joinpath("scannet200.json").read_text(encoding="utf-8"))
    classes = data["classes"]
    ids = tuple(int(c["id"]) for c in classes)
    names = tuple(str(c["name"]) for c in classes)
    skip = set(data["not_evaluated"])
    return Vocabulary(
        ids=ids,
        names=names,
        evaluated=frozenset(i for i, n in zip(ids, names, strict=True) if n not in skip),
        splits={s: tuple(data[s]) for s in SPLITS},
    )


def load_vocabulary(spec: str | Path, *, exclude: tuple[str, ...] | list[str] = ("wall", "floor")) -> Vocabulary:
    """``"scannet200"``, a ``classes.json`` (``[{"id": .., "name": ..}]``), a scan folder with ``gt/classes.json``,
    or a text file (one name per line, ids 1..n).

    ``exclude``: class names prompted but not evaluated (their GT points are void), by default wall and
    floor as in ScanNet200; names absent from the vocabulary are ignored.
    """
    vocab = _load_vocabulary(spec)
    skip = set(exclude)
    evaluated = frozenset(i for i, n in zip(vocab.ids, vocab.names, strict=True) if n not in skip)
    if not evaluated:
        raise EvaluationError(f"{spec}: every class is excluded from evaluation; exclude fewer classes")
    return Vocabulary(ids=vocab.ids, names=vocab.names, evaluated=evaluated, splits=vocab.splits)


def _load_vocabulary(spec: str | Path) -> Vocabulary:
    if str(spec).lower() == "scannet200":
        return scannet200()
    path = Path(spec)
    if path.is_dir() and (path / "gt" / "classes.json").is_file():
        path = path / "gt" / "classes.json"
    if not path.is_file():
        raise EvaluationError(
            f"{path}: vocabulary file not found; give 'scannet200', a classes.json or a text file of names"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
            return Vocabulary(ids=tuple(int(c["id"]) for c in data), names=tuple(str(c["name"]) for c in data))
        except (ValueError, TypeError, KeyError) as exc:
            raise EvaluationError(
                f'{path}: not a class list ({exc!r}); expected JSON [{{"id": 1, "name": "chair"}}, ...]'
            ) from exc
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return Vocabulary.from_names(names)


def load_gt_file(path: str | Path) -> np.ndarray:
    """One GT file: one integer per line (``label_id * 1000 + instance + 1``) -> (N,) int64."""
    path = Path(path)
    try:
        values = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read ground truth ({exc}); expected one integer per line") from exc
    if values.ndim != 1:
        raise EvaluationError(f"{path}: ground truth has {values.ndim} columns; expected one integer per line")
    if (values < 0).any():
        raise EvaluationError(
            f"{path}: ground truth has negative ids; expected label_id*1000 + instance + 1, 0 unlabelled"
        )
    return values


def load_gt(path: str | Path) -> dict[str, np.ndarray]:
    """GT of many scenes: a folder of ``<scene>.txt``, a folder of scans with ``<scan>/gt/instances.txt``,
    one scan folder, or one ``.txt`` file. Returns ``{scene: (N,) int64}``."""
    path = Path(path)
    if path.is_file():
        return {path.stem: load_gt_file(path)}
    if not path.is_dir():
        raise EvaluationError(
            f"{path}: ground truth not found; give a folder of <scene>.txt files or of scans with gt/"
        )
    if (path / "gt" / "instances.txt").is_file():
        return {path.name: load_gt_file(path / "gt" / "instances.txt")}
    out = {p.stem: load_gt_file(p) for p in sorted(path.glob("*.txt"))}
    for scan in sorted(p for p in path.iterdir() if p.is_dir()):
        if (scan / "gt" / "instances.txt").is_file():
            out[scan.name] = load_gt_file(scan / "gt" / "instances.txt")
    if not out:
        raise EvaluationError(f"{path}: no ground truth found; expected <scene>.txt files or <scan>/gt/instances.txt")
    return out
