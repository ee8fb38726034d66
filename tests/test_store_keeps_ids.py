"""Steps whose rows keep their parent's sample ids (export) write no lineage edges, yet lineage walks through them."""

from __future__ import annotations

import json
from typing import Literal

import duckdb
import polars as pl

from datamix.steps.base import REGISTRY, Output, StepConfig, register
from datamix.store import Store

from tests.helpers import cli, query, run_pipeline, store_of, write_jsonl, write_pipeline


def test_export_writes_no_edges_and_lineage_still_reaches_the_source_line(core_ran):
    store = store_of(core_ran)
    assert query(store, "SELECT count(*) FROM dm.edges WHERE step = 'export'") == [(0,)]
    assert query(store, "SELECT keeps_ids FROM dm.steps WHERE name = 'export'") == [(True,)]
    exported = query(store, "SELECT sample_id FROM export e JOIN mix m USING (sample_id) WHERE m.source = 'general' LIMIT 1")
    out = cli("lineage", exported[0][0], "--store", store, "--format", "json")
    chain = json.loads(out.output)
    assert [r["step"] for r in chain][:2] == ["export", "mix"]
    assert chain[-1]["step"] == "general" and chain[-1]["origin"]["file"] == "data/general.jsonl"


class LyingConfig(StepConfig):
    kind: Literal["lying_export"]


@register("lying_export", LyingConfig, keeps_ids=True, shape="whole")
def _lying(cfg, inputs, ctx):
    """Claims keeps_ids but mints new ids: the store must refuse, not lose lineage silently."""
    rows = inputs["input"].polars().select("sample_id")
    return Output(rows_in=len(rows), rows=rows.select(
        (pl.col("sample_id") + "x").alias("sample_id"), pl.concat_list("sample_id").alias("parent_ids")))


def test_a_false_keeps_ids_claim_fails_the_step_with_a_clear_error(tmp_path):
    try:
        write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q?", "response": "a."}])
        pipeline = write_pipeline(tmp_path, [{"name": "a", "kind": "load", "path": "a.jsonl"},
                                             {"name": "b", "kind": "lying_export", "input": "a"}])
        result = run_pipeline(pipeline)
        assert not result.ok and result.failed_step == "b" and not result.bad_input
        assert "keeps_ids" in result.error and "Error:" not in result.error.split(":")[0]
        assert query(store_of(pipeline), "SELECT count(*) FROM dm.chunks WHERE step = 'b'") == [(0,)]
    finally:
        REGISTRY.pop("lying_export", None)


def test_a_store_made_before_keeps_ids_gains_the_column(tmp_path):
    path = str(tmp_path / "old.duckdb")
    con = duckdb.connect(path)
    con.execute("CREATE SCHEMA dm")
    con.execute("CREATE TABLE dm.steps (name VARCHAR PRIMARY KEY, kind VARCHAR, fingerprint VARCHAR, config JSON, "
                "parents JSON, passthrough BOOLEAN, state VARCHAR, rows_in BIGINT DEFAULT 0, rows_out BIGINT DEFAULT 0, "
                "seconds DOUBLE DEFAULT 0, started_at TIMESTAMP, finished_at TIMESTAMP, error VARCHAR, run_id VARCHAR)")
    con.execute("INSERT INTO dm.steps (name, kind, passthrough, state) VALUES ('old', 'load', false, 'done')")
    con.close()
    Store(path).close()
    assert query(tmp_path / "old.duckdb", "SELECT name, keeps_ids FROM dm.steps") == [("old", False)]
