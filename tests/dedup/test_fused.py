"""The fused kernel (raw bytes -> signatures) against independent references; LSH tables; hybrid verification."""

import random

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from datamix.dedup import kernels, lsh, shingle
from datamix.dedup.minhash import (
    _PairSimilarity,
    MinHashConfig,
    _shingle_bags,
    _Utf8,
    find_duplicates,
    sketch_seeds,
    signatures,
    signatures_from_hashes,
)

# Letters of several scripts (with case), digits, separators of every kind the folder knows.
ALPHABET = (
    list("abcXYZ019") + list("ÀÉÎõüßÆ") + list("ΣσςΑΩ") + list("ДЖжя") + ["İ", "Ⱥ", "K", "ǅ", "中", "文", "𐐀", "𞤀"]
    + list(" \t\n.,;!?_-'\"()[]") + ["\u00a0", "—", "…", "“", "”", "、", "。", "！", "😀", "→", "\x00", "\x7f"]
)


def _random_texts(n, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def _reference_normalise(text):
    """Per character in Python: lowercase (str.lower, first code point; ς -> σ), separators fold."""
    out, pending = [], False
    for ch in text:
        if shingle._is_separator(ord(ch)):
            pending = bool(out)
            continue
        low = ch.lower()[0] if ch != "\u0130" else "i"
        low = "σ" if low == "ς" else low
        if pending:
            out.append(" ")
            pending = False
        out.append(low)
    return "".join(out)


M64 = 2**64 - 1


def _py_mix(x):
    """murmur3's fmix64 in Python integers."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    return x ^ (x >> 33)


def _py_sketch(shingle_hashes, n_bins, seeds):
    """One-permutation hashing with optimal densification, written from the description
    (Shrivastava 2017) in Python integers: the kernels must agree bit for bit."""
    s0, s1 = int(seeds[0]), int(seeds[1])
    bins = [0xFFFFFFFF] * n_bins
    for h in shingle_hashes:
        x = _py_mix(int(h) ^ s0)
        k = ((x >> 32) * n_bins) >> 32
        bins[k] = min(bins[k], x & 0xFFFFFFFF)
    filled = [v != 0xFFFFFFFF for v in bins]
    out = list(bins)
    for j in range(n_bins):
        attempt = 0
        while any(filled) and not filled[j]:
            attempt += 1
            k = ((_py_mix((s1 + (j << 32) + attempt) & M64) >> 32) * n_bins) >> 32
            if filled[k]:
                out[j] = bins[k]
                break
    return np.array(out, np.uint32)


def _reference_signature(text, ngram, n_bins, seed):
    """Words -> word_hash -> n-gram hash -> the sketch above."""
    words = _reference_normalise(text).split(" ") if _reference_normalise(text) else []
    if not words:
        return np.full(n_bins, 0xFFFFFFFF, np.uint32)
    wh = []
    for w in words:
        raw = np.frombuffer(w.encode("utf-8"), np.uint8)
        wh.append(shingle.word_hash(raw, 0, len(raw)))
    wh = np.array(wh, np.uint64)
    width = min(ngram, len(wh))
    sh = [shingle.ngram_hash(wh, j, width) for j in range(max(len(wh) - ngram + 1, 1))]
    return _py_sketch(sh, n_bins, sketch_seeds(seed))


def test_normalisation_matches_python_lowercase_on_random_unicode():
    texts = _random_texts(300, seed=1)
    assert shingle.normalize(texts) == [_reference_normalise(t) for t in texts]
    assert shingle.normalize(["ΟΔΟΣ οδος", "İSTANBUL", "Ⱥ"]) == ["οδοσ οδοσ", "istanbul", "ⱥ"]


@pytest.mark.parametrize("ngram", [1, 2, 5])
def test_fused_signatures_equal_the_reference_on_random_unicode(ngram):
    texts = _random_texts(200, seed=ngram)
    cfg = MinHashConfig(method="minhash", ngram=ngram, num_perm=32)
    fused = signatures(texts, cfg)
    expected = np.stack([_reference_signature(t, ngram, 32, cfg.seed) for t in texts])
    assert np.array_equal(fused, expected)
    # The unfused path (normalised buffer -> shingle hashes -> signatures) agrees too.
    hashes, offsets = shingle.shingle_hashes(texts, "word", ngram)
    assert np.array_equal(fused, signatures_from_hashes(hashes, offsets, 32, cfg.seed))


def _ascii_texts(n, seed):
    """Mostly-ASCII texts: words of 1-30 characters (crossing 8-byte boundaries at every
    offset), runs of separators, and now and then a non-ASCII character mid-word, so
    the 8-bytes-at-a-time path and the per-character path hand words to each other."""
    rng = random.Random(seed)
    letters = "abcdefghijKLMNOPQRSTuvwxyz0123456789"
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 40)):
            word = "".join(rng.choice(letters) for _ in range(rng.randint(1, 30)))
            if rng.random() < 0.05:
                k = rng.randint(0, len(word))
                word = word[:k] + rng.choice("éΣж中") + word[k:]
            parts.append(word)
            parts.append("".join(rng.choice(" .,;-_\n\t!?") for _ in range(rng.randint(1, 4))))
        out.append(rng.choice(["", " ", "..."]) + "".join(parts))
    return out


@pytest.mark.parametrize("ngram", [1, 3])
def test_eight_byte_word_pass_equals_the_per_character_reference(ngram):
    texts = _ascii_texts(300, seed=ngram)
    cfg = MinHashConfig(method="minhash", ngram=ngram, num_perm=16)
    expected = np.stack([_reference_signature(t, ngram, 16, cfg.seed) for t in texts])
    assert np.array_equal(signatures(texts, cfg), expected)
    # Same texts at every alignment of the buffer (a prefix text shifts all byte offsets).
    for shift in range(1, 8):
        shifted = signatures(["x" * shift] + texts, cfg)[1:]
        assert np.array_equal(shifted, expected)


def test_all_ascii_bit_mask_pass_equals_the_per_character_reference():
    """All-ASCII texts take the bit-mask word pass: words of every length 1-150
    (branch-free up to 15 bytes, a loop beyond; words crossing 64-byte mask blocks),
    texts of only separators, a word ending exactly at a 64-byte boundary."""
    rng = random.Random(11)
    letters = "abcXYZ0189"
    texts = ["", "...", "a", "-" * 63 + "b", "q" * 64, "w" * 64 + " x", "y" * 65]
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(1, 30)):
            parts.append("".join(rng.choice(letters) for _ in range(rng.choice([1, 7, 8, 9, 15, 16, 17, rng.randint(1, 150)]))))
            parts.append("".join(rng.choice(" .,_\n!") for _ in range(rng.randint(1, 3))))
        texts.append("".join(parts))
    cfg = MinHashConfig(method="minhash", ngram=2, num_perm=16)
    expected = np.stack([_reference_signature(t, 2, 16, cfg.seed) for t in texts])
    for shift in range(0, 8):  # every alignment of the buffer
        assert np.array_equal(signatures(["x" * shift] + texts, cfg)[1:], expected)


def test_fused_signatures_are_normalisation_invariant():
    cfg = MinHashConfig(method="minhash")
    texts = _random_texts(100, seed=7)
    assert np.array_equal(signatures(texts, cfg), signatures(shingle.normalize(texts), cfg))


def test_parallel_and_serial_kernels_agree(monkeypatch):
    texts = _random_texts(400, seed=3) + ["same words here again and again"] * 80
    cfg = MinHashConfig(method="minhash", num_perm=64)
    monkeypatch.setattr(shingle, "PARALLEL_MIN_WORK", 0)
    par = signatures(texts, cfg), lsh.candidate_pairs(signatures(texts, cfg), 8, 8)
    monkeypatch.setattr(shingle, "PARALLEL_MIN_WORK", 10**18)
    ser = signatures(texts, cfg), lsh.candidate_pairs(signatures(texts, cfg), 8, 8)
    assert np.array_equal(par[0], ser[0])
    assert all(np.array_equal(x, y) for x, y in zip(par[1], ser[1]))


@pytest.mark.parametrize("unit", ["word", "char"])
def test_exact_jaccard_from_raw_text_equals_the_merge_of_sorted_sets(unit):
    texts = _random_texts(150, seed=11) + ["a b c a b c a b c", "a b c", "", "", "a b c d e f g", "a b c d e f x"]
    cfg = MinHashConfig(method="minhash", unit=unit, ngram=3)
    docs = np.array([0, 5, 6, 40, 149, 150, 151, 152, 153])
    bags, starts, ends = _shingle_bags(_Utf8(pl.Series(texts, dtype=pl.String)), docs, cfg)
    hashes, offsets = shingle.shingle_hashes(texts, unit, 3)
    ref, ref_off = shingle.unique_sorted(hashes, offsets)
    for q, d in enumerate(docs):
        assert np.array_equal(np.unique(bags[starts[q] : ends[q]]), ref[ref_off[d] : ref_off[d + 1]])
    rng = np.random.default_rng(0)
    left, right = rng.integers(0, 150, 300), rng.integers(0, 150, 300)
    # repeated shingles, empty-empty, text-empty, a near copy, self
    left, right = np.append(left, [150, 152, 150, 154, 7]), np.append(right, [151, 153, 152, 155, 7])
    sim = _PairSimilarity(np.zeros((len(texts), 2), np.uint32), texts, None, cfg.model_copy(update={"verify": "jaccard"}), {})
    expected = shingle.jaccard_pairs(ref, ref_off, left, right)
    # A first call shingles some texts; the second adds the rest to the same store.
    assert np.array_equal(sim(left[:100], right[:100]), expected[:100])
    assert np.array_equal(sim(left, right), expected)
    assert expected[-4:-2].tolist() == [1.0, 0.0] and 0.0 < expected[-2] < 1.0 and expected[-1] == 1.0
    # later calls with texts the kept store lacks, a few at a time, between kept ones
    sim = _PairSimilarity(np.zeros((len(texts), 2), np.uint32), texts, None, cfg.model_copy(update={"verify": "jaccard"}), {})
    for lo, hi in ((40, 60), (0, 10), (152, 154), (150, 156), (100, 110), (10, 40), (60, 100), (110, 150)):
        part = (left >= lo) & (left < hi) & (right >= lo) & (right < hi)
        assert np.array_equal(sim(left[part], right[part]), expected[part])
    assert np.array_equal(sim(left, right), expected)


def _brute_force_pairs(sig, bands, rows):
    pairs = set()
    for band in range(bands):
        cols = sig[:, band * rows : (band + 1) * rows]
        for i in range(len(sig)):
            for j in range(i + 1, len(sig)):
                if np.array_equal(cols[i], cols[j]):
                    pairs.add((i, j))
    return pairs


def test_band_tables_find_exactly_the_pairs_sharing_a_band():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 3, (120, 12)).astype(np.uint32)  # small alphabet: many collisions
    left, right = lsh.candidate_pairs(sig, 4, 3)
    assert set(zip(left.tolist(), right.tolist())) == _brute_force_pairs(sig, 4, 3)
    assert np.all(left < right) and np.all(np.diff(left * 1000 + right) > 0)
    ref = rng.integers(0, 3, (30, 12)).astype(np.uint32)
    docs, refs = lsh.candidate_pairs_against(sig, ref, 4, 3)
    both = np.concatenate([sig, ref])
    expected = {(i, j - 120) for i, j in _brute_force_pairs(both, 4, 3) if i < 120 <= j}
    assert set(zip(docs.tolist(), refs.tolist())) == expected


def test_hybrid_verification_uses_exact_jaccard_near_the_threshold():
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(5000)]
    base = [[rng.choice(vocab) for _ in range(200)] for _ in range(60)]
    texts = [" ".join(w) for w in base]
    for i in range(60):  # 3 edits of 200 words: exact J ~ 0.86, within 3 std of 0.8
        w = list(base[i])
        for pos in rng.sample(range(200), 3):
            w[pos] = "edit"
        texts.append(" ".join(w))
    pr = np.arange(len(texts), dtype=float)
    stats = {}
    hybrid = find_duplicates(texts, pr, MinHashConfig(method="minhash"), stats=stats)
    exact = find_duplicates(texts, pr, MinHashConfig(method="minhash", verify="jaccard"))
    assert stats["exact_pairs"] > 0
    assert hybrid["index"].to_list() == exact["index"].to_list() == list(range(60, 120))
    h, e = hybrid["similarity"].to_numpy(), exact["similarity"].to_numpy()
    margin = 3 * np.sqrt(0.8 * 0.2 / 128)
    # Exact where the estimate was near the threshold; the estimate where it was decisive.
    undecided = np.abs(h - 0.8) < margin
    assert undecided.sum() > 30 and np.allclose(h[undecided], e[undecided])
    assert np.all(h[~np.isclose(h, e)] >= 0.8 + margin)


def test_threshold_error_message():
    with pytest.raises(ValidationError) as err:
        MinHashConfig(method="minhash", threshold=1.5)
    assert err.value.errors()[0]["msg"] == "Value error, must be between 0 and 1"
    with pytest.raises(ValidationError, match="must be between 0 and 1"):
        MinHashConfig(method="minhash", threshold=0.0)



def test_signature_kernel_equals_the_python_sketch_on_extreme_hashes():
    # Random and extreme shingle hashes (all-zero and all-one halves), documents of 0 to 300
    # shingles (from mostly-empty bins, densified, to every bin filled), bin counts that are
    # and are not powers of two.
    rng = np.random.default_rng(3)
    edge = np.array([0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 0xFFFFFFFF00000000], np.uint64)
    docs = [rng.integers(0, 2**64 - 1, n, dtype=np.uint64) for n in list(range(21)) + [64, 300]] + [edge]
    offsets = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    hashes = np.concatenate(docs)
    for n_bins, seed in [(13, 5), (128, 5), (64, 1)]:
        expected = np.stack([_py_sketch(d, n_bins, sketch_seeds(seed)) for d in docs])
        np.testing.assert_array_equal(signatures_from_hashes(hashes, offsets, n_bins, seed), expected)
    out = np.empty((len(docs), 13), np.uint32)
    kernels.signature_kernel(hashes, offsets, sketch_seeds(5), out)
    np.testing.assert_array_equal(out, np.stack([_py_sketch(d, 13, sketch_seeds(5)) for d in docs]))


def test_sketch_agreement_is_an_unbiased_jaccard_estimate_for_small_and_large_sets():
    """The fraction of agreeing bins estimates J without bias whether the sets are much
    smaller than the bin count (most bins copied from others) or larger, and its spread
    stays near k-permutation MinHash's (densification that copied copies, or probe sequences
    that differ between documents, would bias the small sets' estimate)."""
    rng = np.random.default_rng(7)
    for size in (20, 1000):
        for j_true in (0.5, 0.7, 0.9):
            shared = int(round(2 * size * j_true / (1 + j_true)))  # |A & B| for |A| = |B| = size
            docs = []
            for _ in range(400):
                pool = rng.integers(0, 2**64 - 1, 2 * size - shared, dtype=np.uint64)
                docs += [pool[:size], pool[size - shared:]]
            offsets = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
            sig = signatures_from_hashes(np.concatenate(docs), offsets, 128, 3)
            est = (sig[0::2] == sig[1::2]).mean(axis=1)
            exact = shared / (2 * size - shared)
            assert abs(est.mean() - exact) < 0.015, (size, j_true, est.mean(), exact)
            minhash_std = np.sqrt(exact * (1 - exact) / 128)
            assert est.std() < 2.0 * minhash_std, (size, j_true, est.std(), minhash_std)


def test_shingle_bags_in_many_passes_equal_one_pass(monkeypatch):
    """The verification's shingling packs pass by pass (a reused scratch of _BAG_PASS slots):
    passes of a few texts, one text longer than a pass, room after the packed part."""
    import datamix.dedup.minhash as mh

    rng = random.Random(5)
    texts = _ascii_texts(120, seed=9) + [" ".join(f"w{i}" for i in range(400)), "", "one"]
    rng.shuffle(texts)
    utf8 = _Utf8(pl.Series(texts, dtype=pl.String))
    docs = np.array(sorted(rng.sample(range(len(texts)), 90)), np.int64)
    cfg = MinHashConfig(method="minhash", ngram=3)
    one_h, one_s, one_e = _shingle_bags(utf8, docs, cfg)
    monkeypatch.setattr(mh, "_BAG_PASS", 64)
    many_h, many_s, many_e = _shingle_bags(utf8, docs, cfg)
    for q in range(len(docs)):
        assert np.array_equal(many_h[many_s[q]:many_e[q]], one_h[one_s[q]:one_e[q]])
    assert np.array_equal(many_e - many_s, one_e - one_s)
    assert (many_s[1:] == many_e[:-1]).all() and many_s[0] == 0  # packed, in text order
    assert len(many_h) > many_e[-1]  # room after the packed part, where later texts go
