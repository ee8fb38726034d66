"""DuckDB over Arrow tables in memory, for steps and workers (the store is store.py's).

Opening a DuckDB database costs ~20 ms (its thread pool, buffer manager and catalog), a
cursor on an open one ~10 us. A step that opened a database for each chunk paid that per
chunk: a map's expressions over 1M rows in slices of 10,000, ~2.2 s of its ~6 s. Each
process now opens one scratch database (two: one sandboxed) and callers take a cursor on it.
A table registered on a cursor is that cursor's own and goes when it closes, so callers on
several threads, each with its cursor, never see each other's tables.

    with scratch.cursor() as con:
        con.register("rows", table)
        out = con.sql("SELECT ... FROM rows").to_arrow_table()

Settings are the database's, shared by every cursor: callers set none (the sandboxed one is
opened with file access off, which SQL cannot turn back on), but for the threads, which a Ray
task sets to the CPUs it holds (set_threads).
"""

from __future__ import annotations

import contextlib
import os
import threading

_lock = threading.Lock()
_databases: dict[tuple[int, bool], object] = {}
_threads: int | None = None  # None: DuckDB's default, a thread per core


@contextlib.contextmanager
def cursor(sandboxed: bool = False):
    """A cursor on this process's scratch database, closed on leaving. `sandboxed`: on one
    whose SQL reads and writes no file, for expressions written in the pipeline YAML."""
    con = _database(sandboxed).cursor()
    try:
        yield con
    finally:
        con.close()


def _database(sandboxed: bool):
    # keyed by process: a child made by fork opens its own (the parent's threads are not in it)
    key = (os.getpid(), sandboxed)
    with _lock:
        if key not in _databases:
            import duckdb

            config = {"enable_external_access": False} if sandboxed else {}
            _databases[key] = duckdb.connect(config={**config, **({"threads": _threads} if _threads else {})})
        return _databases[key]


def set_threads(threads: int | None) -> None:
    """This process's scratch databases, open and to come, use `threads` threads (None: a
    thread per core, DuckDB's default)."""
    global _threads
    with _lock:
        _threads = threads
        for (pid, _), database in _databases.items():
            if pid == os.getpid():
                if threads:
                    database.execute("SET threads = ?", [threads])
                else:
                    database.execute("RESET threads")
