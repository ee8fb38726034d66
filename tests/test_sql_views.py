"""Golden tests of the views and macros in sql/: rows in, expected rows out, on an in-memory DuckDB."""

from __future__ import annotations

import duckdb
import pytest

from datamix.store import SQL_FILES, sql_text


@pytest.fixture
def con():
    con = duckdb.connect()
    for name in SQL_FILES:
        con.execute(sql_text(name))
    yield con
    con.close()


def add_step(con, name, kind, parents="{}", passthrough=False, rows_in=0, rows_out=0, started=0):
    con.execute(
        "INSERT INTO dm.steps (name, kind, fingerprint, config, parents, passthrough, state, rows_in, rows_out, "
        "started_at) VALUES (?, ?, 'fp', '{}', ?, ?, 'done', ?, ?, TIMESTAMP '2025-01-01' + to_seconds(?))",
        [name, kind, parents, passthrough, rows_in, rows_out, started])


def decide(con, step, sample_id, kept, reason, score=None, related=None):
    con.execute("INSERT INTO dm.decisions VALUES (?, ?, ?, ?, ?, ?)", [step, sample_id, kept, reason, score, related])


def test_funnel_one_row_per_step_and_reason(con):
    add_step(con, "src", "load", rows_in=10, rows_out=10, started=0)
    add_step(con, "clean", "filter", '{"input": "src"}', True, 10, 7, started=1)
    add_step(con, "dd", "dedup", '{"input": "clean"}', True, 7, 7, started=2)
    for sid in ("a", "b"):
        decide(con, "clean", sid, False, "too_short")
    decide(con, "clean", "c", False, "refusal")
    decide(con, "clean", "d", True, "kept for a reason")  # kept decisions are not drops
    rows = con.execute("SELECT * FROM dm.funnel").fetchall()
    assert rows == [
        ("src", "load", "done", 10, 10, None, None),
        ("clean", "filter", "done", 10, 7, "too_short", 2),
        ("clean", "filter", "done", 10, 7, "refusal", 1),
        ("dd", "dedup", "done", 7, 7, None, None),
    ]


def test_lineage_walks_edges_and_pass_through_steps(con):
    add_step(con, "src", "load")
    add_step(con, "other", "load")
    add_step(con, "clean", "filter", '{"input": "src"}', True)
    add_step(con, "gen", "generate", '{"input": "clean"}')
    add_step(con, "merge", "mix", '{"a": "gen", "b": "other"}')
    con.execute("INSERT INTO dm.edges VALUES ('gen', 'g1', 'clean', 's1'), ('gen', 'g2', 'clean', 's2'),"
                " ('merge', 'm1', 'gen', 'g1'), ('merge', 'm2', 'other', 'o1'),"
                " ('judge2', 'j', 'gen', 'g1'), ('judge2', 'j', 'gen', 'g2')")
    assert con.execute("SELECT * FROM dm.lineage('merge', 'm1')").fetchall() == [
        ("merge", "m1", 0, None), ("gen", "g1", 1, "merge"), ("clean", "s1", 2, "gen"), ("src", "s1", 3, "clean")]
    assert con.execute("SELECT * FROM dm.lineage('merge', 'm2')").fetchall() == [
        ("merge", "m2", 0, None), ("other", "o1", 1, "merge")]
    # a sample made from two parents has both as ancestors
    add_step(con, "judge2", "select", '{"input": "gen"}')
    assert con.execute("SELECT step, sample_id, depth FROM dm.lineage('judge2', 'j')").fetchall() == [
        ("judge2", "j", 0), ("gen", "g1", 1), ("gen", "g2", 1), ("clean", "s1", 2), ("clean", "s2", 2),
        ("src", "s1", 3), ("src", "s2", 3)]
    # a source row is its own whole lineage
    assert con.execute("SELECT * FROM dm.lineage('src', 's9')").fetchall() == [("src", "s9", 0, None)]


def test_composition_by_samples_and_tokens(con):
    con.execute("CREATE TABLE mymix AS SELECT * FROM (VALUES ('a', 10), ('a', 30), ('b', 20), ('a', 20))"
                " t(source, est_tokens)")
    assert con.execute("SELECT * FROM dm.composition('mymix')").fetchall() == [
        ("a", 3, 0.75, 60, 0.75), ("b", 1, 0.25, 20, 0.25)]


def test_clusters_count_dedup_removals_per_kept_sample(con):
    add_step(con, "dd", "dedup", '{"input": "src"}', True)
    add_step(con, "clean", "filter", '{"input": "src"}', True)
    decide(con, "dd", "x2", False, "duplicate", 1.0, "x1")
    decide(con, "dd", "x3", False, "near_duplicate", 0.81234, "x1")
    decide(con, "dd", "y2", False, "duplicate", 1.0, "y1")
    decide(con, "dd", "z2", False, "contamination", 1.0, "bench.jsonl:3")  # not a duplicate cluster
    decide(con, "clean", "w2", False, "duplicate", 1.0, "w1")  # not a dedup step
    assert con.execute("SELECT * FROM dm.clusters").fetchall() == [
        ("dd", "x1", 3, 0.8123), ("dd", "y1", 2, 1.0)]


def test_schema_is_idempotent(con):
    """The store runs every .sql file at each open: a second run changes nothing."""
    add_step(con, "src", "load")
    for name in SQL_FILES:
        con.execute(sql_text(name))
    assert con.execute("SELECT count(*) FROM dm.steps").fetchall() == [(1,)]
