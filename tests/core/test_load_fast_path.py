"""Clean JSONL goes through DuckDB's reader; anything unusual falls back to the line reader.

Either way a file must give the same rows, ids, lines and quarantine as the line reader alone.
"""

from __future__ import annotations

import json

import duckdb
import pytest

from datamix.steps.load import LoadConfig, normalize, read_raw_records

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
