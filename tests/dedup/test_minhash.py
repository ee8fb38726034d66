"""MinHash near-dedup: planted duplicates, S-curve choice, keep policy, decontamination, cache, chunking."""

import random

import numpy as np
import pytest
from pydantic import ValidationError

from datamix.dedup import lsh, shingle
from datamix.dedup.minhash import (
    MinHashConfig,
    collision_probability,
    find_duplicates,
    optimal_bands_rows,
    signatures,
    signatures_from_hashes,
)


def _corpus(n_base=120, n_dup=40, words=100, edits=1, seed=0):
    """n_base random texts plus n_dup copies of the first n_dup with `edits` words replaced."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(3000)]
    base = [[rng.choice(vocab) for _ in range(words)] for _ in range(n_base)]
    texts = [" ".join(b) for b in base]
    for i in range(n_dup):
        w = list(base[i])
        for pos in rng.sample(range(words), edits):
            w[pos] = "planted"
        texts.append(" ".join(w).capitalize() + "!")  # case and punctuation are normalised away
    return texts


def _cfg(**kw):
    return MinHashConfig(method="minhash", **kw)


def test_normalisation_folds_case_punctuation_and_whitespace():
    assert shingle.normalize(["Hello,   World!!\n foo_bar ", None, "“Café” — x…"]) == ["hello world foo bar", "", "café x"]


def test_planted_near_duplicates_found_and_distinct_texts_kept():
    texts = _corpus()
    n = len(texts)
    out = find_duplicates(texts, np.arange(n, dtype=float), _cfg())
    removed = dict(zip(out["index"].to_list(), out["dup_of"].to_list()))
    # Every planted copy (J = 91/101 ~ 0.90: one edit kills 5 of 96 word 5-grams) is removed as a duplicate of its original.
    assert removed == {120 + i: i for i in range(40)}
    assert out["ref_index"].null_count() == len(out)
    assert (out["similarity"] > 0.6).all()


def test_keep_policy_follows_priority():
    texts = _corpus(n_base=10, n_dup=10)
    priority = np.zeros(len(texts))
    priority[:10] = 1.0  # the edited copies win now
    out = find_duplicates(texts, priority, _cfg())
    assert dict(zip(out["index"].to_list(), out["dup_of"].to_list())) == {i: 10 + i for i in range(10)}


def test_ties_keep_the_lower_index():
    texts = ["the same text repeated here for the test"] * 3 + ["something else entirely different now ok"]
    out = find_duplicates(texts, np.zeros(4), _cfg())
    assert out["index"].to_list() == [1, 2] and out["dup_of"].to_list() == [0, 0]
    assert out["similarity"].to_list() == [1.0, 1.0]


def test_decontamination_records_the_reference_row():
    texts = _corpus(n_base=30, n_dup=0)
    reference = ["an evaluation question nobody wrote twice", texts[7].upper() + "?", texts[21]]
    out = find_duplicates(texts, np.arange(30, dtype=float), _cfg(), reference=reference)
    assert dict(zip(out["index"].to_list(), out["ref_index"].to_list())) == {7: 1, 21: 2}
    assert out["dup_of"].null_count() == 2


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_band_rows_minimise_the_s_curve_error(threshold):
    b, r = optimal_bands_rows(threshold, 128)
    assert b * r <= 128

    def error(b, r):  # the weighted FP + FN areas, by a fine Riemann sum of 1-(1-s^r)^b
        s = np.linspace(0, 1, 20001)
        p = collision_probability(s, b, r)
        ds = s[1] - s[0]
        return 0.5 * p[s < threshold].sum() * ds + 0.5 * (1 - p[s >= threshold]).sum() * ds

    best = error(b, r)
    for b2 in range(1, 129):
        for r2 in range(1, 128 // b2 + 1):
            assert best <= error(b2, r2) + 1e-4
    # The S-curve is steep around the threshold: far below rarely collides, far above almost always.
    assert collision_probability(max(threshold - 0.25, 0.01), b, r) < 0.1
    assert collision_probability(min(threshold + 0.15, 0.99), b, r) > 0.9


def test_known_datasketch_choices():
    # datasketch's MinHashLSH picks these for (threshold, num_perm) with equal weights.
    from datasketch.lsh import _optimal_param

    for t in (0.5, 0.8, 0.9):
        assert optimal_bands_rows(t, 128) == _optimal_param(t, 128, 0.5, 0.5)


def test_explicit_bands_rows_are_checked():
    assert _cfg(bands=16, rows=8).band_rows() == (16, 8)
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        _cfg(bands=20, rows=8)
    with pytest.raises(ValidationError, match="both bands and rows"):
        _cfg(bands=20)
    with pytest.raises(ValidationError):
        _cfg(threshold=1.0)


def test_jaccard_estimate_matches_datasketch_statistically():
    from datasketch import MinHash

    texts = _corpus(n_base=60, n_dup=60, edits=4)
    hashes, offsets = shingle.shingle_hashes(texts)
    sig = signatures_from_hashes(hashes, offsets, 128, seed=1)
    sets, set_offsets = shingle.unique_sorted(hashes, offsets)
    ours, theirs, exact = [], [], []
    for i in range(60):
        j = 60 + i
        a, b = sets[set_offsets[i] : set_offsets[i + 1]], sets[set_offsets[j] : set_offsets[j + 1]]
        exact.append(len(np.intersect1d(a, b)) / len(np.union1d(a, b)))
        ours.append(float((sig[i] == sig[j]).mean()))
        ma, mb = MinHash(128, seed=1), MinHash(128, seed=1)
        ma.update_batch([int(x).to_bytes(8, "little") for x in a])
        mb.update_batch([int(x).to_bytes(8, "little") for x in b])
        theirs.append(ma.jaccard(mb))
    ours, theirs, exact = map(np.array, (ours, theirs, exact))
    # Both are unbiased estimators with std sqrt(J(1-J)/128) ~ 0.04: compare mean error and spread.
    assert abs((ours - exact).mean()) < 0.02
    assert abs(np.abs(ours - exact).mean() - np.abs(theirs - exact).mean()) < 0.02
    assert np.abs(ours - exact).max() < 0.2


class CountingCache:
    def __init__(self):
        self.store, self.put_count = {}, 0

    def get(self, keys):
        return {k: self.store[k] for k in keys if k in self.store}

    def put(self, items):
        self.put_count += len(items)
        self.store.update(items)


def test_cache_signs_only_new_texts():
    texts = _corpus()
    old, new = texts[:100], texts[100:]
    cache, stats = CountingCache(), {}
    find_duplicates(old, np.arange(100, dtype=float), _cfg(), cache=cache, stats=stats)
    assert stats["signatures_computed"] == 100
    stats = {}
    both = find_duplicates(old + new, np.arange(len(texts), dtype=float), _cfg(), cache=cache, stats=stats)
    assert stats["signatures_computed"] == len(new) and cache.put_count == len(texts)
    fresh = find_duplicates(texts, np.arange(len(texts), dtype=float), _cfg())
    assert both.equals(fresh)


def test_chunked_run_equals_unchunked():
    texts = _corpus()
    pr = np.random.default_rng(0).random(len(texts))
    whole = find_duplicates(texts, pr, _cfg())
    chunked = find_duplicates(texts, pr, _cfg(chunk_size=7))
    assert np.array_equal(signatures(texts, _cfg()), signatures(texts, _cfg(chunk_size=7)))
    assert whole.equals(chunked) and len(whole) == 40
    # Reference rows share the texts' buffer: their chunks are offset slices past the texts.
    reference = [texts[3].upper(), texts[50] + " extra words at the end"]
    with_ref = find_duplicates(texts, pr, _cfg(), reference=reference)
    assert with_ref.equals(find_duplicates(texts, pr, _cfg(chunk_size=7), reference=reference))
    assert with_ref["ref_index"].drop_nulls().len() >= 1


def test_verify_modes():
    texts = _corpus()
    pr = np.arange(len(texts), dtype=float)
    exact = find_duplicates(texts, pr, _cfg(verify="jaccard"))
    assert set(exact["index"].to_list()) == set(range(120, 160))
    # Exact Jaccard: one edit in the middle leaves 91 of 101 distinct 5-grams shared
    # (fewer are lost when the edit is near an end).
    assert (exact["similarity"] >= 91 / 101 - 1e-9).all() and (exact["similarity"] < 1).all()
    assert np.median(exact["similarity"].to_numpy()) == pytest.approx(91 / 101)
    # With no verification every LSH candidate counts: never fewer removals than verified
    # on the same bands (verify: none derives fewer, stricter bands by default: 9 x 13).
    assert _cfg(verify="none").band_rows() == (9, 13) and _cfg().band_rows() == (16, 8)
    assert len(find_duplicates(texts, pr, _cfg(verify="none", bands=16, rows=8))) >= len(exact)


def test_char_shingles_and_short_texts():
    texts = ["abc", "abc", "abd", "", ""]
    h, off = shingle.shingle_hashes(texts, unit="char", ngram=5)
    assert np.diff(off).tolist() == [1, 1, 1, 0, 0]  # shorter than n: one shingle; empty: none
    out = find_duplicates(texts, np.zeros(5), _cfg(unit="char", ngram=3))
    assert dict(zip(out["index"].to_list(), out["dup_of"].to_list())) == {1: 0, 4: 3}


def test_large_bucket_is_linked_without_quadratic_pairs():
    sig = np.zeros((500, 8), np.uint32)  # 500 identical signatures
    left, right = lsh.candidate_pairs(sig, 2, 4)
    assert len(left) < 2 * 500
    out = find_duplicates(["same words in every one of them"] * 500, np.zeros(500), _cfg())
    assert len(out) == 499 and set(out["dup_of"].to_list()) == {0}


def test_removal_records_answer_verified_pairs_with_their_values_and_ask_about_the_rest():
    """clusters.answering_verified_pairs: the same values as asking the rule, in either order,
    with the rule asked only about pairs that were not verified."""
    from datamix.dedup import clusters
    from datamix.dedup.minhash import _PairSimilarity

    texts = _corpus(n_base=300, n_dup=200, edits=3) + _corpus(n_base=100, n_dup=100, edits=8)[100:]
    cfg = MinHashConfig(method="minhash", threshold=0.7)
    rule = _PairSimilarity(signatures(texts, cfg), texts, None, cfg, {})
    left, right = lsh.candidate_pairs(rule.sig, *cfg.band_rows())
    sim = rule(left, right)
    asked = []

    def counting(a, b):
        asked.append(len(a))
        return rule(a, b)

    answer = clusters.answering_verified_pairs(counting, left, right, sim)
    rng = np.random.default_rng(0)
    others_a, others_b = rng.integers(0, len(texts), 50), rng.integers(0, len(texts), 50)
    a = np.concatenate([right[:100], left[100:200], others_a])  # verified pairs in both orders, then others
    b = np.concatenate([left[:100], right[100:200], others_b])
    assert np.array_equal(answer(a, b), rule(a, b))
    unknown = ~np.isin(clusters.pair_keys(others_a, others_b), clusters.pair_keys(left, right))
    assert asked == [int(unknown.sum())]
    assert clusters.answering_verified_pairs(counting, left[:0], right[:0], sim[:0])(a[:3], b[:3]).shape == (3,)
