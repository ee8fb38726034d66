"""MinHash signatures over whole batches, LSH candidates, verification, clusters.

The options are datamix.dedup.options.MinHashConfig (re-exported here); the derivation of
bands x rows needs only numpy; the numba kernels (kernels, shingle, lsh, clusters) are imported inside the
functions that run them, so loading the step registry never imports numba.
Character shingles go through the unfused path (normalised buffer -> shingle
hashes -> signatures), which gives identical results for words too (tested).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from datamix.dedup.options import MinHashConfig  # noqa: F401 - the method's options, here for its callers

if TYPE_CHECKING:
    import polars as pl

# ---------------------------------------------------------------- bands and rows


def _integrate(f, a: float, b: float, steps: int = 200):
    """Simpson's rule along the last axis of f(x) (the S-curve is smooth: 200 panels
    is far below 1e-6 error)."""
    if b <= a:
        return 0.0
    h = (b - a) / steps
    y = f(np.linspace(a, b, steps + 1))
    return h / 3 * (y[..., 0] + y[..., -1] + 4 * y[..., 1:-1:2].sum(axis=-1) + 2 * y[..., 2:-1:2].sum(axis=-1))


def collision_probability(s, bands: int, rows: int):
    """P(two documents with Jaccard s share at least one band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.power(s, rows)) ** bands


