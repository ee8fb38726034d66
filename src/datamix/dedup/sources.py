"""Where out-of-core MinHash (datamix.dedup.ooc) reads texts: anything with len(),
batches(size) (the texts in order) and take(sorted rows) (a few of them by position).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl


class SeriesSource:
    """Texts already in memory (tests, small inputs, the reference set)."""

    def __init__(self, texts):
        from datamix.dedup.minhash import _as_series

        self.texts = _as_series(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def batches(self, size: int) -> Iterator[pl.Series]:
        for start in range(0, len(self.texts), size):
            yield self.texts.slice(start, size)

    def take(self, rows: np.ndarray) -> pl.Series:
        return self.texts.gather(rows)

    def text_bytes(self) -> int:
        return int(self.texts.str.len_bytes().sum() or 0)


class ParquetSource:
    """One text column of a Parquet file, read by row group: the corpus is never whole in memory."""

    def __init__(self, path: str, column: str = "text"):
        import pyarrow.parquet as pq

        self.path, self.column = path, column
        # pre_buffer off: with it, the reader keeps every range it has read cached until it
        # is closed, so one pass over the file held the whole file in memory (measured:
        # ~350 bytes per 100-word document, growing to the end of the pass)
        self._file = pq.ParquetFile(path, pre_buffer=False)
        sizes = [self._file.metadata.row_group(i).num_rows for i in range(self._file.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._last: tuple[int, object] | None = None  # (group, its text column): the last group `take` read

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _group_sizes(self) -> list[int]:
        meta = self._file.metadata
        column = meta.schema.names.index(self.column)
        return [meta.row_group(g).column(column).total_uncompressed_size for g in range(meta.num_row_groups)]

    def text_bytes(self) -> int:
        """Uncompressed bytes of the text column, from the file's metadata."""
        return sum(self._group_sizes())

    def group_bytes(self) -> int:
        """Uncompressed bytes of the largest row group's texts: what `take` keeps between calls."""
        return max(self._group_sizes(), default=0)

    def batches(self, size: int) -> Iterator[pl.Series]:
        import polars as pl

        for batch in self._file.iter_batches(batch_size=size, columns=[self.column]):
            yield pl.Series(self.column, batch.column(0)).cast(pl.String)

    def utf8_batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The texts in order as (UTF-8 bytes, int64 offsets) straight from the Parquet
        batches' Arrow buffers (null -> ''): what signing reads, without the two copies
        through a polars Series (to its string views and back). The next batch is decoded
        in a thread while the caller works on this one (pyarrow decodes without the GIL):
        decoding 580 MB of text took 1.3-1.6 s of the 3.4 s signing 1M documents out of core."""
        import concurrent.futures

        from datamix.dedup.text import arrow_buffers

        batches = self._file.iter_batches(batch_size=size, columns=[self.column])
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="datamix-parquet") as pool:
            ahead = pool.submit(next, batches, None)
            while (batch := ahead.result()) is not None:
                ahead = pool.submit(next, batches, None)
                yield arrow_buffers(batch.column(0))

    def take(self, rows: np.ndarray) -> pl.Series:
        """The texts of sorted row positions `rows`, reading only the row groups they fall in.
        The last group read is kept until the next call (or `release`): fetches in position
        order share their boundary groups (measured: 137 reads of 46 row groups, 10.9 s, for
        verification at 3M documents under 1.5 GB without it)."""
        import polars as pl
        import pyarrow as pa

        rows = np.asarray(rows, np.int64)
        groups = np.searchsorted(self._starts, rows, side="right") - 1
        bounds = np.searchsorted(groups, np.arange(len(self._starts)))  # rows of group g: bounds[g]:bounds[g + 1]
        parts = []
        for g in np.unique(groups).tolist():
            if self._last is None or self._last[0] != g:
                self._last = None  # the kept group goes before the next one is read
                self._last = (g, self._file.read_row_group(g, columns=[self.column]).column(0))
            parts.append(self._last[1].take(pa.array(rows[bounds[g] : bounds[g + 1]] - self._starts[g])))
        if not parts:
            return pl.Series(self.column, [], dtype=pl.String)
        # one conversion to polars for the lot (one per group cost more than reading them)
        return pl.Series(self.column, pa.chunked_array([c for p in parts for c in p.chunks]).combine_chunks())

    def release(self) -> None:
        """Drop the row group `take` keeps."""
        self._last = None


class SpilledTexts:
    """Writes texts to a Parquet file as they stream by, for a step whose texts are
    computed from its input (fields joined): read back by ParquetSource afterwards."""

    ROW_GROUP = 65_536  # rows per group: what verification reads to fetch one text

    def __init__(self, path: str):
        self.path = path
        self._writer = None

    def write(self, texts: pl.Series) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"text": texts.cast(str).to_arrow()})
        if self._writer is None:
            # Neither compressed nor dictionary-encoded: the file lives only while the step runs
            # (it takes the texts' own size on disk) and is written once and read once or twice.
            # zstd with dictionaries cost the 1M-document dedup step 3.2 s of its 9.75 s
            # (benchmarks/ray_executor.py --dedup; lz4 left 2.4 s of it).
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="none", use_dictionary=False)
        self._writer.write_table(table, row_group_size=self.ROW_GROUP)

    def close(self) -> ParquetSource:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            pq.write_table(pa.table({"text": pa.array([], pa.string())}), self.path)
        else:
            self._writer.close()
        return ParquetSource(self.path)


class HeldTexts:
    """The UTF-8 buffers of a source's texts, kept from the signing pass when the memory budget
    has room for them (datamix.dedup.ooc), so that exact verification shingles its documents
    from memory instead of reading and decoding the source a second time (at 1M 100-word
    documents: 0.58 GB held, ~2.5 s of Parquet reads saved). Gives up, dropping what it
    holds, once the texts pass `limit` bytes (a size from the Parquet metadata can understate
    dictionary-encoded texts); the caller then reads the source as before."""

    def __init__(self, limit: int):
        self.limit, self.size = limit, 0
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (bytes, offsets) per signed batch
        self.first = [0]  # first row of each chunk, then the row count
        self.dropped = False

    def add(self, data: np.ndarray, offsets: np.ndarray) -> None:
        if self.dropped:
            return
        # the whole buffers count (a batch's offsets may view a larger one)
        self.size += data.nbytes + offsets.nbytes
        if self.size > self.limit:
            self.dropped, self.chunks, self.first = True, [], [0]
            return
        self.chunks.append((data, offsets))
        self.first.append(self.first[-1] + len(offsets) - 1)

    def __len__(self) -> int:
        return self.first[-1]

    def shingles(self, rows: np.ndarray, cfg, room=None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """minhash._shingle_bags of sorted rows, one (hashes, starts, ends) per chunk they fall in,
        in order (each packed into `room` where it lends one: _shingle_bags)."""
        from datamix.dedup.minhash import _shingle_bags

        bounds = np.searchsorted(rows, self.first)
        for c, (data, offsets) in enumerate(self.chunks):
            local = rows[bounds[c] : bounds[c + 1]] - self.first[c]
            if len(local):
                yield _shingle_bags(_Buffers(data, offsets), local, cfg, room)


class _Buffers:
    """(data, offsets) as minhash._shingle_bags reads them (the shape of minhash._Utf8)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, np.ascontiguousarray(offsets, np.int64)
