"""MinHash on a Ray cluster: signatures by map_batches, the band shuffle by a Ray Data groupby.

The same on-disk layout as the out-of-core path (datamix.dedup.bands): each task signs one
chunk of texts (datamix.dedup.minhash.signatures, the function the in-memory and out-of-core
paths call) and writes that chunk's band keys as bands/docs-<part>.parquet and its
signatures as sig/<kind>-<part>.npy; nothing but a small row per chunk comes back to the driver.
Candidate pairs come from Ray Data grouping the band-key rows by (band, key) across the
cluster (a hash shuffle: only band keys move, 18 bytes per document and band), each
bucket's documents listed, and each bucket's pairs made with the same cap as
lsh.candidate_pairs (lsh.bucket_pairs): the pairs are those of the single-machine paths.

Verification, clusters and the keep policy need only the candidate pairs' signature rows
and texts, and stay in the driver (datamix.dedup.ooc). `Stages` hands these two stages to
ooc.find_duplicates_ooc: the dedup step does so when its executor is ray. Reference rows
(decontamination) are signed on Ray too; their pairs with the documents, few next to the
documents' own, come from DuckDB in the driver.
"""

from __future__ import annotations

import os

import numpy as np

from datamix.executors import RayExecutor


def sign(texts, cfg, folder: str, chunk: int, spec: RayExecutor, *, kind: str = "docs", first: int = 0) -> list[dict]:
    """Sign `texts` (an Arrow string array, in the step's stable order) in chunks of `chunk`
    documents on Ray; `first` is the position of texts[0] (a multiple of `chunk`), `kind` the
    band-key files' prefix (docs or refs). Returns, per chunk in order: part, first doc, docs,
    band-key file and signature file."""
    import pyarrow as pa
    import ray.data

    from datamix.executors.ray import connect

    connect(spec)
    os.makedirs(os.path.join(folder, "sig"), exist_ok=True)
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    blocks = [pa.table({"text": texts.slice(start, chunk),
                        "first": pa.array(np.full(min(chunk, len(texts) - start), first + start, np.int64))})
              for start in range(0, len(texts), chunk)]
    if not blocks:
        return []
    out = ray.data.from_arrow(blocks).map_batches(
        _sign_chunk, fn_kwargs={"cfg": cfg, "folder": folder, "chunk": chunk, "kind": kind,
                                "threads": max(1, int(spec.num_cpus_per_task))}, batch_size=None,
        batch_format="pyarrow", num_cpus=spec.num_cpus_per_task,
        compute=ray.data.TaskPoolStrategy(size=spec.concurrency))
    parts = [row for batch in out.iter_batches(batch_size=None, batch_format="pyarrow") for row in batch.to_pylist()]
    return sorted(parts, key=lambda p: p["part"])


