"""Shingle bags of out-of-core verification (datamix.dedup.bags): in memory, on disk, or
spilled from one to the other midway, the same Jaccard as the in-memory path's."""

import os

import numpy as np
import polars as pl
import pytest

from datamix.dedup.bags import ShingleBags
from datamix.dedup.minhash import MinHashConfig, _PairSimilarity, _shingle_bags, _Utf8, signatures
from tests.dedup.test_ooc import _planted


@pytest.mark.parametrize("where", ["in memory", "on disk", "spilled in the first call", "spilled in the second"])
def test_bags_in_memory_on_disk_or_spilled_give_the_in_memory_jaccard(tmp_path, where):
    texts = pl.Series(_planted(n_base=300) + ["", "a"])
    cfg = MinHashConfig(method="minhash")
    utf8 = _Utf8(texts)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(texts), 500), rng.integers(0, len(texts), 500)
    a[:2], b[:2] = len(texts) - 2, len(texts) - 1  # the empty text, a one-word one
    # added in two calls (verification, then the removal records ask about more), 37 per fetch
    first, both = np.unique(np.concatenate([a[:250], b[:250]])), np.unique(np.concatenate([a, b]))

    def bags_of(memory):
        bags = ShingleBags(str(tmp_path / "shingles.bin"), lambda rows, room: [_shingle_bags(utf8, rows, cfg, room)], cfg, memory)
        bags.GATHER = 5
        bags.add(first, 37)
        return bags

    kept_first = 8 * bags_of(10**9).size  # bytes of hashes the first call keeps
    memory = {"in memory": 10**9, "on disk": 0, "spilled in the first call": kept_first // 2,
              "spilled in the second": kept_first + 320}[where]
    bags = bags_of(memory)
    assert bags.on_disk == (where in ("on disk", "spilled in the first call"))
    bags.add(both, 37)
    assert bags.on_disk == (where != "in memory")
    assert os.path.exists(tmp_path / "shingles.bin") == bags.on_disk
    expected = _PairSimilarity(signatures(texts, cfg), texts, None, cfg, {}).exact(a, b)
    assert np.array_equal(bags.jaccard(a, b), expected)
    assert (expected > 0).any() and (expected < 1).any()


def test_in_memory_pieces_are_packed_where_they_are_kept(tmp_path):
    """The shingling packs each piece into the bags' own array (no copy of the hashes), and the
    Jaccard is the same as from pieces that came in arrays of their own."""
    texts = pl.Series(_planted(n_base=100))
    cfg = MinHashConfig(method="minhash")
    utf8 = _Utf8(texts)
    lent_used = []

    def shingle(rows, room):
        piece = _shingle_bags(utf8, rows, cfg, room)
        lent_used.append(piece[0] is bags._lent)
        return [piece]

    bags = ShingleBags(str(tmp_path / "shingles.bin"), shingle, cfg, 10**8)
    bags.add(np.arange(0, len(texts), 2), 50)
    bags.add(np.arange(len(texts)), 50)  # the rest, after what is kept
    assert lent_used and all(lent_used) and not bags.on_disk
    copied = ShingleBags(str(tmp_path / "copied.bin"), lambda rows, room: [_shingle_bags(utf8, rows, cfg)], cfg, 10**8)
    copied.add(np.arange(0, len(texts), 2), 50)
    copied.add(np.arange(len(texts)), 50)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, len(texts), 300), rng.integers(0, len(texts), 300)
    assert np.array_equal(bags.jaccard(a, b), copied.jaccard(a, b))
    assert np.array_equal(bags.sets[: bags.size], copied.sets[: copied.size])
