"""Shingles over whole batches: word and character n-gram hashes per document, sorted
unique sets, exact Jaccard. (Normalisation and words: dedup/text.py; hashes: dedup/hashing.py.)

`minhash` fuses this walk with word hashing, shingling and signing (one pass over
each document's bytes, no intermediate buffers); the unfused functions here
(`normalized_buffers`, `shingle_hashes_from_buffers`) produce the very same shingle
hashes from materialised normalised text, for exact Jaccard, cache keys and tests.

Hashes are our own rather than Polars' or Python's, because they must be stable
across library versions: stored signatures are reused by later runs (see
`minhash.find_duplicates(cache=...)`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
from datamix.dedup.jit import njit, prange  # numba, imported there

if TYPE_CHECKING:
    import polars as pl

# Bump when the normalisation or the hash functions change: it is part of every
# cache key, so signatures made by older code are never mixed with new ones.
# v2: in-kernel Unicode lowercase (final sigma folded), packed word hash.
# v3: little-endian packing of the word hash (SWAR word pass).
# v4: signatures keyed by the high 32 bits of each shingle hash (kernels._key).
# v5: one-permutation hashing with optimal densification (kernels._sign_hashes).
HASH_VERSION = "5"

# the words and hashes of text.py and hashing.py, also reached as shingle.<name> by the MinHash
# kernels and tests
from datamix.dedup.hashing import _FNV_OFFSET, _FNV_PRIME, _SPACE, _hash_bytes, _mix64, ngram_hash, ngram_hashes, word_hash
from datamix.dedup.text import (_is_separator, lower_table, normalize, normalize_buffers,  # noqa: F401
                                normalized_buffers, utf8_buffers, word_hashes, word_hashes_into, word_pass_scratch)
from datamix.dedup.warm import load_cached_lightly


@njit(cache=True)
def _count_words(data, start, end):
    """Words in a normalised span (single spaces, no leading/trailing space)."""
    if end <= start:
        return 0
    n = 1
    for i in range(start, end):
        if data[i] == _SPACE:
            n += 1
    return n


@njit(cache=True)
def _count_chars(data, start, end):
    """Unicode code points in a UTF-8 span (bytes that are not continuation bytes)."""
    n = 0
    for i in range(start, end):
        if (data[i] & 0xC0) != 0x80:
            n += 1
    return n


@njit(cache=True, parallel=True)
def _shingle_counts(data, offsets, char_unit, ngram):
    n_docs = offsets.shape[0] - 1
    counts = np.empty(n_docs, np.int64)
    for d in prange(n_docs):
        if char_unit:
            k = _count_chars(data, offsets[d], offsets[d + 1])
        else:
            k = _count_words(data, offsets[d], offsets[d + 1])
        # A document shorter than one n-gram still gets one shingle (itself), so it
        # can match an identical short document; an empty one gets none.
        counts[d] = 0 if k == 0 else max(k - ngram + 1, 1)
    return counts


@njit(cache=True)
def _word_shingles(data, start, end, ngram, out, out_start):
    """Hash each word, then each run of `ngram` word hashes (order matters)."""
    n_words = _count_words(data, start, end)
    if n_words == 0:
        return
    words = np.empty(n_words, np.uint64)
    w = 0
    word_start = start
    for i in range(start, end + 1):
        if i == end or data[i] == _SPACE:
            words[w] = word_hash(data, word_start, i)
            w += 1
            word_start = i + 1
    width = min(ngram, n_words)
    for j in range(max(n_words - ngram + 1, 1)):
        out[out_start + j] = ngram_hash(words, j, width)


@njit(cache=True)
def _char_shingles(data, start, end, ngram, out, out_start):
    """Hash the UTF-8 bytes of each run of `ngram` code points."""
    n_chars = _count_chars(data, start, end)
    if n_chars == 0:
        return
    starts = np.empty(n_chars + 1, np.int64)
    c = 0
    for i in range(start, end):
        if (data[i] & 0xC0) != 0x80:
            starts[c] = i
            c += 1
    starts[n_chars] = end
    n_out = max(n_chars - ngram + 1, 1)
    width = min(ngram, n_chars)
    for j in range(n_out):
        out[out_start + j] = _hash_bytes(data, starts[j], starts[j + width])


@njit(cache=True, parallel=True)
def _fill_shingles(data, offsets, char_unit, ngram, shingle_offsets, out):
    n_docs = offsets.shape[0] - 1
    for d in prange(n_docs):
        if char_unit:
            _char_shingles(data, offsets[d], offsets[d + 1], ngram, out, shingle_offsets[d])
        else:
            _word_shingles(data, offsets[d], offsets[d + 1], ngram, out, shingle_offsets[d])


def shingle_hashes_from_buffers(
    data: np.ndarray, offsets: np.ndarray, unit: str, ngram: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 shingle hashes of every document and their offsets (len n+1)."""
    if not 1 <= ngram <= 64:
        raise ValueError(f"ngram must be between 1 and 64, got {ngram}")
    char_unit = unit == "char"
    counts = _shingle_counts(data, offsets, char_unit, ngram)
    shingle_offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=shingle_offsets[1:])
    out = np.empty(int(shingle_offsets[-1]), np.uint64)
    _fill_shingles(data, offsets, char_unit, ngram, shingle_offsets, out)
    return out, shingle_offsets