def optimal_bands_rows(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising
    fp_weight * integral_0^t P(collide | s) ds + fn_weight * integral_t^1 (1 - P(collide | s)) ds."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    return _optimal_bands_rows(float(threshold), int(num_perm), float(fp_weight), float(fn_weight))


@functools.lru_cache(maxsize=256)
def _optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    # Every (b, r) at once: one row of the S-curve per candidate, Simpson's rule along the rows.
    b, r = map(np.array, zip(*[(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]))
    fp = _integrate(lambda s: collision_probability(s[None, :], b[:, None], r[:, None]), 0.0, threshold)
    fn = _integrate(lambda s: 1.0 - collision_probability(s[None, :], b[:, None], r[:, None]), threshold, 1.0)
    best = int(np.argmin(fp_weight * fp + fn_weight * fn))  # first minimum, as the scalar loop found
    return int(b[best]), int(r[best])


# ---------------------------------------------------------------- signatures


def sketch_seeds(seed: int) -> np.ndarray:
    """The two 64-bit seeds of the signature kernels (datamix.dedup.kernels): one remixes
    the shingle hashes into bins and values, one drives the densification probes."""
    return np.random.default_rng(seed).integers(0, 2**64 - 1, 2, dtype=np.uint64, endpoint=True)


def signatures_from_hashes(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """(n_docs, num_perm) uint32 signatures from flat shingle hashes + offsets."""
    from datamix.dedup.kernels import signature_kernel

    out = np.empty((len(offsets) - 1, num_perm), np.uint32)
    signature_kernel(np.ascontiguousarray(hashes, np.uint64), np.ascontiguousarray(offsets, np.int64),
                     sketch_seeds(seed), out)
    return out


def signatures_from_buffers(data: np.ndarray, offsets: np.ndarray, cfg: MinHashConfig,
                            out: np.ndarray | None = None) -> np.ndarray:
    """Signatures of texts given as UTF-8 (bytes, offsets), raw or already normalised
    (normalisation is idempotent, so both give the same signatures), into `out` when given.
    `offsets` may be a slice (absolute positions in `data`)."""
    from datamix.dedup import kernels as mk, shingle

    if cfg.unit == "char":
        norm, norm_offsets = shingle.normalize_buffers(data, offsets)
        hashes, shingle_offsets = shingle.shingle_hashes_from_buffers(norm, norm_offsets, cfg.unit, cfg.ngram)
        sig = signatures_from_hashes(hashes, shingle_offsets, cfg.num_perm, cfg.seed)
        if out is None:
            return sig
        out[:] = sig
        return out
    if out is None:
        out = np.empty((len(offsets) - 1, cfg.num_perm), np.uint32)
    offsets = np.ascontiguousarray(offsets, np.int64)
    # the work is the word pass, ~linear in bytes (one hash per shingle, not num_perm of them)
    kernel = mk.pick(mk.FUSED_WORD_KERNEL, int(offsets[-1] - offsets[0]))
    kernel(data, offsets, shingle.lower_table(), cfg.ngram, sketch_seeds(cfg.seed), out)
    return out


def signatures(texts: list[str] | pl.Series, cfg: MinHashConfig, cache: Any = None, stats: dict | None = None) -> np.ndarray:
    """Signatures of `texts` in chunks of cfg.chunk_size; with `cache`, only texts it lacks are signed."""
    import polars as pl

    from datamix.dedup import shingle

    series = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
    out = np.empty((len(series), cfg.num_perm), np.uint32)
    computed = 0
    for start in range(0, len(series), cfg.chunk_size):
        data, offsets = shingle.utf8_buffers(series.slice(start, cfg.chunk_size))
        computed += _sign_chunk(data, offsets, cfg, cache, out[start : start + len(offsets) - 1])
    if stats is not None:
        stats["signatures_computed"] = stats.get("signatures_computed", 0) + computed
    return out


def _signatures_of_rows(utf8: _Utf8, first: int, count: int, cfg, cache, stats) -> np.ndarray:
    """`signatures` of rows [first, first + count) of texts already in UTF-8 buffers
    (find_duplicates builds them once for signing and exact verification)."""
    out = np.empty((count, cfg.num_perm), np.uint32)
    computed = 0
    for start in range(first, first + count, cfg.chunk_size):
        stop = min(start + cfg.chunk_size, first + count)
        offsets = utf8.offsets[start : stop + 1]
        computed += _sign_chunk(utf8.data, offsets, cfg, cache, out[start - first : stop - first])
    if stats is not None:
        stats["signatures_computed"] = stats.get("signatures_computed", 0) + computed
    return out


def _sign_chunk(data, offsets, cfg, cache, out) -> int:
    if cache is None:
        out[:] = signatures_from_buffers(data, offsets, cfg)
        return len(offsets) - 1
    return _signatures_cached(data, offsets, cfg, cache, out)


class _Utf8:
    """UTF-8 bytes and offsets of a series, built once."""

    def __init__(self, series: pl.Series):
        from datamix.dedup import shingle

        data, offsets = shingle.utf8_buffers(series)
        self.data, self.offsets = data, np.ascontiguousarray(offsets, np.int64)


def _signatures_cached(data, offsets, cfg, cache, out) -> int:
    """Fill `out` from the cache (keyed by the normalised text) and sign the rest; returns how many were signed."""
    from datamix.dedup import shingle

    data, offsets = shingle.normalize_buffers(data, offsets)
    tag = cfg.cache_tag()
    keys = [f"{tag}/{k}" for k in shingle.text_keys(data, offsets)]
    found = cache.get(keys)
    hit = np.array([k in found for k in keys], dtype=bool)
    for i in np.flatnonzero(hit):
        out[i] = np.frombuffer(found[keys[i]], dtype=np.uint32)
    todo = np.flatnonzero(~hit)
    if len(todo) == 0:
        return 0
    if len(todo) < len(hit):
        data, offsets = _select(data, offsets, todo)
    sig = signatures_from_buffers(data, offsets, cfg)
    out[todo] = sig
    cache.put({keys[i]: sig[j].tobytes() for j, i in enumerate(todo.tolist())})
    return len(todo)


def _select(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The byte buffer and offsets of a subset of texts."""
    from datamix.dedup.kernels import copy_rows

    rows = np.ascontiguousarray(rows, np.int64)
    lengths = (offsets[1:] - offsets[:-1])[rows]
    new_offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    out = np.empty(int(new_offsets[-1]), np.uint8)
    copy_rows(data, np.ascontiguousarray(offsets, np.int64), rows, new_offsets, out)
    # Read-only like Arrow's buffers: the word-pass kernels then see one array type
    # and are compiled once, not once per writability (~4 s each on a fresh checkout).
    out.flags.writeable = False
    return out, new_offsets


def signature_similarity(sig_a, sig_b, left, right):
    """Fraction of equal signature positions for each pair (sig_a[left[k]], sig_b[right[k]])."""
    from datamix.dedup import kernels as mk

    return mk.pick(mk.SIGNATURE_SIMILARITY, len(left) * sig_a.shape[1])(sig_a, sig_b, left, right)


# ---------------------------------------------------------------- the method


def find_duplicates(
    texts: list[str] | pl.Series,
    priority: np.ndarray,
    cfg: MinHashConfig,
    *,
    reference: list[str] | pl.Series | None = None,
    cache: Any = None,
    stats: dict | None = None,
) -> pl.DataFrame:
    """One row per REMOVED text: index, dup_of, ref_index, similarity (see clusters.removal_frame).

    Candidates are pairs sharing an LSH band. A pair stays when its similarity
    reaches the threshold: with verify="hybrid" (default) the signature estimate,
    replaced by the exact Jaccard of the shingle sets where the estimate is within 3
    standard deviations of the threshold; "signature": the estimate; "jaccard": the
    exact Jaccard; "none": every candidate stays. Verified pairs are clustered by
    union-find and the lowest `priority` (ties: lower index) of each cluster is kept.
    A text near-duplicate to a `reference` row is removed whatever its cluster
    (decontamination). `stats`, when given, receives counts (signatures_computed,
    candidate_pairs, exact_pairs, verified_pairs).
    """
    from datamix.dedup import clusters, lsh

    if cfg.out_of_core is True:  # asked for explicitly: the same decisions in bounded memory
        return _out_of_core(texts, priority, cfg, reference, cache, stats)
    n = len(texts)
    priority = np.asarray(priority, dtype=np.float64)
    if priority.shape != (n,):
        raise ValueError(f"priority must have one value per text ({n}), got shape {priority.shape}")
    stats = {} if stats is None else stats
    bands, rows = cfg.band_rows()
    import polars as pl

    texts = _as_series(texts)
    reference = None if reference is None else _as_series(reference)
    # One UTF-8 buffer of texts + reference rows, read by the signatures and by exact
    # Jaccard (building it copies every byte: ~5 ms per 20k texts of 200 words).
    utf8 = _Utf8(texts if reference is None else pl.concat([texts, reference]))
    sig = _signatures_of_rows(utf8, 0, n, cfg, cache, stats)
    ref_sig = None if reference is None else _signatures_of_rows(utf8, n, len(reference), cfg, cache, stats)

    left, right = lsh.candidate_pairs(sig, bands, rows)
    ref_doc = ref_row = np.zeros(0, np.int64)
    if ref_sig is not None and len(ref_sig):
        ref_doc, ref_row = lsh.candidate_pairs_against(sig, ref_sig, bands, rows)
    stats["candidate_pairs"] = int(len(left) + len(ref_doc))

    # Pairs are indices into texts followed by reference rows, so one similarity
    # function serves both kinds of pairs.
    all_sig = sig if ref_sig is None else np.concatenate([sig, ref_sig])
    similarity = _PairSimilarity(all_sig, texts, reference, cfg, stats, utf8)
    pairs = verified_pairs(similarity, n, left, right, ref_doc, ref_row, cfg, stats)
    return clusters.removal_frame(n, priority, *pairs, clusters.answering_verified_pairs(similarity, *pairs[:3]))


def verified_pairs(similarity, n: int, left, right, ref_doc, ref_row, cfg: MinHashConfig, stats: dict) -> tuple:
    """The candidate pairs that pass verification, with their similarities: (left, right, sim,
    ref_doc, ref_row, ref_sim). Reference rows are indices n + j for `similarity`. Shared by
    the in-memory and the out-of-core paths, so both keep the same pairs."""
    sim = similarity(left, right)
    ref_sim = similarity(ref_doc, ref_row + n)
    if cfg.verify != "none":
        keep = sim >= cfg.threshold
        left, right, sim = left[keep], right[keep], sim[keep]
        keep = ref_sim >= cfg.threshold
        ref_doc, ref_row, ref_sim = ref_doc[keep], ref_row[keep], ref_sim[keep]
    stats["verified_pairs"] = int(len(left) + len(ref_doc))
    return left, right, sim, ref_doc, ref_row, ref_sim


def _out_of_core(texts, priority, cfg, reference, cache, stats) -> pl.DataFrame:
    """find_duplicates through datamix.dedup.ooc, its work files in a temporary folder (the
    dedup step gives it the step's output folder and its memory budget instead)."""
    import tempfile

    from datamix.dedup import ooc

    with tempfile.TemporaryDirectory(prefix="datamix-minhash-") as folder:
        return ooc.find_duplicates_ooc(ooc.SeriesSource(texts), priority, cfg, folder, reference=reference,
                                       cache=cache, stats=stats)


def _as_series(texts) -> pl.Series:
    import polars as pl

    return (texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)).cast(pl.String)


class _PairSimilarity:
    """Similarity of index pairs over texts + reference rows, as `cfg.verify` defines it:
    the signature estimate, the exact Jaccard of the shingle sets, or (hybrid) the
    estimate where it is decisive and the exact value where it is not."""

    def __init__(self, sig, texts, reference, cfg: MinHashConfig, stats: dict, utf8: _Utf8 | None = None):
        self.sig, self.cfg, self.stats = sig, cfg, stats
        self.texts, self.reference = texts, reference
        self._utf8 = utf8
        self.margin = 3.0 * math.sqrt(cfg.threshold * (1.0 - cfg.threshold) / cfg.num_perm)
        self._docs = self._sets = self._starts = self._ends = None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if self.cfg.verify == "jaccard":
            return self.exact(a, b)
        sim = signature_similarity(self.sig, self.sig, a, b)
        if self.cfg.verify == "hybrid":
            unsure = np.flatnonzero(np.abs(sim - self.cfg.threshold) < self.margin)
            if len(unsure):
                sim[unsure] = self.exact(a[unsure], b[unsure])
        return sim

    def exact(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Exact Jaccard, shingling only the texts these pairs involve (kept for later calls:
        the removal records ask again about texts already seen)."""
        from datamix.dedup import kernels as mk

        self.stats["exact_pairs"] = self.stats.get("exact_pairs", 0) + len(a)
        if len(a) == 0:
            return np.zeros(0, np.float64)
        # The texts involved, sorted and unique: a mask over all rows is O(n), where
        # np.unique's sort of 2 x pairs cost ~11 ms per call at 51k pairs (issue 11).
        involved = np.zeros(len(self.sig), bool)
        involved[a] = True
        involved[b] = True
        self._add_docs(np.flatnonzero(involved))
        ia, ib = np.searchsorted(self._docs, a), np.searchsorted(self._docs, b)
        kernel = mk.pick(mk.JACCARD_BAGS, len(a) * max(1, self._used // max(1, len(self._docs))) * 8)
        return kernel(self._sets, self._starts, self._ends, ia, ib)

    def _add_docs(self, wanted: np.ndarray) -> None:
        """Shingle the texts among `wanted` not shingled yet (only those: the removal
        records ask about a few texts beyond the verified pairs) and keep every text's
        shingles in one store ordered by text index."""
        from datamix.dedup.arrays import missing

        new = wanted if self._docs is None else missing(wanted, self._docs)
        if len(new) == 0:
            return
        if self._docs is None:
            # The word path's array runs on past its packed part (it is sized by the shingles'
            # upper bound, its pages touched only as far as they are packed): later calls (the
            # removal records ask about a few texts more) append there. Growing an array sized to
            # fit copied it: 1.2 GB and 3 s at 1M documents, for 32 texts.
            self._sets, starts, ends = _shingle_bags(self._buffers(), new, self.cfg)
            self._docs, self._starts, self._ends = new, starts, ends
            self._used = int(ends[-1]) if len(ends) else 0
            return
        hashes, starts, ends = _shingle_bags(self._buffers(), new, self.cfg)
        hashes = hashes[: int(ends[-1])]  # the packed part
        # Later calls append: in the room after the packed part, else the hash store grows by a quarter
        # (geometric, so copies stay linear overall, without doubling a 0.5 GB store for a few
        # texts); only the per-text index (24 B a text) is rebuilt.
        if self._used + len(hashes) > len(self._sets):
            grown = np.empty(max(len(self._sets) + len(self._sets) // 4, self._used + len(hashes)), np.uint64)
            grown[: self._used] = self._sets[: self._used]
            self._sets = grown
        self._sets[self._used : self._used + len(hashes)] = hashes
        at = np.searchsorted(self._docs, new)  # both sorted, distinct: where each new text goes
        self._docs = np.insert(self._docs, at, new)
        self._starts = np.insert(self._starts, at, starts + self._used)
        self._ends = np.insert(self._ends, at, ends + self._used)
        self._used += len(hashes)

    def _buffers(self) -> _Utf8:
        """UTF-8 buffers of texts followed by reference rows (built once)."""
        import polars as pl

        if self._utf8 is None:
            series = _as_series(self.texts)
            if self.reference is not None:
                series = pl.concat([series, _as_series(self.reference)])
            self._utf8 = _Utf8(series)
        return self._utf8


def _shingle_bags(utf8: _Utf8, docs: np.ndarray, cfg: MinHashConfig, room=None):
    """(hashes, starts, ends): the shingle hashes (text order, repeats included) of rows
    `docs` of the texts in `utf8`; row docs[q]'s are hashes[starts[q]:ends[q]], packed one
    after another from 0 (for word shingles `hashes` runs on past ends[-1], unwritten).
    room(n): an array of at least n hashes to pack into, or None; word shingles are packed
    into it when it gives one (`hashes` is then that array), which saves a copy."""
    from datamix.dedup import kernels as mk, shingle

    docs = np.ascontiguousarray(docs, np.int64)
    if cfg.unit == "char":
        data, offsets = _select(utf8.data, utf8.offsets, docs)
        norm, norm_offsets = shingle.normalize_buffers(data, offsets)
        hashes, shingle_offsets = shingle.shingle_hashes_from_buffers(norm, norm_offsets, cfg.unit, cfg.ngram)
        return hashes, shingle_offsets[:-1], shingle_offsets[1:]
    # Only these rows are walked (hybrid verification needs a few percent of them),
    # straight from the shared buffer.
    # The kernel writes each text into a slot sized by an upper bound of its shingles (~3x
    # their number for 100-word texts), in passes over a reused scratch of _BAG_PASS slots;
    # each pass is packed into `hashes`, which is allocated at the bound but touched only
    # as far as it is packed. Slots straight into `hashes` cost 1.2 GB of fresh pages at 1M
    # documents (1.5 s of the 2.0 s this took there).
    offsets = utf8.offsets
    bound = (offsets[docs + 1] - offsets[docs] + 1) // 2 + 1  # shingles <= words <= this
    total = int(bound.sum())
    hashes = room(total) if room is not None else None
    if hashes is None:
        hashes = np.empty(total, np.uint64)
    starts = np.empty(len(docs), np.int64)
    counts = np.empty(len(docs), np.int64)
    ends_of_bound = np.cumsum(bound)
    scratch = np.empty(min(total, _BAG_PASS), np.uint64)
    q0, packed = 0, 0
    while q0 < len(docs):
        before = ends_of_bound[q0 - 1] if q0 else 0
        q1 = max(q0 + 1, int(np.searchsorted(ends_of_bound, before + _BAG_PASS, side="right")))
        slots = np.zeros(q1 - q0, np.int64)
        np.cumsum(bound[q0 : q1 - 1], out=slots[1:])
        width = int(ends_of_bound[q1 - 1] - before)
        work = scratch if width <= len(scratch) else np.empty(width, np.uint64)  # one long text
        kernel = mk.pick(mk.FUSED_WORD_BAGS, width * 8)
        kernel(utf8.data, offsets, docs[q0:q1], shingle.lower_table(), cfg.ngram, slots, work, counts[q0:q1])
        mk.pack_slots(work, slots, counts[q0:q1], hashes[packed:])
        starts[q0] = packed
        np.cumsum(counts[q0 : q1 - 1], out=starts[q0 + 1 : q1])
        starts[q0 + 1 : q1] += packed
        packed += int(counts[q0:q1].sum())
        q0 = q1
    return hashes, starts, starts + counts


_BAG_PASS = 1 << 23  # shingle slots per pass of the verification's shingling (64 MB)
