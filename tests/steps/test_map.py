"""map: columns from DuckDB expressions or a Python function, every row kept with its id."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pytest

from datamix.loop import chunks_of
from datamix.steps.base import BadInput, Context, InputTable, StepError
from datamix.steps.map import MapConfig
from tests.helpers import chat, cli, query, run_pipeline, store_of, write_jsonl, write_pipeline


def rows(n=5):
    table = pa.table({"sample_id": [f"s{i}" for i in range(n)],
                      "messages": [[{"role": "user", "content": "q" * (i + 1)}, {"role": "assistant", "content": "a" * i}]
                                   for i in range(n)], "score": [float(i) for i in range(n)]})
    return {"input": InputTable("src", lambda cols=None: table, n)}


def ctx(folder="."):
    return Context(step="m", pipeline_dir=str(folder), output_dir=".", seed=0)


def test_expressions_add_and_replace_columns_in_every_slice():
    cfg = MapConfig(name="m", kind="map", input="src", chunk_size=2,
                    columns={"answer_chars": "length(messages[-1].content)", "score": "score * 10"})
    chunks = chunks_of(cfg, rows(), ctx())
    assert [c.key for c in chunks] == ["rows-0-2", "rows-2-4", "rows-4-5"]
    out = pa.concat_tables([c.rows for c in chunks])
    assert out.column("sample_id").to_pylist() == [f"s{i}" for i in range(5)]
    assert out.column("answer_chars").to_pylist() == [0, 1, 2, 3, 4]
    assert out.column("score").to_pylist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert out.column("parent_ids").to_pylist() == [[f"s{i}"] for i in range(5)]  # lineage: the same ids


def test_a_function_beside_the_yaml(tmp_path):
    (tmp_path / "my_tags.py").write_text(
        "import pyarrow.compute as pc\n"
        "def add_tags(table):\n"
        "    return table.append_column('long', pc.greater(table.column('score'), 2))\n"
        "def drops(table):\n"
        "    return table.slice(1)\n")
    out = chunks_of(MapConfig(name="m", kind="map", input="src", function="my_tags:add_tags"), rows(), ctx(tmp_path))
    assert out[0].rows.column("long").to_pylist() == [False, False, False, True, True]
    with pytest.raises(StepError, match="same rows in the same order"):
        chunks_of(MapConfig(name="m", kind="map", input="src", function="my_tags:drops"), rows(), ctx(tmp_path))
    with pytest.raises(BadInput, match="cannot import 'nowhere'"):
        chunks_of(MapConfig(name="m", kind="map", input="src", function="nowhere:f"), rows(), ctx(tmp_path))


@pytest.mark.parametrize("options, message", [
    ({}, "give `columns:`"),
    ({"columns": {"x": "1"}, "function": "a:b"}, "one of them"),
    ({"columns": {"x": "length("}}, "invalid expression"),
    ({"columns": {"x": "1); DROP TABLE t; SELECT (1"}}, "one expression"),
    ({"columns": {"sample_id": "'x'"}}, "cannot be replaced"),
    ({"function": "../evil.py:f"}, "module:function"),
])
def test_bad_options_fail_validation(options, message):
    with pytest.raises(ValueError, match=message):
        MapConfig(name="m", kind="map", input="src", **options)


def test_in_a_pipeline_its_module_is_part_of_the_fingerprint(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(4)])
    (tmp_path / "tagger.py").write_text("import pyarrow as pa\ndef tag(t):\n    return t.append_column('tag', pa.array(['v1'] * t.num_rows))\n")
    steps = [{"name": "src", "kind": "load", "path": "in.jsonl"},
             {"name": "tagged", "kind": "map", "input": "src", "function": "tagger:tag"},
             {"name": "sized", "kind": "map", "input": "tagged", "columns": {"chars": "length(messages[1].content)"}}]
    pipeline = write_pipeline(tmp_path, steps, name="mp")
    assert run_pipeline(pipeline).ok
    store = store_of(pipeline)
    assert query(store, "SELECT DISTINCT tag FROM sized") == [("v1",)]
    assert query(store, "SELECT chars FROM sized ORDER BY chars") == [(len("Question 0?"),)] * 4
    # lineage walks through both maps to the file line
    sid = query(store, "SELECT sample_id FROM sized LIMIT 1")[0][0]
    chain = json.loads(cli("lineage", sid, "--store", store, "--format", "json").stdout)
    assert [r["step"] for r in chain] == ["sized", "tagged", "src"]
    # editing the function's module reruns the map that uses it
    time.sleep(0.01)
    (tmp_path / "tagger.py").write_text("import pyarrow as pa\ndef tag(t):\n    return t.append_column('tag', pa.array(['v2'] * t.num_rows))\n")
    os.utime(tmp_path / "tagger.py")
    plan = {e["name"]: e["action"] for e in json.loads(cli("plan", pipeline, "--format", "json").stdout)}
    assert plan == {"src": "skip", "tagged": "run", "sized": "run"}
    assert run_pipeline(pipeline).ok
    assert query(store, "SELECT DISTINCT tag FROM sized") == [("v2",)]


def test_an_expression_reads_no_file(tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("x\n1\n")
    cfg = MapConfig(name="m", kind="map", input="src", columns={"leak": f"(SELECT max(x) FROM read_csv('{secret}'))"})
    with pytest.raises(BadInput, match="an expression failed"):
        chunks_of(cfg, rows(), ctx())


def test_a_window_expression_keeps_the_rows_in_their_order():
    # a window function may hand DuckDB's rows back in another order; the slice's order stands
    cfg = MapConfig(name="m", kind="map", input="src", chunk_size=5,
                    columns={"rank": "row_number() OVER (ORDER BY length(messages[-1].content) DESC)",
                             "score": "-score"})
    out = chunks_of(cfg, rows(), ctx())[0].rows
    assert out.column_names == ["sample_id", "messages", "score", "rank", "parent_ids"]
    assert out.column("sample_id").to_pylist() == [f"s{i}" for i in range(5)]
    assert out.column("rank").to_pylist() == [5, 4, 3, 2, 1]
    assert out.column("score").to_pylist() == [0.0, -1.0, -2.0, -3.0, -4.0]
