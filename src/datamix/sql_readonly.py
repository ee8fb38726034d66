"""`datamix sql`'s guard: only plain queries run, and a query cannot reach the file system.

Opening the store read-only is not enough: DuckDB still runs statements that write
other files (COPY ... TO, EXPORT/IMPORT DATABASE, ATTACH of a new file, EXPLAIN ANALYZE
of a COPY, CALL enable_logging to a file) or change settings. So each statement is
parsed by DuckDB itself (the parser that will run it, comments and stacking included)
and refused unless it is a query; then the connection's file-system access, extension
installs and settings are switched off and the configuration is locked, so that what a
query can still call (table functions such as read_csv or enable_logging) cannot write
or read outside the store.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

ALLOWED = ("allowed: one query (SELECT, WITH, FROM, VALUES, TABLE, PIVOT), DESCRIBE, SHOW, SUMMARIZE, "
           "or EXPLAIN without ANALYZE")


class Refused(Exception):
    """The query is not a plain read of the store; the message says why and what is allowed."""


def _tokens(text: str) -> list[str]:
    """The words and symbols of `text` as DuckDB's tokenizer splits them, comments left out."""
    import duckdb

    spans = duckdb.tokenize(text)
    out = []
    for i, (pos, kind) in enumerate(spans):
        end = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        if kind != duckdb.token_type.comment:
            out.append(text[pos:end].strip())
    return out


def _kind(statement) -> str:
    """The statement's type name; one this DuckDB build's Python enum does not know (UPDATE
    EXTENSIONS in 2.0) is OTHER, and refused like every type but SELECT and EXPLAIN."""
    try:
        return statement.type.name
    except ValueError:
        return "OTHER"


def _explained(con: "duckdb.DuckDBPyConnection", statement: str) -> None:
    """An EXPLAIN must plan a query and must not run it (EXPLAIN ANALYZE runs the statement:
    `EXPLAIN ANALYZE COPY ... TO` writes the file)."""
    import duckdb

    words = [t.upper() for t in _tokens(statement)]
    if "ANALYZE" in words or "ANALYSE" in words:
        raise Refused("datamix sql is read-only: EXPLAIN ANALYZE runs the statement it explains, so it is "
                      f"refused; use EXPLAIN without ANALYZE ({ALLOWED})")
    # what follows EXPLAIN and its optional (option, ...) list must itself be one query
    spans = [(pos, kind) for pos, kind in duckdb.tokenize(statement) if kind != duckdb.token_type.comment]
    rest = 1
    if rest < len(spans) and statement[spans[rest][0]] == "(":
        depth = 0
        for rest in range(1, len(spans)):
            ch = statement[spans[rest][0]]
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                rest += 1
                break
    inner = statement[spans[rest][0]:] if rest < len(spans) else ""
    try:
        kinds = [_kind(s) for s in con.extract_statements(inner)]
    except duckdb.Error:
        kinds = []
    if kinds != ["SELECT"]:
        raise Refused(f"datamix sql is read-only: EXPLAIN is allowed only of a query ({ALLOWED})")


def check(con: "duckdb.DuckDBPyConnection", query: str) -> str:
    """The one statement of `query` if it is a plain query; raises Refused (with why and what
    is allowed) or duckdb.Error (the text does not parse)."""
    statements = con.extract_statements(query)
    if not statements:
        raise Refused(f"no statement given ({ALLOWED})")
    kinds = [_kind(s) for s in statements]
    if len(statements) > 1:
        raise Refused(f"datamix sql is read-only and runs one statement at a time; this text has {len(statements)} "
                      f"({', '.join(kinds)}); give them one by one ({ALLOWED})")
    statement, kind = statements[0].query, kinds[0]
    if kind == "EXPLAIN":
        _explained(con, statement)
    elif kind != "SELECT":
        what = _tokens(statement)[:1] or [kind]
        raise Refused(f"datamix sql is read-only: {kind} statements ({what[0].upper()} ...) are refused; "
                      f"{ALLOWED}. Change data through a pipeline step; call a table function as "
                      "SELECT * FROM f(...).")
    return statement


def lock_down(con: "duckdb.DuckDBPyConnection", allow_files: bool = False) -> tempfile.TemporaryDirectory:
    """Switch off what a query could still do outside the store, then lock the settings.

    Without allow_files no file but the store can be read or written (read_csv, glob,
    read_text, logging to a file...). With it, files may be read (a query that joins the
    store with a CSV), yet statements that write are still refused by `check`. Extensions
    are never installed (that downloads into ~/.duckdb). A query that spills to disk spills
    into a private temporary folder (returned: the caller removes it), never beside the store.
    """
    spill = tempfile.TemporaryDirectory(prefix="datamix-sql-")
    con.execute("SET temp_directory = ?", [spill.name])  # before external access goes off: it guards this too
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET allow_community_extensions = false")
    if not allow_files:
        con.execute("SET autoload_known_extensions = false")
        # a step the Ray executor ran keeps its rows as Parquet parts in the store's outputs
        # folder, read through a view: they are part of the store (datamix.executors.parts)
        store = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
        if store and store[0][0]:
            outputs = os.path.join(os.path.dirname(os.path.abspath(store[0][0])), "outputs") + os.sep
            con.execute("SET allowed_directories = ?", [[outputs]])
        con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return spill
