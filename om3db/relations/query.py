"""Relational queries: "a mug on a table" is vector searches and one join in the database.

An instance *matches* a noun phrase when its similarity is at least ``match`` x the phrase's best
similarity over the searched scans (and at least ``min_score`` when given). The query is driven by the
subject: its best instances (16 per scan asked for first, 4x more while fewer than k scans come back, at most
``candidates``) are joined to their stored relations (``Store.relation_pairs``, by the (relation,
subject) index), and only the objects of those rows are scored against the object phrase (an exact
range search with an id selector), so no object is missed for ranking outside some top list. When
the object phrase's matches run out first (a rare object: "a mug on a piano"), the join is driven from
them instead (the (relation, object) index) and is complete whatever the number of subjects. ``without``: each
candidate scan's instances are scored exactly against the excluded phrase. The score of a pair is the
mean of both similarities and the relation's score; results are grouped by scan. An image subject is
searched in its space (DINOv2 by default) and the object / ``without`` phrases, text, in the SigLIP space:
each phrase's matches are relative to its own best similarity, so the join is the same; the pair score
then mixes two spaces' similarities (it ranks the pairs of one query). No SQL here: the store runs it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import ConfigError, StoreError
from .build import RELATIONS

__all__ = ["PhraseReading", "RelationHit", "SceneMatch", "parse_phrase", "check_relation", "check_distance"]

MAX_DISTANCE = 100.0
"""A ``within`` above this (metres) is refused as absurd."""

# longest first, so "next to" wins over "to" and "on top of" over "on"
_PREPOSITIONS = (
    ("on top of", "on"), ("next to", "next_to"), ("inside", "in"), ("beside", "next_to"), ("under", "below"),
    ("below", "below"), ("above", "above"), ("near", "near"), ("on", "on"), ("in", "in"),
)  # fmt: skip
_NEGATIONS = ("but no", "with no", "without", "and no")
_ARTICLES = {"a", "an", "the", "some", "any"}


class RelationsMissingError(StoreError):
    """A relational query on scans ingested before relations existed."""


@dataclass(frozen=True)
class PhraseReading:
    """How a phrase was read: subject, optional relation + object, noun phrases that must be absent."""

    subject: str
    relation: str | None = None
    object: str | None = None
    without: tuple[str, ...] = ()

    def explain(self) -> str:
        parts = [f"subject {self.subject!r} (vector search)"]
        if self.relation is not None:
            parts.append(f"relation {self.relation!r} (join in the database)")
            parts.append(f"object {self.object!r} (vector search)")
        parts += [f"without {w!r} (scans holding a match are dropped)" for w in self.without]
        return "; ".join(parts)


def _noun(text: str, after: str, phrase: str) -> str:
    words = text.split()
    if not [w for w in words if w.lower() not in _ARTICLES]:
        raise ConfigError(
            f"{phrase!r}: no noun after {after!r}. Say what follows it, e.g. 'a mug {after} a table'"
            if after not in _NEGATIONS
            else f"{phrase!r}: no noun after {after!r}. Say what must be absent, e.g. 'a desk {after} chair'"
        )
    return " ".join(words)


def parse_phrase(phrase: str) -> PhraseReading:
    """Split a phrase on the supported prepositions: ``"a mug on a table"`` -> subject 'a mug', relation
    'on', object 'a table'; ``"a desk but no chair"`` -> without ('chair',). One relation per phrase."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise ConfigError("the phrase is empty: say what to look for, e.g. 'a mug on a table'")
    text = " ".join(phrase.split())
    without: list[str] = []
    neg = re.compile(r"\b(" + "|".join(re.escape(n) for n in _NEGATIONS) + r")\b", re.IGNORECASE)
    pieces = neg.split(text)
    text = pieces[0].strip()
    for word, rest in zip(pieces[1::2], pieces[2::2], strict=True):
        without.append(_noun(rest.strip(), word.lower(), phrase))
    prep = re.compile(r"\b(" + "|".join(re.escape(p) for p, _ in _PREPOSITIONS) + r")\b", re.IGNORECASE)
    found = list(prep.finditer(text))
    if not found:
        return PhraseReading(_noun(text, "the start", phrase), None, None, tuple(without))
    if len(found) > 1:
        raise ConfigError(
            f"{phrase!r}: one relation per phrase, found {', '.join(repr(m.group(1)) for m in found)}. "
            "Combine further ones with the query's options (without=, count_at_least=)"
        )
    m = found[0]
    word = m.group(1).lower()
    subject = text[: m.start()].strip()
    if not [w for w in subject.split() if w.lower() not in _ARTICLES]:
        raise ConfigError(f"{phrase!r}: no noun before {word!r}. Say what to look for, e.g. 'a mug {word} a table'")
    relation = dict(_PREPOSITIONS)[word]
    return PhraseReading(subject, relation, _noun(text[m.end() :].strip(), word, phrase), tuple(without))


