"""The process's scratch DuckDB: one database, a cursor per caller, each cursor's tables its own."""

from __future__ import annotations

import multiprocessing
import threading

import duckdb
import pyarrow as pa
import pytest

from datamix import scratch


def test_a_cursors_tables_are_its_own_and_go_when_it_closes():
    with scratch.cursor() as a, scratch.cursor() as b:
        a.register("rows", pa.table({"x": [1, 2]}))
        with pytest.raises(duckdb.CatalogException):
            b.sql("SELECT * FROM rows").fetchall()
        assert a.sql("SELECT sum(x) FROM rows").fetchall() == [(3,)]
    with scratch.cursor() as c, pytest.raises(duckdb.CatalogException):
        c.sql("SELECT * FROM rows").fetchall()


def test_threads_with_a_cursor_each_read_their_own_rows():
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(20):
                with scratch.cursor() as con:
                    con.register("rows", pa.table({"x": [i] * (i + 1)}))
                    results[i] = con.sql("SELECT sum(x), count(*) FROM rows").fetchall()[0]
        except Exception as e:  # surfaced below: an assertion in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == {i: (i * (i + 1), i + 1) for i in range(4)}


def test_the_sandboxed_database_reads_no_file_and_sql_cannot_turn_that_back_on(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("x\n1\n")
    with scratch.cursor() as con:  # the other one reads files (a filter's sql rule may)
        assert con.sql("SELECT x FROM read_csv(?)", params=[str(path)]).fetchall() == [(1,)]
    with scratch.cursor(sandboxed=True) as con:
        with pytest.raises(duckdb.Error, match="(?i)permission"):
            con.sql("SELECT x FROM read_csv(?)", params=[str(path)]).fetchall()
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")


def _in_child(queue):
    with scratch.cursor() as con:
        con.register("rows", pa.table({"x": [5, 6]}))
        queue.put(con.sql("SELECT sum(x) FROM rows").fetchall()[0][0])


def test_a_forked_child_opens_its_own_database():
    with scratch.cursor() as con:  # the parent's database is open (and its threads started)
        con.sql("SELECT 1").fetchall()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == 11


def test_set_threads_applies_to_the_open_databases_and_those_opened_after():
    def threads(sandboxed):
        with scratch.cursor(sandboxed) as con:
            return con.sql("SELECT current_setting('threads')").fetchall()[0][0]

    threads(False)  # open before
    try:
        scratch.set_threads(1)
        assert threads(False) == 1 and threads(True) == 1  # the sandboxed one opened after
        scratch.set_threads(3)
        assert threads(False) == 3 and threads(True) == 3
    finally:
        scratch.set_threads(None)  # hand back DuckDB's default to the suite's later callers
