"""The on-disk layout of out-of-core MinHash: band keys as Parquet, signatures as .npy.

A dedup run that does not fit in memory (datamix.dedup.ooc) writes, under one work
folder (the dedup step's output folder, `outputs/<step>/minhash/`, which the runner
removes when the step reruns):

    bands/docs-000000.parquet, docs-000001.parquet, ...   one file per signed chunk
    bands/refs-000000.parquet, ...                        reference rows (decontamination)
    signatures.npy                                        (rows, num_perm) uint32

Band-key files: one row per (document, band), columns
    doc   BIGINT    the document's position in the step's input (stable order, 0-based);
                    in refs-*.parquet, the reference row's position in the reference set
    band  SMALLINT  0 .. bands - 1
    key   UBIGINT   64-bit hash of the band's `rows` signature values (lsh.band_keys: the
                    same key the in-memory path buckets on, so both find the same pairs)
Rows of a file are band-major (every document's band 0, then band 1, ...). Two
documents are LSH candidates when they share a (band, key); sql/minhash_candidates.sql
sorts the rows by (band, key, doc) (DuckDB's external sort, which spills to disk past its
memory limit) and lsh.sorted_bucket_pairs cuts the sorted runs into pairs.
Any engine can do that shuffle instead (Ray Data: groupby(["band", "key"])), as long
as it keeps the bucket cap of lsh.candidate_pairs (`max_bucket`).

signatures.npy: row i is document i's signature; reference rows follow the documents
(row n + j is reference row j). Verification reads only candidate rows.
"""

from __future__ import annotations

import os

import numpy as np

BAND_SCHEMA = (("doc", "int64"), ("band", "int16"), ("key", "uint64"))


def band_table(sig: np.ndarray, first_doc: int, bands: int, rows: int):
    """The band-key rows (doc, band, key) of signatures `sig` of documents first_doc, first_doc + 1, ..."""
    import pyarrow as pa

    from datamix.dedup.lsh import all_band_keys

    m = sig.shape[0]
    keys = all_band_keys(np.ascontiguousarray(sig), bands, rows)  # (bands, m)
    return pa.table({
        "doc": pa.array(np.tile(np.arange(first_doc, first_doc + m, dtype=np.int64), bands)),
        "band": pa.array(np.repeat(np.arange(bands, dtype=np.int16), m)),
        "key": pa.array(keys.reshape(-1)),
    })


def write_band_keys(folder: str, kind: str, part: int, sig: np.ndarray, first_doc: int, bands: int, rows: int) -> str:
    """Write one chunk's band keys to folder/bands/<kind>-<part>.parquet (kind: docs or refs); returns the path."""
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(folder, "bands"), exist_ok=True)
    path = os.path.join(folder, "bands", f"{kind}-{part:06d}.parquet")
    # keys are random 64-bit values: compression and dictionaries gain nothing on them and
    # cost 4x the time of the plain write
    pq.write_table(band_table(sig, first_doc, bands, rows), path, compression="none", use_dictionary=False,
                   write_statistics=False)
    return path


def band_files(folder: str, kind: str) -> list[str]:
    """The band-key files of `kind` (docs or refs), in part order."""
    root = os.path.join(folder, "bands")
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, f) for f in os.listdir(root) if f.startswith(f"{kind}-") and f.endswith(".parquet"))