class Stages:
    """The out-of-core path's signing and candidate-pair stages on Ray (the `sign` and
    `candidates` of datamix.dedup.ooc.find_duplicates_ooc); `tasks` counts the chunks signed
    on Ray, for the step's log."""

    def __init__(self, spec: RayExecutor):
        self.spec, self.tasks = spec, 0

    def sign(self, source, kind: str, cfg, folder: str, chunk: int, writer, cache=None, stats=None) -> None:
        """Sign a text source on Ray, appending the signatures to `writer` in order; each
        chunk's band keys land in bands/<kind>-<part>.parquet as the local stage writes them.
        A Parquet source (the dedup step spills its texts to one in the store's folder) is read
        by the tasks, a few row groups each, so no text passes through the driver; any other
        (len, batches) is sent from the driver a window of chunks at a time (two per cluster
        CPU: every CPU busy, and the driver holds only that window's texts)."""
        from datamix.dedup.sources import ParquetSource

        import pyarrow as pa
        import ray

        from datamix.executors.ray import connect

        connect(self.spec)
        if isinstance(source, ParquetSource):  # a file the workers can read: they read it themselves
            self.tasks += sign_parquet(source.path, source.column, cfg, folder, chunk, self.spec, writer, kind=kind)
            return
        window = max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
        done, pending = 0, []

        def flush():
            nonlocal done, pending
            texts = pa.chunked_array([t.to_arrow() for t in pending]).combine_chunks()
            for part in sign(texts, cfg, folder, chunk, self.spec, kind=kind, first=done):
                writer.append(np.load(part["sig"]))
                os.remove(part["sig"])  # signatures.npy has it now
                self.tasks += 1
            done, pending = done + len(texts), []

        for texts in source.batches(chunk):
            pending.append(texts)
            if len(pending) == window:
                flush()
        if pending:
            flush()
        if done != len(source):
            raise ValueError(f"the text source gave {done} rows, not the {len(source)} it announced")

    def candidates(self, band_files: list[str], max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
        return candidate_pairs(band_files, max_bucket, self.spec)


def sign_parquet(path: str, column: str, cfg, folder: str, chunk: int, spec: RayExecutor, writer, *,
                 kind: str = "docs") -> int:
    """Sign the texts of one column of a Parquet file on Ray: each task reads consecutive row
    groups (about `chunk` rows, at least one group) itself, and writes its band keys and
    signatures as `sign`'s tasks do; the driver appends the signatures to `writer` in order and
    reads no text. Returns the number of tasks."""
    import pyarrow.parquet as pq
    import ray.data

    from datamix.executors.ray import connect

    connect(spec)
    os.makedirs(os.path.join(folder, "sig"), exist_ok=True)
    meta = pq.ParquetFile(path).metadata
    tasks, first, groups, rows = [], 0, [], 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= chunk or g == meta.num_row_groups - 1:
            tasks.append({"part": len(tasks), "first": first, "groups": groups})
            first, groups, rows = first + rows, [], 0
    if not tasks:
        return 0
    out = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        _sign_row_groups, fn_kwargs={"path": path, "column": column, "cfg": cfg, "folder": folder, "kind": kind,
                                     "threads": max(1, int(spec.num_cpus_per_task))},
        batch_size=1, batch_format="pyarrow", num_cpus=spec.num_cpus_per_task,
        compute=ray.data.TaskPoolStrategy(size=spec.concurrency))
    parts = sorted((row for batch in out.iter_batches(batch_size=None, batch_format="pyarrow")
                    for row in batch.to_pylist()), key=lambda p: p["part"])
    for part in parts:
        writer.append(np.load(part["sig"]))
        os.remove(part["sig"])  # signatures.npy has it now
    return len(parts)


def _sign_row_groups(batch, path: str, column: str, cfg, folder: str, kind: str, threads: int):
    """One task: some row groups of a Parquet file to their band-key file and signature file."""
    import polars as pl
    import pyarrow.parquet as pq

    part, first = batch.column("part")[0].as_py(), batch.column("first")[0].as_py()
    groups = batch.column("groups")[0].as_py()
    texts = pq.ParquetFile(path, pre_buffer=False).read_row_groups(groups, columns=[column]).column(0)
    return _sign_and_write(pl.Series("text", texts.combine_chunks()).cast(pl.String), part, first, cfg, folder,
                           kind, threads)


