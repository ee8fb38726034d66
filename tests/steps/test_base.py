"""steps.base: what every step sees of its input."""

from __future__ import annotations

import pyarrow as pa
import pytest

from datamix.steps.base import exact_slices


def pieces(sizes: list[int]):
    start = 0
    for n in sizes:
        yield start, pa.table({"i": pa.array(range(start, start + n), pa.int64())})
        start += n


@pytest.mark.parametrize("sizes", [[10], [3, 3, 4], [1] * 10, [7, 0, 2, 1], [0], [], [25, 1]])
@pytest.mark.parametrize("size", [1, 3, 4, 10, 30])
def test_exact_slices_cut_pieces_of_any_size_into_slices_of_size(sizes, size):
    total = sum(sizes)
    got = list(exact_slices(pieces(sizes), size))
    assert [offset for offset, _ in got] == list(range(0, total, size))
    assert [t.num_rows for _, t in got] == [min(size, total - o) for o in range(0, total, size)]
    assert [v for _, t in got for v in t.column("i").to_pylist()] == list(range(total))


def test_exact_slices_hand_on_a_slice_before_reading_past_it():
    read = []

    def stream():
        for offset, table in pieces([4, 4, 4]):
            read.append(offset)
            yield offset, table

    slices = exact_slices(stream(), 4)
    next(slices)
    assert read == [0]  # a `batch` step holds a slice or two of its input, not all of it
