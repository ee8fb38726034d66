"""LSH banding: candidate pairs of documents whose signatures agree on a whole band.

One pass over the signature matrix hashes every band's `rows` values into one
64-bit key per (band, document). Then, bands in parallel, each band's keys go
into an open-addressing hash table whose buckets chain their documents in index
order (O(n) per band, no sort), and the pairs inside each bucket are written out.
Each band runs twice, once to count its pairs and once to write them into its
slice of one flat buffer, so nothing grows while threads write. The pairs of all
bands are then de-duplicated with one sort. Memory: 8 bytes per (band, document)
for the keys plus, per band being processed, ~40 bytes per document for its table.

A bucket larger than `max_bucket` (e.g. thousands of identical boilerplate texts)
would emit a quadratic number of pairs; there we emit only a star from the
bucket's first member plus the chain of neighbours, enough for union-find to
connect everything that is really equal (a mixed large bucket may lose a few
candidate edges, which other bands usually supply).
"""

from __future__ import annotations

import numpy as np
from datamix.dedup.jit import njit, prange  # numba, imported there

from datamix.dedup.arrays import distinct
from datamix.dedup.shingle import pick, serial_and_parallel
from datamix.dedup.warm import load_cached_lightly

MAX_BUCKET = 64


@njit(inline="always")
def _band_key(sig, d, start, rows):
    h = np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(start)
    for j in range(start, start + rows):
        h = (h ^ np.uint64(sig[d, j])) * np.uint64(0x100000001B3)
        h ^= h >> np.uint64(29)
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(31))


def all_band_keys(sig, bands, rows):
    """(bands, n_docs) uint64: one key per band per document, one pass over each signature row."""
    return pick(_ALL_BAND_KEYS, sig.shape[0] * bands * rows)(sig, bands, rows)


def _all_band_keys(sig, bands, rows):
    n = sig.shape[0]
    out = np.empty((bands, n), np.uint64)
    for d in prange(n):
        for band in range(bands):
            out[band, d] = _band_key(sig, d, band * rows, rows)
    return out


def band_keys(sig: np.ndarray, start: int, rows: int) -> np.ndarray:
    """One 64-bit key per document for signature columns [start, start + rows) (the same
    function `all_band_keys` applies to every band)."""
    return _band_keys_one(sig, start, rows)


@njit(cache=True, parallel=True)
def _band_keys_one(sig, start, rows):
    out = np.empty(sig.shape[0], np.uint64)
    for d in prange(sig.shape[0]):
        out[d] = _band_key(sig, d, start, rows)
    return out


@njit(cache=True)
def _table_size(n):
    size = 16
    while size < 2 * n:
        size *= 2
    return size


@njit(cache=True)
def _bucket_table(keys):
    """Open addressing on the (already mixed) keys. Returns per slot: its key, the
    first (lowest-index) document of its bucket or -1, the bucket's size; and per
    document the next document of its bucket (ascending) or -1."""
    n = keys.shape[0]
    size = _table_size(n)
    mask = size - 1
    slot_key = np.zeros(size, np.uint64)
    head = np.full(size, -1, np.int64)
    count = np.zeros(size, np.int64)
    nxt = np.empty(n, np.int64)
    for d in range(n - 1, -1, -1):  # in reverse, so each chain comes out ascending
        k = keys[d]
        s = np.int64(k >> np.uint64(40)) & mask
        while head[s] != -1 and slot_key[s] != k:
            s = (s + 1) & mask
        slot_key[s] = k
        nxt[d] = head[s]
        head[s] = d
        count[s] += 1
    return slot_key, head, count, nxt


@njit(inline="always")
def _encode(a, b):
    return (np.uint64(a) << np.uint64(32)) | np.uint64(b)


