"""Under `executor: ray` the rows the runner's own loop commits (a load's, a generate's) are Parquet
parts beside the store, numbered in commit order and read through a view, as the rows of the
steps Ray's tasks run are: the same rows, order and types as the local executor's table, a crash
loses and duplicates nothing, and a partial step in the other form starts over. None of this
starts Ray: these steps run in the driver."""

from __future__ import annotations

import json

import pytest

from datamix import runner, spec
from datamix.outputs import read_output
from datamix.store import Store
from tests.helpers import chat, cli, query, write_jsonl, write_pipeline

pytest.importorskip("ray")  # `executor: ray` is checked at validate time: ray must be installed

RAY = {"type": "ray", "address": "local"}


def load_pipeline(folder, executor=None, name="x"):
    """A load of 7 chats in units of 2 rows: four chunks."""
    if not (folder / "d.jsonl").exists():
        write_jsonl(folder / "d.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(7)])
    steps = [{"name": "src", "kind": "load", "path": "d.jsonl", "chunk_size": 2}]
    return write_pipeline(folder, steps, name=name, **({"executor": executor} if executor else {}))


def rows_of(store_path, step="src", leave_out=()):
    s = Store(str(store_path), read_only=True)
    try:
        table = read_output(s, step).drop_columns(list(leave_out))
        return table.schema, table.to_pylist()
    finally:
        s.close()


def run(path):
    p = spec.load(str(path))
    return runner.run(p, p.store_path(), log=lambda m: None)


def test_a_load_under_ray_writes_numbered_parts_that_read_as_the_local_table(tmp_path):
    local, on_ray = run(load_pipeline(tmp_path)), run(load_pipeline(tmp_path, RAY, name="r"))
    assert local.ok and on_ray.ok
    store = tmp_path / ".datamix" / "r.duckdb"
    assert rows_of(store) == rows_of(tmp_path / ".datamix" / "x.duckdb")  # rows, order and types
    view = query(store, "SELECT sql FROM duckdb_views() WHERE view_name = 'src'")
    assert view and "read_parquet" in view[0][0]
    parts = tmp_path / ".datamix" / "outputs" / "src" / "parts"
    assert sorted(p.name for p in parts.iterdir()) == [f"part-{n}.parquet" for n in range(4)]
    markers = query(store, "SELECT rows_out, files FROM dm.chunks WHERE step = 'src' ORDER BY committed_at")
    assert [(n, [f.rsplit("/", 1)[-1] for f in json.loads(files)]) for n, files in markers] == [
        (2, ["part-0.parquet"]), (2, ["part-1.parquet"]), (2, ["part-2.parquet"]), (1, ["part-3.parquet"])]
    out = cli("sql", "SELECT count(*) FROM src", "--store", store, "--format", "csv")
    assert out.exit_code == 0 and out.output.splitlines()[-1] == "7", out.output


def test_a_load_under_ray_that_crashed_resumes_numbering_its_parts_on(tmp_path, monkeypatch):
    """The third chunk's commit fails (the disk, a kill): the two before it are in the store and
    in the view; the rerun commits the other two as parts 2 and 3, and nothing is doubled."""
    assert run(load_pipeline(tmp_path)).ok
    path = load_pipeline(tmp_path, RAY, name="r")
    real, calls = Store.commit_chunk, []

    def fail_third(self, *a, **k):
        calls.append(k.get("rows_file"))
        if len(calls) == 3:
            raise RuntimeError("disk gone")
        return real(self, *a, **k)

    monkeypatch.setattr(Store, "commit_chunk", fail_third)
    assert not run(path).ok
    monkeypatch.setattr(Store, "commit_chunk", real)
    store = tmp_path / ".datamix" / "r.duckdb"
    assert query(store, "SELECT state, rows_out FROM dm.steps WHERE name = 'src'") == [("failed", 4)]
    assert query(store, "SELECT count(*) FROM src") == [(4,)]  # the view holds the committed parts
    log: list = []
    p = spec.load(str(path))
    assert runner.run(p, p.store_path(), log=log.append).ok
    assert "resume src (load)" in log, log
    parts = tmp_path / ".datamix" / "outputs" / "src" / "parts"
    assert sorted(p.name for p in parts.iterdir()) == [f"part-{n}.parquet" for n in range(4)]
    assert rows_of(store) == rows_of(tmp_path / ".datamix" / "x.duckdb")
    assert query(store, "SELECT count(*), count(DISTINCT key) FROM dm.chunks WHERE step = 'src'") == [(4, 4)]


@pytest.mark.parametrize("first, then", [(None, RAY), (RAY, None)])
def test_a_partial_load_in_the_other_executors_form_starts_over(tmp_path, monkeypatch, first, then):
    real = Store.commit_chunk
    calls = []

    def fail_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk gone")
        return real(self, *a, **k)

    monkeypatch.setattr(Store, "commit_chunk", fail_second)
    assert not run(load_pipeline(tmp_path, first)).ok
    monkeypatch.setattr(Store, "commit_chunk", real)
    p = spec.load(str(load_pipeline(tmp_path, then)))
    store = Store(p.store_path())
    try:
        (entry,) = runner.plan(p, store)
        assert entry.action == "run" and "starts over" in entry.reason, entry
    finally:
        store.close()
    assert runner.run(p, p.store_path(), log=lambda m: None).ok
    assert len(rows_of(tmp_path / ".datamix" / "x.duckdb")[1]) == 7


GENERATE = [
    {"name": "instructions", "kind": "load", "path": "d.jsonl"},
    {"name": "answers", "kind": "generate", "input": "instructions", "models": ["m"], "n": 2, "chunk_size": 3,
     "sampling": {"temperature": 1.0, "max_tokens": 4}},
]


def test_a_generate_under_ray_commits_its_answers_as_parts_in_the_local_order(tmp_path):
    """A step that calls models keeps its loop in the driver; its rows are parts all the same."""
    from datamix.models.tiny import build_tiny_model

    model = build_tiny_model(str(tmp_path / "tiny"), arch="llama", chat_template="chatml")
    write_jsonl(tmp_path / "d.jsonl", [chat(f"Say {i}.", "-") for i in range(5)])
    models = {"m": {"backend": "transformers", "path": model, "batch_size": 4}}
    for name, executor in (("x", None), ("r", RAY)):
        top = {"seed": 3, "models": models, **({"executor": executor} if executor else {})}
        assert run(write_pipeline(tmp_path, GENERATE, name=name, **top)).ok
    store = tmp_path / ".datamix" / "r.duckdb"
    timing = ["latency_s"]  # each run's own
    assert rows_of(store, "answers", timing) == rows_of(tmp_path / ".datamix" / "x.duckdb", "answers", timing)
    parts = tmp_path / ".datamix" / "outputs" / "answers" / "parts"
    assert sorted(p.name for p in parts.iterdir()) == [f"part-{n}.parquet" for n in range(2)]  # 5 instructions in 3s
    assert query(store, "SELECT count(*) FROM dm.edges WHERE step = 'answers'") == [(10,)]
