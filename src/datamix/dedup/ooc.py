"""Out-of-core MinHash dedup: the same decisions as minhash.find_duplicates, in bounded memory.

The in-memory path holds every signature, every band key and the candidate tables at
once (~3.9 GB per million 100-word documents). This one streams:

1. sign the texts chunk by chunk (minhash.signatures), appending each chunk's
   signatures to signatures.npy and its band keys to a Parquet file (layout:
   datamix.dedup.bands); where the budget has room (HOLD_SHARE), the texts' buffers are
   kept for step 3 (sources.HeldTexts) rather than read and decoded again, and so are the
   signatures (signed into one array, no file);
2. candidate pairs from DuckDB's GROUP BY over (band, key) (sql/minhash_candidates.sql),
   which spills to `temp_directory` past `memory_limit`; the distinct pairs are small
   (a few per duplicate document) and come back to numpy;
3. verification in blocks of pairs: only the blocks' signature rows are read from
   signatures.npy, only the texts of pairs near the threshold (hybrid) are shingled
   (bags.py: their hashes in memory while the budget holds them, else on disk);
4. union-find and the keep policy (clusters.removal_frame), as the in-memory path.

Both paths give the same removed rows, dup_of, ref_index and similarity (tested).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from datamix.dedup import bands as layout, clusters
from datamix.dedup.arrays import distinct, distinct_rows, missing
from datamix.dedup.bags import ShingleBags
from datamix.dedup.budget import Budget, parse_size, peak_rss, physical_memory, rss, size_text  # noqa: F401 (the API)
from datamix.dedup.minhash import MinHashConfig, _PairSimilarity, signatures, verified_pairs
from datamix.dedup.sources import HeldTexts, ParquetSource, SeriesSource, SpilledTexts  # noqa: F401 (the API)

if TYPE_CHECKING:
    import polars as pl

# What one document costs the in-memory path besides its text (measured: 3.9 GB per
# million 100-word documents, of which ~0.6 GB is text): signatures, band keys, tables.
IN_MEMORY_BYTES_PER_DOC = 3300
# The most of the budget's rest that the texts may take to be held in memory from signing to
# verification (budget.Budget.hold): at 1M 100-word documents under 4 GB, 0.59 of 3.2 GB
HOLD_SHARE = 0.25
SORTED_BATCH = 131_072  # sorted band-key rows per Arrow batch (tests set a few, so buckets straddle batches)


def choose_out_of_core(cfg: MinHashConfig, n_docs: int, text_bytes: int, budget: Budget) -> bool:
    """cfg.out_of_core, or for "auto": out of core when the in-memory path's estimate
    (IN_MEMORY_BYTES_PER_DOC per document plus twice the text) passes half the budget."""
    if cfg.out_of_core != "auto":
        return bool(cfg.out_of_core)
    return n_docs * IN_MEMORY_BYTES_PER_DOC + 2 * text_bytes > budget.effective // 2


# ---------------------------------------------------------------- the method


def find_duplicates_ooc(
    source,
    priority: np.ndarray,
    cfg: MinHashConfig,
    folder: str,
    *,
    reference=None,
    cache: Any = None,
    stats: dict | None = None,
    budget: Budget | None = None,
    log: Callable[[str], None] | None = None,
    sign: Callable[..., None] | None = None,
    candidates: Callable[[list[str], int], tuple[np.ndarray, np.ndarray]] | None = None,
) -> pl.DataFrame:
    """minhash.find_duplicates over a text source (SeriesSource, ParquetSource, or any
    object with len, batches(size) and take(sorted rows)), writing its work to `folder`.

    `sign(source, kind, cfg, folder, chunk, writer, cache, stats)` and `candidates(band
    files, max_bucket) -> (left, right)` replace the local signing and candidate-pair
    stages (datamix.executors.ray_minhash.Stages: on a Ray cluster); any replacement writes
    the same layout and gives the same pairs, so the decisions do not change."""
    from datamix.dedup.lsh import MAX_BUCKET

    stats = {} if stats is None else stats
    n = len(source)
    priority = np.asarray(priority, dtype=np.float64)
    if priority.shape != (n,):
        raise ValueError(f"priority must have one value per text ({n}), got shape {priority.shape}")
    if n >= 2**32:
        raise ValueError("at most 2^32 - 1 documents per dedup call")
    ref = None if reference is None else (reference if hasattr(reference, "take") else SeriesSource(reference))
    n_ref = 0 if ref is None else len(ref)
    # the split of the limit, from what the process holds now (the caller's ids and priorities
    # included) and what n documents will hold; a limit too small for them stops here (exit 2)
    budget = dataclasses.replace(budget or Budget()).plan(n + n_ref)
    os.makedirs(folder, exist_ok=True)
    held = None if sign is not None or cache is not None else hold_texts(source, budget)
    sigs = None if sign is not None else hold_signatures(n + n_ref, cfg, budget)
    chunk = chunk_docs(cfg, budget, n)
    if log:
        log(f"out-of-core MinHash: {n:,} documents in chunks of {chunk:,}, {budget.describe()}; "
            f"work files in {folder}")

    clock = _Clock(log)
    sig_path = os.path.join(folder, "signatures.npy")
    with (_SignatureWriter(sig_path, n + n_ref, cfg.num_perm) if sigs is None else sigs) as writer:
        if sign is None:
            _sign(source, "docs", cfg, folder, chunk, writer, cache, stats, held)
        else:
            sign(source, "docs", cfg, folder, chunk, writer, cache, stats)
        if ref is not None:
            (sign or _sign)(ref, "refs", cfg, folder, chunk, writer, cache, stats)
    if held is not None:
        budget.release(held.limit)
        if held.dropped:  # past the share: verification reads them again
            held = None
        else:
            budget.hold(held.size)
    clock.lap(f"signed {n + n_ref:,} texts" + (f" ({size_text(held.size)} of them held for verification)"
                                                 if held else "") + (", signatures held" if sigs else ""))

    con = _connect(budget, folder)
    try:
        if candidates is None:
            left, right = _candidate_pairs(con, layout.band_files(folder, "docs"), MAX_BUCKET, budget.pair_bytes())
        else:
            left, right = candidates(layout.band_files(folder, "docs"), MAX_BUCKET)
        ref_doc = ref_row = np.zeros(0, np.int64)
        if n_ref and n:
            ref_doc, ref_row = _reference_pairs(con, layout.band_files(folder, "docs"),
                                                layout.band_files(folder, "refs"), MAX_BUCKET)
    finally:
        con.close()
    stats["candidate_pairs"] = int(len(left) + len(ref_doc))
    budget.note_pairs(stats["candidate_pairs"])  # pairs past one per document shrink the stages' memory
    clock.lap(f"{stats['candidate_pairs']:,} candidate pairs")

    similarity = _Verifier(sigs or _SignatureRows(sig_path), folder, source, ref, n, cfg, stats, budget, held)
    pairs = verified_pairs(similarity, n, left, right, ref_doc, ref_row, cfg, stats)
    del left, right, ref_doc, ref_row  # the verified ones are in `pairs`: the clustering needs no more
    clock.lap(f"{stats['verified_pairs']:,} verified pairs")
    removed = clusters.removal_frame(n, priority, *pairs, clusters.answering_verified_pairs(similarity, *pairs[:3]))
    clock.lap(f"{len(removed):,} removed")
    return removed


class _Clock:
    """Logs each stage's time and the process's memory (resident now, and the peak so far):
    where a long out-of-core run is, what it spends, and whether the budget holds."""

    def __init__(self, log):
        import time

        self.log, self.now, self.t = log, time.perf_counter, time.perf_counter()

    def lap(self, what: str) -> None:
        release_unused()
        if self.log:
            t = self.now()
            self.log(f"  {what} in {t - self.t:.1f} s (RSS {size_text(rss())}, peak {size_text(peak_rss())})")
            self.t = t


def release_unused() -> None:
    """Hand memory freed by a stage back to the system, so the next stage's room under the
    limit is real: pyarrow's pool and glibc's heap keep freed blocks for reuse otherwise
    (measured: ~300 MB resident past the candidate stage at 3M documents, not in use)."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def chunk_docs(cfg: MinHashConfig, budget: Budget, n: int) -> int:
    """Documents per signing chunk: a chunk holds its texts and UTF-8 copies (~3 KB for 100
    words), signatures and band keys and their Parquet table (~ 4 * num_perm + 40 * bands);
    a quarter of the work memory for one chunk leaves room for verification's arrays."""
    bands, _ = cfg.band_rows()
    per_doc = 3000 + 4 * cfg.num_perm + 40 * bands
    return int(min(cfg.chunk_size, max(1000, budget.work_bytes(n) // 4 // per_doc)))


def hold_texts(source, budget: Budget) -> HeldTexts | None:
    """A HeldTexts for a source read from disk (utf8_batches) whose texts take at most
    HOLD_SHARE of the budget's rest, which is charged for them; else None (verification
    then reads its texts from the source again)."""
    size = getattr(source, "text_bytes", None)
    if not hasattr(source, "utf8_batches") or size is None:
        return None  # texts already in memory (SeriesSource) or of unknown size
    cap = int(HOLD_SHARE * budget.rest())
    if size() + 8 * (len(source) + 1) > cap:
        return None
    # the whole share is reserved while signing (the metadata's size understates texts that
    # Parquet stored in a dictionary); what is really held is charged once they are all read
    budget.hold(cap)
    return HeldTexts(cap)


def _sign(source, kind: str, cfg, folder, chunk, writer, cache, stats, held: HeldTexts | None = None) -> None:
    """Sign `source` chunk by chunk: signatures appended to `writer` (signed in place where it
    lends the rows: HeldSignatures), band keys to bands/<kind>-<part>.parquet (doc = the row's
    position in `source`); the texts' buffers to `held` when given."""
    bands, rows = cfg.band_rows()
    done = 0
    # a Parquet source is signed from its Arrow buffers (no signature cache to consult)
    raw = cache is None and hasattr(source, "utf8_batches")
    for part, batch in enumerate(source.utf8_batches(chunk) if raw else source.batches(chunk)):
        if raw:
            sig = _sign_utf8(*batch, cfg, stats, out=writer.lend(len(batch[1]) - 1))
        else:
            sig = signatures(batch, cfg, cache=cache, stats=stats)
        if raw and held is not None:
            held.add(*batch)
        writer.append(sig)
        layout.write_band_keys(folder, kind, part, sig, done, bands, rows)
        done += len(sig)
    if done != len(source):
        raise ValueError(f"the text source gave {done} rows, not the {len(source)} it announced")


def _sign_utf8(data: np.ndarray, offsets: np.ndarray, cfg, stats, out: np.ndarray | None = None) -> np.ndarray:
    """minhash.signatures of texts given as UTF-8 buffers, cfg.chunk_size at a time (into `out`
    when given)."""
    from datamix.dedup.minhash import signatures_from_buffers

    n = len(offsets) - 1
    stats["signatures_computed"] = stats.get("signatures_computed", 0) + n
    if n <= cfg.chunk_size:  # chunk_docs keeps it so: no copy into a second array
        return signatures_from_buffers(data, offsets, cfg, out)
    out = np.empty((n, cfg.num_perm), np.uint32) if out is None else out
    for s in range(0, n, cfg.chunk_size):
        out[s : s + cfg.chunk_size] = signatures_from_buffers(data, offsets[s : s + cfg.chunk_size + 1], cfg)
    return out


def _connect(budget: Budget, folder: str):
    import duckdb

    temp = budget.temp_directory or os.path.join(folder, "duckdb.tmp")
    # preserve_insertion_order off: DISTINCT and GROUP BY may stream in any order
    # (the pairs are sorted in numpy), which lets DuckDB spill more of them
    con = duckdb.connect(config={"memory_limit": f"{budget.duckdb_bytes // 2**20}MiB", "temp_directory": temp,
                                 "preserve_insertion_order": False})
    con.execute("SET enable_progress_bar = false")  # the step shows its own progress
    return con


def _candidate_pairs(con, files: list[str], max_bucket: int, pair_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct candidate pairs (sorted, as the in-memory path sorts them) from the band
    keys sorted by DuckDB, streamed: lsh.sorted_bucket_pairs makes each bucket's pairs, and
    they are merged into the distinct set whenever a quarter of `pair_bytes` has piled up (the
    merge holds the distinct set, the pile, their concatenation and its sorted copy)."""
    from datamix.dedup.lsh import sorted_bucket_pairs
    from datamix.store import sql_text

    found = np.zeros(0, np.uint64)
    if not files:
        return _decode(found)
    pending: list[np.ndarray] = []
    piled, limit = 0, max(2**20, pair_bytes // 4 // 8)  # 8-byte encoded pairs
    carry = None  # the rows of a bucket that may go on in the next batch
    reader = con.sql(sql_text("minhash_candidates.sql"), params={"files": files}).to_arrow_reader(SORTED_BATCH)
    batch = next(reader, None)
    while batch is not None:
        following = next(reader, None)
        cols = [batch.column(i).to_numpy() for i in range(3)]
        if carry is not None:
            cols = [np.concatenate([c, b]) for c, b in zip(carry, cols)]
        pairs, used = sorted_bucket_pairs(*cols, final=following is None, max_bucket=max_bucket)
        carry = [c[used:] for c in cols]
        pending.append(pairs)
        piled += len(pairs)
        if piled > limit:
            found, pending, piled = distinct(np.concatenate([found, *pending])), [], 0
        batch = following
    return _decode(distinct(np.concatenate([found, *pending])))


def _decode(encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (encoded >> np.uint64(32)).astype(np.int64), (encoded & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _reference_pairs(con, doc_files: list[str], ref_files: list[str], max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (document, reference row) candidates, sorted (reference sets are small next
    to what they are matched against: the pairs come back whole)."""
    from datamix.store import sql_text

    if not doc_files or not ref_files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    found = con.execute(sql_text("minhash_against.sql"),
                        {"docs": doc_files, "refs": ref_files, "max_bucket": max_bucket}).fetchnumpy()
    return _decode(np.sort((found["doc"].astype(np.uint64) << np.uint64(32)) | found["ref"].astype(np.uint64)))


class _SignatureWriter:
    """signatures.npy written by appending chunks (a plain file write: writing through a
    memory map would count every written page in the process's resident memory)."""

    def __init__(self, path: str, rows: int, num_perm: int):
        self.path, self.rows, self.num_perm = path, rows, num_perm
        self.written = 0

    def __enter__(self):
        self._f = open(self.path, "wb")
        np.lib.format.write_array_header_1_0(
            self._f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint32)), "fortran_order": False,
                      "shape": (self.rows, self.num_perm)})
        return self

    def lend(self, count: int) -> None:
        """No rows to sign into (HeldSignatures lends its own): the signer allocates."""
        return None

    def append(self, sig: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(sig, np.uint32))  # its buffer as it is (tobytes: a copy, 0.3 s at 1M)
        self.written += len(sig)

    def __exit__(self, *exc):
        self._f.close()
        if exc[0] is None and self.written != self.rows:
            raise ValueError(f"wrote {self.written} signatures, expected {self.rows}")


def hold_signatures(rows: int, cfg, budget: Budget) -> HeldSignatures | None:
    """A HeldSignatures for `rows` documents when their signatures take at most HOLD_SHARE of the
    budget's rest (charged for them), else None (they go to signatures.npy)."""
    size = rows * cfg.num_perm * 4
    if size > HOLD_SHARE * budget.rest():
        return None
    budget.hold(size)
    return HeldSignatures(rows, cfg.num_perm)


class HeldSignatures:
    """Every document's signature in one array, signed into it chunk by chunk (`lend`), for
    verification to read in place. In place of signatures.npy where the budget has room: at
    1M documents that file's 0.5 GB were written, then gathered back row by row per block of
    pairs (1.3 s of the out-of-core path's 10.5 s; the in-memory path reads none of it).
    A writer (append) and a reader (shape, all) at once."""

    def __init__(self, rows: int, num_perm: int):
        self.all = np.empty((rows, num_perm), np.uint32)  # pages touched as they are signed
        self.shape = self.all.shape
        self.written = 0

    def __enter__(self):
        return self

    def lend(self, count: int) -> np.ndarray:
        """The next `count` rows, to sign into."""
        return self.all[self.written : self.written + count]

    def append(self, sig: np.ndarray) -> None:
        end = self.written + len(sig)
        if not np.may_share_memory(sig, self.all):  # not signed in place (a cached signature source)
            self.all[self.written : end] = sig
        self.written = end

    def __exit__(self, *exc):
        if exc[0] is None and self.written != self.shape[0]:
            raise ValueError(f"wrote {self.written} signatures, expected {self.shape[0]}")


class _SignatureRows:
    """Rows of signatures.npy by index, through a read-only map whose pages are dropped
    after each read (MADV_DONTNEED), so the process holds only the rows it copied."""

    GATHER = 2_048  # rows per copy between drops
    # A fault maps the cached pages around it too (the kernel's fault-around, 64 KB and more):
    # rows that each lie in a window of their own are read with one pread each instead (the
    # removal records' few thousand rows, scattered over the 1.5 GB file at 3M, mapped 0.33 GB
    # in one copy: a 1.32 GB peak under a 1.5 GB budget planned at 0.99 GB). Verification's
    # blocks hold ~10 rows per window and go through the map.
    WINDOW = 64 * 1024

    def __init__(self, path: str):
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)  # _SignatureWriter writes format 1.0
            shape, _, _ = np.lib.format.read_array_header_1_0(f)
            header = f.tell()
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._path, self._header, self._row_bytes = path, header, 4 * shape[1]
        # rows are read scattered: without this, each page fault reads ahead up to 128 KB of
        # neighbours, all resident until dropped (measured: 0.5 GB of file pages at 3M)
        self._map.madvise(mmap.MADV_RANDOM)
        self.shape = shape
        count = shape[0] * shape[1]
        self._rows = np.frombuffer(self._map, np.uint32, count=count, offset=header).reshape(shape)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.shape[1]), np.uint32)
        if self.scattered(rows):
            fd = os.open(self._path, os.O_RDONLY)
            try:
                for k, row in enumerate(rows.tolist()):
                    os.preadv(fd, [out[k]], self._header + row * self._row_bytes)
            finally:
                os.close(fd)
            return out
        for s in range(0, len(rows), self.GATHER):
            out[s : s + self.GATHER] = self._rows[rows[s : s + self.GATHER]]
            self._map.madvise(mmap.MADV_DONTNEED)
        return out

    def scattered(self, rows: np.ndarray) -> bool:
        """True when most of `rows` (in order) lie in a fault-around window of their own."""
        if len(rows) == 0:
            return False
        window = (self._header + rows * self._row_bytes) // self.WINDOW
        return 2 * (1 + int(np.count_nonzero(window[1:] != window[:-1]))) > len(rows)


