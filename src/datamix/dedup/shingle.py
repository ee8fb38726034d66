"""Text normalisation and shingle hashing over whole batches.

Normalisation: lowercase (Polars, full Unicode), then every run of punctuation,
symbols, underscores and whitespace folded to one space and the ends stripped (a
numba kernel: a Unicode regex replace in Polars cost more than all the MinHash
work together). Tokenising and hashing then run in numba kernels straight over
the Arrow UTF-8 buffer (bytes + offsets), one document per parallel iteration,
so no Python code ever runs per word or per shingle.

Hashes are our own (FNV-1a over bytes, then a splitmix64 finaliser) rather than
Polars' or Python's, because they must be stable across library versions: stored
signatures are reused by later runs (see `minhash.find_duplicates(cache=...)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

if TYPE_CHECKING:
    import polars as pl

# Bump when the normalisation or the hash functions change: it is part of every
# cache key, so signatures made by older code are never mixed with new ones.
HASH_VERSION = "1"

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_SPACE = 32


@njit(cache=True, inline="always")
def _mix64(x):
    """splitmix64 finaliser: spreads every input bit over all 64 output bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def _hash_bytes(data, start, end):
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return _mix64(h)


@njit(cache=True, inline="always")
def _decode(data, i, end):
    """(code point, byte length) of the UTF-8 sequence at data[i]; bad bytes decode as themselves."""
    c = np.int64(data[i])
    if c < 0x80:
        return c, 1
    if c >= 0xF0 and i + 3 < end:
        return ((c & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12) | (
            (np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F), 4
    if c >= 0xE0 and i + 2 < end:
        return ((c & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F), 3
    if c >= 0xC0 and i + 1 < end:
        return ((c & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), 2
    return c, 1


@njit(cache=True, inline="always")
def _is_separator(cp):
    """True for punctuation, symbols, whitespace and control characters (folded to one space).

    Exact for ASCII (only a-z, A-Z, 0-9 are word characters; '_' folds like
    punctuation); for the rest of Unicode it covers the Latin-1 punctuation, the
    general punctuation, arrow/math/technical/box/symbol blocks, CJK and
    full-width punctuation and emoji, which is what appears in practice.
    """
    if cp < 0x80:
        return not ((0x61 <= cp <= 0x7A) or (0x30 <= cp <= 0x39) or (0x41 <= cp <= 0x5A))
    if cp <= 0xBF:  # Latin-1 controls and punctuation, except the letters/digits among them
        return not (cp == 0xAA or cp == 0xB5 or cp == 0xBA or cp == 0xB2 or cp == 0xB3 or cp == 0xB9
                    or 0xBC <= cp <= 0xBE)
    if cp == 0xD7 or cp == 0xF7:
        return True
    if 0x2000 <= cp <= 0x2BFF:  # general punctuation .. misc symbols and arrows
        return not (0x2070 <= cp <= 0x209F or 0x2100 <= cp <= 0x218F or 0x2460 <= cp <= 0x24FF)
    if 0x3000 <= cp <= 0x303F and not (0x3005 <= cp <= 0x3007):
        return True
    if 0xFE30 <= cp <= 0xFE4F or cp == 0xFEFF:
        return True
    if 0xFF00 <= cp <= 0xFF0F or 0xFF1A <= cp <= 0xFF20 or 0xFF3B <= cp <= 0xFF40 or 0xFF5B <= cp <= 0xFF65:
        return True
    if 0x1F000 <= cp <= 0x1FAFF:
        return True
    return False


_ASCII_WORD = np.array([(0x30 <= c <= 0x39) or (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A) for c in range(128)])


@njit(cache=True, parallel=True)
def _normalize_all(data, offsets, out, out_len):
    """Fold separators of each (already lowercased) text into single spaces, stripped.

    Writes text d at out[offsets[d]:offsets[d] + out_len[d]]: normalisation never
    grows a text, so the input offsets double as the output slots.
    """
    for d in prange(offsets.shape[0] - 1):
        i, end = offsets[d], offsets[d + 1]
        w = offsets[d]
        pending_space = False
        while i < end:
            c = data[i]
            if c < 0x80:  # ASCII fast path: one table look-up, no decoding
                if _ASCII_WORD[c]:
                    if pending_space:
                        out[w] = _SPACE
                        w += 1
                        pending_space = False
                    out[w] = c
                    w += 1
                else:
                    pending_space = w > offsets[d]
                i += 1
                continue
            cp, n = _decode(data, i, end)
            if _is_separator(cp):
                pending_space = w > offsets[d]
            else:
                if pending_space:
                    out[w] = _SPACE
                    w += 1
                    pending_space = False
                for t in range(n):
                    out[w + t] = data[i + t]
                w += n
            i += n
        out_len[d] = w - offsets[d]


def utf8_buffers(texts: list[str] | pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(bytes uint8, offsets int64 of len n+1) of the texts, zero-copy where Arrow allows; null -> ''."""
    import polars as pl
    import pyarrow as pa

    s = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
    arr = s.cast(pl.String).fill_null("").rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offsets


def normalized_buffers(texts: list[str] | pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Lowercase (Polars, full Unicode), then separators folded (numba); packed (bytes, offsets)."""
    import polars as pl

    s = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
    data, offsets = utf8_buffers(s.cast(pl.String).fill_null("").str.to_lowercase())
    out = np.empty(len(data), np.uint8)
    out_len = np.empty(len(offsets) - 1, np.int64)
    _normalize_all(data, offsets, out, out_len)
    return _pack(out, offsets, out_len)


def _pack(out, offsets, out_len):
    new_offsets = np.zeros(len(out_len) + 1, np.int64)
    np.cumsum(out_len, out=new_offsets[1:])
    if len(out_len) and new_offsets[-1] == offsets[-1] - offsets[0]:
        return out[offsets[0] : offsets[-1]], new_offsets  # nothing folded away: already packed
    packed = np.empty(int(new_offsets[-1]), np.uint8)
    _copy_slots(out, offsets, out_len, packed, new_offsets)
    return packed, new_offsets


@njit(cache=True, parallel=True)
def _copy_slots(src, src_offsets, lengths, dst, dst_offsets):
    for d in prange(lengths.shape[0]):
        s, t = src_offsets[d], dst_offsets[d]
        for k in range(lengths[d]):
            dst[t + k] = src[s + k]


def normalize(texts: list[str] | pl.Series) -> list[str]:
    """The normalised texts as strings (for inspection and tests; the kernels use the buffers)."""
    data, offsets = normalized_buffers(texts)
    raw = data.tobytes()
    return [raw[offsets[d] : offsets[d + 1]].decode("utf-8", "replace") for d in range(len(offsets) - 1)]


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


# Odd 64-bit constants, one per position in a word n-gram (n <= 64).
_POSITION_WEIGHTS = np.random.default_rng(0x5EED).integers(1, 2**63, 64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


@njit(cache=True)
def _word_shingles(data, start, end, ngram, out, out_start):
    """Hash each word, then combine each run of `ngram` word hashes (order matters)."""
    n_words = _count_words(data, start, end)
    if n_words == 0:
        return
    words = np.empty(n_words, np.uint64)
    w = 0
    word_start = start
    for i in range(start, end + 1):
        if i == end or data[i] == _SPACE:
            words[w] = _hash_bytes(data, word_start, i)
            w += 1
            word_start = i + 1
    n_out = max(n_words - ngram + 1, 1)
    width = min(ngram, n_words)
    # Position-weighted sum, then one finaliser: order-sensitive and far cheaper
    # than mixing after every word (this loop runs once per shingle).
    for j in range(n_out):
        h = np.uint64(0)
        for t in range(width):
            h += words[j + t] * _POSITION_WEIGHTS[t]
        out[out_start + j] = _mix64(h ^ np.uint64(width))


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


@njit(cache=True, parallel=True)
def jaccard_pairs(sets, offsets, left, right):
    """Exact Jaccard of sorted shingle sets for each pair (left[k], right[k]); 1.0 for two empty sets."""
    out = np.empty(left.shape[0], np.float64)
    for k in prange(left.shape[0]):
        a0, a1 = offsets[left[k]], offsets[left[k] + 1]
        b0, b1 = offsets[right[k]], offsets[right[k] + 1]
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
