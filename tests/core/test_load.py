"""load: formats, record shapes, origins, globs and folders, quarantine and max_bad_fraction."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .helpers import chat, cli, query, run_pipeline, store_of, write_jsonl, write_pipeline

U, A = "user", "assistant"


def load_one(tmp_path, **step):
    pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", **step}])
    result = run_pipeline(pipeline)
    assert result.ok, result.error
    store = store_of(pipeline)
    rows = query(store, "SELECT messages, origin_file, origin_line FROM src ORDER BY origin_file, origin_line")
    return store, [(m, f, line) for m, f, line in rows]


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_openai_messages_jsonl_keeps_file_and_line(tmp_path):
    (tmp_path / "d").mkdir()
    # a blank line is not a record, but line numbers stay those of the file
    (tmp_path / "d" / "a.jsonl").write_text(
        json.dumps(chat("Hi there?", "Hello!", system="Be brief.")) + "\n\n" + json.dumps(chat("Q2?", "A2.")) + "\n")
    _, rows = load_one(tmp_path, path="d/a.jsonl")
    assert rows == [
        (msgs(("system", "Be brief."), (U, "Hi there?"), (A, "Hello!")), "d/a.jsonl", 1),
        (msgs((U, "Q2?"), (A, "A2.")), "d/a.jsonl", 3),
    ]


def test_alpaca_with_and_without_input(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a prime.", "input": "", "output": "Seven."},
    ])
    _, rows = load_one(tmp_path, path="a.jsonl")
    assert [r[0] for r in rows] == [
        msgs((U, "Translate to French.\n\nGood morning"), (A, "Bonjour")),
        msgs((U, "Name a prime."), (A, "Seven.")),
    ]


def test_sharegpt_roles_are_mapped(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [{"conversations": [
        {"from": "system", "value": "You help."}, {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"}, {"from": "human", "value": "And 3+3?"}, {"from": "gpt", "value": "6"}]}])
    _, rows = load_one(tmp_path, path="s.jsonl")
    assert rows[0][0] == msgs(("system", "You help."), (U, "2+2?"), (A, "4"), (U, "And 3+3?"), (A, "6"))


def test_prompt_response_columns_named_in_config_with_system_and_kept_fields(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"q": "Why?", "a": "Because.", "sys": "Be terse.", "id": 17, "topic": "x"}])
    pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "p.jsonl", "prompt_field": "q",
                                          "response_field": "a", "system_field": "sys", "keep_fields": ["id", "topic"]}])
    assert run_pipeline(pipeline).ok
    rows = query(store_of(pipeline), "SELECT messages, id, topic FROM src")
    assert rows == [(msgs(("system", "Be terse."), (U, "Why?"), (A, "Because.")), "17", "x")]


def test_json_array_parquet_and_csv_with_row_origins(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.json").write_text(json.dumps([chat("J1?", "j1"), chat("J2?", "j2")]))
    pq.write_table(pa.table({"prompt": ["P1?", "P2?", "P3?"], "response": ["p1", "p2", "p3"]}), data / "b.parquet")
    (data / "c.csv").write_text('prompt,response\n"C1, with comma?",c1\nC2?,c2\n')
    (data / "notes.txt").write_text("not data: ignored when loading a folder")
    store, rows = load_one(tmp_path, path="data")
    assert [(r[0][0]["content"], r[1], r[2]) for r in rows] == [
        ("J1?", "data/a.json", 1), ("J2?", "data/a.json", 2),
        ("P1?", "data/b.parquet", 1), ("P2?", "data/b.parquet", 2), ("P3?", "data/b.parquet", 3),
        ("C1, with comma?", "data/c.csv", 2), ("C2?", "data/c.csv", 3),  # CSV lines: the header is line 1
    ]
    assert rows[5][0] == msgs((U, "C1, with comma?"), (A, "c1"))


def test_glob_and_nested_folder(tmp_path):
    write_jsonl(tmp_path / "in" / "x-1.jsonl", [chat("one?", "1")])
    write_jsonl(tmp_path / "in" / "x-2.jsonl", [chat("two?", "2")])
    write_jsonl(tmp_path / "in" / "y.jsonl", [chat("other?", "3")])
    write_jsonl(tmp_path / "in" / "sub" / "z.jsonl", [chat("deep?", "4")])
    _, rows = load_one(tmp_path, path="in/x-*.jsonl")
    assert [(r[1], r[2]) for r in rows] == [("in/x-1.jsonl", 1), ("in/x-2.jsonl", 1)]
    _, rows = load_one(tmp_path / "in" / "..", path="in")
    assert sorted(r[1] for r in rows) == ["in/sub/z.jsonl", "in/x-1.jsonl", "in/x-2.jsonl", "in/y.jsonl"]


def test_format_given_explicitly_for_an_unknown_extension(tmp_path):
    write_jsonl(tmp_path / "records.txt", [chat("q?", "a")])
    _, rows = load_one(tmp_path, path="records.txt", format="jsonl")
    assert len(rows) == 1


def test_limit_reads_at_most_n_rows_per_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [chat(f"q{i}?", "a") for i in range(5)])
    _, rows = load_one(tmp_path, path="a.jsonl", limit=2)
    assert [r[2] for r in rows] == [1, 2]


BAD_LINES = [
    (chat("good one?", "fine"), None),
    ('{"messages": [{"role": "user", "content": "unterminated"', "invalid JSON"),
    ({"text": "no known shape here"}, "missing fields"),
    ({"messages": [{"role": "wizard", "content": "abracadabra"}, {"role": "assistant", "content": "x"}]},
     "unknown role: wizard"),
    ({"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "x"}]},
     "empty content in a user message"),
    ({"instruction": "no output field"}, "missing field: output"),
    (chat("another good one?", "fine too"), None),
]


def write_bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    with open(path, "wb") as f:
        for rec, _ in BAD_LINES:
            f.write((rec if isinstance(rec, str) else json.dumps(rec)).encode() + b"\n")
        f.write(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')  # latin-1, not UTF-8: line 8
    return path


def test_each_kind_of_bad_row_is_quarantined_with_file_line_and_reason(tmp_path):
    write_bad_file(tmp_path)
    store, rows = load_one(tmp_path, path="bad.jsonl", max_bad_fraction=0.9)
    assert [r[2] for r in rows] == [1, 7]
    quarantine = query(store, "SELECT file, line, reason, raw FROM dm.quarantine WHERE step = 'src' ORDER BY line")
    expected = [(i + 1, why) for i, (_, why) in enumerate(BAD_LINES) if why] + [(8, "undecodable bytes")]
    assert [(q[1]) for q in quarantine] == [e[0] for e in expected]
    for (file, line, reason, raw), (_, why) in zip(quarantine, expected):
        assert file == "bad.jsonl"
        assert reason.startswith(why), (line, reason)
        assert raw  # the raw text is kept for inspection
    status = json.loads(cli("status", "--store", store, "--format", "json").stdout)
    assert status[0]["quarantined"] == 6


def test_bad_rows_over_the_limit_exit_2_and_nothing_is_lost(tmp_path):
    write_bad_file(tmp_path)
    pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "bad.jsonl"}])
    result = cli("run", pipeline)
    assert result.exit_code == 2
    assert "6 of 8 input rows are malformed" in result.stderr
    assert "max_bad_fraction" in result.stderr and "dm.quarantine" in result.stderr
    store = store_of(pipeline)
    assert query(store, "SELECT count(*) FROM dm.quarantine WHERE step = 'src' AND file = 'bad.jsonl'") == [(6,)]
    assert query(store, "SELECT state FROM dm.steps WHERE name = 'src'") == [("failed",)]


def test_bad_fraction_under_the_limit_passes(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [chat(f"q{i}?", "a") for i in range(9)] + ["not json"])
    _, rows = load_one(tmp_path, path="a.jsonl", max_bad_fraction=0.1)
    assert len(rows) == 9


def test_path_matching_nothing_is_a_spec_error(tmp_path):
    pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "nowhere/*.jsonl"}])
    result = cli("run", pipeline)
    assert result.exit_code == 2
    assert "steps[0] (name: src).path: nowhere/*.jsonl does not exist" in result.stderr


def test_sample_ids_depend_on_origin_not_on_run(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [chat("same?", "same")] * 2)
    store, _ = load_one(tmp_path, path="a.jsonl")
    ids = query(store, "SELECT sample_id FROM src ORDER BY origin_line")
    assert len({i for (i,) in ids}) == 2  # identical content on two lines: two samples
    store.unlink()
    store2, _ = load_one(tmp_path, path="a.jsonl")
    assert query(store2, "SELECT sample_id FROM src ORDER BY origin_line") == ids


def test_csv_origin_line_counts_lines_inside_quoted_fields(tmp_path):
    (tmp_path / "c.csv").write_text('prompt,response\n"two\nlines?",x\nnext?,y\n')
    _, rows = load_one(tmp_path, path="c.csv")
    assert [(r[0][0]["content"], r[2]) for r in rows] == [("two\nlines?", 2), ("next?", 4)]


def test_crlf_line_endings(tmp_path):
    (tmp_path / "w.jsonl").write_bytes(b"\r\n".join(json.dumps(chat(f"q{i}?", "a")).encode() for i in range(2)) + b"\r\n")
    _, rows = load_one(tmp_path, path="w.jsonl")
    assert [(r[0][0]["content"], r[2]) for r in rows] == [("q0?", 1), ("q1?", 2)]
