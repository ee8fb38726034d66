"""export: JSONL and Parquet files that `datasets.load_dataset("json"|"parquet")` reads, manifest, sample ids.

`datasets` is not a dependency; its json/parquet loaders are pyarrow's readers, so the
files are checked with pyarrow (and polars): one record per line, `messages` a list
of {role, content}.
"""

from __future__ import annotations

import json

import polars as pl
import pyarrow.json as pj
import pyarrow.parquet as pq

from tests.helpers import cli, query, run_pipeline, store_of, write_pipeline


def exported(core_pipeline, **changes):
    import yaml

    spec = yaml.safe_load(core_pipeline.read_text())
    spec["steps"][-1].update(changes)
    core_pipeline.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run_pipeline(core_pipeline)
    assert result.ok, result.error
    return store_of(core_pipeline), core_pipeline.parent / "out"


def check_records(records: list[dict], store) -> None:
    mix = {sid: (msgs, src) for sid, msgs, src in query(store, "SELECT sample_id, messages, source FROM mix")}
    assert len(records) == len(mix) == 20
    for r in records:
        assert set(r) >= {"sample_id", "messages", "source"}
        assert [set(m) for m in r["messages"]] == [{"role", "content"}] * len(r["messages"])
        assert (r["messages"], r["source"]) == mix[r["sample_id"]]


def test_jsonl_is_one_record_per_line_readable_by_pyarrow_and_polars(core_pipeline):
    store, out = exported(core_pipeline)
    lines = (out / "data.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    check_records(records, store)
    table = pj.read_json(out / "data.jsonl")  # what load_dataset("json") uses
    assert table.num_rows == 20
    assert table.schema.field("messages").type.value_type.names == ["role", "content"]
    assert pl.read_ndjson(out / "data.jsonl")["sample_id"].to_list() == [r["sample_id"] for r in records]


def test_parquet_readable_with_messages_as_list_of_structs(core_pipeline):
    store, out = exported(core_pipeline, format="parquet", fields=["est_tokens"])
    table = pq.read_table(out / "data.parquet")
    assert table.column_names == ["sample_id", "messages", "source", "est_tokens"]
    check_records(table.to_pylist(), store)
    assert pl.read_parquet(out / "data.parquet").height == 20


def test_manifest_counts_per_source_and_sample_ids_file(core_pipeline):
    store, out = exported(core_pipeline)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 20
    assert manifest["samples_per_source"] == {"domain": 8, "general": 12}
    assert manifest["files"] == ["data.jsonl"] and manifest["input"] == "mix"
    ids = (out / manifest["sample_ids_file"]).read_text().splitlines()
    in_file = [json.loads(line)["sample_id"] for line in (out / "data.jsonl").read_text().splitlines()]
    assert ids == in_file
    assert not (out / "manifest.json.tmp").exists()


def test_export_table_records_file_and_row_of_every_sample(core_pipeline):
    store, out = exported(core_pipeline)
    in_file = [json.loads(line)["sample_id"] for line in (out / "data.jsonl").read_text().splitlines()]
    rows = query(store, "SELECT sample_id, file, row FROM export ORDER BY row")
    assert rows == [(sid, "data.jsonl", i + 1) for i, sid in enumerate(in_file)]
    # every file the step wrote is recorded: a rerun removes them, a deleted one reruns the step
    assert query(store, "SELECT files FROM dm.chunks WHERE step = 'export'")[0][0] == json.dumps(
        [str(out / "data.jsonl"), str(out / "manifest.json"), str(out / "sample_ids.txt")])


def test_export_default_folder_is_beside_the_store(core_pipeline):
    import yaml

    spec = yaml.safe_load(core_pipeline.read_text())
    del spec["steps"][-1]["path"]
    core_pipeline.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert run_pipeline(core_pipeline).ok
    assert (core_pipeline.parent / ".datamix" / "outputs" / "export" / "data.jsonl").exists()


def test_unknown_field_exits_2_naming_the_columns(core_pipeline):
    import yaml

    spec = yaml.safe_load(core_pipeline.read_text())
    spec["steps"][-1]["fields"] = ["nope"]
    core_pipeline.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = cli("run", core_pipeline)
    assert result.exit_code == 2
    # found by validation, before any step runs
    assert "input 'mix' has no column 'nope'" in result.stderr and "est_tokens" in result.stderr


def test_export_of_an_unmixed_step_has_null_source(tmp_path):
    from tests.helpers import chat, write_jsonl

    write_jsonl(tmp_path / "a.jsonl", [chat("q?", "a"), chat("r?", "b")])
    pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "a.jsonl"},
                                         {"name": "out", "kind": "export", "input": "src", "path": "o"}])
    assert run_pipeline(pipeline).ok
    records = [json.loads(x) for x in (tmp_path / "o" / "data.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == [None, None]
    assert sum(json.loads((tmp_path / "o" / "manifest.json").read_text())["samples_per_source"].values()) == 2


def test_shuffle_interleaves_the_sources_and_the_placement_follows_the_file(core_pipeline):
    # issue 14: an export was grouped by source (all general rows, then all domain rows)
    store, out = exported(core_pipeline)
    grouped = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    sources = [r["source"] for r in grouped]
    assert sources == sorted(sources, key=lambda s: s != sources[0])  # off by default for jsonl: grouped
    store, out = exported(core_pipeline, shuffle=True)
    shuffled = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in shuffled) == sorted(r["sample_id"] for r in grouped)
    order = [r["source"] for r in shuffled]
    assert order != sorted(order) and order != sorted(order, reverse=True)  # interleaved
    rows = query(store, "SELECT sample_id, row FROM export ORDER BY row")
    assert [sid for sid, _ in rows] == [r["sample_id"] for r in shuffled]
    assert (out / "sample_ids.txt").read_text().splitlines() == [r["sample_id"] for r in shuffled]
    # seeded: written again (its file deleted, so the step reruns), the same order
    (out / "data.jsonl").unlink()
    store, again = exported(core_pipeline, shuffle=True)
    assert [json.loads(line)["sample_id"] for line in (again / "data.jsonl").read_text().splitlines()] == [
        r["sample_id"] for r in shuffled]