def check_relation(name: str) -> str:
    if name not in RELATIONS:
        raise ConfigError(f"unknown relation {name!r}: use one of {', '.join(RELATIONS)}")
    return name


def check_distance(value, what: str = "within") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a distance in metres, got {value!r}")
    if value < 0:
        raise ConfigError(f"{what} must be >= 0 metres, got {value!r}")
    if value > MAX_DISTANCE:
        raise ConfigError(f"{what}={value!r} m is absurd for objects in one scan: give at most {MAX_DISTANCE:g} m")
    return float(value)


@dataclass(frozen=True)
class RelationHit:
    """One match: the subject instance, and (relational queries) the object and the evidence."""

    scan: str
    score: float
    subject: object
    """The subject's :class:`om3db.Hit` (best view, crop box, geometry)."""
    object: object = None
    """The object's :class:`om3db.Hit` (None without a relation)."""
    relation: str | None = None
    evidence: dict = field(default_factory=dict)
    """Stored evidence: relation score, distance, gap, overlap (metres / fractions)."""

    def to_dict(self) -> dict:
        return {
            "scan": self.scan,
            "score": self.score,
            "relation": self.relation,
            "subject": self.subject.to_dict(),
            "object": None if self.object is None else self.object.to_dict(),
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True)
class SceneMatch:
    """The matches of one scan, best first."""

    scan: str
    score: float
    """The best match's score."""
    hits: tuple[RelationHit, ...]

    def to_dict(self) -> dict:
        return {"scan": self.scan, "score": self.score, "hits": [h.to_dict() for h in self.hits]}


class _Phrase:
    """One noun phrase of a relational query: its query vector and the similarity floor of a match.

    An instance matches when its similarity is at least ``match`` x the phrase's best similarity over
    ``floor_scope`` (instance ids; None: every ready scan; default: ``scope``, the ids it may match) and at
    least ``min_score`` when given."""

    def __init__(self, database, q, text: str | None, scope, *, floor_scope=...) -> None:
        from ..query import search_space

        pq = q if text is None else _with_text(q, text)
        self.store, self.space, self.agg, self.scope = database._store, pq.space_name, q.aggregation, scope
        self.text = text
        self.every_scan: set[str] | None = None
        """Every scan holding a match, once `know_every_match` ran."""
        self.vector = database._query_vector(pq.space_name, pq)
        floor_scope = scope if floor_scope is ... else floor_scope
        top = search_space(self.store, self.space, self.vector, k=1, aggregation=self.agg, allowed=floor_scope)
        self.floor = None if not top else q.match * max(top[0].score, 0.0)
        if self.floor is not None and q.filters.min_score is not None:
            self.floor = max(self.floor, q.filters.min_score)

    def best(self, k: int) -> tuple[dict, bool]:
        """The matches among the phrase's ``k`` best instances (id -> ``RawHit``), and whether there may be
        more beyond them (all k returned, the k-th still a match)."""
        from ..query import search_space

        if self.floor is None:
            return {}, False
        raw = search_space(
            self.store, self.space, self.vector, k=k, aggregation=self.agg, allowed=self.scope, wide=True
        )
        found = {h.instance_id: h for h in raw if h.score >= self.floor}
        return found, len(raw) >= k and raw[-1].score >= self.floor

    def _at_least_floor(self, ids, *, ids_only: bool = False):
        """The matches among ``ids`` (None: the whole scope), every one scored exactly (a range search,
        with an id selector when restricted): ``RawHit``s, or just their ids."""
        import numpy as np

        from ..query import search_at_least

        if ids is not None:
            ids = np.unique(np.fromiter(ids, dtype=np.int64))
            if self.scope is not None:
                ids = np.intersect1d(ids, self.scope)
        elif self.scope is not None:
            ids = self.scope
        if self.floor is None or ids is not None and not len(ids):
            return np.zeros(0, np.int64) if ids_only else []
        return search_at_least(
            self.store, self.space, self.vector, self.floor, aggregation=self.agg, allowed=ids, ids_only=ids_only
        )

    def among(self, ids) -> dict:
        """The matches among these instance ids (id -> ``RawHit``), every one scored exactly."""
        return {h.instance_id: h for h in self._at_least_floor(ids)}

    def scans_with_match(self, scans: list[str]) -> set[str]:
        """Which of these scans hold a match (exact: every instance of them is scored, or the phrase's
        every match is known: `know_every_match`)."""
        if self.floor is None or not scans:
            return set()
        if self.every_scan is not None:
            return self.every_scan.intersection(scans)
        ids = self.store.filter_ids(scans=scans, min_points=0, region=None, region_mode="intersects")
        return self.store.scans_of(self._at_least_floor(ids, ids_only=True))

    def know_every_match(self) -> None:
        """Find every match (one range search over the scope) and remember their scans: cheaper than
        scoring scan after scan when the phrase matches in most of them ("scans without a chair")."""
        if self.every_scan is None and self.floor is not None:
            self.every_scan = self.store.scans_of(self._at_least_floor(None, ids_only=True))