class _Verifier:
    """minhash._PairSimilarity over global indices (documents, then reference rows at n + j),
    in two passes. First, in blocks of pairs, the rule runs on the blocks' signature rows
    only, with the exact Jaccard it asks for put off; then the exact Jaccard of every pair
    put off: their documents shingled in one pass in position order (bags.py: from the texts
    held since signing, else read again), kept in memory or on disk. Exact values are kept,
    since the removal records ask again about verified pairs."""

    BLOCK: int | None = None  # pairs per signature block; None: from the budget (tests set a few)
    TEXT_PAIRS: int | None = None  # pairs per exact-Jaccard block; None: from the budget
    TEXT_DOCS: int | None = None  # texts per fetch to shingle; None: from the budget
    BAGS_MEMORY: int | None = None  # bytes of shingle hashes kept in memory; None: from the budget

    def __init__(self, rows: _SignatureRows | HeldSignatures, folder: str, source, ref, n, cfg, stats, budget: Budget,
                 held: HeldTexts | None = None):
        self.rows = rows
        self.source, self.ref, self.n, self.cfg, self.stats = source, ref, n, cfg, stats
        self.held = held
        work = budget.work_bytes()
        # half the work memory for a block or a fetch (the rest: the pairs' arrays and index
        # copies beside it). A signature block copies up to 2 rows per pair; a fetched text is
        # held as read, concatenated, as a UTF-8 buffer, and as shingle hashes (8 bytes per
        # word, up to 4x the text): ~7x its bytes
        self.block = self.BLOCK or int(max(10_000, work // 2 // (2 * 4 * cfg.num_perm)))
        # (less the row group a Parquet source keeps between fetches)
        kept = getattr(source, "group_bytes", lambda: 0)()
        self.text_docs = self.TEXT_DOCS or int(max(10_000, (work // 2 - kept) // (7 * _text_bytes(source))))
        # the shingle hashes stay in memory up to the other half (a block or a fetch never runs
        # beside their concatenation, which doubles them for a moment), else go to disk
        memory = work // 2 if self.BAGS_MEMORY is None else self.BAGS_MEMORY
        self.bags = ShingleBags(os.path.join(folder, "shingles.bin"), self.shingles, cfg, memory)
        self._known = np.zeros(0, np.uint64)  # encoded pairs whose exact Jaccard is known, sorted
        self._known_sim = np.zeros(0, np.float64)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        out = np.empty(len(a), np.float64)
        later_a, later_b = [], []
        for s, block, ia, ib in self._blocks(a, b):
            out[s : s + len(ia)] = block(ia, ib)
            later_a += block.put_off_a
            later_b += block.put_off_b
            del block  # its signature rows, before the next block's (or the texts) are read
        put_off = np.flatnonzero(np.isnan(out))  # in the order the rule asked for them
        if len(put_off):
            out[put_off] = self.exact(np.concatenate(later_a), np.concatenate(later_b))
        return out

    def _blocks(self, a: np.ndarray, b: np.ndarray):
        """(first pair, the rule on signature rows, the pairs' rows there) per block of pairs:
        one block on the signatures in place when they are held, else blocks of `self.block`
        pairs on their rows read from signatures.npy."""
        if isinstance(self.rows, HeldSignatures):
            yield 0, _PutOff(self.rows.all, None, self), a, b
            return
        for s in range(0, len(a), self.block):
            aa, bb = a[s : s + self.block], b[s : s + self.block]
            docs = distinct_rows(np.concatenate([aa, bb]), self.rows.shape[0])
            yield s, _PutOff(self.rows(docs), docs, self), np.searchsorted(docs, aa), np.searchsorted(docs, bb)

    def exact(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Exact Jaccard of global pairs: known ones looked up, the rest computed in fetches."""
        # Jaccard is symmetric: a pair is kept as (lower, higher), so the removal records'
        # (removed, kept) find what the candidates' (lower, higher) computed
        pairs = clusters.pair_keys(a, b)
        new = missing(pairs, self._known)
        if len(new):
            na, nb = _decode(new)
            # every document of these pairs shingled once, in position order
            docs = distinct_rows(np.concatenate([na, nb]), self.rows.shape[0])
            self.bags.add(docs, self.text_docs)
            for source in (self.source, self.ref):
                getattr(source, "release", lambda: None)()  # the row group kept between fetches
            sims = np.empty(len(new), np.float64)
            order = np.argsort(na, kind="stable")  # nearby first documents together
            # pairs per block (on disk): as many as the budget holds the shingles of (a
            # document's hashes and their index, ~3x its text: twice a fetch's texts), pairs
            # sharing documents (a cluster's pairs) counted once by the average over all of them
            step = self.TEXT_PAIRS or max(1, int(2 * self.text_docs * len(new) / len(docs)))
            if not self.bags.on_disk and not self.TEXT_PAIRS:
                step = len(new)  # in memory: one call, in place
            for s in range(0, len(new), step):
                part = order[s : s + step]
                sims[part] = self.bags.jaccard(na[part], nb[part])
            known = np.concatenate([self._known, new])
            keep = np.argsort(known)
            self._known, self._known_sim = known[keep], np.concatenate([self._known_sim, sims])[keep]
        return self._known_sim[np.searchsorted(self._known, pairs)]

    def shingles(self, rows: np.ndarray, room=None):
        """minhash._shingle_bags of sorted global rows, in pieces (packed into `room` where it
        lends one, see there): the documents' from the texts held since signing when there
        are any, else from texts read again."""
        from datamix.dedup.minhash import _shingle_bags, _Utf8

        split = np.searchsorted(rows, self.n) if self.held is not None else 0
        if split:
            yield from self.held.shingles(rows[:split], self.cfg, room)
        if split < len(rows):
            rest = rows[split:]
            yield _shingle_bags(_Utf8(self.texts(rest)), np.arange(len(rest)), self.cfg, room)

    def texts(self, rows: np.ndarray) -> pl.Series:
        """Texts of sorted global rows (documents, then reference rows)."""
        import polars as pl

        split = np.searchsorted(rows, self.n)
        parts = [self.source.take(rows[:split])]
        if split < len(rows):
            parts.append(self.ref.take(rows[split:] - self.n))
        return pl.concat([p.rename("text") for p in parts])


def _text_bytes(source) -> int:
    """Bytes of an average text of `source` (for sizing fetches), at least 100."""
    size = getattr(source, "text_bytes", None)
    total = size() if size else None
    return max(100, (total or 1000 * max(1, len(source))) // max(1, len(source)))


class _PutOff(_PairSimilarity):
    """The in-memory rule on one block's signature rows, with the exact Jaccard it asks for
    put off: those pairs (as global indices) are noted and their values left NaN."""

    def __init__(self, sig: np.ndarray, docs: np.ndarray | None, verifier: _Verifier):
        super().__init__(sig, None, None, verifier.cfg, verifier.stats)
        self._global = docs  # the global index of each row of `sig`; None: rows are global
        self.put_off_a: list[np.ndarray] = []
        self.put_off_b: list[np.ndarray] = []

    def exact(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.stats["exact_pairs"] = self.stats.get("exact_pairs", 0) + len(a)  # as the in-memory path counts
        self.put_off_a.append(a if self._global is None else self._global[a])
        self.put_off_b.append(b if self._global is None else self._global[b])
        return np.full(len(a), np.nan)