def _sign_chunk(batch, cfg, folder: str, chunk: int, kind: str, threads: int):
    """One task: a whole chunk of texts (one block) to its band-key file and signature file."""
    import polars as pl

    first = batch.column("first")[0].as_py()
    return _sign_and_write(pl.from_arrow(batch.column("text")), first // chunk, first, cfg, folder, kind, threads)


def _sign_and_write(texts, part: int, first: int, cfg, folder: str, kind: str, threads: int):
    """Sign texts (documents first .. first + len - 1) into bands/<kind>-<part>.parquet and
    sig/<kind>-<part>.npy; the row describing them for the driver."""
    import numba
    import pyarrow as pa

    # the kernels are parallel loops: a task uses the CPUs Ray reserved for it, not every core
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

    from datamix.dedup import bands as layout
    from datamix.dedup.minhash import signatures

    sig = signatures(texts, cfg)
    n_bands, rows = cfg.band_rows()
    band_file = layout.write_band_keys(folder, kind, part, sig, first, n_bands, rows)
    sig_file = os.path.join(folder, "sig", f"{kind}-{part:06d}.npy")
    np.save(sig_file + ".tmp.npy", sig)
    os.replace(sig_file + ".tmp.npy", sig_file)  # a task run twice writes the same file whole
    return pa.table({"part": [part], "first": [first], "docs": [len(sig)], "bands": [band_file], "sig": [sig_file]})


def candidate_pairs(band_files: list[str], max_bucket: int, spec: RayExecutor) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) candidate pairs, left < right, each once, sorted: documents sharing a
    (band, key), found on Ray in two stages of tasks. First every band-key file is split by a
    hash of (band, key) into one file per partition, beside it (the store's folder, which the
    workers share, as Parquet parts); then each partition's rows are sorted by (band, key, doc)
    and cut into buckets, so every bucket is whole in one task, its documents ascending (the
    single-machine paths' order, which decides who the cap keeps).

    Ray Data's groupby(...).aggregate(AsList) did this before: it aggregates row by row in
    Python, and 200k documents (3.2M band-key rows, nearly all groups of one) ran past an hour."""
    import shutil

    import ray.data

    from datamix.dedup.arrays import distinct
    from datamix.executors.ray import connect

    connect(spec)
    if not band_files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # a few partitions per CPU: every CPU busy, each partition's sort small
    partitions = max(1, int(ray.cluster_resources().get("CPU", 1)) * 4)
    folder = os.path.join(os.path.dirname(band_files[0]), "shuffle")
    shutil.rmtree(folder, ignore_errors=True)  # a killed run's partial split
    os.makedirs(folder)
    try:
        files = [{"file": f, "index": i} for i, f in enumerate(band_files)]
        split = ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
            _split_band_file, fn_kwargs={"folder": folder, "partitions": partitions}, batch_size=1,
            batch_format="pyarrow", num_cpus=spec.num_cpus_per_task)
        split.materialize()
        parts = [{"part": p} for p in range(partitions)]
        pairs = ray.data.from_items(parts, override_num_blocks=partitions).map_batches(
            _partition_pairs, fn_kwargs={"folder": folder, "max_bucket": max_bucket}, batch_size=1,
            batch_format="pyarrow", num_cpus=spec.num_cpus_per_task)
        found = [np.asarray(b["pair"], np.uint64) for b in pairs.iter_batches(batch_format="numpy", batch_size=None)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    found = [f for f in found if len(f)]
    encoded = distinct(np.concatenate(found)) if found else np.zeros(0, np.uint64)
    return (encoded >> np.uint64(32)).astype(np.int64), (encoded & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _partition_of(band: np.ndarray, key: np.ndarray, partitions: int) -> np.ndarray:
    """Which partition a (band, key) row goes to: its key mixed with its band (keys are hashes)."""
    mixed = key.astype(np.uint64) ^ (band.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return (mixed % np.uint64(partitions)).astype(np.int64)


def _split_band_file(batch, folder: str, partitions: int):
    """One task: one band-key file to a file per partition (shuffle/p<part>-<file>.parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, index = batch.column("file")[0].as_py(), batch.column("index")[0].as_py()
    table = pq.read_table(path, columns=["band", "key", "doc"])
    part = _partition_of(table.column("band").to_numpy(), table.column("key").to_numpy(), partitions)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(partitions + 1))
    for p in range(partitions):
        if bounds[p + 1] > bounds[p]:
            rows = table.take(pa.array(order[bounds[p]:bounds[p + 1]]))
            pq.write_table(rows, os.path.join(folder, f"p{p:05d}-{index:06d}.parquet"), compression="none")
    return pa.table({"rows": pa.array([table.num_rows], pa.int64())})


def _partition_pairs(batch, folder: str, max_bucket: int):
    """One task: a partition's band-key rows sorted by (band, key, doc), cut into buckets, paired."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datamix.dedup.lsh import sorted_bucket_pairs

    p = batch.column("part")[0].as_py()
    names = sorted(f for f in os.listdir(folder) if f.startswith(f"p{p:05d}-"))
    if not names:
        return pa.table({"pair": pa.array([], pa.uint64())})
    table = pa.concat_tables([pq.read_table(os.path.join(folder, n)) for n in names])
    band = table.column("band").to_numpy().astype(np.int64)
    key = table.column("key").to_numpy()
    doc = table.column("doc").to_numpy().astype(np.int64)
    order = np.lexsort((doc, key, band))
    pairs, _ = sorted_bucket_pairs(band[order], key[order], doc[order], True, max_bucket)
    return pa.table({"pair": pa.array(pairs, pa.uint64())})
