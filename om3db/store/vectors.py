"""FAISS vector indexes: inner product over unit vectors, ids are database primary keys.

``VectorIndex`` is reusable on its own (the query benchmark builds one directly): exact search
(``IndexScalarQuantizer`` fp16) below ``ivf_threshold`` vectors, IVF (fp16 lists) above it with nlist ~ 2·sqrt(N) (at most
N/39: FAISS's k-means wants 39 points per centroid) and the smallest nprobe that reaches the target
recall@10 against exact search on probe queries. Always kept
in CPU form (what is saved); searched on a GPU copy when the installed faiss has GPU support and a
GPU is present.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, StoreError

__all__ = [
    "VectorIndex",
    "IndexChoice",
    "gpu_count",
    "recall_at_k",
    "DEFAULT_IVF_THRESHOLD",
    "DEFAULT_TARGET_RECALL",
    "IVF_TRAIN_ITERATIONS",
    "IVF_TRAIN_POINTS_PER_LIST",
    "ivf_nlist",
]

DEFAULT_IVF_THRESHOLD = 8192
"""Vectors in a space past which an IVF index replaces exact search.

Measured on the query benchmark's 1152-d vectors (docs/benchmarks.md, one search thread): at 8k
vectors exact search takes 1.75 ms per query, the tuned IVF 0.10 ms at recall@10 0.993 (built in
0.4 s); at 4k 0.59 vs 0.06 ms. Below this, exact search costs under ~1.5 ms and is exact."""
DEFAULT_TARGET_RECALL = 0.95
"""recall@10 against exact search that the tuned nprobe must reach on the index's probe queries.

Probe queries (stored vectors with a little or much noise, and midpoints of two; ``_probe_queries``)
are a little harder than the query benchmark's: 0.95 on them gave recall@10 0.994 / 0.986 / 0.981 on its
evaluation queries at 10k / 100k / 1M vectors (docs/benchmarks.md)."""
IVF_LISTS_PER_SQRT_N = 2
"""IVF lists = this x sqrt(N) (at most N/39).

