"""MinHash signatures over whole batches, LSH candidates, verification, clusters.

Signature of a document = for each of `num_perm` hash functions
h_k(x) = (a_k * x + b_k) mod 2^64 >> 32 (a_k odd; multiply-add-shift, the family
rensa uses), the minimum over the document's 64-bit shingle hashes. One numba
kernel computes a whole chunk of documents, one document per parallel iteration,
all `num_perm` functions in the innermost loop (which LLVM vectorises).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numba import njit, prange
from pydantic import BaseModel, ConfigDict, Field, model_validator

from datamix.dedup import clusters, lsh, shingle

if TYPE_CHECKING:
    import polars as pl

EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a document with no shingles


class MinHashConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["minhash"]
    unit: Literal["word", "char"] = "word"
    ngram: int = Field(default=5, ge=1, le=64)
    num_perm: int = Field(default=128, ge=2, le=4096)
    threshold: float = Field(default=0.8, gt=0.0, lt=1.0, description="Jaccard similarity")
    bands: int | None = Field(default=None, ge=1)
    rows: int | None = Field(default=None, ge=1)
    verify: Literal["none", "signature", "jaccard"] = "signature"
    # Weights of the LSH false-positive / false-negative areas when deriving bands x rows.
    # Default: candidates are verified, so a false positive costs one signature comparison
    # while a false negative is lost for good -> (0.05, 0.95), i.e. 16 x 8 at 0.8/128,
    # catching 95% of pairs at J = 0.8 (datasketch's 0.5/0.5 gives 9 x 13: 40% at J = 0.8,
    # 93% at J = 0.9). With verify: none the default is datasketch's 0.5/0.5.
    fp_weight: float | None = Field(default=None, ge=0.0)
    fn_weight: float | None = Field(default=None, ge=0.0)
    seed: int = 1
    chunk_size: int = Field(default=100_000, ge=1, description="documents per signature chunk")

    @model_validator(mode="after")
    def _bands_rows(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they derive from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}; "
                "lower them or raise num_perm"
            )
        return self

    def band_rows(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        fp, fn = (0.5, 0.5) if self.verify == "none" else (0.05, 0.95)
        fp = fp if self.fp_weight is None else self.fp_weight
        fn = fn if self.fn_weight is None else self.fn_weight
        return optimal_bands_rows(self.threshold, self.num_perm, fp, fn)

    def cache_tag(self) -> str:
        """What a stored signature depends on besides the text."""
        return f"minhash/v{shingle.HASH_VERSION}/{self.unit}{self.ngram}/p{self.num_perm}/s{self.seed}"


# ---------------------------------------------------------------- bands and rows


def _integrate(f, a: float, b: float, steps: int = 200) -> float:
    """Simpson's rule (the S-curve is smooth, 200 panels is far below 1e-6 error)."""
    if b <= a:
        return 0.0
    h = (b - a) / steps
    x = np.linspace(a, b, steps + 1)
    y = f(x)
    return float(h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))


