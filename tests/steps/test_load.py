"""load: formats, record shapes, origins, globs and folders, quarantine and max_bad_fraction."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import chat, cli, query, run_pipeline, store_of, write_jsonl, write_pipeline

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
    assert rows == [(msgs((U, "q?"), (A, "a")), "records.txt", 1)]


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


def test_a_record_with_a_key_twice_is_quarantined_not_loaded_with_one_of_its_values(tmp_path):
    """JSON parsers keep one value of a repeated key; the other would be lost without a word."""
    lines = [json.dumps(chat("first?", "fine")),
             '{"prompt": "which one?", "prompt": "this one?", "response": "either"}',
             '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "messages": []}',
             json.dumps(chat("last?", "fine"))]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    store, rows = load_one(tmp_path, path="d.jsonl", max_bad_fraction=0.5)
    assert [r[2] for r in rows] == [1, 4]
    assert query(store, "SELECT line, reason, raw FROM dm.quarantine ORDER BY line") == [
        (2, "duplicate key: prompt", lines[1]), (3, "duplicate key: messages", lines[2])]


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
    bad_lines = [i + 1 for i, (_, why) in enumerate(BAD_LINES) if why] + [8]
    assert query(store, "SELECT line FROM dm.quarantine WHERE step = 'src' AND file = 'bad.jsonl' ORDER BY line") == [
        (line,) for line in bad_lines]
    assert query(store, "SELECT state FROM dm.steps WHERE name = 'src'") == [("failed",)]


def test_bad_fraction_under_the_limit_passes(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [chat(f"q{i}?", "a") for i in range(9)] + ["not json"])
    _, rows = load_one(tmp_path, path="a.jsonl", max_bad_fraction=0.1)
    assert rows == [(msgs((U, f"q{i}?"), (A, "a")), "a.jsonl", i + 1) for i in range(9)]


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


def test_limit_is_a_total_across_files(tmp_path):
    """limit: counts records over all files, in path order: 3 + 2 of 3 + none of the third."""
    for name in ("a", "b", "c"):
        write_jsonl(tmp_path / "d" / f"{name}.jsonl", [chat(f"{name}{i}?", "a") for i in range(3)])
    _, rows = load_one(tmp_path, path="d", limit=5)
    assert [(r[1], r[2]) for r in rows] == [("d/a.jsonl", 1), ("d/a.jsonl", 2), ("d/a.jsonl", 3),
                                            ("d/b.jsonl", 1), ("d/b.jsonl", 2)]


def test_limit_counts_quarantined_records_too_in_every_format(tmp_path):
    (tmp_path / "c.csv").write_text("prompt,response\nq1?,a\nq2?,\nq3?,c\n")
    (tmp_path / "j.json").write_text(json.dumps([{"prompt": "q1?", "response": 5}, {"prompt": "q2?", "response": "b"}]))
    pq.write_table(pa.table({"prompt": ["q1?", "q2?", "q3?"], "response": ["a", "b", "c"]}), tmp_path / "p.parquet")
    for path, lines in (("c.csv", [2]), ("j.json", [2]), ("p.parquet", [1, 2])):
        _, rows = load_one(tmp_path, path=path, limit=2, max_bad_fraction=1.0)
        assert [r[2] for r in rows] == lines, path
        (tmp_path / ".datamix" / "t.duckdb").unlink()


# ---- every record is loaded exactly as given or quarantined with file, line and reason ----------------
#
# Files mixing good and bad records in every format, drawn from seeded generators. For each file the
# test knows which records there are (their lines), what each good one must load as, and why each bad
# one must be refused; blank lines are not records. Then: good + quarantined = records, each exactly once.

# strings that look like other JSON values but are strings: they must load as they are
TRICKY = ["42", "-3.5e2", "true", "false", "null", "[1, 2]", '{"a":1}', "{x}", "-", "1. First, boil water.",
          'she said "hi"\\', "tab\there", "new\nline", "café ☕ 日本", "   padded   ", "caf\u00e9 \U0001F600"]


def _text(rng) -> str:
    words = ["river", "bridge", "Q?", "a,b", 'quote"d', "line\nbreak", "ünï", "emoji 🎉", "back\\slash", "x"]
    return rng.choice(TRICKY) if rng.random() < 0.3 else " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))


def _good_record(rng):
    """(record, the messages it must load as)."""
    p, r = _text(rng), _text(rng)
    kind = rng.choice(["messages", "prompt_response", "alpaca", "sharegpt"])
    if kind == "messages":
        m = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        return {"messages": m}, m
    if kind == "prompt_response":
        return {"prompt": p, "response": r, "id": rng.randint(0, 9)}, msgs((U, p), (A, r))
    if kind == "alpaca":
        extra = rng.choice(["", "more context", "7"])
        return ({"instruction": p, "input": extra, "output": r},
                msgs((U, p + ("\n\n" + extra if extra.strip() else "")), (A, r)))
    return {"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": r}]}, msgs((U, p), (A, r))


NOT_STRINGS = [(5, "a number"), (-1.5, "a number"), (12345678901234567890, "a number"), (True, "a boolean"),
               (False, "a boolean"), ({"text": "hi"}, "an object"), ([{"type": "text", "text": "hi"}], "a list"),
               ([], "a list"), ({}, "an object")]


def _bad_record(rng):
    """(record as a dict or raw text, the start of the reason it must be quarantined with)."""
    value, what = rng.choice(NOT_STRINGS)
    return rng.choice([
        ({"messages": [{"role": "user", "content": value}, {"role": "assistant", "content": "ok"}]},
         f"content of message 1 is {what}, not a string"),
        ({"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": value}]},
         f"content of message 2 is {what}, not a string"),
        ({"messages": [{"role": value, "content": "ok"}]}, f"role of message 1 is {what}"),
        ({"prompt": "ok?", "response": value}, f"response is {what}"),
        ({"prompt": value, "response": "ok"}, f"prompt is {what}"),
        ({"instruction": "ok", "input": value, "output": "fine"}, f"input is {what}"),
        ({"instruction": "ok", "output": value}, f"output is {what}"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": value}]},
         f"value of turn 2 is {what}"),
        ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},
         "empty content in a user message"),
        ({"messages": [{"role": "robot", "content": "beep"}]}, "unknown role: robot"),
        ({"text": "no shape"}, "missing fields"),
        ('{"prompt": "cut off', "invalid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"just a string"', "not a JSON object"),
        ('{"prompt": "one", "prompt": "two", "response": "ok"}', "duplicate key: prompt"),
    ])


def _mixed_records(seed: int, n: int = 40):
    """[(good: bool, record, messages or reason)] in file order."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.6:
            rec, m = _good_record(rng)
            out.append((True, rec, m))
        else:
            rec, why = _bad_record(rng)
            out.append((False, rec, why))
    return out


