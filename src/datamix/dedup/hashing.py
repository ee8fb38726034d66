"""Hashes of words and word n-grams, our own (FNV-style with a final mix) rather than Polars' or
Python's: they must be stable across library versions, because stored MinHash signatures
are reused by later runs. numba kernels, inlined into the shingle and signature passes."""

from __future__ import annotations


import numpy as np
from datamix.dedup.jit import njit  # numba, imported there

from datamix.dedup.warm import load_cached_lightly



_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_WORD_SEED = np.uint64(0x9E3779B97F4A7C15)
_SPACE = 32


@njit(inline="always")
def _mix64(x):
    """splitmix64 finaliser: spreads every input bit over all 64 output bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(inline="always")
def _hash_bytes(data, start, end):
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return _mix64(h)


# ---------------------------------------------------------------- word hash
# Bytes are packed 8 to a 64-bit word, little-endian (byte k of a word's 8-byte
# chunk at bits 8k..8k+7), and mixed once per 8 bytes; a word of up to 7 bytes
# (most words) packs injectively into 56 bits beside its length, so distinct
# short words never collide. Little-endian packing is what lets the word pass
# (`word_hashes`) take a whole run of ASCII word bytes from a 64-bit load at once
# instead of feeding them one by one: both give the same hash (tested).

_HIGH = np.uint64(0x8080808080808080)
_ONES = np.uint64(0x0101010101010101)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(inline="always")
def _feed(h, pack, nb, byte):
    pack |= np.uint64(byte) << np.uint64(8 * (nb & 7))
    nb += 1
    if nb & 7 == 0:
        h = _mix64(h ^ pack)
        pack = np.uint64(0)
    return h, pack, nb


@njit(inline="always")
def _feed_bytes(h, pack, nb, piece, r):
    """Feed r (1..8) bytes at once, packed little-endian in `piece` (upper bytes zero)."""
    f = nb & 7
    pack |= piece << np.uint64(8 * f)
    if f + r >= 8:
        h = _mix64(h ^ pack)
        pack = piece >> np.uint64(64 - 8 * f) if f > 0 else np.uint64(0)
    return h, pack, nb + r


@njit(inline="always")
def _feed_code_point(h, pack, nb, cp):
    """Feed the UTF-8 encoding of code point `cp`."""
    if cp < 0x80:
        return _feed(h, pack, nb, cp)
    if cp < 0x800:
        h, pack, nb = _feed(h, pack, nb, 0xC0 | (cp >> 6))
        return _feed(h, pack, nb, 0x80 | (cp & 0x3F))
    if cp < 0x10000:
        h, pack, nb = _feed(h, pack, nb, 0xE0 | (cp >> 12))
        h, pack, nb = _feed(h, pack, nb, 0x80 | ((cp >> 6) & 0x3F))
        return _feed(h, pack, nb, 0x80 | (cp & 0x3F))
    h, pack, nb = _feed(h, pack, nb, 0xF0 | (cp >> 18))
    h, pack, nb = _feed(h, pack, nb, 0x80 | ((cp >> 12) & 0x3F))
    h, pack, nb = _feed(h, pack, nb, 0x80 | ((cp >> 6) & 0x3F))
    return _feed(h, pack, nb, 0x80 | (cp & 0x3F))


@njit(inline="always")
def _finish_word(h, pack, nb):
    return _mix64(h ^ pack ^ (np.uint64(nb) << np.uint64(56)))


@njit(cache=True)
def word_hash(data, start, end):
    """Hash of the bytes data[start:end] (one normalised word)."""
    h, pack, nb = _WORD_SEED, np.uint64(0), 0
    for i in range(start, end):
        h, pack, nb = _feed(h, pack, nb, data[i])
    return _finish_word(h, pack, nb)


# Odd 64-bit constants, one per position in a word n-gram (n <= 64).
_POSITION_WEIGHTS = np.random.default_rng(0x5EED).integers(1, 2**63, 64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


@njit(inline="always")
def ngram_hash(words, j, width):
    """Hash of the word n-gram words[j:j + width]: a position-weighted sum, then one
    finaliser (order-sensitive and far cheaper than mixing after every word)."""
    h = np.uint64(0)
    for t in range(width):
        h += words[j + t] * _POSITION_WEIGHTS[t]
    return _mix64(h ^ np.uint64(width))


@njit(inline="always")
def ngram_hashes(words, n_shingles, width, out):
    """out[j] = ngram_hash(words, j, width) for j < n_shingles, one position at a time
    over all shingles: each pass is a loop without dependencies between iterations,
    which LLVM vectorises (the per-shingle loop over positions is not)."""
    for j in range(n_shingles):
        out[j] = words[j] * _POSITION_WEIGHTS[0]
    for t in range(1, width):
        w = _POSITION_WEIGHTS[t]
        for j in range(n_shingles):
            out[j] += words[j + t] * w
    tag = np.uint64(width)
    for j in range(n_shingles):
        out[j] = _mix64(out[j] ^ tag)


load_cached_lightly(globals())