def collision_probability(s, bands: int, rows: int):
    """P(two documents with Jaccard s share at least one band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.power(s, rows)) ** bands


def optimal_bands_rows(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising
    fp_weight * integral_0^t P(collide | s) ds + fn_weight * integral_t^1 (1 - P(collide | s)) ds."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    best, best_err = (1, 1), math.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _integrate(lambda s: collision_probability(s, b, r), 0.0, threshold)
            fn = _integrate(lambda s: 1.0 - collision_probability(s, b, r), threshold, 1.0)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


# ---------------------------------------------------------------- signatures


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64) * np.uint64(2)
    return a, b


@njit(cache=True, parallel=True)
def _signature_kernel(hashes, offsets, a, b, out):
    n_docs = offsets.shape[0] - 1
    k_perm = a.shape[0]
    for d in prange(n_docs):
        acc = np.full(k_perm, np.uint64(0xFFFFFFFF))
        for i in range(offsets[d], offsets[d + 1]):
            x = hashes[i]
            for k in range(k_perm):
                v = (a[k] * x + b[k]) >> np.uint64(32)
                if v < acc[k]:
                    acc[k] = v
        for k in range(k_perm):
            out[d, k] = np.uint32(acc[k])


def signatures_from_hashes(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """(n_docs, num_perm) uint32 signatures from flat shingle hashes + offsets."""
    a, b = permutations(num_perm, seed)
    out = np.empty((len(offsets) - 1, num_perm), np.uint32)
    _signature_kernel(np.ascontiguousarray(hashes, np.uint64), np.ascontiguousarray(offsets, np.int64), a, b, out)
    return out


def signatures(texts: list[str] | pl.Series, cfg: MinHashConfig, cache: Any = None, stats: dict | None = None) -> np.ndarray:
    """Signatures of `texts` in chunks of cfg.chunk_size; with `cache`, only texts it lacks are signed."""
    import polars as pl

    series = texts if isinstance(texts, pl.Series) else pl.Series("text", list(texts), dtype=pl.String)
    out = np.empty((len(series), cfg.num_perm), np.uint32)
    computed = 0
    for start in range(0, len(series), cfg.chunk_size):
        part = series.slice(start, cfg.chunk_size)
        data, offsets = shingle.normalized_buffers(part)
        todo = np.arange(len(part))
        keys = None
        if cache is not None:
            tag = cfg.cache_tag()
            keys = [f"{tag}/{k}" for k in shingle.text_keys(data, offsets)]
            found = cache.get(keys)
            hit = np.array([k in found for k in keys], dtype=bool)
            for i in np.flatnonzero(hit):
                out[start + i] = np.frombuffer(found[keys[i]], dtype=np.uint32)
            todo = np.flatnonzero(~hit)
        if len(todo) == 0:
            continue
        if len(todo) < len(part):
            data, offsets = _select(data, offsets, todo)
        hashes, shingle_offsets = shingle.shingle_hashes_from_buffers(data, offsets, cfg.unit, cfg.ngram)
        sig = signatures_from_hashes(hashes, shingle_offsets, cfg.num_perm, cfg.seed)
        out[start + todo] = sig
        computed += len(todo)
        if cache is not None:
            cache.put({keys[i]: sig[j].tobytes() for j, i in enumerate(todo.tolist())})
    if stats is not None:
        stats["signatures_computed"] = stats.get("signatures_computed", 0) + computed
    return out


def _select(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The byte buffer and offsets of a subset of texts."""
    lengths = (offsets[1:] - offsets[:-1])[rows]
    new_offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    idx = np.repeat(offsets[:-1][rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return data[idx], new_offsets


@njit(cache=True, parallel=True)
def signature_similarity(sig_a, sig_b, left, right):
    """Fraction of equal signature positions for each pair (sig_a[left[k]], sig_b[right[k]])."""
    out = np.empty(left.shape[0], np.float64)
    k_perm = sig_a.shape[1]
    for k in prange(left.shape[0]):
        same = 0
        for j in range(k_perm):
            same += sig_a[left[k], j] == sig_b[right[k], j]
        out[k] = same / k_perm
    return out


# ---------------------------------------------------------------- the method


def find_duplicates(
    texts: list[str] | pl.Series,
    priority: np.ndarray,
    cfg: MinHashConfig,
    *,
    reference: list[str] | pl.Series | None = None,
    cache: Any = None,
    stats: dict | None = None,
) -> pl.DataFrame:
    """One row per REMOVED text: index, dup_of, ref_index, similarity (see clusters.removal_frame).

    Candidates are pairs sharing an LSH band; with verify="signature" (default) a
    pair stays when its signature estimate reaches the threshold, with "jaccard"
    when the exact Jaccard of the shingle sets does, with "none" every candidate
    stays. Verified pairs are clustered by union-find and the lowest `priority`
    (ties: lower index) of each cluster is kept. A text near-duplicate to a
    `reference` row is removed whatever its cluster (decontamination). `stats`,
    when given, receives counts (signatures_computed, candidate_pairs, verified_pairs).
    """
    n = len(texts)
    priority = np.asarray(priority, dtype=np.float64)
    if priority.shape != (n,):
        raise ValueError(f"priority must have one value per text ({n}), got shape {priority.shape}")
    stats = {} if stats is None else stats
    bands, rows = cfg.band_rows()
    sig = signatures(texts, cfg, cache=cache, stats=stats)
    ref_sig = None if reference is None else signatures(reference, cfg, cache=cache, stats=stats)

    left, right = lsh.candidate_pairs(sig, bands, rows)
    sim = signature_similarity(sig, sig, left, right)
    ref_doc = ref_row = ref_sim = np.zeros(0, np.int64)
    if ref_sig is not None and len(ref_sig):
        ref_doc, ref_row = lsh.candidate_pairs_against(sig, ref_sig, bands, rows)
        ref_sim = signature_similarity(sig, ref_sig, ref_doc, ref_row)
    stats["candidate_pairs"] = int(len(left) + len(ref_doc))

    def pair_similarity(a, b):
        return signature_similarity(sig, sig, a, b)

    if cfg.verify == "jaccard":
        sets, set_offsets = _shingle_sets(texts, reference, cfg)
        n_texts = len(texts)
        sim = shingle.jaccard_pairs(sets, set_offsets, left, right)
        ref_sim = shingle.jaccard_pairs(sets, set_offsets, ref_doc, ref_row + n_texts)

        def pair_similarity(a, b):  # noqa: F811 -- exact Jaccard when that is what was verified
            return shingle.jaccard_pairs(sets, set_offsets, a, b)

    if cfg.verify != "none":
        keep = sim >= cfg.threshold
        left, right, sim = left[keep], right[keep], sim[keep]
        keep = ref_sim >= cfg.threshold
        ref_doc, ref_row, ref_sim = ref_doc[keep], ref_row[keep], ref_sim[keep]
    stats["verified_pairs"] = int(len(left) + len(ref_doc))

    return clusters.removal_frame(n, priority, left, right, sim, ref_doc, ref_row, ref_sim, pair_similarity)


def _shingle_sets(texts, reference, cfg):
    """Sorted shingle sets of texts then reference rows (not chunked: verify="jaccard" holds
    every shingle in memory, about 8 bytes per word of the corpus)."""
    import polars as pl

    docs = texts if isinstance(texts, pl.Series) else pl.Series("text", list(texts), dtype=pl.String)
    if reference is not None:
        refs = reference if isinstance(reference, pl.Series) else pl.Series("text", list(reference), dtype=pl.String)
        docs = pl.concat([docs.cast(pl.String), refs.cast(pl.String)])
    hashes, offsets = shingle.shingle_hashes(docs, cfg.unit, cfg.ngram)
    return shingle.unique_sorted(hashes, offsets)