@njit(cache=True)
def _band_pairs(keys, max_bucket, out, w):
    """Write the band's pairs (lo << 32 | hi, lo < hi) at out[w:] (or only count them
    when out is empty); returns the new write position."""
    _, head, count, nxt = _bucket_table(keys)
    write = out.shape[0] > 0
    members = np.empty(0, np.int64)
    for s in range(head.shape[0]):
        m = count[s]
        if m < 2:
            continue
        if not write:
            w += m * (m - 1) // 2 if m <= max_bucket else 2 * (m - 1)
            continue
        if members.shape[0] < m:
            members = np.empty(2 * m, np.int64)
        x, t = head[s], 0
        while x != -1:
            members[t] = x
            t += 1
            x = nxt[x]
        w = _emit(members, m, max_bucket, out, w)
    return w


@njit(inline="always")
def _emit(members, m, max_bucket, out, w):
    """The pairs of one bucket of m ascending members at out[w:]: all of them, or past
    max_bucket a star from the first member plus the chain of neighbours."""
    if m <= max_bucket:
        for i in range(m):
            for j in range(i + 1, m):
                out[w] = _encode(members[i], members[j])
                w += 1
    else:
        for i in range(1, m):
            out[w] = _encode(members[0], members[i])
            out[w + 1] = _encode(members[i - 1], members[i])
            w += 2
    return w


@njit(cache=True)
def _bucket_pairs(values, offsets, max_bucket):
    total = 0
    for q in range(offsets.shape[0] - 1):
        m = offsets[q + 1] - offsets[q]
        total += m * (m - 1) // 2 if m <= max_bucket else 2 * (m - 1)
    out = np.empty(total, np.uint64)
    w = 0
    for q in range(offsets.shape[0] - 1):
        w = _emit(values[offsets[q]:], offsets[q + 1] - offsets[q], max_bucket, out, w)
    return out


@njit(cache=True)
def _run_ends(band, key, final):
    """End of each run of equal (band, key) in rows sorted by (band, key); without `final`
    the last run may continue in the next rows and is left out."""
    n = band.shape[0]
    ends = np.empty(n, np.int64)
    r = 0
    for i in range(1, n):
        if band[i] != band[i - 1] or key[i] != key[i - 1]:
            ends[r] = i
            r += 1
    if final and n > 0:
        ends[r] = n
        r += 1
    return ends[:r]


def sorted_bucket_pairs(band: np.ndarray, key: np.ndarray, doc: np.ndarray, final: bool,
                        max_bucket: int = MAX_BUCKET) -> tuple[np.ndarray, int]:
    """(encoded pairs, rows consumed) of band-key rows sorted by (band, key, doc), with
    candidate_pairs' cap. Unless `final`, the last bucket is not consumed (it may go on in
    the next rows): the caller passes rows[consumed:] again with the next ones."""
    ends = _run_ends(band, key, final)
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    return bucket_pairs(doc, offsets, max_bucket), int(offsets[-1])


def bucket_pairs(values: np.ndarray, offsets: np.ndarray, max_bucket: int = MAX_BUCKET) -> np.ndarray:
    """Encoded pairs (lo << 32 | hi) of buckets given as one flat array of ascending document
    indices per bucket (bucket q is values[offsets[q]:offsets[q + 1]], as an Arrow list
    column), with candidate_pairs' cap; a pair may repeat (across buckets)."""
    return _bucket_pairs(np.ascontiguousarray(values, np.int64), np.ascontiguousarray(offsets, np.int64), max_bucket)


@njit(inline="always")
def _running_totals(counts):
    """np.cumsum(counts), as a loop: numba's np.cumsum lives in numba.np.arraymath, which loading
    the cached kernel would then import (~0.05 s of a run's start)."""
    out = np.empty_like(counts)
    total = counts.dtype.type(0)
    for i in range(counts.shape[0]):
        total += counts[i]
        out[i] = total
    return out


