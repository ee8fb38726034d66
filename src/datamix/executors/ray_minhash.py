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
        """Sign a text source (len, batches) on Ray a window of chunks at a time (two per
        cluster CPU: every CPU busy, and the driver holds only that window's texts), appending
        the signatures to `writer` in order; each chunk's band keys land in
        bands/<kind>-<part>.parquet as the local stage writes them."""
        import pyarrow as pa
        import ray

        from datamix.executors.ray import connect

        connect(self.spec)
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


def _sign_chunk(batch, cfg, folder: str, chunk: int, kind: str, threads: int):
    """One task: a whole chunk of texts (one block) to its band-key file and signature file."""
    import numba
    import polars as pl
    import pyarrow as pa

    # the kernels are parallel loops: a task uses the CPUs Ray reserved for it, not every core
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

    from datamix.dedup import bands as layout
    from datamix.dedup.minhash import signatures

    first = batch.column("first")[0].as_py()
    part = first // chunk
    sig = signatures(pl.from_arrow(batch.column("text")), cfg)
    n_bands, rows = cfg.band_rows()
    band_file = layout.write_band_keys(folder, kind, part, sig, first, n_bands, rows)
    sig_file = os.path.join(folder, "sig", f"{kind}-{part:06d}.npy")
    np.save(sig_file + ".tmp.npy", sig)
    os.replace(sig_file + ".tmp.npy", sig_file)  # a task run twice writes the same file whole
    return pa.table({"part": [part], "first": [first], "docs": [len(sig)], "bands": [band_file], "sig": [sig_file]})


def candidate_pairs(band_files: list[str], max_bucket: int, spec: RayExecutor) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) candidate pairs, left < right, each once, sorted: documents sharing a
    (band, key), grouped by Ray Data across the cluster."""
    import ray
    import ray.data
    from ray.data.aggregate import AsList
    from ray.data.context import ShuffleStrategy

    from datamix.executors.ray import connect

    connect(spec)
    if not band_files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    context = ray.data.DataContext.get_current()
    before = context.shuffle_strategy
    # a sort shuffle runs as tasks; Ray Data's default hash shuffle starts aggregator actors,
    # whose processes crowd out the idle task workers, so the next run's signing started its
    # workers (imports, kernels) again: 9 s of a 30 s dedup of 600 texts on 2 loaded cores, vs ~1 s
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        keys = ray.data.read_parquet(band_files).map_batches(_signed_keys, batch_format="pyarrow")
        # partitions of the shuffle: a few per CPU (Ray Data's default, 200, costs seconds of tasks on a small cluster)
        partitions = max(1, int(ray.cluster_resources().get("CPU", 1)) * 2)
        buckets = keys.groupby(["band", "key"], num_partitions=partitions).aggregate(
            AsList(on="doc", alias_name="docs"))
        pairs = buckets.map_batches(_bucket_pairs, fn_kwargs={"max_bucket": max_bucket}, batch_format="pyarrow",
                                    num_cpus=spec.num_cpus_per_task)
        found = [np.asarray(b["pair"], np.uint64) for b in pairs.iter_batches(batch_format="numpy", batch_size=None)]
    finally:
        context.shuffle_strategy = before
    encoded = np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)
    return (encoded >> np.uint64(32)).astype(np.int64), (encoded & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _signed_keys(batch):
    """Band keys as int64, the same bits: Ray Data's grouping turns uint64 values past 2**63 into
    Python objects it cannot sort."""
    import pyarrow as pa
    import pyarrow.compute as pc

    i = batch.schema.get_field_index("key")
    return batch.set_column(i, "key", pc.cast(batch.column("key"), pa.int64(), safe=False))


def _bucket_pairs(batch, max_bucket: int):
    """Pairs of the buckets in a batch of (band, key, docs): documents ascending within each
    bucket (the single-machine paths' order, which decides who the cap keeps)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from datamix.dedup.lsh import bucket_pairs

    docs = batch.column("docs")
    docs = docs.combine_chunks() if isinstance(docs, pa.ChunkedArray) else docs
    docs = docs.filter(pc.greater(pc.list_value_length(docs), 1))  # a lone document makes no pair
    if len(docs) == 0:
        return pa.table({"pair": pa.array([], pa.uint64())})
    values = pc.list_flatten(docs).to_numpy().astype(np.int64)
    owner = pc.list_parent_indices(docs).to_numpy()
    values = values[np.lexsort((values, owner))]  # ascending within each bucket, buckets in order
    lengths = pc.list_value_length(docs).to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return pa.table({"pair": pa.array(bucket_pairs(values, offsets, max_bucket), pa.uint64())})
