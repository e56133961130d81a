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


MAX_CLASS_ID = (2**63 - 1) // 1000 - 1
"""The largest class id whose GT ids (``id * 1000 + instance + 1``) still fit an int64."""


def _load_vocabulary(spec: str | Path) -> Vocabulary:
    if str(spec).lower() == "scannet200":
        return scannet200()
    path = Path(spec)
    if path.is_dir():
        if not (path / "gt" / "classes.json").is_file():
            raise EvaluationError(
                f"{path}: is a folder without gt/classes.json; give 'scannet200', a classes.json, a text file of "
                "names or a synthetic scan folder"
            )
        path = path / "gt" / "classes.json"
    if not path.is_file():
        raise EvaluationError(
            f"{path}: vocabulary file not found; give 'scannet200', a classes.json or a text file of names"
        )
    text = _read_text(path, "vocabulary", "a classes.json or a text file of class names, one per line")
    try:
        if path.suffix.lower() == ".json":
            return _vocabulary_from_json(path, text)
        return _vocabulary_from_lines(path, text)
    except EvaluationError as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise EvaluationError(f"{path}: {exc}") from None


def _read_text(path: Path, what: str, expected: str) -> str:
    """A small text file as UTF-8; unreadable or undecodable bytes are an EvaluationError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvaluationError(
            f"{path}: the {what} file is not UTF-8 text (byte {exc.start}); expected {expected}"
        ) from None
    except OSError as exc:
        raise EvaluationError(
            f"{path}: cannot read the {what} file ({exc.strerror or exc}); expected {expected}"
        ) from None


def _check_name(path: Path, where: str, name: object) -> str:
    if not isinstance(name, str):
        raise EvaluationError(f"{path}: {where}: the name {name!r} is not a string; give each class a text name")
    if not name.strip():
        raise EvaluationError(f"{path}: {where}: the class name is blank; give each class a name")
    if name != name.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise EvaluationError(
            f"{path}: {where}: the class name {name!r} has surrounding spaces or control characters; write it plainly"
        )
    return name


def _vocabulary_from_json(path: Path, text: str) -> Vocabulary:
    expected = 'expected JSON [{"id": 1, "name": "chair"}, ...]'
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EvaluationError(f"{path}: not valid JSON ({exc}); {expected}") from None
    if not isinstance(data, list):
        raise EvaluationError(f"{path}: holds a JSON {type(data).__name__}, not a list of classes; {expected}")
    ids, names = [], []
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
            raise EvaluationError(f"{path}: entry {n} is {json.dumps(entry)[:60]}, not a class; {expected}")
        cid = entry["id"]
        if isinstance(cid, bool) or not isinstance(cid, int) or not 1 <= cid <= MAX_CLASS_ID:
            raise EvaluationError(
                f"{path}: entry {n}: class id {json.dumps(cid)} is not an integer in 1..{MAX_CLASS_ID}; "
                "give the GT label id (0 means unlabelled)"
            )
        ids.append(cid)
        names.append(_check_name(path, f"entry {n}", entry["name"]))
    return Vocabulary(ids=tuple(ids), names=tuple(names))


def _vocabulary_from_lines(path: Path, text: str) -> Vocabulary:
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            json.loads(text)
        except ValueError:
            pass
        else:
            raise EvaluationError(
                f"{path}: holds JSON but is read as a text file of names (one per line); name it .json"
            )
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for i, name in enumerate(names):
        _check_name(path, f"name {i + 1}", name)
    if not names:
        raise EvaluationError(f"{path}: the vocabulary file holds no class names; write one class name per line")
    return Vocabulary.from_names(names)


def load_gt_file(path: str | Path) -> np.ndarray:
    """One GT file: one integer per line (``label_id * 1000 + instance + 1``) -> (N,) int64."""
    import warnings

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": refused below instead of printed
            values = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read ground truth ({exc}); expected one integer per line") from exc
    if values.size == 0:
        raise EvaluationError(f"{path}: ground truth holds no ids; expected one integer per point (PLY vertex)")
    if values.shape[1] != 1:
        raise EvaluationError(f"{path}: ground truth has {values.shape[1]} columns; expected one integer per line")
    values = values[:, 0]
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
