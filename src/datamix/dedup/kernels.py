"""The numba kernels of `minhash` and `clusters`, imported only when they run, so that
the method configs (`MinHashConfig`, `SemanticConfig`) load without numba: every
`datamix` command builds the step registry, which imports them.

Signature of a document = for each of `num_perm` hash functions
h_k(x) = (a_k * x + b_k) mod 2^64 >> 32 (a_k odd; Dietzfelbinger's multiply-add-shift,
strongly universal for 32-bit keys), the minimum over the document's shingles, each keyed
by the high 32 bits of its 64-bit hash (`_key`). Only the high 32 bits of the sum are
computed (`_hi32`): one 32x32->64 product carries into them and the cross product a_hi * x
only matters mod 2^32, so the minima run in 32-bit lanes (8 per AVX2 register) instead of
emulated 64-bit multiplies (CPUs without AVX-512 have no 64-bit vector multiply). A 64-bit
key cost a second cross product per lane: 1.32x the signing time (HASH_VERSION 3).
Exact Jaccard still compares the full 64-bit shingle hashes.

For word shingles one fused kernel goes from raw UTF-8 bytes to signatures, one
document at a time (16 per parallel iteration): the word pass (`shingle.word_hashes`: lowercase,
fold, split and hash; bit masks + count-trailing-zeros for ASCII), then n-gram hashes, then
the `num_perm` minima, 8 shingles per pass over the functions so each a_k, b_k and
running minimum is loaded once per 8 shingles (the innermost loop over k is what
LLVM vectorises).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.core.extending import intrinsic

from datamix.dedup import shingle
from datamix.dedup.hashing import ngram_hashes
from datamix.dedup.shingle import serial_and_parallel
from datamix.dedup.text import word_hashes_into, word_pass_scratch

# ---------------------------------------------------------------- union-find (clusters)


@njit(cache=True)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@njit(cache=True)
def connected_components(n, left, right):
    """Root label per node (the smallest index of its component) from edges (left[k], right[k])."""
    parent = np.arange(n)
    for k in range(left.shape[0]):
        a = _find(parent, left[k])
        b = _find(parent, right[k])
        if a != b:
            if a < b:
                parent[b] = a
            else:
                parent[a] = b
    for x in range(n):
        parent[x] = _find(parent, x)
    return parent


# ---------------------------------------------------------------- signatures

_BLOCK = 8  # shingles per pass over the hash functions
_LOW32 = np.uint64(0xFFFFFFFF)


@intrinsic
def _hi32(typingctx, a_lo, a_hi, b, x):
    """(a * x + b) mod 2^64 >> 32 for a = a_hi:a_lo (uint32 halves), b uint64, x a uint32 key.

    a * x = a_lo * x + 2^32 a_hi * x, so the high word is the high word of a_lo * x + b (one
    32x32->64 product: its carry) plus a_hi * x mod 2^32. Written as LLVM IR because numba
    widens uint32 arithmetic to 64 bits: here the cross product stays a 32-bit multiply
    (vpmulld, 8 lanes) and the result a uint32 whose minimum is vpminud. Same values as the
    64-bit formula (tested)."""
    if not (a_lo == types.uint32 and a_hi == types.uint32 and b == types.uint64 and x == types.uint32):
        return None

    def codegen(context, builder, signature, args):
        a_lo, a_hi, b, x = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        low = builder.add(builder.mul(builder.zext(a_lo, i64), builder.zext(x, i64)), b)
        carry = builder.trunc(builder.lshr(low, ir.Constant(i64, 32)), i32)
        return builder.add(carry, builder.mul(a_hi, x))

    return types.uint32(types.uint32, types.uint32, types.uint64, types.uint32), codegen


@njit(cache=True, inline="always")
def _key(h):
    """A shingle's 32-bit key for the signatures: the high half of its 64-bit hash."""
    return np.uint32(h >> np.uint64(32))


@njit(cache=True, inline="always")
def _split(a):
    """The uint32 halves (low, high) of the 64-bit multipliers."""
    a_lo = np.empty(a.shape[0], np.uint32)
    a_hi = np.empty(a.shape[0], np.uint32)
    for k in range(a.shape[0]):
        a_lo[k] = np.uint32(a[k] & _LOW32)
        a_hi[k] = np.uint32(a[k] >> np.uint64(32))
    return a_lo, a_hi