def mixed_jsonl(path, seed: int) -> dict:
    """A JSONL file of mixed records, blank lines and a line that is not UTF-8; returns
    {line: messages (good) or reason (bad)}."""
    import random

    rng = random.Random(seed + 1000)
    expected, line = {}, 0
    with open(path, "wb") as f:
        for good, rec, want in _mixed_records(seed):
            if rng.random() < 0.1:
                f.write(rng.choice([b"\n", b"   \n"]))
                line += 1
            if rng.random() < 0.05:
                f.write(b'{"prompt": "caf\xe9?", "response": "latin-1"}\n')
                line += 1
                expected[line] = "undecodable bytes"
            text = rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=rng.random() < 0.5)
            f.write(text.encode() + b"\n")
            line += 1
            expected[line] = want
    return expected


def _mixed_json(path, seed: int) -> dict:
    records = [(good, rec, want) for good, rec, want in _mixed_records(seed) if not isinstance(rec, str)]
    records.append((False, [1, 2], "not a JSON object"))
    path.write_text(json.dumps([rec for _, rec, _ in records]))
    return {i + 1: want for i, (_, _, want) in enumerate(records)}


def _mixed_csv(path, seed: int, encoding: str = "utf-8") -> dict:
    """prompt,response records: good ones (commas, quotes, newlines, JSON-looking text kept as
    text), wrong field counts, broken quoting, empty responses, bytes not in the encoding."""
    import csv
    import io
    import random

    rng = random.Random(seed)
    expected, chunks, line = {}, [], 1

    def add(text: str, want):
        nonlocal line
        chunks.append(text.encode(encoding, errors="strict") if isinstance(text, str) else text)
        expected[line + 1] = want
        line += text.count("\n") if isinstance(text, str) else text.count(b"\n")

    chunks.append("prompt,response\n".encode(encoding))
    for _ in range(40):
        roll = rng.random()
        if roll < 0.08:
            chunks.append(b"\n")
            line += 1
            continue
        p, r = _text(rng), _text(rng)
        if encoding != "utf-8":
            p, r = p.encode(encoding, "replace").decode(encoding), r.encode(encoding, "replace").decode(encoding)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([p, r])
        if roll < 0.6:
            add(buf.getvalue(), msgs((U, p), (A, r)))
        elif roll < 0.68:
            add("a,b,c\n", "3 fields where the header has 2")
        elif roll < 0.76:
            add('"closed"then-more,x\n', "broken CSV record")
        elif roll < 0.80:
            add("only one field\n", "1 field where the header has 2")
        elif roll < 0.84:
            add("q?,\n", "empty content in a assistant")
        elif encoding == "utf-8":
            add(b'caf\xe9?,latin-1 bytes\n', "undecodable bytes (not utf-8)")
        else:
            add(buf.getvalue(), msgs((U, p), (A, r)))
    path.write_bytes(b"".join(chunks))
    return expected