Measured on the query benchmark's vectors (docs/benchmarks.md, "IVF parameters"): at 1M vectors 2·sqrt(N)
reaches recall@10 0.982 in 0.78 ms per query against 1.35 ms at 0.986 for 4·sqrt(N), trains 4x and
assigns 2x faster (adds); sqrt(N) halves the add cost again but needs 1.3 ms for 0.973."""
IVF_TRAIN_ITERATIONS = 10
"""k-means iterations when an IVF is trained (FAISS's default is 25).

Measured on the query benchmark's vectors (docs/benchmarks.md, "IVF parameters"): 10 iterations on 40
points per list train ~4x faster than 25 on 64 and reach the same recall@10 at every nprobe, at 20k
and 200k vectors."""
IVF_TRAIN_POINTS_PER_LIST = 40
"""Training sample: at most this many vectors per IVF list (FAISS's k-means wants at least 39)."""
_NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_CHUNK = 65536
_MAGIC = b"OM3DBIDX"


def _faiss():
    import faiss

    return faiss


def gpu_count() -> int:
    """GPUs faiss can use (0 for faiss-cpu, or a GPU build on a machine without a GPU)."""
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA runtime means no GPU
        return 0


@dataclass(frozen=True)
class IndexChoice:
    """Which FAISS index a space uses; recorded in the database."""

    kind: str
    """'flat' (exact) | 'ivf' (IVF with float16 lists, inner product)."""
    nlist: int = 0
    """IVF cells (0 for flat)."""
    nprobe: int = 0
    """IVF cells visited per query (0 for flat)."""
    trained_on: int = 0
    """Vector count when the IVF quantizer was trained; retrained once the space grows 4x."""

    def params(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "trained_on": self.trained_on}


def code_digests(codes: np.ndarray) -> np.ndarray:
    """(N,) uint64 digests of (N, 2D) uint8 rows (little-endian float16 vectors): a weighted sum of their
    16-bit words with fixed odd random weights, mod 2**64. Equal rows give equal digests; a changed
    value changes the digest (a collision needs a chosen edit)."""
    words = np.ascontiguousarray(codes).view("<u2")
    weights = _digest_weights(words.shape[1])
    out = np.empty(len(words), np.uint64)
    for at in range(0, len(words), 8192):  # bounded temporaries at 1M rows
        part = words[at : at + 8192].astype(np.uint64)
        with np.errstate(over="ignore"):
            out[at : at + 8192] = (part * weights).sum(axis=1, dtype=np.uint64)
    return out


@functools.lru_cache(maxsize=8)
def _digest_weights(n: int) -> np.ndarray:
    """The digest's fixed odd weights for rows of ``n`` 16-bit words (made once per width: an IVF index
    digests list by list)."""
    return np.random.default_rng(0x0F3D).integers(1, 2**63, size=n, dtype=np.uint64) | np.uint64(1)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of each exact top-k list found in the approximate top-k list ((Q, k) int64 each)."""
    hits = sum(len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approx_ids, exact_ids, strict=True))
    total = sum(int((e >= 0).sum()) for e in exact_ids)
    return hits / total if total else 1.0


def _as_matrix(vectors: np.ndarray, dim: int | None = None, *, keep_f16: bool = False) -> np.ndarray:
    """(n, dim) C-contiguous float32, or float16 as given when ``keep_f16`` (stored values, not rounded again)."""
    x = np.asarray(vectors)
    x = np.ascontiguousarray(x, dtype="<f2" if keep_f16 and x.dtype == np.float16 else np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ConfigError(f"vectors must be (n, {dim or 'D'}) float32, got shape {x.shape}")
    return x


def ivf_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: ``IVF_LISTS_PER_SQRT_N`` x sqrt(n), at most n/39 (FAISS's k-means wants
    39 points per centroid), at least 1."""
    return max(1, min(round(IVF_LISTS_PER_SQRT_N * math.sqrt(n)), n // 39))


def _probe_queries(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries that look like unseen ones: a stored vector with a little noise (half: image-like, cosine
    ~0.9 to it), with much noise (a quarter: text-like, cosine ~0.7) and midpoints of two stored vectors
    (a quarter: a query between two objects, the hard case for IVF: its neighbours lie in two regions)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(x[rng.integers(0, len(x), n)], dtype=np.float32)
    b = np.asarray(x[rng.integers(0, len(x), n)], dtype=np.float32)
    noise = rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(x.shape[1])
    near, far = n // 2, n - n // 4
    q = np.concatenate([a[:near] + 0.5 * noise[:near], a[near:far] + noise[near:far], (a[far:] + b[far:]) / 2])
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def _exact_top(q: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) row positions in ``x`` of the exact top-k by inner product; ``x`` decoded in chunks."""
    faiss = _faiss()
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for at in range(0, len(x), _CHUNK):
        part = np.asarray(x[at : at + _CHUNK], dtype=np.float32)
        scores, rows = faiss.knn(q, part, min(k, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, rows + at)
    heap.finalize()
    return heap.I


class VectorIndex:
    """One FAISS index with int64 ids, inner product on unit vectors, vectors held as float16.

    Exact: ``IndexIDMap2(IndexScalarQuantizer(fp16))``. IVF: ``IndexIVFScalarQuantizer(fp16)`` (not by
    residual) holding the ids itself (it supports ``remove_ids`` with arbitrary ids, which an
    ``IndexIDMap2`` around an IVF does not). float16 is what SQLite stores, so the index holds exactly
    the stored values; it halves the memory a search streams through and the bytes an add copies.
    """

    def __init__(self, dim: int, choice: IndexChoice | None = None, *, use_gpu: bool | None = None) -> None:
        faiss = _faiss()
        self.dim = int(dim)
        self.choice = choice or IndexChoice("flat")
        fp16, ip = faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        if self.choice.kind == "flat":
            inner = faiss.IndexScalarQuantizer(self.dim, fp16, ip)
        elif self.choice.kind == "ivf":
            quantizer = faiss.IndexFlatIP(self.dim)
            inner = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, self.choice.nlist, fp16, ip, False)
            inner.nprobe = self.choice.nprobe
            self._quantizer = quantizer  # keep alive: the IVF index does not own it
        else:
            raise ConfigError(f"index kind must be 'flat' or 'ivf', got {self.choice.kind!r}")
        self._inner = inner
        self.index = faiss.IndexIDMap2(inner) if self.choice.kind == "flat" else inner
        self._use_gpu = gpu_count() > 0 if use_gpu is None else bool(use_gpu)
        self._gpu = None

    # -- building -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        kind: str = "auto",
        ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
        nlist: int | None = None,
        nprobe: int | None = None,
        target_recall: float = DEFAULT_TARGET_RECALL,
        use_gpu: bool | None = None,
        seed: int = 0,
        dim: int | None = None,
    ) -> VectorIndex:
        """An index over ``vectors`` (N, D) unit rows with ``ids`` (N,) int64.

        float32 rows are rounded to float16 by FAISS; float16 rows (what SQLite stores) are held as
        they are, never decoded whole (the IVF training sample and assignment decode chunks).

        kind: "auto" (flat below ``ivf_threshold`` vectors, IVF above), "flat" or "ivf".
        nprobe: None tunes it: the smallest power of two reaching ``target_recall`` @10 on probe queries.
        """
        x = _as_matrix(vectors, dim, keep_f16=True)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
        if ids.shape != (len(x),):
            raise ConfigError(f"ids must be ({len(x)},) int64, got shape {ids.shape}")
        n, d = x.shape
        if kind == "auto":
            kind = "ivf" if n >= ivf_threshold else "flat"
        if kind == "flat":
            index = cls(d, IndexChoice("flat"), use_gpu=use_gpu)
            index.add(x, ids)
            return index
        if kind != "ivf":
            raise ConfigError(f"index kind must be 'auto', 'flat' or 'ivf', got {kind!r}")
        nlist = int(nlist or ivf_nlist(n))
        index = cls(d, IndexChoice("ivf", nlist, nprobe or 1, n), use_gpu=use_gpu)
        rng = np.random.default_rng(seed)
        cap = IVF_TRAIN_POINTS_PER_LIST * nlist
        train = x if n <= cap else x[np.sort(rng.choice(n, cap, replace=False))]
        # FAISS writes a warning to stderr below 39 training points per centroid; the nlist above keeps
        # 39 whenever n >= 39, and below that (nlist 1: the mean) there is nothing to warn about.
        index._inner.cp.min_points_per_centroid = 1
        index._inner.cp.niter = IVF_TRAIN_ITERATIONS
        index._inner.train(np.ascontiguousarray(train, dtype=np.float32))
        index.add(x, ids)
        if nprobe is None:
            index.tune_nprobe(x, ids, target_recall=target_recall, seed=seed)
        return index

    def tune_nprobe(
        self,
        x: np.ndarray,
        ids: np.ndarray | None = None,
        *,
        target_recall: float = DEFAULT_TARGET_RECALL,
        queries: int = 200,
        seed: int = 0,
    ) -> float:
        """Set the smallest nprobe whose recall@10 vs exact search on probe queries reaches the target.

        x: the (N, D) vectors the index holds (float32, or float16 as stored), ``ids`` their ids (None: 0..N-1).
        """
        if self.choice.kind != "ivf":
            return 1.0
        x = _as_matrix(x, self.dim, keep_f16=True)
        q = _probe_queries(x, min(queries, len(x)), seed)
        k = min(10, len(x))
        # brute force over x itself (no second index: at 1M x 1152 that copy alone is 2.3-4.6 GB)
        positions = _exact_top(q, x, k)
        truth = positions if ids is None else np.where(positions >= 0, np.asarray(ids, dtype=np.int64)[positions], -1)
        recall = 0.0
        for nprobe in [p for p in _NPROBES if p < self.choice.nlist] + [self.choice.nlist]:
            self._inner.nprobe = nprobe
            _, got = self._inner.search(q, k)
            recall = recall_at_k(got, truth)
            if recall >= target_recall:
                break
        self.choice = IndexChoice("ivf", self.choice.nlist, int(self._inner.nprobe), self.choice.trained_on)
        self._gpu = None
        return recall

    # -- updates --------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add (n, D) rows with (n,) int64 ids.

        float32 rows are rounded to float16 by FAISS. float16 rows (what SQLite stores) are copied in
        as they are (``add_sa_codes``: no conversion); an IVF assigns them to lists on their decoded
        values, as a rebuild from SQLite does.
        """
        x = _as_matrix(vectors, self.dim, keep_f16=True)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
        if ids.shape != (len(x),):
            raise ConfigError(f"ids must be ({len(x)},) int64, got shape {ids.shape}")
        self._gpu = None
        if not len(x):
            return
        if x.dtype == np.float32:
            self.index.add_with_ids(x, ids)
            return
        codes = x.view(np.uint8)
        if self.choice.kind == "flat":
            self.index.add_sa_codes(codes, ids)
            return
        ivf = self._inner
        head = ivf.coarse_code_size()  # the list number, little-endian, before each code
        for at in range(0, len(x), _CHUNK):
            part = slice(at, at + _CHUNK)
            _, lists = ivf.quantizer.search(np.asarray(x[part], dtype=np.float32), 1)
            buf = np.empty((len(lists), head + codes.shape[1]), dtype=np.uint8)
            buf[:, :head] = lists.astype("<i8").view(np.uint8)[:, :head]
            buf[:, head:] = codes[part]
            ivf.add_sa_codes(buf, ids[part])

    def remove(self, ids) -> int:
        """Remove these ids (missing ones are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64))
        if not len(ids):
            return 0
        self._gpu = None
        return int(self.index.remove_ids(_faiss().IDSelectorBatch(ids)))

    def nprobe_for(self, k: int) -> int:
        """IVF lists to visit so that a search can return ``k`` results: the tuned nprobe, or lists
        enough to hold ~4k vectors (their mean size), whichever is more; capped at nlist. 1 for a flat index."""
        if self.choice.kind != "ivf":
            return 1
        mean_list = max(1.0, self.ntotal / max(1, self.choice.nlist))
        return int(min(self.choice.nlist, max(self.choice.nprobe, math.ceil(4 * k / mean_list))))

    def ids(self) -> np.ndarray:
        """(N,) int64 ids held by the index."""
        faiss = _faiss()
        if self.choice.kind == "flat":
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = self._inner.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(self._inner.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def digests(self) -> tuple[np.ndarray, np.ndarray]:
        """((N,) int64 ids, (N,) uint64 digests of the float16 vectors the index holds), in index order.

        The digest is `code_digests` of the stored float16 bytes (flat and IVF hold them as they are), so
        ``check`` can compare what the index would score with what SQLite holds, without decoding."""
        faiss = _faiss()
        size = 2 * self.dim
        if self.choice.kind == "flat":
            codes = self._inner.codes
            raw = faiss.rev_swig_ptr(codes.data(), codes.size()) if codes.size() else np.zeros(0, np.uint8)
            return self.ids(), code_digests(np.asarray(raw).reshape(-1, size))
        lists = self._inner.invlists
        ids, digs = [], []
        for i in range(self._inner.nlist):
            n = lists.list_size(i)
            if n:
                ids.append(faiss.rev_swig_ptr(lists.get_ids(i), n).astype(np.int64))
                digs.append(code_digests(faiss.rev_swig_ptr(lists.get_codes(i), n * size).reshape(n, size)))
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64)
        return np.concatenate(ids), np.concatenate(digs)

    # -- search ---------------------------------------------------------------------------

    def _searcher(self):
        if not self._use_gpu:
            return self.index
        if self._gpu is None:
            faiss = _faiss()
            try:
                self._res = getattr(self, "_res", None) or faiss.StandardGpuResources()
                self._gpu = faiss.index_cpu_to_gpu(self._res, 0, self.index)
            except Exception:  # noqa: BLE001 - an index type this faiss build cannot clone: stay on CPU
                self._use_gpu = False
                return self.index
        return self._gpu

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        min_nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (Q, k) float32 scores and (Q, k) int64 ids, ``-1`` where none.

        allowed_ids: search only these ids (an id selector on the CPU index, so the k results are
        the best k among them, not a post-filtered top-k).
        min_nprobe: an IVF visits at least this many lists (the tuned nprobe is chosen for k = 10: a
        search for thousands of candidates needs lists enough to hold them; see `nprobe_for`).
        """
        q = _as_matrix(queries, self.dim)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        ivf = self.choice.kind == "ivf"
        nprobe = max(1, self.choice.nprobe)
        if ivf and min_nprobe:
            nprobe = min(self.choice.nlist, max(nprobe, int(min_nprobe)))
        if allowed_ids is None:
            if ivf and nprobe > self.choice.nprobe:
                return self.index.search(q, k, params=_faiss().SearchParametersIVF(nprobe=nprobe))
            return self._searcher().search(q, k)
        faiss = _faiss()
        allowed_ids = np.unique(np.asarray(allowed_ids, dtype=np.int64))
        sel = faiss.IDSelectorBatch(allowed_ids)
        if not ivf:
            return self.index.search(q, k, params=faiss.SearchParameters(sel=sel))
        # IVF visits only nprobe cells: widen until every query has min(k, allowed) results. When every
        # allowed id is wanted and they are few, they are scattered over the lists: visit them all at once.
        want = min(k, len(allowed_ids))
        if want == len(allowed_ids) and want * 8 <= self.ntotal:
            nprobe = self.choice.nlist
        while True:
            scores, ids = self.index.search(q, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=nprobe))
            if nprobe >= self.choice.nlist or bool(((ids >= 0).sum(axis=1) >= want).all()):
                return scores, ids
            nprobe = min(nprobe * 4, self.choice.nlist)

    def range_search(
        self, query: np.ndarray, min_score: float, *, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every vector (of ``allowed_ids``: an id selector) whose inner product with ``query`` ((D,) or
        (1, D)) is at least ``min_score``: (n,) int64 ids and (n,) float32 scores, unordered. An IVF visits
        every list: exact over the held vectors, at the cost of one id check per vector when restricted."""
        faiss = _faiss()
        q = _as_matrix(np.asarray(query, dtype=np.float32).reshape(1, -1), self.dim)
        radius = float(np.nextafter(np.float32(min_score), np.float32(-np.inf)))  # FAISS keeps scores > radius
        sel = None
        if allowed_ids is not None:
            allowed_ids = np.unique(np.asarray(allowed_ids, dtype=np.int64))
            if not len(allowed_ids):
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            sel = faiss.IDSelectorBatch(allowed_ids)
        if self.choice.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.choice.nlist)
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        _, scores, ids = self.index.range_search(q, radius, params=params)
        return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path, header: dict | None = None) -> None:
        """Write the CPU index and a JSON header atomically (temp file + fsync + os.replace)."""
        faiss = _faiss()
        path = Path(path)
        head = dict(header or {}, dim=self.dim, count=self.ntotal, kind=self.choice.kind, **self.choice.params())
        head_bytes = json.dumps(head).encode()
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(_MAGIC + struct.pack("<Q", len(head_bytes)) + head_bytes)
            writer = faiss.PyCallbackIOWriter(fh.write)
            faiss.write_index(self.index, writer)
            del writer  # flushes its buffer into fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @staticmethod
    def read_header(path: str | Path) -> dict | None:
        """The header of a saved index, or None when the file is missing, not an index or its header is
        damaged (not a JSON object with the fields :meth:`save` writes)."""
        try:
            with open(path, "rb") as fh:
                if fh.read(8) != _MAGIC:
                    return None
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > os.fstat(fh.fileno()).st_size - 16:  # a damaged length: do not allocate it
                    return None
                head = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error, RecursionError):
            return None
        return head if _header_problem(head) is None else None

    @classmethod
    def load(cls, path: str | Path, *, use_gpu: bool | None = None) -> tuple[VectorIndex, dict]:
        """Read a saved index; raises StoreError when the file is damaged."""
        faiss = _faiss()
        try:
            data = Path(path).read_bytes()
            if data[:8] != _MAGIC:
                raise ValueError("bad magic")
            (n,) = struct.unpack("<Q", data[8:16])
            head = json.loads(data[16 : 16 + n])
            problem = _header_problem(head)
            if problem is not None:
                raise ValueError(problem)
            raw = faiss.deserialize_index(np.frombuffer(data[16 + n :], dtype=np.uint8).copy())
            choice = IndexChoice(head["kind"], head.get("nlist", 0), head.get("nprobe", 0), head.get("trained_on", 0))
            outer = faiss.downcast_index(raw)
            inner = faiss.downcast_index(outer.index) if choice.kind == "flat" else outer
            problem = _structure_problem(outer, inner, choice, head)
            if problem is not None:  # FAISS read it, but not what save() wrote: searches would fail or lie
                raise ValueError(problem)
        except Exception as exc:  # noqa: BLE001 - any damage means: rebuild from SQLite
            raise StoreError(f"{path}: damaged vector index ({exc}). Run: om3db reindex") from exc
        index = cls.__new__(cls)
        index.dim = int(head["dim"])
        index.choice = choice
        index._raw = raw  # owns the C++ object the downcast proxies point into
        index.index = outer
        index._inner = inner
        if choice.kind == "ivf":
            index._inner.nprobe = choice.nprobe
        index._use_gpu = gpu_count() > 0 if use_gpu is None else bool(use_gpu)
        index._gpu = None
        return index, head


def _header_problem(head) -> str | None:
    """Why a saved index's JSON header is not one :meth:`VectorIndex.save` wrote (None when it is)."""
    if not isinstance(head, dict):
        return f"header is a JSON {type(head).__name__}, not an object"
    if head.get("kind") not in ("flat", "ivf"):
        return f"header kind is {head.get('kind')!r}"
    for key in ("dim", "count", "generation", "nlist", "nprobe", "trained_on"):
        value = head.get(key, 0)
        if type(value) is not int or value < 0 or (key == "dim" and value == 0):
            return f"header {key} is {value!r}"
    return None


def _structure_problem(outer, inner, choice: IndexChoice, head: dict) -> str | None:
    """Why a deserialized FAISS index is not the one the header describes (None when it is)."""
    faiss = _faiss()
    if choice.kind == "flat":
        want = (faiss.IndexIDMap2, faiss.IndexScalarQuantizer)
    else:
        want = (faiss.IndexIVFScalarQuantizer, faiss.IndexIVFScalarQuantizer)
    if not (isinstance(outer, want[0]) and isinstance(inner, want[1])):
        return f"a {type(outer).__name__} where a {choice.kind} index was saved"
    if outer.d != head["dim"] or outer.ntotal != head["count"] or outer.metric_type != faiss.METRIC_INNER_PRODUCT:
        return f"dim {outer.d} / {outer.ntotal} vectors where the header says {head['dim']} / {head['count']}"
    if choice.kind == "ivf" and (
        outer.nlist != choice.nlist
        or not outer.is_trained
        or outer.quantizer.d != outer.d
        or outer.quantizer.ntotal != outer.nlist
    ):
        return f"an IVF quantizer that does not fit its {outer.nlist} lists (the header says {choice.nlist})"
    if choice.kind == "flat" and outer.id_map.size() != outer.ntotal:
        return f"{outer.id_map.size()} ids for {outer.ntotal} vectors"
    return None