@njit(cache=True, inline="always")
def _sign_block(acc, x, a_lo, a_hi, b):
    """acc[k] = min(acc[k], h_k(x_j)) over the _BLOCK shingle hashes in x."""
    x0, x1, x2, x3 = _key(x[0]), _key(x[1]), _key(x[2]), _key(x[3])
    x4, x5, x6, x7 = _key(x[4]), _key(x[5]), _key(x[6]), _key(x[7])
    for k in range(a_lo.shape[0]):
        al, ah, bk = a_lo[k], a_hi[k], b[k]
        m0 = min(min(_hi32(al, ah, bk, x0), _hi32(al, ah, bk, x1)), min(_hi32(al, ah, bk, x2), _hi32(al, ah, bk, x3)))
        m1 = min(min(_hi32(al, ah, bk, x4), _hi32(al, ah, bk, x5)), min(_hi32(al, ah, bk, x6), _hi32(al, ah, bk, x7)))
        acc[k] = min(acc[k], min(m0, m1))


@njit(cache=True, inline="always")
def _sign_one(acc, h, a_lo, a_hi, b):
    x = _key(h)
    for k in range(a_lo.shape[0]):
        acc[k] = min(acc[k], _hi32(a_lo[k], a_hi[k], b[k], x))


@njit(cache=True, inline="always")
def _new_acc(n):
    # A document without shingles keeps all ones -> EMPTY.
    return np.full(n, np.uint32(0xFFFFFFFF))


@njit(cache=True, inline="always")
def _store_signature(acc, out, d):
    for k in range(acc.shape[0]):
        out[d, k] = acc[k]


@njit(cache=True, inline="always")
def _sign_hashes(acc, hashes, start, end, a_lo, a_hi, b):
    i = start
    while i + _BLOCK <= end:
        _sign_block(acc, hashes[i : i + _BLOCK], a_lo, a_hi, b)
        i += _BLOCK
    while i < end:
        _sign_one(acc, hashes[i], a_lo, a_hi, b)
        i += 1


@njit(cache=True, parallel=True)
def signature_kernel(hashes, offsets, a, b, out):
    a_lo, a_hi = _split(a)
    for d in prange(offsets.shape[0] - 1):
        acc = _new_acc(a.shape[0])
        _sign_hashes(acc, hashes, offsets[d], offsets[d + 1], a_lo, a_hi, b)
        _store_signature(acc, out, d)


# Documents per parallel iteration: each iteration allocates its scratch arrays once,
# for its longest document (20k small allocations per 20k documents cost ~5%).
_GROUP = 16


@njit(cache=True, inline="always")
def _longest(offsets, rows, q0, q1):
    longest = 0
    for q in range(q0, q1):
        d = rows[q] if rows.shape[0] > 0 else q
        longest = max(longest, offsets[d + 1] - offsets[d])
    return longest


