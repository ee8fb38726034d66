"""Shingle bags for out-of-core exact verification (datamix.dedup.ooc), in memory while the
budget holds them, else on disk.

Hybrid verification asks for the exact Jaccard of the pairs whose signature estimate is near
the threshold; at a million documents that is about half a million pairs over most of the
corpus. Fetching the texts of a block of pairs at a time read the text file once per block
(a block's second documents lie anywhere): at 3M documents under 1.5 GB, ~60 reads of the
whole file. Here every document the pairs need is shingled once, in position order (so each
row group of the source is read about once), and its shingle hashes kept: in one array while
they fit in `memory_bytes` (at 1M documents under 4 GB, ~0.5 GB: the pairs' Jaccard is then
computed in place), else appended to one file, from which a block of pairs reads only its
documents' hashes back.

The hashes are those of minhash._shingle_bags (text order, repeats kept) and the Jaccard is
the same kernel's, so the values are the in-memory path's, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np

from datamix.dedup.arrays import missing

# (hashes, starts, ends) of sorted rows, in pieces in row order: minhash._shingle_bags' result
# (each piece packed from 0: starts[0] == 0, starts[q + 1] == ends[q]); its second argument,
# `room(n)`, lends an array of at least n hashes to pack a piece into (or None), as
# _shingle_bags' `room`
Shingler = Callable[[np.ndarray, Callable[[int], np.ndarray | None]],
                    Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges: starts[q], starts[q] + 1, ..., starts[q] + lengths[q] - 1 for each q."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.cumsum(lengths) - lengths  # where each range begins in the output
    return np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)


class ShingleBags:
    """Shingle hashes of documents (global rows: documents, then reference rows), `shingle`d
    as they are added; docs, starts and ends (in hashes) stay in memory, 24 bytes each. The
    hashes sit in `self.sets` while they fit in `memory_bytes`; past that, they all go to
    `path` and every later document is appended there."""

    GATHER = 2048  # documents read together (tests set a few)
    SPAN_BYTES = 8 * 2**20  # documents whose hashes lie within this many bytes are read in one go

    def __init__(self, path: str, shingle: Shingler, cfg, memory_bytes: int = 0):
        self.path, self.shingle, self.cfg, self.memory_bytes = path, shingle, cfg, memory_bytes
        self.docs = np.zeros(0, np.int64)
        self.starts = np.zeros(0, np.int64)
        self.ends = np.zeros(0, np.int64)
        self.size = 0  # hashes kept
        # the hashes in sets[:size]; None once they are on disk. Allocated at the budget's size
        # on first use, its pages touched only as far as hashes are packed into it, by the
        # shingling itself (`_room`): concatenating the pieces instead copied 0.4 GB into fresh
        # pages at 1M documents (0.8 s), and again for the few texts the removal records add
        self.sets: np.ndarray | None = np.zeros(0, np.uint64)
        self._lent: np.ndarray | None = None  # the free part of `sets` lent to the shingling

    @property
    def on_disk(self) -> bool:
        return self.sets is None

    def add(self, wanted: np.ndarray, per_fetch: int) -> None:
        """Shingle the documents among sorted `wanted` not kept yet, `per_fetch` at a time in
        position order (each fetch reads only the row groups its documents fall in)."""
        new = missing(wanted, self.docs)
        if len(new) == 0:
            return
        if self.sets is not None and len(self.sets) < self.memory_bytes // 8:
            self.sets = np.empty(self.memory_bytes // 8, np.uint64)  # nothing kept yet (see __init__)
        starts, ends = [], []
        for s in range(0, len(new), per_fetch):
            for hashes, st, en in self.shingle(new[s : s + per_fetch], self._room):
                count = int(en[-1]) if len(en) else 0  # packed from 0: the kept part is a prefix
                lengths = (en - st).astype(np.int64)
                begin = self.size + np.cumsum(lengths) - lengths
                starts.append(begin)
                ends.append(begin + lengths)
                if hashes is not self._lent:  # not packed in place
                    if not self.on_disk and self.size + count > len(self.sets):
                        self._to_disk()  # what is kept so far goes first: offsets stay as counted
                    if self.on_disk:
                        with open(self.path, "ab") as f:
                            f.write(hashes[:count])
                    else:
                        self.sets[self.size : self.size + count] = hashes[:count]
                self._lent = None
                self.size += count
        docs = np.concatenate([self.docs, new])
        order = np.argsort(docs, kind="stable")
        self.docs = docs[order]
        self.starts = np.concatenate([self.starts, *starts])[order]
        self.ends = np.concatenate([self.ends, *ends])[order]

    def _room(self, n: int) -> np.ndarray | None:
        """The free part of the in-memory hashes when it holds `n` more (the shingling packs a
        piece there), else None (the piece comes in its own array)."""
        if self.on_disk or self.size + n > len(self.sets):
            return None
        self._lent = self.sets[self.size :]
        return self._lent

    def _to_disk(self) -> None:
        with open(self.path, "wb") as f:
            f.write(self.sets[: self.size])
        self.sets = None

    def jaccard(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Exact Jaccard of the shingle sets of pairs (a[k], b[k]) of added documents."""
        from datamix.dedup import kernels as mk

        if len(a) == 0:
            return np.zeros(0, np.float64)
        if not self.on_disk:  # in place: no copy of the pairs' hashes
            kernel = mk.pick(mk.JACCARD_BAGS, len(a) * max(1, self.size // max(1, len(self.docs))) * 8)
            return kernel(self.sets, self.starts, self.ends, np.searchsorted(self.docs, a),
                          np.searchsorted(self.docs, b))
        from datamix.dedup.arrays import distinct

        need = distinct(np.concatenate([a, b]))
        pos = np.searchsorted(self.docs, need)
        lengths = self.ends[pos] - self.starts[pos]
        starts = np.cumsum(lengths) - lengths
        sets = np.empty(int(lengths.sum()), np.uint64)
        # read with pread, not through a map: pages of a freshly written file may be mapped
        # many at a time (measured: one gather of 861 documents' 660 KB of hashes through a
        # map added 0.7 GB to the resident size)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for q in range(0, len(need), self.GATHER):
                part = slice(q, q + self.GATHER)
                first, last = int(self.starts[pos[part]].min()), int(self.ends[pos[part]].max())
                if (last - first) * 8 <= self.SPAN_BYTES:  # close together: one read of their span
                    span = np.frombuffer(os.pread(fd, (last - first) * 8, first * 8), np.uint64)
                    idx = _ranges(self.starts[pos[part]] - first, lengths[part])
                    sets[starts[part][0] : starts[part][0] + len(idx)] = span[idx]
                    continue
                out = memoryview(sets).cast("B")
                for d, at in zip(pos[part], starts[part]):  # scattered: a read each
                    size = int(self.ends[d] - self.starts[d]) * 8
                    if size:
                        os.preadv(fd, [out[int(at) * 8 : int(at) * 8 + size]], int(self.starts[d]) * 8)
        finally:
            os.close(fd)
        kernel = mk.pick(mk.JACCARD_BAGS, len(sets) * 8)
        return kernel(sets, starts, starts + lengths, np.searchsorted(need, a), np.searchsorted(need, b))
