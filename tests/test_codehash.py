"""Fingerprints see all the code a step runs: editing a shared module or a sql/ file reruns
exactly the steps that use it and `plan` names the file; a changed chunk size reruns nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from datamix import codehash

from tests.helpers import cli, make_core, query, run_pipeline, store_of


def test_closure_follows_imports_inside_functions_and_names_sql_files():
    load = dict(codehash.code_files("datamix.steps.load"))
    assert "src/datamix/steps/load.py" in load and "sql/normalize_records.sql" in load
    filt = dict(codehash.code_files("datamix.steps.filter"))
    assert "src/datamix/fields.py" in filt and "sql/normalize_records.sql" not in filt
    # bookkeeping and backends are not part of a step's own code
    assert not any(f.endswith(("store.py", "runner.py", "models/openai.py")) for f in filt)
    # the store's schema and views are bookkeeping too
    assert "sql/schema.sql" not in load and "sql/funnel.sql" not in load
    assert dict(codehash.backend_files("transformers", tiny=True)).keys() == {
        "src/datamix/models/transformers.py", "src/datamix/models/tiny.py"}


@pytest.fixture
def edited(monkeypatch, tmp_path):
    """edit(kind, name): pretend a project file changed, through a copy that codehash reads instead."""
    sql_copy = tmp_path / "sql_copy"
    shutil.copytree(codehash.SQL_DIR, sql_copy)
    monkeypatch.setattr(codehash, "SQL_DIR", sql_copy)
    real_path = codehash._module_path
    copies = {}

    def module_path(name):
        return copies.get(name) or real_path(name)

    monkeypatch.setattr(codehash, "_module_path", module_path)

    def edit(kind: str, name: str) -> None:
        if kind == "sql":
            with open(sql_copy / name, "a") as f:
                f.write("\n-- an edit\n")
        else:
            copy = tmp_path / (name.replace(".", "_") + ".py")
            copy.write_text(real_path(name).read_text() + "\n# an edit\n")
            copies[name] = copy  # named after the module, as the real file is
        codehash.code_files.cache_clear()
        codehash.module_closure.cache_clear()

    yield edit
    codehash.code_files.cache_clear()
    codehash.module_closure.cache_clear()


def plan_of(pipeline, *overrides) -> dict[str, tuple[str, str]]:
    result = cli("plan", pipeline, *overrides, "--format", "json")
    assert result.exit_code == 0, result.output
    return {e["name"]: (e["action"], e["reason"]) for e in json.loads(result.stdout)}


def test_editing_a_sql_file_reruns_the_steps_that_run_it_and_plan_names_it(tmp_path, edited):
    pipeline = make_core(tmp_path)
    assert run_pipeline(pipeline).ok
    edited("sql", "normalize_records.sql")
    actions = plan_of(pipeline)
    # both loads run the normalisation; everything downstream changes with them
    assert actions["general"] == ("run", "changed: code (sql/normalize_records.sql)")
    assert actions["domain"] == ("run", "changed: code (sql/normalize_records.sql)")
    assert actions["clean"] == ("run", "changed: an upstream step (general)")


def test_editing_a_shared_module_reruns_exactly_its_users(tmp_path, edited):
    pipeline = make_core(tmp_path)
    assert run_pipeline(pipeline).ok
    edited("module", "datamix.fields")
    actions = plan_of(pipeline)
    assert actions["general"] == ("skip", "up to date") and actions["domain"] == ("skip", "up to date")
    action, why = actions["clean"]  # the filter reads chat fields through fields.py
    assert action == "run" and why.startswith("changed: code (") and "fields" in why


def test_a_changed_chunk_size_reruns_nothing(tmp_path):
    pipeline = make_core(tmp_path)
    assert run_pipeline(pipeline).ok
    store = store_of(pipeline)
    before = dict(query(store, "SELECT name, finished_at FROM dm.steps"))
    assert set(a for a, _ in plan_of(pipeline, "steps.clean.chunk_size=2").values()) == {"skip"}
    assert run_pipeline(pipeline, ["steps.clean.chunk_size=2", "steps.general.chunk_size=3"]).ok
    assert dict(query(store, "SELECT name, finished_at FROM dm.steps")) == before


def test_a_partial_step_whose_chunks_change_starts_over(tmp_path):
    import duckdb

    pipeline = make_core(tmp_path)
    assert run_pipeline(pipeline).ok
    con = duckdb.connect(str(store_of(pipeline)))
    con.execute("UPDATE dm.steps SET state = 'partial' WHERE name = 'clean'")
    con.close()
    decisions_sql = "SELECT sample_id, kept, reason FROM dm.decisions WHERE step = 'clean' ORDER BY ALL"
    decided = query(store_of(pipeline), decisions_sql)
    assert plan_of(pipeline)["clean"] == ("resume", "partial: resumes after its committed chunks")
    assert plan_of(pipeline, "steps.clean.chunk_size=2")["clean"] == (
        "run", "partial: chunk_size: 10000 -> 2 changed, so it starts over")
    assert run_pipeline(pipeline, ["steps.clean.chunk_size=2"]).ok
    # started over: the same decisions once each, not the old ones plus new ones
    assert len(decided) == 2 and query(store_of(pipeline), decisions_sql) == decided


def test_chunk_size_is_a_run_setting_only_where_it_changes_no_output():
    from datamix.runner import run_settings
    from datamix.steps.filter import FilterConfig
    from datamix.steps.reconstruct import ReconstructConfig

    flt = FilterConfig(name="f", kind="filter", input="x", rules=[{"rule": "length", "min": 1}])
    assert run_settings(flt) == {"chunk_size"}
    # reconstruct seeds its draws per chunk: another chunking gives other samples, so it reruns
    rec = ReconstructConfig(name="r", kind="reconstruct", model="m", num_samples=4)
    assert run_settings(rec) == {"batch"}  # where its calls go (batch files or live) is one still
