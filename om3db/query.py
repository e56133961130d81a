"""Queries: the ``Query`` a search is built as, its ``Filters``, and the vector search behind it.

``db.query(text="a mug")`` returns a :class:`Query`; ``where(...)``, ``limit(k)``, ``aggregate("max")``,
``with_points()`` and ``using(...)`` each return a new one; ``to_list()`` (or iterating) runs it.
``db.search(text=..., k=..., ...)`` is the same in one call.

This module works on vectors and ids: encoding the text / image is ``om3db.database``'s job (after
:func:`check_encoder` has confirmed the encoder is the one the space was built with), and the ids
passing the filters come from the store (``Store.filter_ids``). Filtered searches restrict FAISS to the
allowed ids (an id selector), so they return k results whenever k matching instances exist.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from .errors import ConfigError, EncoderMismatchError
from .records import EncoderIdentity

if TYPE_CHECKING:
    from .results import Hit

__all__ = [
    "DEFAULT_TEMPLATE",
    "Filters",
    "Query",
    "RawHit",
    "check_encoder",
    "check_template",
    "search_space",
    "label_vectors",
    "parse_region",
]

Aggregation = Literal["mean", "max"]
DEFAULT_TEMPLATE = "a {} in a scene"
"""Prompt template of text queries (and of labelling): the text goes where ``{}`` is."""
_REGION_MODES = ("intersects", "centroid")


def _region(value) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    if value is None:
        return None
    try:
        lo, hi = (np.asarray(a, dtype=float) for a in value)
    except (TypeError, ValueError):
        lo = hi = np.zeros(0)
    if lo.shape != (3,) or hi.shape != (3,) or not (np.isfinite(lo).all() and np.isfinite(hi).all()) or (lo > hi).any():
        raise ConfigError(
            f"region must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) in metres, finite, min <= max; got {value!r}"
        )
    return tuple(map(float, lo)), tuple(map(float, hi))


@dataclass(frozen=True)
class Filters:
    """Which instances a search may return (all combined with AND)."""

    scans: tuple[str, ...] | None = None
    """Scan names to search (None: all)."""
    min_points: int = 0
    """Minimum instance point count."""
    region: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    """((xmin, ymin, zmin), (xmax, ymax, zmax)) world metres."""
    region_mode: Literal["intersects", "centroid"] = "intersects"
    """'intersects': bbox overlaps the region; 'centroid': centroid inside it."""
    min_score: float | None = None
    """Drop hits with a lower similarity (a cosine similarity, in [-1, 1])."""

    def __post_init__(self) -> None:
        scans = self.scans
        if isinstance(scans, str):
            scans = (scans,)
        if scans is not None:
            scans = tuple(scans)
            if not scans or not all(isinstance(s, str) and s for s in scans):
                raise ConfigError(f"scans must be None or non-empty scan names, got {self.scans!r}")
            object.__setattr__(self, "scans", scans)
        if (
            isinstance(self.min_points, bool)
            or not isinstance(self.min_points, numbers.Integral)
            or self.min_points < 0
        ):
            raise ConfigError(f"min_points must be an integer >= 0, got {self.min_points!r}")
        if self.region_mode not in _REGION_MODES:
            raise ConfigError(f"region_mode must be 'intersects' or 'centroid', got {self.region_mode!r}")
        object.__setattr__(self, "region", _region(self.region))
        if self.min_score is not None:
            if isinstance(self.min_score, bool) or not isinstance(self.min_score, numbers.Real):
                raise ConfigError(f"min_score must be a number, got {self.min_score!r}")
            if not math.isfinite(self.min_score):
                raise ConfigError(f"min_score must be a finite number, got {self.min_score!r}")
            if not -1.0 <= self.min_score <= 1.0:  # a cosine similarity: outside [-1, 1] no hit (or every hit) passes
                raise ConfigError(
                    f"min_score is a cosine similarity and must lie in [-1, 1], got {self.min_score!r}. "
                    "Give a similarity floor such as 0.1"
                )

    @property
    def restricts_ids(self) -> bool:
        """True when the filters limit which ids FAISS may return (min_score is applied to the hits)."""
        return self.scans is not None or self.min_points > 0 or self.region is not None


@dataclass(frozen=True)
class Query:
    """A search, built step by step; each method returns a new Query. ``to_list()`` runs it.

    >>> hits = db.query(text="a mug").where(scans=["kitchen"], min_points=500).limit(5).to_list()
    """

    database: object = dataclasses.field(repr=False)
    """The :class:`om3db.Database` it runs against."""
    text: str | None = None
    image: object = dataclasses.field(default=None, repr=False)
    """A path, or an (H, W, 3) uint8 array."""
    k: int = 10
    """How many hits at most."""
    aggregation: Aggregation = "mean"
    """'mean' (instance vector) or 'max' (best view: OpenMask3D++)."""
    filters: Filters = Filters()
    points: bool = False
    """Return each hit's point indices."""
    encoder: object = None
    """The query encoder (object, hub id or directory); None: see ``Database.query_encoder``."""
    space: str | None = None
    """Vector space: 'siglip' (text default) or 'dinov2' (image default)."""
    template: str = DEFAULT_TEMPLATE
    relation: str | None = None
    """Spatial relation the subject must stand in to ``relation_object`` (``om3db.relations.RELATIONS``)."""
    relation_object: str | None = None
    """The object's noun phrase (a text vector search)."""
    max_distance: float | None = None
    """Metres: the relation's stored distance must be at most this (``within``)."""
    excluded: tuple[str, ...] = ()
    """Noun phrases that must have no match in a scan for it to be returned (``without``)."""
    min_count: int | None = None
    """A scan is returned only with at least this many distinct matching subjects (``count_at_least``)."""
    candidates: int = 20000
    """Relational queries: at most this many best instances of the subject phrase are considered (16 per
    scan asked for first, 4x more while fewer than ``k`` scans are found)."""
    match: float = 0.5
    """Relational queries: an instance matches a noun phrase when its similarity is at least this fraction
    of the phrase's best similarity (and at least ``filters.min_score``)."""

    def __post_init__(self) -> None:
        self._check_relational()
        if (self.text is None) == (self.image is None):
            raise ConfigError("a query needs exactly one of text= or image=")
        if self.text is not None:
            if not isinstance(self.text, str):
                raise ConfigError(f"text must be a string, got {type(self.text).__name__}")
            if not self.text.strip():
                raise ConfigError("the text query is empty: say what to look for, e.g. 'a mug'")
        if isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral) or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {self.k!r}")
        if self.aggregation not in ("mean", "max"):
            raise ConfigError(f"aggregation must be 'mean' or 'max', got {self.aggregation!r}")
        if not isinstance(self.filters, Filters):
            raise ConfigError(f"filters must be an om3db.Filters, got {type(self.filters).__name__}")
        check_template(self.template)

    def where(
        self,
        *,
        scans: Sequence[str] | str | None = None,
        min_points: int | None = None,
        region=None,
        region_mode: str | None = None,
        min_score: float | None = None,
    ) -> Query:
        """Add filters (given ones replace the current values)."""
        changes = {
            "scans": scans,
            "min_points": min_points,
            "region": region,
            "region_mode": region_mode,
            "min_score": min_score,
        }
        return dataclasses.replace(
            self,
            filters=dataclasses.replace(self.filters, **{k: v for k, v in changes.items() if v is not None}),
        )

    def limit(self, k: int) -> Query:
        return dataclasses.replace(self, k=k)

    def aggregate(self, mode: Aggregation) -> Query:
        return dataclasses.replace(self, aggregation=mode)

    def with_points(self, on: bool = True) -> Query:
        return dataclasses.replace(self, points=bool(on))

    def using(self, encoder=None, *, space: str | None = None, template: str | None = None) -> Query:
        """Query encoder, vector space and prompt template (None keeps the current value)."""
        changes = {"encoder": encoder, "space": space, "template": template}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def _check_relational(self) -> None:
        from .relations.query import check_distance, check_relation

        if self.relation is not None:
            check_relation(self.relation)
            if not isinstance(self.relation_object, str) or not self.relation_object.strip():
                raise ConfigError(f"relation {self.relation!r} needs an object: what the subject is {self.relation} of")
        if self.max_distance is not None:
            check_distance(self.max_distance)
            if self.relation is None:
                raise ConfigError("within= needs a relation to measure, e.g. near='a desk', within=0.5")
        if isinstance(self.excluded, str):
            object.__setattr__(self, "excluded", (self.excluded,))
        object.__setattr__(self, "excluded", tuple(self.excluded))
        if not all(isinstance(t, str) and t.strip() for t in self.excluded):
            raise ConfigError(f"without= takes noun phrases, got {self.excluded!r}")
        for name, value in (("count_at_least", self.min_count), ("candidates", self.candidates)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.match, bool) or not isinstance(self.match, numbers.Real) or not 0 <= self.match <= 1:
            raise ConfigError(f"match must be a fraction in [0, 1], got {self.match!r}")

    @property
    def is_relational(self) -> bool:
        """True when the query names a relation, ``without`` or ``count_at_least``: it returns scans."""
        return self.relation is not None or bool(self.excluded) or self.min_count is not None

    def related(self, relation: str, text: str) -> Query:
        """The subject must stand in ``relation`` (on, in, near, next_to, above, below, same_scan) to ``text``."""
        return dataclasses.replace(self, relation=relation, relation_object=text)

    def on(self, text: str) -> Query:
        return self.related("on", text)

    def inside(self, text: str) -> Query:
        return self.related("in", text)

    def near(self, text: str, within: float | None = None) -> Query:
        q = self.related("near", text)
        return q if within is None else q.within(within)

    def next_to(self, text: str) -> Query:
        return self.related("next_to", text)

    def above(self, text: str) -> Query:
        return self.related("above", text)

    def below(self, text: str) -> Query:
        return self.related("below", text)

    def in_same_scan_as(self, text: str) -> Query:
        return self.related("same_scan", text)

    def within(self, metres: float) -> Query:
        """The relation's distance (minimum point distance) must be at most ``metres``."""
        return dataclasses.replace(self, max_distance=metres)

    def without(self, text: str) -> Query:
        """Drop scans holding a match for ``text`` (repeatable)."""
        return dataclasses.replace(self, excluded=(*self.excluded, text))

    def count_at_least(self, n: int) -> Query:
        """Keep scans with at least ``n`` distinct matching subjects."""
        return dataclasses.replace(self, min_count=n)

    @property
    def space_name(self) -> str:
        return self.space or ("siglip" if self.text is not None else "dinov2")

    def to_list(self) -> list[Hit]:
        """Run the query: hits, best first (relational queries: ``SceneMatch`` per scan, best first)."""
        if not self.is_relational:  # checked here, not on construction: a query may get its relation later
            for name, value in (("match", self.match), ("candidates", self.candidates)):
                if value != _RELATIONAL_DEFAULTS[name]:
                    raise ConfigError(
                        f"{name}={value!r} applies only to relational queries (a relation such as on= or near=, "
                        "without= or count_at_least=): a plain search ranks every instance. Drop it or add a relation"
                    )
        return self.database._run_query(self)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.to_list())