def shingle_hashes(
    texts: list[str] | pl.Series, unit: str = "word", ngram: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise `texts` and return (flat uint64 shingle hashes, offsets int64 of len n+1).

    Document d's shingles are `hashes[offsets[d]:offsets[d+1]]` (in text order, with
    repeats: MinHash ignores them; `unique_sorted` removes them for exact Jaccard).
    """
    data, offsets = normalized_buffers(texts)
    return shingle_hashes_from_buffers(data, offsets, unit, ngram)


@njit(cache=True, parallel=True)
def _text_hashes(data, offsets, seed):
    n = offsets.shape[0] - 1
    out = np.empty(n, np.uint64)
    for d in prange(n):
        h = _FNV_OFFSET ^ seed
        for i in range(offsets[d], offsets[d + 1]):
            h = (h ^ np.uint64(data[i])) * _FNV_PRIME
        out[d] = _mix64(h ^ np.uint64(offsets[d + 1] - offsets[d]))
    return out


def text_keys(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """A 128-bit content hash per (normalised) text as hex: the cache key of its signature."""
    lo = _text_hashes(data, offsets, np.uint64(0x0123456789ABCDEF))
    hi = _text_hashes(data, offsets, np.uint64(0xFEDCBA9876543210))
    return [f"{a:016x}{b:016x}" for a, b in zip(hi.tolist(), lo.tolist())]


@njit(cache=True, parallel=True)
def _sort_unique_inplace(hashes, offsets, counts):
    for d in prange(offsets.shape[0] - 1):
        s, e = offsets[d], offsets[d + 1]
        if e == s:
            counts[d] = 0
            continue
        seg = np.sort(hashes[s:e])
        k = 0
        for i in range(seg.shape[0]):
            if i == 0 or seg[i] != seg[i - 1]:
                hashes[s + k] = seg[i]
                k += 1
        counts[d] = k


def unique_sorted(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document, its distinct shingle hashes sorted (the shingle *set*), re-packed flat."""
    h = hashes.copy()
    counts = np.empty(len(offsets) - 1, np.int64)
    _sort_unique_inplace(h, offsets, counts)
    keep = np.repeat(np.arange(len(counts)), np.diff(offsets)) if len(h) else np.zeros(0, np.int64)
    pos = np.arange(len(h)) - np.repeat(offsets[:-1], np.diff(offsets))
    mask = pos < counts[keep] if len(h) else np.zeros(0, bool)
    new_offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    return h[mask], new_offsets


def jaccard_pairs(sets, offsets, left, right):
    """Exact Jaccard of sorted shingle sets for each pair (left[k], right[k]); 1.0 for two empty sets."""
    return jaccard_spans(sets, offsets[:-1], offsets[1:], left, right)


def serial_and_parallel(fn):
    """One parallel compilation of a kernel, run on one thread for small jobs (`pick`).

    Each parallel region costs a thread launch and a barrier, and on a busy machine
    the barrier can wait a whole scheduler slice for a descheduled worker, so small
    jobs run on the calling thread alone. One compilation rather than a serial and a
    parallel one halves the first-use compile time of a fresh checkout (numba caches
    compiled kernels on disk, but only after they were compiled once)."""
    return njit(cache=True, parallel=True)(fn)


PARALLEL_MIN_WORK = 2_000_000  # ~ bytes or element operations below which one thread is faster


def pick(kernel, work: int):
    return kernel if work >= PARALLEL_MIN_WORK else functools.partial(_on_one_thread, kernel)


def _on_one_thread(kernel, *args):
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


def jaccard_spans(sets, starts, ends, left, right):
    """jaccard_pairs with set d at sets[starts[d]:ends[d]] (sets need not be packed)."""
    work = int(len(left) * max(1, len(sets) // max(1, len(starts))))
    return pick(_JACCARD_SPANS, work)(sets, starts, ends, left, right)


def _jaccard_spans(sets, starts, ends, left, right):
    out = np.empty(left.shape[0], np.float64)
    for k in prange(left.shape[0]):
        a0, a1 = starts[left[k]], ends[left[k]]
        b0, b1 = starts[right[k]], ends[right[k]]
        inter = 0
        i, j = a0, b0
        while i < a1 and j < b1:
            if sets[i] == sets[j]:
                inter += 1
                i += 1
                j += 1
            elif sets[i] < sets[j]:
                i += 1
            else:
                j += 1
        union = (a1 - a0) + (b1 - b0) - inter
        out[k] = 1.0 if union == 0 else inter / union
    return out


_JACCARD_SPANS = serial_and_parallel(_jaccard_spans)


load_cached_lightly(globals())
