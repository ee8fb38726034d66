"""`datamix sql` cannot write: every attack leaves the store byte-identical and no file appears.

Each attack runs through the real CLI on a real store, from a working folder of its own
(relative paths in the attack land there), and both that folder and the store's folder
are compared before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import duckdb
import pytest

from datamix.sql_readonly import Refused, check

from tests.helpers import cli, store_of


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A real EXPORT DATABASE folder, so that IMPORT DATABASE would have something to import."""
    folder = tmp_path_factory.mktemp("exported") / "db"
    con = duckdb.connect()
    con.execute("CREATE TABLE intruder AS SELECT 1 AS x")
    con.execute(f"EXPORT DATABASE '{folder}'")  # a test's own tmp path, no quote in it
    con.close()
    return folder


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def guarded(core_ran, tmp_path):
    """Runs `datamix sql` from an empty folder; afterwards asserts that the store is
    byte-identical and that no file appeared beside it or in the working folder."""
    store = store_of(core_ran)
    work = tmp_path / "work"
    work.mkdir()
    before = (_digest(store), _listing(store.parent), _listing(core_ran.parent / "data"))

    def run(query: str, *flags: str):
        # "--" so that a query starting with "--" (a comment) is not read as an option
        return cli("sql", "--store", store, *flags, "--", query, cwd=work)

    yield run
    assert (_digest(store), _listing(store.parent), _listing(core_ran.parent / "data")) == before
    assert _listing(work) == []


ATTACKS = [
    # writes to the store
    "INSERT INTO dm.steps (name) VALUES ('x')",
    "UPDATE dm.steps SET state = 'done'",
    "DELETE FROM dm.decisions",
    "DROP TABLE general",
    "DROP VIEW dm.funnel",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "CREATE VIEW v AS SELECT 1",
    "CREATE MACRO m(x) AS x + 1",
    "CREATE SEQUENCE s",
    "CREATE SECRET (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "ALTER TABLE general RENAME TO g",
    "CHECKPOINT",
    "FORCE CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "USE memory",
    # other files
    "COPY general TO 'out.csv'",
    "COPY (SELECT * FROM general) TO 'out.parquet' (FORMAT parquet)",
    "EXPORT DATABASE 'dump'",
    "ATTACH 'new.duckdb'",
    "ATTACH 'new.duckdb' AS n; CREATE TABLE n.t AS SELECT 1",
    "ATTACH ':memory:' AS m",
    "DETACH dm",
    "IMPORT DATABASE '{exported}'",
    "ATTACH 'new.duckdb' AS n; USE n; IMPORT DATABASE '{exported}'",
    "IMPORT DATABASE '{exported}'; DROP TABLE general",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'out.csv'",
    "EXPLAIN ANALYSE COPY (SELECT 1) TO 'out.csv'",
    "EXPLAIN /* hi */ ANALYZE COPY (SELECT 1) TO 'out.csv'",
    "EXPLAIN -- hi\n ANALYZE COPY (SELECT 1) TO 'out.csv'",
    "EXPLAIN (ANALYZE) SELECT 1",
    "EXPLAIN (FORMAT json, ANALYZE) SELECT 1",
    "EXPLAIN ANALYZE SELECT count(*) FROM general",
    "EXPLAIN COPY (SELECT 1) TO 'out.csv'",
    "EXPLAIN CREATE TABLE t AS SELECT 1",
    "SET enable_profiling = 'json'; SET profiling_output = 'profile.json'; EXPLAIN ANALYZE SELECT 1",
    "PRAGMA enable_profiling = 'json'",
    "PRAGMA profiling_output = 'profile.json'",
    "CALL enable_logging(storage = 'file', storage_path = 'logs')",
    "CALL enable_logging(level = 'debug')",
    "CALL pragma_version()",
    # settings and extensions
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "SET temp_directory = 'spill'",
    "SET VARIABLE x = 1",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD 'evil.duckdb_extension'",
    "UPDATE EXTENSIONS",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    # stacked statements and comment tricks
    "SELECT 1; DROP TABLE general",
    "SELECT 1;DELETE FROM dm.decisions",
    "SELECT 1 /* ; */; DROP TABLE general",
    "SELECT ';'; DROP TABLE general",
    "/* SELECT */ DROP TABLE general",
    "-- SELECT 1\n DROP TABLE general",
    "SELECT 1 -- \n; COPY general TO 'out.csv'",
    "SELECT 1;\nSELECT 2",
    "",
    "  ;  -- nothing",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_are_refused_before_they_run(guarded, exported, attack):
    result = guarded(attack.replace("{exported}", str(exported)))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.stderr
    assert "allowed: one query" in message or "does not parse" in message, message


# Queries DuckDB calls SELECT but that reach for files or settings: they are stopped at run time
# by the locked configuration and the disabled file system.
RUNTIME = [
    ("SELECT * FROM read_csv('/etc/passwd')", "--allow-files"),
    ("SELECT * FROM read_text('/etc/hostname')", "--allow-files"),
    ("SELECT * FROM glob('*')", "--allow-files"),
    ("SELECT * FROM read_parquet('../*.parquet')", "--allow-files"),
    ("SELECT * FROM sniff_csv('/etc/passwd')", "--allow-files"),
    ("SELECT * FROM '/etc/passwd'", "does not exist"),  # replacement scans are off with file access
    ("FROM '../data/general.jsonl'", "--allow-files"),
    ("SELECT * FROM read_json_objects('/etc/hostname')", "--allow-files"),
    ("SELECT * FROM enable_logging(storage = 'file', storage_path = 'logs')", "locked"),
    ("SELECT * FROM disable_logging()", "locked"),
    ("SELECT * FROM query('DROP TABLE general')", "SELECT"),
    ("SELECT * FROM query_table('general'); DROP TABLE general", "one statement"),
    ("SELECT write_csv('out.csv')", "write_csv"),
    ("SELECT * FROM force_checkpoint()", "CHECKPOINT"),
]


@pytest.mark.parametrize("attack, hint", RUNTIME)
def test_queries_cannot_reach_files_or_settings(guarded, attack, hint):
    result = guarded(attack)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert hint in result.stderr, result.stderr


@pytest.mark.parametrize("attack", [
    "SELECT * FROM enable_logging(storage = 'file', storage_path = 'logs')",
    "COPY (SELECT 1) TO 'out.csv'",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'out.csv'",
    "ATTACH 'new.duckdb'",
    "SET enable_external_access = true",
])
def test_allow_files_still_refuses_writes(guarded, attack):
    result = guarded(attack, "--allow-files")
    assert result.exit_code == 2, result.output


def test_allow_files_reads_a_file_beside_the_store(core_ran, tmp_path):
    extra = tmp_path / "extra.csv"
    extra.write_text("name,weight\ngeneral,2\n")
    store = store_of(core_ran)
    q = f"SELECT s.name, e.weight FROM dm.steps s JOIN read_csv('{extra}') e USING (name)"
    refused = cli("sql", q, "--store", store)
    assert refused.exit_code == 2 and "--allow-files" in refused.stderr
    allowed = cli("sql", q, "--store", store, "--format", "json", "--allow-files")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout) == [{"name": "general", "weight": 2}]


