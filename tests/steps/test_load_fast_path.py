"""Clean JSONL goes through DuckDB's reader; anything unusual falls back to the line reader.

Either way a file must give the same rows, ids, lines and quarantine as the line reader alone.
Fast paths: the records parsed by DuckDB's reader straight into the structure and normalised
in the same query (read_normalized; read_parsed_records stops at the parsed records), else
their text read by it and parsed in SQL (read_raw_records).
"""

from __future__ import annotations

import json

import duckdb
import pytest

from datamix import readers
from datamix.loop import chunks_of
from datamix.steps import load
from datamix.steps.base import Context
from datamix.steps.load import LoadConfig, normalize, read_normalized, read_parsed_records, read_raw_records, split_quarantine

GOOD = json.dumps({"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]})
OTHER = json.dumps({"prompt": "p?", "response": "r."})

CASES = {
    "clean": "\n".join([GOOD, OTHER] * 3) + "\n",
    "no final newline": "\n".join([GOOD, OTHER] * 3),
    "blank line": f"{GOOD}\n\n{OTHER}\n",
    "whitespace-only line": f"{GOOD}\n   \t\n{OTHER}\n",
    "crlf": f"{GOOD}\r\n{OTHER}\r\n",
    "leading space": f" {GOOD}\n{OTHER}\n",
    "non-object in a later chunk": "\n".join([GOOD] * 5 + ["[1, 2]", OTHER]) + "\n",
    "invalid json": f"{GOOD}\nnot json\n{OTHER}\n",
    "missing field": f"{GOOD}\n" + json.dumps({"instruction": "x"}) + f"\n{OTHER}\n",
    # values that are not strings (quarantined on both paths), escapes, extra keys
    "converted values": "\n".join([
        json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": 1.5}]}),
        json.dumps({"messages": [{"role": "user", "content": {"a": [1, 2]}}, {"role": "assistant", "content": True}]}),
        '{"messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00 \\t \\"q\\""}, '
        '{"role": "assistant", "content": "ok", "name": "x"}], "extra": [1]}',
        json.dumps({"instruction": 12345678901234567890, "input": "", "output": -0.0}),
        json.dumps({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": [1, 2]}]}),
    ]) + "\n",
    "duplicate key": f"{GOOD}\n" + '{"prompt": "p", "response": "r", "prompt": "again"}' + f"\n{OTHER}\n",
    "unconvertible value": f"{GOOD}\n" + '{"messages": [1e400]}' + f"\n{OTHER}\n",
    "bad role in a later chunk": "\n".join([GOOD] * 4 + [json.dumps({"messages": [{"role": "robot", "content": "x"}]})])
                                + "\n",
}


def rows_and_quarantine(path, fast: bool, chunk: int):
    cfg = LoadConfig(name="l", kind="load", path=str(path))
    records = read_raw_records(str(path), "jsonl", fast=fast)
    con = duckdb.connect()
    good, bad = [], []
    for start in range(0, records.num_rows, chunk):
        g, q = normalize(con, records.slice(start, chunk), "f.jsonl", cfg)
        good += g.to_pylist()
        bad += q.to_pylist()
    return good, bad


@pytest.mark.parametrize("case", CASES)
def test_fast_reader_gives_what_the_line_reader_gives(tmp_path, case):
    path = tmp_path / "f.jsonl"
    path.write_bytes(CASES[case].encode())
    assert rows_and_quarantine(path, True, 3) == rows_and_quarantine(path, False, 3)


def test_undecodable_bytes_fall_back_and_are_quarantined(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"prompt": "caf\xe9", "response": "r"}\n')
    good, bad = rows_and_quarantine(path, True, 10)
    assert len(good) == 1 and [(b["line"], b["reason"].split(" (")[0]) for b in bad] == [(2, "undecodable bytes")]
    assert (good, bad) == rows_and_quarantine(path, False, 10)


def load_step(path, chunk: int, monkeypatch=None):
    """The load step's chunks (key, rows, quarantine, rows_in); with `monkeypatch`, with every
    fast path turned off (the line reader alone)."""
    if monkeypatch is not None:
        monkeypatch.setattr(load, "read_normalized", lambda *a: None)
        monkeypatch.setattr(load, "read_parsed_records", lambda *a: None)
        monkeypatch.setattr(readers, "_jsonl_clean_lines", lambda *a: None)
    cfg = LoadConfig(name="l", kind="load", path=path.name, chunk_size=chunk, max_bad_fraction=1.0)
    ctx = Context(step="l", pipeline_dir=str(path.parent), output_dir=str(path.parent), seed=0)
    return [(c.key, c.rows.to_pylist(), c.quarantine.to_pylist(), c.rows_in) for c in chunks_of(cfg, {}, ctx)]


@pytest.mark.parametrize("case", CASES)
def test_the_load_step_gives_what_the_line_reader_alone_gives(tmp_path, monkeypatch, case):
    path = tmp_path / "f.jsonl"
    path.write_bytes(CASES[case].encode())
    fast = load_step(path, 3)
    with monkeypatch.context() as m:
        assert fast == load_step(path, 3, m)


@pytest.mark.parametrize("case, parsed", [
    ("clean", True), ("no final newline", True), ("crlf", True), ("leading space", True), ("converted values", True),
    ("blank line", False), ("whitespace-only line", False), ("invalid json", False), ("duplicate key", False),
    ("unconvertible value", False),
])
def test_which_files_the_reader_parses_in_one_pass(tmp_path, case, parsed):
    path = tmp_path / "f.jsonl"
    path.write_bytes(CASES[case].encode())
    cfg = LoadConfig(name="l", kind="load", path=str(path))
    records = read_parsed_records(str(path), cfg)
    con = duckdb.connect()
    rows = read_normalized(con, str(path), "f.jsonl", cfg)
    assert (records is not None) == parsed and (rows is not None) == parsed
    if parsed:
        lines = list(range(1, CASES[case].count("\n") + 1 + (not CASES[case].endswith("\n"))))
        assert records.column("origin_line").to_pylist() == lines
        # one query or two: the same rows and quarantine
        assert [t.to_pylist() for t in split_quarantine(rows)] == [t.to_pylist() for t in normalize(con, records, "f.jsonl", cfg)]


def test_a_record_key_named_like_the_readers_position_column_takes_the_line_reader(tmp_path, monkeypatch):
    """WITH ORDINALITY names the position `ordinality`: a kept field of that name is read line by line."""
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"prompt": "p?", "response": "r.", "ordinality": "first"}) + "\n")
    cfg = LoadConfig(name="l", kind="load", path=path.name, keep_fields=["ordinality"])
    assert read_normalized(duckdb.connect(), str(path), "f.jsonl", cfg) is None
    ctx = Context(step="l", pipeline_dir=str(tmp_path), output_dir=str(tmp_path), seed=0)
    (chunk,) = chunks_of(cfg, {}, ctx)
    assert chunk.rows.column("ordinality").to_pylist() == ["first"]
    assert chunk.rows.column("origin_line").to_pylist() == [1]


@pytest.mark.parametrize("seed", range(4))
def test_mixed_files_give_the_same_chunks_on_both_paths(tmp_path, monkeypatch, seed):
    """Files of good records, values that are not strings, strings that look like numbers or
    objects, blank lines and bad bytes (tests/steps/test_load.py's generator)."""
    from tests.steps.test_load import mixed_jsonl

    path = tmp_path / "f.jsonl"
    mixed_jsonl(path, seed)
    fast = load_step(path, 5)
    with monkeypatch.context() as m:
        assert fast == load_step(path, 5, m)


def test_strings_that_look_like_numbers_load_through_the_fast_path_as_strings(tmp_path, monkeypatch):
    """The reader turns 42 and "42" into the same text; such a file is checked line by line and
    the string loads while the number is quarantined."""
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"prompt": "42", "response": "true"}) + "\n"
                    + json.dumps({"prompt": 42, "response": True}) + "\n" + GOOD + "\n")
    assert read_parsed_records(str(path), LoadConfig(name="l", kind="load", path=str(path))) is not None
    chunks = load_step(path, 10)
    (_, rows, quarantine, rows_in), = chunks
    assert [r["messages"][0]["content"] for r in rows] == ["42", "q?"]
    assert [(q["line"], q["reason"]) for q in quarantine] == [(2, "prompt is a number, not a string")]
    with monkeypatch.context() as m:
        assert chunks == load_step(path, 10, m)


@pytest.mark.parametrize("content", [b"a\n", b"a", b"a\nb", b"a\nb\n", b"\n\n\n", b"x" * 5 + b"\n" * 3 + b"y"])
def test_lines_are_counted_as_the_fast_path_needs(tmp_path, monkeypatch, content):
    """A last line without its newline counts; blocks end anywhere (a tiny block size here)."""
    from datamix.steps import load

    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    expected = content.count(b"\n") + (not content.endswith(b"\n"))
    assert load._count_lines(str(path)) == expected
    monkeypatch.setattr(load, "_LINE_BLOCK", 2)
    assert load._count_lines(str(path)) == expected