TEXT_SPACE = "siglip"
"""The vector space text phrases are searched in when the subject is an image searched in an image-only
space (DINOv2): an object / ``without`` phrase is always text."""


def _with_text(q, text):
    """The query of one of its text phrases (object, ``without``). An image subject searched in a space
    without a text tower (DINOv2) keeps its space; its phrases go to the text space with its encoder."""
    import dataclasses

    tq = dataclasses.replace(q, text=text, image=None)
    if q.text is None and q.space_name != TEXT_SPACE:
        tq = dataclasses.replace(tq, space=TEXT_SPACE, encoder=None)
    return tq


def run_relational(database, q) -> list[SceneMatch]:
    """Run a relational (or negation / count) query; see the module docstring."""
    with database._store.pinned_spaces():  # its many searches read the spaces' state once
        return _run_relational(database, q)


def _run_relational(database, q) -> list[SceneMatch]:
    store = database._store
    f = q.filters
    missing = store.scans_without_relations(f.scans)
    if missing:
        raise RelationsMissingError(
            f"{database.path}: {len(missing)} scan(s) have no spatial relations ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}): they were ingested before om3db computed them. "
            "Run `om3db reindex` (db.reindex()) to build them, then query again"
        )
    if q.max_distance is not None and q.relation in ("near", "next_to"):
        built = store.relation_thresholds(q.relation)
        if built and q.max_distance > built[0]:
            raise ConfigError(
                f"within={q.max_distance:g} m is beyond the {q.relation} distance the relations were built with "
                f"({built[0]:g} m, RelationConfig.{q.relation}): pairs farther apart are not stored. Ask for at most "
                f"{built[0]:g} m"
            )
    allowed = None
    if f.restricts_ids:
        allowed = store.filter_ids(scans=f.scans, min_points=f.min_points, region=f.region, region_mode=f.region_mode)
    in_scans = None if f.scans is None else store.filter_ids(scans=f.scans, min_points=0, region=None)
    subject = _Phrase(database, q, q.text, allowed)  # q.text None: the query's image
    obj = _Phrase(database, q, q.relation_object, in_scans) if q.relation is not None else None
    absent_in = in_scans  # without= with a region: no match within the region (elsewhere in the scan is fine)
    if f.region is not None:
        absent_in = store.filter_ids(scans=f.scans, min_points=0, region=f.region, region_mode=f.region_mode)
    excluded = [_Phrase(database, q, text, absent_in, floor_scope=in_scans) for text in q.excluded]
    k = min(max(_FIRST_CANDIDATES, _PER_SCAN_CANDIDATES * q.k), q.candidates)
    join = _Join(store, q, obj, excluded)
    while True:
        subj, more = subject.best(k)
        if more and obj is not None and q.relation != "same_scan":
            objs, more_objs = obj.best(k)
            if not more_objs:  # every object match is known: the join from the objects is complete
                subj, groups = join.from_objects(objs, subject)
                break
        groups = join.groups(subj)
        if len(groups) >= q.k or not more or k >= q.candidates:
            break
        k = min(4 * k, q.candidates)  # fewer than k scans found and more subjects may match: look further
    objects = join.objects
    groups = groups[: q.k]
    s_ids = sorted({p[0] for _, ps in groups for p in ps})
    o_ids = sorted({p[1] for _, ps in groups for p in ps if p[1] is not None})
    s_hits = {h.instance_id: h for h in database._hits([subj[i] for i in s_ids], q.points)}
    o_hits = {h.instance_id: h for h in database._hits([objects[i] for i in o_ids], q.points)}
    out = []
    for scan, ps in groups:
        rows = sorted(ps, key=lambda p: (-p[2], p[0], p[1] or 0))
        rh = tuple(
            RelationHit(scan, float(p[2]), s_hits[p[0]], None if p[1] is None else o_hits[p[1]], p[4], p[3])
            for p in rows
            if p[0] in s_hits and (p[1] is None or p[1] in o_hits)
        )
        if rh:
            out.append(SceneMatch(scan, rh[0].score, rh))
    return out