@pytest.mark.parametrize("good, column", [
    ("SELECT count(*) AS n FROM general", "n"),
    ("  -- the general rows\nSELECT count(*) AS n FROM general;  ", "n"),
    ("/* a comment */ WITH g AS (SELECT * FROM general) SELECT count(*) AS n FROM g", "n"),
    ("FROM dm.funnel SELECT step", "step"),
    ("DESCRIBE general", "column_name"),
    ("SHOW TABLES", "name"),
    ("SHOW ALL TABLES", "name"),
    ("SUMMARIZE general", "column_name"),
    ("EXPLAIN SELECT count(*) FROM general", "explain_key"),
    ("EXPLAIN (FORMAT json) SELECT count(*) FROM general", "explain_key"),
    ("SELECT 1 AS \"analyze\"", "analyze"),
    ("VALUES (1)", "col0"),
    ("SELECT * FROM pragma_table_info('general')", "name"),
    ("SELECT current_setting('enable_external_access') AS on", "on"),
])
def test_plain_queries_still_run(guarded, good, column):
    result = guarded(good, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and column in rows[0]
    if "current_setting" in good:
        assert rows == [{"on": False}]


def test_refusal_messages_say_why_and_what_is_allowed(guarded):
    stacked = guarded("SELECT 1; DROP TABLE general")
    assert "one statement at a time" in stacked.stderr and "2 (SELECT, DROP)" in stacked.stderr
    drop = guarded("/* x */ DROP TABLE general")
    assert "read-only: DROP statements (DROP ...)" in drop.stderr
    assert "allowed: one query (SELECT" in drop.stderr
    analyze = guarded("EXPLAIN ANALYZE SELECT 1")
    assert "EXPLAIN ANALYZE runs the statement" in analyze.stderr


def test_check_names_the_statement_it_returns():
    con = duckdb.connect()
    assert check(con, " -- hi\nSELECT 1;").strip().endswith("SELECT 1;")
    with pytest.raises(Refused):
        check(con, "SELECT 1; SELECT 2")
    with pytest.raises(duckdb.Error):
        check(con, "SELEC 1")


def test_a_big_sort_spills_nowhere_near_the_store(guarded, core_ran):
    """A query over DuckDB's memory limit spills into a private temporary folder, removed after."""
    store = store_of(core_ran)
    q = "SELECT * FROM range(3000000) t(i) ORDER BY hash(i) LIMIT 1"
    # memory_limit cannot be set by the query (locked), so this only checks that a sorting query
    # runs with the temp folder moved and leaves nothing behind (guarded checks the folders)
    result = guarded(q)
    assert result.exit_code == 0, result.output
    assert not os.path.exists(str(store) + ".tmp")


@pytest.mark.parametrize("where", [
    "1=1; COPY (SELECT 1) TO 'out.csv'; SELECT * FROM general",
    "1=1; DROP TABLE general; SELECT * FROM general",
    "true LIMIT 1; ATTACH 'new.duckdb'; SELECT 1",
    "sample_id IN (SELECT column0 FROM read_csv('/etc/passwd'))",
    "sample_id IN (SELECT * FROM enable_logging(storage = 'file', storage_path = 'logs'))",
])
def test_show_where_cannot_write_or_read_files(core_ran, tmp_path, where):
    """`show --where` is SQL text too: the query it makes follows the same rules."""
    store = store_of(core_ran)
    work = tmp_path / "work"
    work.mkdir()
    before = (_digest(store), _listing(store.parent))
    result = cli("show", "general", "--store", store, "--where", where, cwd=work)
    assert result.exit_code == 2, result.output
    assert "cannot show general" in result.stderr
    assert (_digest(store), _listing(store.parent)) == before and _listing(work) == []
    ok = cli("show", "general", "--store", store, "--where", "origin_line < 3", cwd=work)
    assert ok.exit_code == 0 and ok.stdout.count("general ") == 2
