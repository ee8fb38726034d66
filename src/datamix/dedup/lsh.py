"""LSH banding: candidate pairs of documents whose signatures agree on a whole band.

One band at a time (memory: one uint64 key and one int64 sort index per document,
so 1M documents need ~16 MB per band on top of the signatures): hash the band's
`rows` signature columns into one key per document, sort the keys, and emit
pairs inside each run of equal keys. Pairs are de-duplicated across bands as
they accumulate, so the pair buffer holds each candidate once.

A run larger than `max_bucket` (e.g. thousands of identical boilerplate texts)
would emit a quadratic number of pairs; there we emit only a star from the
run's first member plus the chain of neighbours, enough for union-find to
connect everything that is really equal (a mixed large run may lose a few
candidate edges, which other bands usually supply).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

MAX_BUCKET = 64


@njit(cache=True, parallel=True)
def band_keys(sig, start, rows):
    """One 64-bit key per document for signature columns [start, start + rows)."""
    n = sig.shape[0]
    out = np.empty(n, np.uint64)
    for d in prange(n):
        h = np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(start)
        for j in range(start, start + rows):
            h = (h ^ np.uint64(sig[d, j])) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        out[d] = h ^ (h >> np.uint64(31))
    return out


@njit(cache=True)
def _runs(sorted_keys):
    """Start offsets of runs of equal keys (plus the end), keeping only runs of length >= 2."""
    n = sorted_keys.shape[0]
    starts = np.empty(n + 1, np.int64)
    m = 0
    i = 0
    while i < n:
        j = i + 1
        while j < n and sorted_keys[j] == sorted_keys[i]:
            j += 1
        if j - i >= 2:
            starts[m] = i
            starts[m + 1] = j
            m += 2
        i = j
    return starts[:m]


@njit(cache=True)
def _pairs_in_runs(order, runs, max_bucket):
    """Encoded pairs lo * 2^32 + hi (lo < hi) for every run of equal keys."""
    total = 0
    for t in range(0, runs.shape[0], 2):
        m = runs[t + 1] - runs[t]
        total += m * (m - 1) // 2 if m <= max_bucket else 2 * (m - 1)
    out = np.empty(total, np.uint64)
    w = 0
    for t in range(0, runs.shape[0], 2):
        s, e = runs[t], runs[t + 1]
        m = e - s
        if m <= max_bucket:
            for i in range(s, e):
                for j in range(i + 1, e):
                    a, b = order[i], order[j]
                    if a > b:
                        a, b = b, a
                    out[w] = (np.uint64(a) << np.uint64(32)) | np.uint64(b)
                    w += 1
        else:
            for i in range(s + 1, e):
                for a, b in ((order[s], order[i]), (order[i - 1], order[i])):
                    if a > b:
                        a, b = b, a
                    out[w] = (np.uint64(a) << np.uint64(32)) | np.uint64(b)
                    w += 1
    return out[:w]


def _decode(encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (encoded >> np.uint64(32)).astype(np.int64), (encoded & np.uint64(0xFFFFFFFF)).astype(np.int64)


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, max_bucket: int = MAX_BUCKET) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) int64 arrays, left < right, each pair once, sorted."""
    if sig.shape[0] >= 2**32:
        raise ValueError("at most 2^32 - 1 documents per dedup call")
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} exceeds the signature length {sig.shape[1]}")
    found = np.zeros(0, np.uint64)
    for band in range(bands):
        keys = band_keys(sig, band * rows, rows)
        order = np.argsort(keys, kind="stable")
        runs = _runs(keys[order])
        if len(runs):
            found = np.union1d(found, _pairs_in_runs(order, runs, max_bucket))
    return _decode(found)


@njit(cache=True)
def _pairs_against(doc_keys, ref_sorted, ref_order, max_bucket):
    """(doc, ref) for each document key present among the reference keys (<= max_bucket refs per key)."""
    n = doc_keys.shape[0]
    pos = np.searchsorted(ref_sorted, doc_keys)
    count = 0
    for d in range(n):
        p = pos[d]
        while p < ref_sorted.shape[0] and ref_sorted[p] == doc_keys[d] and p - pos[d] < max_bucket:
            count += 1
            p += 1
    docs = np.empty(count, np.int64)
    refs = np.empty(count, np.int64)
    w = 0
    for d in range(n):
        p = pos[d]
        while p < ref_sorted.shape[0] and ref_sorted[p] == doc_keys[d] and p - pos[d] < max_bucket:
            docs[w] = d
            refs[w] = ref_order[p]
            w += 1
            p += 1
    return docs, refs


def candidate_pairs_against(
    sig: np.ndarray, ref_sig: np.ndarray, bands: int, rows: int, max_bucket: int = MAX_BUCKET
) -> tuple[np.ndarray, np.ndarray]:
    """(doc, ref) index pairs sharing a band between documents and reference rows, each once."""
    found = np.zeros(0, np.uint64)
    for band in range(bands):
        ref_keys = band_keys(ref_sig, band * rows, rows)
        ref_order = np.argsort(ref_keys, kind="stable")
        docs, refs = _pairs_against(band_keys(sig, band * rows, rows), ref_keys[ref_order], ref_order, max_bucket)
        if len(docs):
            found = np.union1d(found, (docs.astype(np.uint64) << np.uint64(32)) | refs.astype(np.uint64))
    return _decode(found)