_RELATIONAL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Query) if f.name in ("match", "candidates")}


class RawHit(NamedTuple):
    """One search result before its instance is read (a tuple: relational queries make tens of thousands)."""

    instance_id: int
    score: float
    """Cosine similarity (inner product of unit vectors)."""
    view_id: int | None
    """Max aggregation: the FAISS key of the best view (``view_key(instance id, rank)``); mean: None."""


def check_template(template) -> str:
    """A prompt template holds exactly one plain ``{}`` (where the text goes) and no other replacement
    field; ``{{`` and ``}}`` stand for literal braces (``str.format``)."""
    rule = "template must contain exactly one '{}' where the text goes ('{{' and '}}' are literal braces)"
    if not isinstance(template, str):
        raise ConfigError(f"{rule}; got a {type(template).__name__}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone brace
        raise ConfigError(f"{rule}; {template!r} cannot be used: {exc}") from exc
    fields = [
        "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
        for _, name, spec, conv in parts
        if name is not None
    ]
    if fields != ["{}"]:
        raise ConfigError(f"{rule}; {template!r} holds {', '.join(fields) if fields else 'none'}")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as exc:  # (not reached after the checks above: a last guard)
        raise ConfigError(f"{rule}; {template!r} cannot be used: {exc!r}") from exc
    return template


def parse_region(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``"xmin,ymin,zmin,xmax,ymax,zmax"`` (metres) -> ((xmin, ymin, zmin), (xmax, ymax, zmax))."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 6:
        raise ConfigError(f"region must be six numbers xmin,ymin,zmin,xmax,ymax,zmax (metres), got {text!r}")
    return tuple(vals[:3]), tuple(vals[3:])


def check_encoder(store, space: str, identity: EncoderIdentity) -> None:
    """Raise EncoderMismatchError when ``identity`` is not the encoder the space was built with."""
    from .store.catalog import identity_matches

    stored = store.identity_of(store.space(space, "instance"))
    if not identity_matches(stored, identity):
        raise EncoderMismatchError(
            f"{store.root}: the {space!r} space was built with {stored.describe()}, but the query encoder is "
            f"{identity.describe()}. Query with the same model the scans were ingested with"
        )


def search_space(
    store,
    space: str,
    query: np.ndarray,
    *,
    k: int = 10,
    aggregation: Aggregation = "mean",
    allowed: np.ndarray | None = None,
    min_score: float | None = None,
    wide: bool = False,
) -> list[RawHit]:
    """The k instances most similar to ``query`` ((D,) float32 unit vector), best first.

    allowed: (n,) int64 instance ids the search may return (None: any). k is clamped to what the space
    holds, so an absurd k costs nothing. wide: an IVF visits lists enough to hold k results
    (``VectorIndex.nprobe_for``), not just the nprobe tuned for the top 10 (relational candidates)."""
    if aggregation not in ("mean", "max"):
        raise ConfigError(f"aggregation must be 'mean' or 'max', got {aggregation!r}")
    if allowed is not None and not len(allowed):
        return []
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    if aggregation == "mean":
        index = store.index(space, "instance")
        k = min(int(k), index.ntotal if allowed is None else len(allowed))
        if k < 1:
            return []
        scores, ids = index.search(q, k, allowed_ids=allowed, min_nprobe=index.nprobe_for(k) if wide else None)
        hits = [RawHit(i, s, None) for s, i in zip(scores[0].tolist(), ids[0].tolist(), strict=True) if i >= 0]
    else:
        hits = _search_max(store, space, q, int(k), allowed, wide)
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    return hits


def search_at_least(
    store,
    space: str,
    query: np.ndarray,
    min_score: float,
    *,
    aggregation: Aggregation = "mean",
    allowed: np.ndarray | None = None,
    ids_only: bool = False,
) -> list[RawHit] | np.ndarray:
    """Every instance (of ``allowed``) whose similarity to ``query`` is at least ``min_score``, unordered:
    a range search over every IVF list (relational queries score a join's objects and a negation's scans
    with it); ``ids_only``: just their (n,) int64 ids. Max aggregation: an instance's best view counts."""
    if allowed is not None and not len(allowed):
        return np.zeros(0, np.int64) if ids_only else []
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    if aggregation == "max":
        from .store.writer import view_owner

        views = store.index(space, "view")
        vids, scores = views.range_search(q, min_score, allowed_ids=_allowed_views(views, allowed))
        owners = view_owner(vids)
        order = np.lexsort((-scores, owners))  # by instance, its best view first
        best = order[np.r_[True, owners[order][1:] != owners[order][:-1]]] if len(order) else order
        if ids_only:
            return owners[best]
        return [RawHit(int(owners[i]), float(scores[i]), int(vids[i])) for i in best]
    ids, scores = store.index(space, "instance").range_search(q, min_score, allowed_ids=allowed)
    if ids_only:
        return ids
    return [RawHit(i, s, None) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)]


def _search_max(store, space: str, q: np.ndarray, k: int, allowed: np.ndarray | None, wide: bool) -> list[RawHit]:
    """Max aggregation: best view per instance, over-fetching views until k instances are found."""
    from .store.writer import view_owner

    index = store.index(space, "view")
    allowed_views = _allowed_views(index, allowed)
    total = index.ntotal if allowed_views is None else len(allowed_views)
    if total < 1:
        return []
    fetch = min(max(4 * k, 16), total)
    while True:
        scores, ids = index.search(
            q, fetch, allowed_ids=allowed_views, min_nprobe=index.nprobe_for(fetch) if wide else None
        )
        found = ids[0] >= 0
        owners = view_owner(ids[0][found]).tolist()
        best: dict[int, RawHit] = {}
        # results are sorted: the first view seen of an instance is its best
        for s, vid, inst in zip(scores[0][found].tolist(), ids[0][found].tolist(), owners, strict=True):
            if inst not in best:
                best[inst] = RawHit(inst, s, vid)
        if len(best) >= k or fetch >= total:
            return list(best.values())[:k]
        fetch = min(fetch * 4, total)


def _allowed_views(index, allowed: np.ndarray | None) -> np.ndarray | None:
    """The view-space ids of the allowed instances' inlier views (the view index holds exactly those)."""
    from .store.writer import view_owner

    if allowed is None:
        return None
    held = index.ids()
    return held[np.isin(view_owner(held), allowed)]


def label_vectors(store, space: str, scan_instance_ids: np.ndarray, classes: np.ndarray, *, aggregation: Aggregation):
    """Best class per instance: returns (ids (n,), class index (n,), score (n,)) for the given instances.

    classes: (C, D) float32 unit text vectors. Mean: instance vector · class; max: the maximum over
    the instance's inlier views of view vector · class.
    """
    if aggregation not in ("mean", "max"):
        raise ConfigError(f"aggregation must be 'mean' or 'max', got {aggregation!r}")
    ids = np.asarray(scan_instance_ids, dtype=np.int64)
    if aggregation == "mean":
        vecs, vid = store.stored_vectors(store.space(space, "instance"), instance_ids=ids.tolist())
        sims = dict(zip(vid.tolist(), vecs @ classes.T, strict=True))
    else:
        from .store.writer import view_owner

        vecs, view_ids = store.stored_vectors(store.space(space, "view"), instance_ids=ids.tolist())
        per_view = vecs @ classes.T
        sims = {}
        for inst, row in zip(view_owner(view_ids).tolist(), per_view, strict=True):
            sims[inst] = row if inst not in sims else np.maximum(sims[inst], row)
    keep = np.array([i for i in ids if i in sims], dtype=np.int64)
    if not len(keep):
        return keep, np.zeros(0, np.int64), np.zeros(0, np.float32)
    mat = np.stack([sims[int(i)] for i in keep])
    best = mat.argmax(axis=1)
    return keep, best, mat[np.arange(len(keep)), best].astype(np.float32)