_EVIDENCE = ("score", "distance", "gap", "overlap")
_FIRST_CANDIDATES, _PER_SCAN_CANDIDATES = 64, 16
"""A relational query first considers the subject phrase's max(64, 16 k) best instances, then 4x more
while fewer than k scans are found (up to ``Query.candidates``)."""


class _Join:
    """The subject matches joined to the relation's object matches and grouped by scan, growing with the
    subject candidates: each widening joins only the new subjects and scores only the new objects."""

    def __init__(self, store, q, obj: _Phrase | None, excluded: list[_Phrase]) -> None:
        self.store, self.q, self.obj, self.excluded = store, q, obj, excluded
        self.rows: list[tuple] = []
        self.joined: set[int] = set()
        self.objects: dict = {}
        self.scored: set[int] = set()
        self.scan_of: dict[int, str] = {}
        self.dropped: dict[str, bool] = {}

    def from_objects(self, objs: dict, subject: _Phrase) -> tuple[dict, list]:
        """The join driven by the object side instead, when all its matches (``objs``) are known: the
        stored rows to those objects (by the (relation, object) index), their subjects scored exactly.
        Complete whatever the number of subject matches; returns (subject matches, groups)."""
        q = self.q
        self.rows = self.store.relation_pairs(q.relation, objects=list(objs), max_distance=q.max_distance)
        self.objects = dict(objs)
        subj = subject.among({r[0] for r in self.rows})
        return subj, self._grouped(self._pairs(subj))

    def groups(self, subj: dict) -> list:
        """(scan, [(subject, object, score, evidence, relation), ...]) best scan first, at most k, without
        the scans where an excluded phrase matches."""
        q, store = self.q, self.store
        new = [i for i in subj if i not in self.joined]
        self.joined.update(new)
        if self.obj is None:
            self.scan_of.update(store.instance_scans(new))
            pairs = [
                (s_id, None, h.score, {}, None, self.scan_of[s_id]) for s_id, h in subj.items() if s_id in self.scan_of
            ]
        else:
            if q.relation == "same_scan":
                scans = sorted(set(store.instance_scans(new).values()))
                ids = store.filter_ids(scans=scans, min_points=0, region=None) if scans else []
                self.rows += store.relation_pairs(
                    q.relation, new, list(self.obj.among(ids)), max_distance=q.max_distance
                )
            else:
                self.rows += store.relation_pairs(q.relation, new, max_distance=q.max_distance)
            todo = {r[1] for r in self.rows} - self.scored
            self.objects.update(self.obj.among(todo))
            self.scored |= todo
            pairs = self._pairs(subj)
        return self._grouped(pairs)

    def _pairs(self, subj: dict) -> list:
        pairs = []
        for s_id, o_id, scan, *evidence in self.rows:
            o = self.objects.get(o_id)
            if o is not None and s_id in subj:
                score = (subj[s_id].score + o.score + evidence[0]) / 3
                pairs.append((s_id, o_id, score, dict(zip(_EVIDENCE, evidence, strict=True)), self.q.relation, scan))
        return pairs

    def _grouped(self, pairs: list) -> list:
        q = self.q
        by_scan: dict[str, list] = {}
        for p in pairs:
            by_scan.setdefault(p[5], []).append(p[:5])
        if q.min_count is not None:
            by_scan = {s: ps for s, ps in by_scan.items() if len({p[0] for p in ps}) >= q.min_count}
        groups = sorted(by_scan.items(), key=lambda kv: (-max(p[2] for p in kv[1]), kv[0]))
        return _drop_excluded(groups, self.excluded, q.k, self.dropped)


def _drop_excluded(groups: list, excluded: list[_Phrase], k: int, dropped: dict[str, bool]) -> list:
    """The first ``k`` groups whose scan holds no match of an excluded phrase (or fewer: all there are).
    Scans are checked best first in batches, so a query asking for k scans scores few of them;
    ``dropped`` remembers the scans already checked (scan -> dropped)."""
    if not excluded:
        return groups
    kept: list = []
    at, batch, rounds = 0, max(2 * k, 16), 0
    while at < len(groups) and len(kept) < k:
        rounds += 1
        if rounds == 3:  # two batches left fewer than k scans: the phrase matches almost everywhere
            for phrase in excluded:
                phrase.know_every_match()
        part = groups[at : at + batch]
        todo = [scan for scan, _ in part if scan not in dropped]
        hit: set[str] = set()
        for phrase in excluded:
            hit |= phrase.scans_with_match(todo)
        dropped.update({scan: scan in hit for scan in todo})
        kept += [g for g in part if not dropped[g[0]]]
        at, batch = at + len(part), 4 * batch
    return kept[:k]