def _mixed_parquet(path, seed: int) -> dict:
    import random

    rng = random.Random(seed)
    prompts, responses, expected = [], [], {}
    for i in range(30):
        p, r = _text(rng), rng.choice([_text(rng), _text(rng), None, "", " "])
        prompts.append(p)
        responses.append(r)
        expected[i + 1] = (msgs((U, p), (A, r)) if r and r.strip() else
                           "missing field: response" if r is None else "empty content in a assistant")
    pq.write_table(pa.table({"prompt": prompts, "response": responses}), path)
    return expected


def load_records(path, **options):
    """The load step's good rows {line: messages} and quarantine [(line, reason)] for one file."""
    from datamix.loop import chunks_of
    from datamix.steps import load
    from datamix.steps.base import Context

    cfg = load.LoadConfig(name="l", kind="load", path=path.name, max_bad_fraction=1.0, chunk_size=7, **options)
    ctx = Context(step="l", pipeline_dir=str(path.parent), output_dir=str(path.parent), seed=0)
    good, bad = {}, []
    for chunk in chunks_of(cfg, {}, ctx):
        assert chunk.rows_in == chunk.rows.num_rows + chunk.quarantine.num_rows or path.suffix == ".jsonl"
        for row in chunk.rows.to_pylist():
            assert row["origin_line"] not in good
            good[row["origin_line"]] = row["messages"]
        for q in chunk.quarantine.to_pylist():
            assert q["file"] == path.name and q["raw"]
            bad.append((q["line"], q["reason"]))
    return good, bad


def assert_every_record_accounted_for(expected: dict, good: dict, bad: list):
    bad_lines = [line for line, _ in bad]
    assert len(bad_lines) == len(set(bad_lines)) and not set(bad_lines) & set(good)
    assert sorted([*good, *bad_lines]) == sorted(expected)  # good + quarantined = records, each once
    for line, messages in good.items():
        assert messages == expected[line], (line, messages, expected[line])
    for line, reason in bad:
        want = expected[line]
        assert isinstance(want, str), (line, reason, "a good record was quarantined")
        assert reason.startswith(want), (line, reason, want)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_record_is_loaded_as_given_or_quarantined(tmp_path, fmt, seed):
    path = tmp_path / f"mixed.{fmt}"
    expected = {"jsonl": mixed_jsonl, "json": _mixed_json, "csv": _mixed_csv, "parquet": _mixed_parquet}[fmt](path, seed)
    good, bad = load_records(path)
    assert good and bad
    assert_every_record_accounted_for(expected, good, bad)


