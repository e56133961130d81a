"""Relational queries: "a mug on a table" is two vector searches and one join in the database.

Each noun phrase is a vector search (``search_space``); an instance *matches* a phrase when its
similarity is at least ``match`` x the phrase's best similarity over the searched scans (and at least
``min_score`` when given), among the phrase's ``candidates`` best. The relation is the store's join
(``Store.relation_pairs``); the score of a pair is the mean of both similarities and the relation's score.
Results are grouped by scan. No SQL here: the store runs it.
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


def _matches(database, text, q, *, scans=None, allowed=None) -> dict:
    """Instance id -> ``RawHit`` (similarity, best view) of the instances matching a noun phrase."""
    import numpy as np

    from ..query import search_space

    store = database._store
    vector = database._query_vector(q.space_name, _with_text(q, text))
    if scans is not None:
        ids = store.filter_ids(scans=scans, min_points=0, region=None, region_mode="intersects")
        allowed = ids if allowed is None else np.intersect1d(allowed, ids)
    raw = search_space(
        store, q.space_name, vector, k=q.candidates, aggregation=q.aggregation, allowed=allowed, min_score=None
    )
    if not raw:
        return {}
    floor = q.match * max(raw[0].score, 0.0)
    if q.filters.min_score is not None:
        floor = max(floor, q.filters.min_score)
    return {h.instance_id: h for h in raw if h.score >= floor}


def _with_text(q, text):
    import dataclasses

    return dataclasses.replace(q, text=text, image=None)


def run_relational(database, q) -> list[SceneMatch]:
    """Run a relational (or negation / count) query; see the module docstring."""
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
    subj = _matches(database, q.text, q, allowed=allowed) if q.text is not None else {}
    if q.text is None:  # an image subject: its space's search
        from ..query import search_space

        vector = database._query_vector(q.space_name, q)
        raw = search_space(store, q.space_name, vector, k=q.candidates, aggregation=q.aggregation, allowed=allowed)
        top = raw[0].score if raw else 0.0
        subj = {h.instance_id: h for h in raw if h.score >= q.match * max(top, 0.0)}
    pairs: list[tuple[int, int | None, float, dict, str | None]] = []
    obj: dict = {}
    if q.relation is not None:
        obj = _matches(database, q.relation_object, q, scans=f.scans)
        for row in store.relation_pairs(q.relation, list(subj), list(obj), max_distance=q.max_distance):
            s_id, o_id = row["subject_id"], row["object_id"]
            score = (subj[s_id].score + obj[o_id].score + row["score"]) / 3
            evidence = {k: row[k] for k in ("score", "distance", "gap", "overlap")}
            pairs.append((s_id, o_id, score, evidence, q.relation))
    else:
        pairs = [(s_id, None, h.score, {}, None) for s_id, h in subj.items()]
    scan_of = store.instance_scans([p[0] for p in pairs])
    excluded: set[str] = set()
    for text in q.excluded:
        excluded |= set(store.instance_scans(list(_matches(database, text, q, scans=f.scans))).values())
    by_scan: dict[str, list] = {}
    for p in pairs:
        scan = scan_of.get(p[0])
        if scan is not None and scan not in excluded:
            by_scan.setdefault(scan, []).append(p)
    if q.min_count is not None:
        by_scan = {s: ps for s, ps in by_scan.items() if len({p[0] for p in ps}) >= q.min_count}
    groups = sorted(by_scan.items(), key=lambda kv: (-max(p[2] for p in kv[1]), kv[0]))[: q.k]
    s_ids = sorted({p[0] for _, ps in groups for p in ps})
    o_ids = sorted({p[1] for _, ps in groups for p in ps if p[1] is not None})
    s_hits = {h.instance_id: h for h in database._hits([subj[i] for i in s_ids], q.points)}
    o_hits = {h.instance_id: h for h in database._hits([obj[i] for i in o_ids], q.points)}
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