def _all_band_pairs(keys, max_bucket):
    bands = keys.shape[0]
    counts = np.zeros(bands + 1, np.int64)
    empty = np.empty(0, np.uint64)
    for band in prange(bands):
        counts[band + 1] = _band_pairs(keys[band], max_bucket, empty, 0)
    starts = _running_totals(counts)
    out = np.empty(starts[-1], np.uint64)
    for band in prange(bands):
        if counts[band + 1] > 0:
            _band_pairs(keys[band], max_bucket, out, starts[band])
    return out


def _decode(encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (encoded >> np.uint64(32)).astype(np.int64), (encoded & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _check(sig: np.ndarray, bands: int, rows: int) -> None:
    if sig.shape[0] >= 2**32:
        raise ValueError("at most 2^32 - 1 documents per dedup call")
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} exceeds the signature length {sig.shape[1]}")


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, max_bucket: int = MAX_BUCKET) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) int64 arrays, left < right, each pair once, sorted."""
    _check(sig, bands, rows)
    if sig.shape[0] < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = all_band_keys(np.ascontiguousarray(sig), bands, rows)
    # Each band's table work is ~20 operations per document. (distinct, not np.unique: numpy
    # 2.4's hashes before it sorts, 20x slower on these codes; see dedup/arrays.py.)
    return _decode(distinct(pick(_ALL_BAND_PAIRS, 20 * keys.size)(keys, max_bucket)))


@njit(cache=True)
def _band_pairs_against(doc_keys, ref_keys, max_bucket, out_docs, out_refs, w):
    """(doc, ref) for each document whose key is among the reference keys, at most
    max_bucket reference rows per key (lowest indices first); count only when out is empty."""
    slot_key, head, _, nxt = _bucket_table(ref_keys)
    mask = head.shape[0] - 1
    write = out_docs.shape[0] > 0
    for d in range(doc_keys.shape[0]):
        k = doc_keys[d]
        s = np.int64(k >> np.uint64(40)) & mask
        while head[s] != -1 and slot_key[s] != k:
            s = (s + 1) & mask
        x, taken = head[s], 0
        while x != -1 and taken < max_bucket:
            if write:
                out_docs[w] = d
                out_refs[w] = x
            w += 1
            taken += 1
            x = nxt[x]
    return w


def _all_band_pairs_against(doc_keys, ref_keys, max_bucket):
    bands = doc_keys.shape[0]
    counts = np.zeros(bands + 1, np.int64)
    empty = np.empty(0, np.int64)
    for band in prange(bands):
        counts[band + 1] = _band_pairs_against(doc_keys[band], ref_keys[band], max_bucket, empty, empty, 0)
    starts = _running_totals(counts)
    docs = np.empty(starts[-1], np.int64)
    refs = np.empty(starts[-1], np.int64)
    for band in prange(bands):
        if counts[band + 1] > 0:
            _band_pairs_against(doc_keys[band], ref_keys[band], max_bucket, docs, refs, starts[band])
    return docs, refs


def candidate_pairs_against(
    sig: np.ndarray, ref_sig: np.ndarray, bands: int, rows: int, max_bucket: int = MAX_BUCKET
) -> tuple[np.ndarray, np.ndarray]:
    """(doc, ref) index pairs sharing a band between documents and reference rows, each once, sorted."""
    _check(sig, bands, rows)
    _check(ref_sig, bands, rows)
    if len(sig) == 0 or len(ref_sig) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    docs, refs = pick(_ALL_BAND_PAIRS_AGAINST, 20 * (sig.shape[0] + ref_sig.shape[0]) * bands)(
        all_band_keys(np.ascontiguousarray(sig), bands, rows), all_band_keys(np.ascontiguousarray(ref_sig), bands, rows),
        max_bucket,
    )
    found = distinct((docs.astype(np.uint64) << np.uint64(32)) | refs.astype(np.uint64))
    return _decode(found)


_ALL_BAND_KEYS = serial_and_parallel(_all_band_keys)
_ALL_BAND_PAIRS = serial_and_parallel(_all_band_pairs)
_ALL_BAND_PAIRS_AGAINST = serial_and_parallel(_all_band_pairs_against)


load_cached_lightly(globals())
