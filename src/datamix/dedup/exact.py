"""Exact deduplication: equal normalised text -> one cluster.

Same interface as the near-duplicate methods (minhash, semantic), so the
`dedup` step treats every method alike.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from datamix.dedup.options import ExactConfig  # noqa: F401 - the method's options, here for its callers


def normalized(texts: pl.Series) -> pl.Series:
    # one regex pass: a run of punctuation, symbols and whitespace becomes one space (the
    # same text as punctuation -> space, then whitespace runs -> one space)
    return texts.str.to_lowercase().str.replace_all(r"[\p{P}\p{S}\s]+", " ").str.strip_chars()


def find_duplicates(texts, priority: np.ndarray, cfg: ExactConfig, *, reference=None, cache=None) -> pl.DataFrame:
    """One row per removed text: index, dup_of (kept text's index), ref_index, similarity (1.0)."""
    texts = pl.Series("t", texts, dtype=pl.Utf8)
    keys = normalized(texts) if cfg.normalize else texts
    frame = pl.DataFrame({"key": keys.hash(seed=0), "priority": priority, "index": np.arange(len(texts))})
    # the keeper of each group: lowest priority, then lowest index
    frame = frame.sort(["key", "priority", "index"])
    frame = frame.with_columns(pl.col("index").first().over("key").alias("keeper"))
    removed = frame.filter(pl.col("index") != pl.col("keeper")).select(
        pl.col("index").cast(pl.Int64), pl.col("keeper").cast(pl.Int64).alias("dup_of")
    )
    ref_hits = pl.DataFrame(schema={"index": pl.Int64, "ref_index": pl.Int64})
    if reference is not None and len(reference):
        ref = pl.Series("r", reference, dtype=pl.Utf8)
        ref_keys = normalized(ref) if cfg.normalize else ref
        refs = pl.DataFrame({"key": ref_keys.hash(seed=0), "ref_index": np.arange(len(ref))}).group_by("key").agg(
            pl.col("ref_index").min()
        )
        ref_hits = frame.join(refs, on="key", how="inner").select(
            pl.col("index").cast(pl.Int64), pl.col("ref_index").cast(pl.Int64)
        )
    # a text matching a reference row is removed for that, whatever its cluster
    out = removed.join(ref_hits, on="index", how="full", coalesce=True)
    out = out.with_columns(
        pl.when(pl.col("ref_index").is_not_null()).then(None).otherwise(pl.col("dup_of")).alias("dup_of"),
        pl.lit(1.0).alias("similarity"),
    )
    return out.select("index", "dup_of", "ref_index", "similarity").sort("index")
