"""The runner's inputs: read, take and write give a step's output rows in their stable order.

A pass-through chain's output is read from the stored table of its first stored
ancestor, skipping the dropped rows during DuckDB's scan; mix gathers its draw with
`take` and export copies with `write` straight from the store. They must give exactly
the stored rows minus the chain's drops, in the stored order.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from datamix.outputs import StoreInput, read_output
from datamix.steps.base import InputTable
from datamix.store import Store

from tests.helpers import chat, run_pipeline, short_and_repeated_chats, store_of, write_jsonl, write_pipeline


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """load -> filter -> dedup over 40 chats: every 5th is too short, every 7th a duplicate."""
    folder = tmp_path_factory.mktemp("store_input")
    write_jsonl(folder / "data.jsonl", short_and_repeated_chats(40))
    pipeline = write_pipeline(folder, [
        {"name": "raw", "kind": "load", "path": "data.jsonl", "chunk_size": 16},
        {"name": "clean", "kind": "filter", "input": "raw", "rules": [{"rule": "length", "field": "response", "min": 3,
                                                                      "unit": "words"}]},
        {"name": "dedup", "kind": "dedup", "input": "clean", "method": "exact", "fields": ["instruction"]},
    ])
    result = run_pipeline(pipeline)
    assert result.ok, result.error
    s = Store(str(store_of(pipeline)))
    yield s
    s.close()


def expected_rows(store, step: str, deciders: list[str]) -> list[dict]:
    """The stored table's rows in order, minus every row the deciders dropped, in Python."""
    rows = store.con.sql("SELECT * FROM raw").to_arrow_table().to_pylist()
    dropped = {r[0] for r in store.con.execute(
        f"SELECT sample_id FROM dm.decisions WHERE NOT kept AND step IN ({', '.join('?' * len(deciders))})",
        deciders).fetchall()}
    return [r for r in rows if r["sample_id"] not in dropped]


@pytest.mark.parametrize("step, deciders", [("raw", []), ("clean", ["clean"]), ("dedup", ["clean", "dedup"])])
def test_read_output_is_the_stored_rows_minus_the_chains_drops_in_order(store, step, deciders):
    expected = expected_rows(store, step, deciders)
    assert read_output(store, step).to_pylist() == expected
    assert len(StoreInput(store, step)) == len(expected)
    assert read_output(store, step, "origin_line").column(0).to_pylist() == [r["origin_line"] for r in expected]
    if deciders:  # both rules dropped rows, so the filter is really exercised
        assert len(expected) < len(expected_rows(store, step, deciders[:-1]))


@pytest.mark.parametrize("step", ["raw", "clean", "dedup"])
@pytest.mark.parametrize("columns", [None, "messages", "sample_id, origin_line"])
def test_take_equals_taking_from_the_whole_read(store, step, columns):
    whole = read_output(store, step, columns)
    n = whole.num_rows
    rng = np.random.default_rng(3)
    for indexes in (np.arange(n), np.arange(n)[::-1], rng.integers(0, n, 3 * n), np.zeros(0, np.int64)):
        got = StoreInput(store, step).take(indexes, columns)
        assert got.equals(whole.combine_chunks().take(pa.array(indexes, pa.int64()))), (step, columns)
        assert got.column_names == whole.column_names


@pytest.mark.parametrize("step", ["raw", "clean", "dedup"])
@pytest.mark.parametrize("size", [1, 3, 16, 100])
@pytest.mark.parametrize("read_rows", [5, 100_000])  # several reads, one read
def test_slices_read_from_the_store_equal_slicing_the_whole_read(store, step, size, read_rows, monkeypatch):
    from datamix import outputs

    monkeypatch.setattr(outputs, "SLICE_READ_ROWS", read_rows)
    got = list(StoreInput(store, step).slices(size, "sample_id, messages"))
    whole = list(InputTable.slices(StoreInput(store, step), size, "sample_id, messages"))
    assert [o for o, _ in got] == [o for o, _ in whole]
    assert all(a.combine_chunks().equals(b.combine_chunks()) for (_, a), (_, b) in zip(got, whole))


def test_take_past_the_kept_rows_is_an_error(store):
    n = len(StoreInput(store, "dedup"))
    with pytest.raises(IndexError):
        StoreInput(store, "dedup").take([0, n])


@pytest.mark.parametrize("step", ["raw", "dedup"])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_write_from_the_store_equals_writing_the_read_rows(store, tmp_path, step, fmt):
    columns = ["sample_id", "messages", "origin_line"]
    StoreInput(store, step).write(str(tmp_path / "store.out"), fmt, columns)
    reader = InputTable(step, lambda cols: read_output(store, step, cols), 0)  # the generic Arrow path
    reader.write(str(tmp_path / "arrow.out"), fmt, columns)
    if fmt == "jsonl":
        assert (tmp_path / "store.out").read_bytes() == (tmp_path / "arrow.out").read_bytes()
    read = "read_json" if fmt == "jsonl" else "read_parquet"
    con = duckdb.connect()
    written = con.sql(f"SELECT sample_id FROM {read}('{tmp_path / 'store.out'}')").fetchall()
    con.close()
    assert [r[0] for r in written] == read_output(store, step, "sample_id").column(0).to_pylist()


def test_column_names_without_reading_the_rows(store):
    assert StoreInput(store, "dedup").column_names() == read_output(store, "dedup").column_names


def test_a_column_named_rowid_does_not_hide_which_rows_were_dropped(tmp_path):
    """DuckDB's rowid is shadowed by a column of that name: the reader falls back to ids."""
    write_jsonl(tmp_path / "data.jsonl", [
        {**chat(f"question {i}?", "no" if i % 3 == 0 else f"a long enough answer {i}"), "rowid": str(100 - i)}
        for i in range(12)])
    pipeline = write_pipeline(tmp_path, [
        {"name": "raw", "kind": "load", "path": "data.jsonl", "keep_fields": ["rowid"]},
        {"name": "clean", "kind": "filter", "input": "raw", "rules": [{"rule": "length", "field": "response",
                                                                      "min": 3, "unit": "words"}]},
    ])
    assert run_pipeline(pipeline).ok
    s = Store(str(store_of(pipeline)))
    try:
        assert read_output(s, "clean", "rowid").column(0).to_pylist() == [str(100 - i) for i in range(12) if i % 3]
        StoreInput(s, "clean").write(str(tmp_path / "out.jsonl"), "jsonl", ["sample_id", "rowid"])
        assert [r["rowid"] for r in map(json.loads, open(tmp_path / "out.jsonl"))] == [
            str(100 - i) for i in range(12) if i % 3]
    finally:
        s.close()
