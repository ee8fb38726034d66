"""Every `datamix` command through click's runner: exit codes, formats, messages."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from tests.helpers import cli, query, store_of


@pytest.fixture
def ran(core_ran):
    """The module's shared run: tests using it only read the store."""
    return core_ran, store_of(core_ran)


def test_run_prints_the_status_and_exits_0(core_pipeline):
    result = cli("run", core_pipeline)
    assert result.exit_code == 0
    for step in ("general", "domain", "clean", "dedup", "mix", "export"):
        assert step in result.stdout


def test_run_with_store_option_and_var_override(core_pipeline, tmp_path):
    other = tmp_path / "other.duckdb"
    result = cli("run", core_pipeline, "--store", other, "general_share=0.8", "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout == ""  # --quiet: nothing on success
    assert not store_of(core_pipeline).exists()
    # 0.8 general / 0.4 domain = 2/3 and 1/3: general limits at 12 rows
    assert query(other, "SELECT source, count(*) FROM mix GROUP BY ALL ORDER BY 1") == [("domain", 6), ("general", 12)]


def test_run_bad_spec_exits_2(core_pipeline):
    result = cli("run", core_pipeline, "steps.mix.total=-1")
    assert result.exit_code == 2
    assert "steps[4] (name: mix).total" in result.stderr
    assert not store_of(core_pipeline).exists()  # nothing ran


def test_validate_ok(core_pipeline):
    result = cli("validate", core_pipeline)
    assert result.exit_code == 0 and "ok (6 steps, 0 models)" in result.stdout


def test_plan_before_and_after_a_run(core_pipeline):
    result = cli("plan", core_pipeline, "--format", "json")
    assert result.exit_code == 0
    assert [(e["name"], e["action"], e["reason"]) for e in json.loads(result.stdout)] == [
        (s, "run", "never run") for s in ("general", "domain", "clean", "dedup", "mix", "export")]
    assert cli("run", core_pipeline).exit_code == 0
    table = cli("plan", core_pipeline)
    assert table.exit_code == 0 and table.stdout.count("up to date") == 6
    changed = cli("plan", core_pipeline, "steps.dedup.keep=longest", "--format", "json")
    actions = {e["name"]: (e["action"], e["reason"]) for e in json.loads(changed.stdout)}
    assert actions["clean"] == ("skip", "up to date")
    assert actions["dedup"] == ("run", 'changed: config (keep: "first" -> "longest")')
    assert actions["mix"] == ("run", "changed: an upstream step (dedup, domain)")


def test_status_before_any_run_is_all_pending(core_pipeline):
    result = cli("status", core_pipeline, "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [(r["name"], r["state"], r["rows_in"], r["rows_out"]) for r in rows] == [
        (s, "pending", 0, 0) for s in ("general", "domain", "clean", "dedup", "mix", "export")]


def test_status_json_and_table(ran):
    pipeline, store = ran
    rows = json.loads(cli("status", pipeline, "--format", "json").stdout)
    assert isinstance(rows, list) and all({"name", "kind", "state", "rows_in", "rows_out", "seconds"} <= set(r)
                                          for r in rows)
    by = {r["name"]: r for r in rows}
    assert (by["general"]["kind"], by["general"]["state"], by["general"]["rows_in"], by["general"]["rows_out"]) == (
        "load", "done", 15, 15)
    assert by["clean"]["dropped"] == {"length(response)": 1, "phrases(response)": 1}
    assert by["dedup"]["dropped"] == {"duplicate": 1}
    assert (by["mix"]["rows_in"], by["mix"]["rows_out"]) == (20, 20)
    assert all(isinstance(r["seconds"], float) for r in rows)
    table = cli("status", "--store", store)
    assert table.exit_code == 0
    assert "length(response): 1" in table.stdout and "duplicate: 1" in table.stdout


def test_status_finds_the_only_store_in_the_current_folder(ran):
    pipeline, _ = ran
    result = cli("status", "--format", "json", cwd=pipeline.parent)
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 6
    result = cli("status", cwd=pipeline.parent / "data")
    assert result.exit_code == 2 and "name the store" in result.stderr


def test_sql_formats(ran):
    pipeline, store = ran
    q = "SELECT name, rows_out FROM dm.steps WHERE name IN ('general', 'mix') ORDER BY name"
    as_json = cli("sql", q, pipeline, "--format", "json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == [{"name": "general", "rows_out": 15}, {"name": "mix", "rows_out": 20}]
    as_csv = cli("sql", q, "--store", store, "--format", "csv")
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [["name", "rows_out"], ["general", "15"], ["mix", "20"]]
    as_table = cli("sql", q, pipeline)
    assert "general" in as_table.stdout and "rows_out" in as_table.stdout
    nested = cli("sql", "SELECT messages FROM general ORDER BY origin_line LIMIT 1", pipeline, "--format", "csv")
    assert json.loads(list(csv.reader(io.StringIO(nested.stdout)))[1][0])[0]["role"] == "user"


def test_sql_out_file(ran, tmp_path):
    pipeline, _ = ran
    out = tmp_path / "funnel.json"
    result = cli("sql", "SELECT * FROM dm.funnel", pipeline, "--format", "json", "--out", out)
    assert result.exit_code == 0 and "rows written to" in result.stderr
    assert result.stdout == ""
    assert {r["step"] for r in json.loads(out.read_text())} == {"general", "domain", "clean", "dedup", "mix", "export"}


@pytest.mark.parametrize("statement", [
    "INSERT INTO dm.steps (name) VALUES ('x')",
    "DELETE FROM dm.decisions",
    "DROP TABLE general",
    "CREATE TABLE t AS SELECT 1",
    "UPDATE dm.steps SET state = 'done'",
    "SELECT 1; DELETE FROM dm.decisions",
])
def test_sql_refuses_writes_with_exit_2(ran, statement):
    pipeline, store = ran
    before = query(store, "SELECT count(*) FROM dm.decisions")
    result = cli("sql", statement, pipeline)
    assert result.exit_code == 2
    assert "datamix sql is read-only" in result.stderr
    assert query(store, "SELECT count(*) FROM dm.decisions") == before
    assert query(store, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'") == [(0,)]


def test_sql_opens_the_store_read_only(ran):
    """Another process reading the store (read-only) does not block `datamix sql`: it reads too."""
    pipeline, store = ran
    reader = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print('open', flush=True); time.sleep(60)", str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        result = cli("sql", "SELECT count(*) AS n FROM export", pipeline, "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == [{"n": 20}]
    finally:
        reader.kill()
        reader.wait()


def test_sql_errors(ran, tmp_path):
    pipeline, _ = ran
    bad = cli("sql", "SELEC nothing", pipeline)
    assert bad.exit_code == 2 and "does not parse" in bad.stderr
    missing = cli("sql", "SELECT * FROM no_such_step", pipeline)
    assert missing.exit_code == 2 and "query failed" in missing.stderr
    nostore = cli("sql", "SELECT 1", "--store", tmp_path / "none.duckdb")
    assert nostore.exit_code == 2 and "no store at" in nostore.stderr


def test_show_limit_and_where(ran):
    pipeline, store = ran
    result = cli("show", "mix", "--store", store, "--limit", "3", "--where", "source = 'domain'")
    assert result.exit_code == 0, result.output
    ids = [sid for (sid,) in query(store, "SELECT sample_id FROM mix WHERE source = 'domain'")]
    shown = [sid for sid in ids if f"mix {sid}" in result.stdout]
    assert len(shown) == 3
    assert "user: What is" in result.stdout and "assistant: The sum of" in result.stdout
    assert "source=general" not in result.stdout
    default = cli("show", "clean", pipeline)
    assert default.exit_code == 0 and default.stdout.count("clean ") == 5  # --limit defaults to 5
    bad = cli("show", "mix", "--store", store, "--where", "no_column = 1")
    assert bad.exit_code == 2 and "cannot show mix" in bad.stderr


def test_lineage_unknown_sample(ran):
    _, store = ran
    result = cli("lineage", "0000000000000000", "--store", store)
    assert result.exit_code == 2 and "no sample 0000000000000000" in result.stderr


def test_help_lists_every_command():
    # the first word of each line of the help's command list (a substring match passed for
    # "run" as long as any word of the help contained it)
    result = cli("--help")
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")}
    assert listed == {"run", "validate", "plan", "status", "sql", "show", "lineage", "report", "eval", "models",
                      "template", "train"}


def test_every_command_that_reads_a_store_takes_the_pipeline_or_store_the_same_way():
    import click

    from datamix.cli import main

    for name in ("status", "sql", "show", "lineage", "report"):
        params = {p.name: p for p in main.commands[name].params}
        assert isinstance(params["pipeline"], click.Argument) and not params["pipeline"].required, name
        assert params["store"].opts == ["--store"], name


def test_sql_out_with_the_default_table_format_writes_the_rows(ran, tmp_path):
    pipeline, _ = ran
    out = tmp_path / "steps.txt"
    result = cli("sql", "SELECT name FROM dm.steps ORDER BY name", pipeline, "--out", out)
    assert result.exit_code == 0
    text = out.read_text()
    assert all(step in text for step in ("clean", "dedup", "domain", "export", "general", "mix"))


def test_relative_store_option_means_the_same_file_for_run_and_sql(core_pipeline, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    assert cli("run", core_pipeline, "--store", "mine.duckdb", "-q", cwd=work).exit_code == 0
    result = cli("sql", "SELECT count(*) AS n FROM export", "--store", "mine.duckdb", "--format", "json", cwd=work)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [{"n": 20}]

def test_the_program_freezes_what_exists_once_the_command_is_done(monkeypatch):
    """datamix.cli.entry: the command's exit status as before, then gc.freeze (the shutdown's
    garbage collections skip what the run left; numba's compiler made them ~0.2 s)."""
    import gc
    import sys

    from datamix.cli import entry

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(sys, "argv", ["datamix", "validate", "no-such-pipeline.yaml"])
    with pytest.raises(SystemExit) as exit_info:
        entry()
    assert exit_info.value.code == 2 and frozen == [True]
