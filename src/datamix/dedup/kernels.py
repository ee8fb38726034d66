"""The numba kernels of `minhash` and `clusters`, imported only when they run, so that
the method configs (`MinHashConfig`, `SemanticConfig`) load without numba: every
`datamix` command builds the step registry, which imports them.

Signature of a document: one-permutation hashing with optimal densification (Li, Owen &
Zhang 2012; Shrivastava 2017). Each shingle's 64-bit hash is remixed with the seed
(murmur3's fmix64, `_mix`); its high 32 bits pick one of `num_perm` bins (multiply-high,
any bin count), its low 32 bits are its value, and a bin keeps the minimum value that
lands in it. A bin no shingle landed in takes the value of the first non-empty bin along
its own probe sequence (a hash of the bin index and the attempt, the same for every
document): for two documents the chance that bin k agrees is exactly their Jaccard
similarity, as with `num_perm` independent permutations. With more shingles than bins
few bins are empty and the estimate's variance is at most k-permutation MinHash's (the
bins sample the union without replacement); with fewer, copied bins raise it (the
accuracy section of benchmarks/dedup.py measures recall and precision on real text).
The cost is one hash per shingle plus one probe walk per empty bin, where k-permutation
MinHash costs `num_perm` hashes per shingle (HASH_VERSION 4: ~38 ms of the 5,635
alpaca_eval answers' 70 ms; benchmarks/dedup.py). Exact Jaccard still compares the full
64-bit shingle hashes.

For word shingles one fused kernel goes from raw UTF-8 bytes to signatures, one
document at a time (16 per parallel iteration): the word pass (`shingle.word_hashes`:
lowercase, fold, split and hash; bit masks + count-trailing-zeros for ASCII), then n-gram
hashes, then the bins.
"""

from __future__ import annotations

import numpy as np
from datamix.dedup.jit import njit, prange  # numba, imported there

from datamix.dedup import shingle
from datamix.dedup.hashing import ngram_hashes
from datamix.dedup.shingle import serial_and_parallel
from datamix.dedup.text import word_hashes_into, word_pass_scratch
from datamix.dedup.warm import load_cached_lightly

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

_EMPTY = np.uint32(0xFFFFFFFF)  # a bin no shingle landed in (and an empty document's signature)
_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


@njit(inline="always")
def _mix(x):
    """murmur3's 64-bit finaliser: every input bit flips each output bit with probability ~1/2."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@njit(inline="always")
def _bin(x, n_bins):
    """The bin of a mixed hash: its high 32 bits scaled to [0, n_bins) (multiply-high)."""
    return np.int64(((x >> _32) * n_bins) >> _32)


@njit(inline="always")
def _probe(seeds, j, attempt, n_bins):
    """The bin an empty bin j looks at on its attempt-th try (the same for every document)."""
    return _bin(_mix(seeds[1] + (np.uint64(j) << _32) + np.uint64(attempt)), n_bins)


@njit(cache=True)
def first_probes(seeds, n_bins):
    """Each bin's first probe, computed once per kernel call rather than once per document."""
    out = np.empty(n_bins, np.int64)
    for j in range(n_bins):
        out[j] = _probe(seeds, j, 1, np.uint64(n_bins))
    return out


@njit(inline="always")
def _sign_hashes(acc, hashes, start, end, seeds, first, row):
    """row = the densified one-permutation signature of shingle hashes[start:end]
    (acc: scratch of row's size; first: `first_probes`)."""
    n_bins = np.uint64(acc.shape[0])
    acc[:] = _EMPTY
    for i in range(start, end):
        x = _mix(hashes[i] ^ seeds[0])
        k = _bin(x, n_bins)
        acc[k] = min(acc[k], np.uint32(x & _LOW32))  # no branch: whether it is smaller is a coin toss
    # Optimal densification: an empty bin j takes the first bin along j's probe sequence that a
    # shingle filled (never one that was itself filled by copying). The first probe resolves most
    # empty bins, as a select without branches; the rest walk on.
    unresolved = 0
    for j in range(acc.shape[0]):
        v = acc[j]
        v = acc[first[j]] if v == _EMPTY else v
        row[j] = v
        unresolved += v == _EMPTY
    if unresolved == 0 or end == start:
        return
    n_filled = 0
    for k in range(acc.shape[0]):
        n_filled += acc[k] != _EMPTY
    if n_filled == 0:  # every shingle's value was 2^32 - 1 (as likely as 2^-32 per shingle)
        return
    for j in range(acc.shape[0]):
        if row[j] == _EMPTY:
            attempt = 1
            while True:
                attempt += 1
                k = _probe(seeds, j, attempt, n_bins)
                if acc[k] != _EMPTY:
                    row[j] = acc[k]
                    break


@njit(cache=True, parallel=True)
def signature_kernel(hashes, offsets, seeds, out):
    first = first_probes(seeds, out.shape[1])
    for d in prange(offsets.shape[0] - 1):
        acc = np.empty(out.shape[1], np.uint32)
        _sign_hashes(acc, hashes, offsets[d], offsets[d + 1], seeds, first, out[d])


# Documents per parallel iteration: each iteration allocates its scratch arrays once,
# for its longest document (20k small allocations per 20k documents cost ~5%).
_GROUP = 16


@njit(inline="always")
def _longest(offsets, rows, q0, q1):
    longest = 0
    for q in range(q0, q1):
        d = rows[q] if rows.shape[0] > 0 else q
        longest = max(longest, offsets[d + 1] - offsets[d])
    return longest


def _fused_word_kernel(data, offsets, lower, ngram, seeds, out):
    """Raw UTF-8 texts -> word n-gram signatures (same result as the unfused path)."""
    n = offsets.shape[0] - 1
    no_rows = np.empty(0, np.int64)
    first = first_probes(seeds, out.shape[1])
    for g in prange((n + _GROUP - 1) // _GROUP):
        d0, d1 = g * _GROUP, min(g * _GROUP + _GROUP, n)
        longest = _longest(offsets, no_rows, d0, d1)
        # Every word but the last is followed by at least one separator byte.
        words = np.empty((longest + 1) // 2 + 1, np.uint64)
        shingles = np.empty_like(words)
        wmask, lowered = word_pass_scratch(longest)
        acc = np.empty(out.shape[1], np.uint32)
        for d in range(d0, d1):
            n_words = word_hashes_into(data, offsets[d], offsets[d + 1], lower, words, wmask, lowered)
            # A document shorter than one n-gram still gets one shingle (itself); one without
            # words none (all bins _EMPTY).
            n_shingles = max(n_words - ngram + 1, 1) if n_words > 0 else 0
            ngram_hashes(words, n_shingles, min(ngram, n_words), shingles)
            _sign_hashes(acc, shingles, 0, n_shingles, seeds, first, out[d])


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


@njit(inline="always")
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
def pack_slots(src, slots, counts, out):
    """out = src[slots[q]:slots[q] + counts[q]] for each q, one after another, in 64-bit words
    (copy_rows over the same memory as bytes: 1.15 s against 1.0 s for the 1M-document
    verification's shingles, most of either the first touch of `out`'s pages)."""
    at = 0
    for q in range(slots.shape[0]):
        c = counts[q]
        s = slots[q]
        for k in range(c):
            out[at + k] = src[s + k]
        at += c
    return at


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

load_cached_lightly(globals())
