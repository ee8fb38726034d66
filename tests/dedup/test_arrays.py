"""Set operations of out-of-core MinHash (datamix.dedup.arrays): numpy's answers, faster."""

import numpy as np
import pytest

from datamix.dedup.arrays import distinct, distinct_rows, missing


@pytest.mark.parametrize("size", [0, 1, 2, 1000])
def test_distinct_is_np_unique(size):
    rng = np.random.default_rng(size)
    codes = rng.integers(0, 2**40, size, dtype=np.uint64)
    codes = np.concatenate([codes, codes[: size // 3]])  # repeats
    assert np.array_equal(distinct(codes), np.unique(codes)) and distinct(codes).dtype == np.uint64
    rows = rng.integers(0, 50, size)
    assert np.array_equal(distinct_rows(rows, 50), np.unique(rows))  # the mask
    assert np.array_equal(distinct_rows(rows, 10**6), np.unique(rows))  # few rows of many: the sort


def test_missing_is_setdiff1d():
    rng = np.random.default_rng(1)
    known = np.unique(rng.integers(0, 500, 300))
    values = rng.integers(0, 600, 400)
    assert np.array_equal(missing(values, known), np.setdiff1d(values, known))
    assert np.array_equal(missing(values, known[:0]), np.unique(values))
    assert np.array_equal(missing(values[:0], known), values[:0])
    assert np.array_equal(missing(np.array([599, 600]), known), np.setdiff1d([599, 600], known))  # past the end