def _fused_word_kernel(data, offsets, lower, ngram, a, b, out):
    """Raw UTF-8 texts -> word n-gram MinHash signatures (same result as the unfused path)."""
    n = offsets.shape[0] - 1
    no_rows = np.empty(0, np.int64)
    a_lo, a_hi = _split(a)
    for g in prange((n + _GROUP - 1) // _GROUP):
        d0, d1 = g * _GROUP, min(g * _GROUP + _GROUP, n)
        longest = _longest(offsets, no_rows, d0, d1)
        # Every word but the last is followed by at least one separator byte.
        words = np.empty((longest + 1) // 2 + 1, np.uint64)
        shingles = np.empty_like(words)
        wmask, lowered = word_pass_scratch(longest)
        acc = np.empty(a.shape[0], np.uint32)
        for d in range(d0, d1):
            n_words = word_hashes_into(data, offsets[d], offsets[d + 1], lower, words, wmask, lowered)
            acc[:] = np.uint32(0xFFFFFFFF)
            if n_words > 0:
                # A document shorter than one n-gram still gets one shingle (itself).
                n_shingles = max(n_words - ngram + 1, 1)
                width = min(ngram, n_words)
                # All n-gram hashes first (vectorised loops), then the signature pass.
                ngram_hashes(words, n_shingles, width, shingles)
                _sign_hashes(acc, shingles, 0, n_shingles, a_lo, a_hi, b)
            _store_signature(acc, out, d)


def _fused_word_bags(data, offsets, rows, lower, ngram, slot_starts, out, counts):
    """The word n-gram hashes of texts `rows` (in text order, repeats included), each
    into its slot of `out` (slot_starts from an upper bound of its shingle count);
    counts[q] = how many."""
    n = rows.shape[0]
    for g in prange((n + _GROUP - 1) // _GROUP):
        q0, q1 = g * _GROUP, min(g * _GROUP + _GROUP, n)
        longest = _longest(offsets, rows, q0, q1)
        words = np.empty((longest + 1) // 2 + 1, np.uint64)
        wmask, lowered = word_pass_scratch(longest)
        for q in range(q0, q1):
            start, end = offsets[rows[q]], offsets[rows[q] + 1]
            n_words = word_hashes_into(data, start, end, lower, words, wmask, lowered)
            if n_words == 0:
                counts[q] = 0
                continue
            width = min(ngram, n_words)
            m = max(n_words - ngram + 1, 1)
            ngram_hashes(words, m, width, out[slot_starts[q] : slot_starts[q] + m])
            counts[q] = m


@njit(cache=True, inline="always")
def _slot(table, state, mask, x):
    """Open addressing: the slot holding x, or the empty slot where it belongs."""
    s = np.int64(x & np.uint64(mask))
    while state[s] != 0 and table[s] != x:
        s = (s + 1) & mask
    return s


def _jaccard_bags(hashes, starts, ends, left, right):
    """Exact Jaccard of the shingle SETS of each pair, from unsorted hashes with repeats:
    one small open-addressing table per pair (state 1: in a, 2: in b only, 3: both),
    O(|a| + |b|) where sorting each document first costs O(n log n) per document."""
    out = np.empty(left.shape[0], np.float64)
    for k in prange(left.shape[0]):
        a0, a1 = starts[left[k]], ends[left[k]]
        b0, b1 = starts[right[k]], ends[right[k]]
        size = 16
        while size < 2 * ((a1 - a0) + (b1 - b0)):
            size *= 2
        mask = size - 1
        table = np.empty(size, np.uint64)
        state = np.zeros(size, np.uint8)
        union, inter = 0, 0
        for i in range(a0, a1):
            x = hashes[i]
            s = _slot(table, state, mask, x)
            if state[s] == 0:
                table[s] = x
                state[s] = 1
                union += 1
        for i in range(b0, b1):
            x = hashes[i]
            s = _slot(table, state, mask, x)
            if state[s] == 0:
                table[s] = x
                state[s] = 2
                union += 1
            elif state[s] == 1:
                state[s] = 3
                inter += 1
        out[k] = 1.0 if union == 0 else inter / union
    return out


@njit(cache=True)
def copy_rows(data, offsets, rows, new_offsets, out):
    """out[new_offsets[q]:new_offsets[q + 1]] = text rows[q]'s bytes."""
    for q in range(rows.shape[0]):
        out[new_offsets[q] : new_offsets[q + 1]] = data[offsets[rows[q]] : offsets[rows[q] + 1]]


def _signature_similarity(sig_a, sig_b, left, right):
    out = np.empty(left.shape[0], np.float64)
    k_perm = sig_a.shape[1]
    for k in prange(left.shape[0]):
        same = 0
        for j in range(k_perm):
            same += sig_a[left[k], j] == sig_b[right[k], j]
        out[k] = same / k_perm
    return out


FUSED_WORD_KERNEL = serial_and_parallel(_fused_word_kernel)
FUSED_WORD_BAGS = serial_and_parallel(_fused_word_bags)
JACCARD_BAGS = serial_and_parallel(_jaccard_bags)
SIGNATURE_SIMILARITY = serial_and_parallel(_signature_similarity)
pick = shingle.pick