def test_a_latin1_csv_loads_exactly_with_its_encoding_and_is_quarantined_without(tmp_path):
    path = tmp_path / "latin.csv"
    expected = _mixed_csv(path, seed=3, encoding="latin-1")
    assert_every_record_accounted_for(expected, *load_records(path, encoding="latin-1"))
    good, bad = load_records(path)  # read as UTF-8: rows with é are refused, named, never lost
    non_ascii = {line for line, want in expected.items() if not isinstance(want, str)
                 and any(ord(c) > 127 for m in want for c in m["content"])}
    assert non_ascii and non_ascii == {line for line, reason in bad if reason.startswith("undecodable bytes")}
    assert len(good) + len(bad) == len(expected)


def test_csv_problems_of_the_whole_file_are_named(tmp_path):
    from datamix.steps.base import BadInput

    (tmp_path / "dup.csv").write_text("prompt,prompt,response\na,b,c\n")
    with pytest.raises(BadInput, match="names the column 'prompt' twice"):
        load_records(tmp_path / "dup.csv")
    (tmp_path / "semi.csv").write_text("prompt;response\na;b\n")
    with pytest.raises(BadInput, match="set the step's delimiter"):
        load_records(tmp_path / "semi.csv")
    good, bad = load_records(tmp_path / "semi.csv", delimiter=";")
    assert good == {2: msgs((U, "a"), (A, "b"))} and bad == []


def test_an_unclosed_quote_is_one_quarantined_record_to_the_end(tmp_path):
    (tmp_path / "q.csv").write_text('prompt,response\ngood?,yes\n"never closed,x\nswallowed?,y\n')
    good, bad = load_records(tmp_path / "q.csv")
    assert good == {2: msgs((U, "good?"), (A, "yes"))}
    assert [line for line, _ in bad] == [3] and "broken CSV record" in bad[0][1]


def test_a_mixed_file_through_the_store_counts_good_plus_quarantined(tmp_path):
    expected = mixed_jsonl(tmp_path / "m.jsonl", seed=11)
    store, rows = load_one(tmp_path, path="m.jsonl", max_bad_fraction=1.0)
    n_bad = query(store, "SELECT count(*) FROM dm.quarantine WHERE step = 'src'")[0][0]
    assert len(rows) + n_bad == len(expected)
    assert {line: m for m, _, line in rows} == {k: v for k, v in expected.items() if not isinstance(v, str)}


def test_parquet_columns_that_are_not_text_are_quarantined(tmp_path):
    pq.write_table(pa.table({"prompt": ["q1?", "q2?"], "response": [1, 2]}), tmp_path / "n.parquet")
    chats = pa.array([[{"role": "user", "content": 7}], [{"role": "user", "content": 8}]])
    pq.write_table(pa.table({"messages": chats}), tmp_path / "m.parquet")
    good, bad = load_records(tmp_path / "n.parquet")
    assert good == {} and bad == [(1, "response is a number, not a string"), (2, "response is a number, not a string")]
    good, bad = load_records(tmp_path / "m.parquet")
    assert good == {} and [reason for _, reason in bad] == ["content of message 1 is a number, not a string"] * 2


@pytest.mark.parametrize("content", ["5", '"text"', "null"])
def test_a_json_file_that_holds_no_records_is_named(tmp_path, content):
    from datamix.steps.base import BadInput

    (tmp_path / "x.json").write_text(content)
    with pytest.raises(BadInput, match="not records: write a JSON array of objects"):
        load_records(tmp_path / "x.json")


def test_an_unknown_encoding_fails_validate(tmp_path):
    (tmp_path / "c.csv").write_text("prompt,response\nq?,a\n")
    pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "c.csv", "encoding": "klingon-8"}])
    result = cli("validate", pipeline)
    assert result.exit_code == 2 and "unknown encoding 'klingon-8'" in result.stderr, result.output
