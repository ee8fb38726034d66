"""Union-find clustering of verified duplicate pairs and the removal records.

Shared by every near-duplicate method (minhash, semantic): they produce pairs
(with a similarity) and pairs against reference rows; this module decides what
is removed and records what each removed text duplicates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl


def connected_components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Root label per node (the smallest index of its component) from edges (left[k], right[k])."""
    from datamix.dedup.kernels import connected_components as kernel  # numba, loaded on first use

    return kernel(n, np.asarray(left, np.int64), np.asarray(right, np.int64))


def keepers(labels: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Per node, the index of its component's kept node: lowest priority, ties to the lower index."""
    n = len(labels)
    order = np.lexsort((np.arange(n), priority, labels))  # by label, then priority, then index
    sorted_labels = labels[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_labels[1:] != sorted_labels[:-1]
    keeper_of_label = np.empty(n, np.int64)
    keeper_of_label[sorted_labels[first]] = order[first]
    return keeper_of_label[labels]


def answering_verified_pairs(pair_similarity: Callable[[np.ndarray, np.ndarray], np.ndarray], left: np.ndarray,
                             right: np.ndarray, similarity: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`pair_similarity` for removal_frame that answers the verified pairs (left[k], right[k]),
    in either order, with their `similarity` and asks `pair_similarity` only about the others.

    For MinHash both are one deterministic, symmetric rule, so the values are the same; most
    removed texts are in a verified pair with the text their cluster keeps, so most of the rule's
    work is saved: out of core at 10M documents the removal records read those pairs' signature
    rows back from disk (110 s of a 272 s run, with the page cache holding a fraction of the
    5 GB file). Semantic dedup does not use it: its pairs' cosines come from a matrix product,
    whose rounding may differ from the per-pair dot product in the last bits."""
    keys = pair_keys(left, right)
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], np.asarray(similarity, np.float64)[order]

    def ask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        wanted = pair_keys(a, b)
        pos = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
        found = keys[pos] == wanted if len(keys) else np.zeros(len(a), bool)
        out = np.empty(len(a), np.float64)
        out[found] = values[pos[found]]
        unknown = np.flatnonzero(~found)
        if len(unknown):
            out[unknown] = pair_similarity(a[unknown], b[unknown])
        return out

    return ask


def pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One uint64 per unordered pair of indices below 2^32: (lower << 32) | higher."""
    lo, hi = np.minimum(a, b).astype(np.uint64), np.maximum(a, b).astype(np.uint64)
    return (lo << np.uint64(32)) | hi


def removal_frame(
    n: int,
    priority: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    similarity: np.ndarray,
    ref_doc: np.ndarray,
    ref_row: np.ndarray,
    ref_similarity: np.ndarray,
    pair_similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> pl.DataFrame:
    """One row per removed text: index, dup_of (kept text of its cluster or null),
    ref_index (matched reference row or null), similarity.

    A text matching any reference row is removed with the most similar one as
    ref_index, and takes no part in clustering (its cluster-mates must not be
    dropped because of it). The rest are clustered by union-find over the pairs;
    each removed text's similarity is with its cluster's kept text, from
    `pair_similarity(removed, kept)` when given (a chain a~b~c can leave a and c
    below the threshold: the record says so), else from the best pair it is in.
    """
    import polars as pl

    contaminated, best_ref, best_ref_sim = _best_reference(n, ref_doc, ref_row, ref_similarity)

    clean = ~(contaminated[left] | contaminated[right]) if len(left) else np.zeros(0, bool)
    left, right, similarity = left[clean], right[clean], similarity[clean]
    labels = connected_components(n, left.astype(np.int64), right.astype(np.int64))
    keep_idx = keepers(labels, priority)
    dup = np.flatnonzero((keep_idx != np.arange(n)) & ~contaminated)
    kept = keep_idx[dup]
    if pair_similarity is not None and len(dup):
        dup_sim = np.asarray(pair_similarity(dup, kept), dtype=np.float64)
    else:
        best = np.zeros(n)
        np.maximum.at(best, left, similarity)
        np.maximum.at(best, right, similarity)
        dup_sim = best[dup]

    ref_idx = np.flatnonzero(contaminated)
    frame = pl.DataFrame(
        {
            "index": np.concatenate([dup, ref_idx]),
            "dup_of": pl.Series(np.concatenate([kept, np.zeros(len(ref_idx), np.int64)]), dtype=pl.Int64),
            "ref_index": pl.Series(np.concatenate([np.zeros(len(dup), np.int64), best_ref[ref_idx]]), dtype=pl.Int64),
            "similarity": np.concatenate([dup_sim, best_ref_sim[ref_idx]]).astype(np.float64),
            "_is_ref": np.concatenate([np.zeros(len(dup), bool), np.ones(len(ref_idx), bool)]),
        },
        schema_overrides={"index": pl.Int64},
    )
    return (
        frame.with_columns(
            pl.when(pl.col("_is_ref")).then(None).otherwise(pl.col("dup_of")).alias("dup_of"),
            pl.when(pl.col("_is_ref")).then(pl.col("ref_index")).otherwise(None).alias("ref_index"),
        )
        .drop("_is_ref")
        .sort("index")
    )


def _best_reference(n, ref_doc, ref_row, ref_similarity):
    """Per text: matched any reference?, the most similar reference row, its similarity."""
    contaminated = np.zeros(n, dtype=bool)
    best_ref = np.full(n, -1, np.int64)
    best_sim = np.full(n, -np.inf)
    if len(ref_doc):
        order = np.lexsort((-ref_similarity, ref_doc))  # per doc, most similar first
        d = ref_doc[order]
        first = np.ones(len(d), dtype=bool)
        first[1:] = d[1:] != d[:-1]
        docs = d[first]
        contaminated[docs] = True
        best_ref[docs] = ref_row[order][first]
        best_sim[docs] = ref_similarity[order][first]
    return contaminated, best_ref, best_sim
