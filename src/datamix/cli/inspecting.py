"""`datamix status`, `sql`, `show`, `lineage` and `report`: looking at a store."""

from __future__ import annotations

import json
import os

import click

from datamix.cli.common import (EXIT_BAD_INPUT, _cell, _fail, _open_read_only, _render, _store_path, format_option,
                         legacy_pipeline_option, main, pipeline_argument, store_option)


@main.command()
@click.argument("query")
@pipeline_argument()
@store_option()
@format_option("table", "csv", "json")
@click.option("--out", type=click.Path(dir_okay=False), help="write the result to FILE instead of the terminal")
@click.option("--allow-files", is_flag=True,
              help="let the query read files other than the store (read_csv, read_parquet, glob); writes stay refused")
def sql(query, pipeline, store, fmt, out, allow_files):
    """Run a read-only SQL QUERY on the store, e.g. "SELECT * FROM dm.funnel".

    One query at a time: SELECT/WITH/FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN (without ANALYZE).
    Statements that write, attach, copy, load or set anything are refused (exit 2), and a query
    cannot touch files other than the store unless --allow-files is given."""
    import duckdb

    from datamix.sql_readonly import Refused, check, lock_down
    from datamix.store import explain

    path = _store_path(pipeline, store)
    con = _open_read_only(path)
    # closed on every way out: DuckDB shares one database instance among a process's connections
    # to a file, and the locked settings below must not outlive this query
    try:
        try:
            statement = check(con, query)
        except Refused as e:
            _fail(str(e))
        except duckdb.Error as e:
            _fail(f"the query does not parse: {str(e).splitlines()[0]}")
        spill = lock_down(con, allow_files=allow_files)
        try:
            rel = con.sql(statement)
            if rel is None:
                _fail("the query returned no result")
            columns, rows = rel.columns, rel.fetchall()
        except duckdb.PermissionException as e:
            _fail(f"query refused: {str(e).splitlines()[0]}. datamix sql reads only the store; "
                  "pass --allow-files to let a query read other files.")
        except duckdb.Error as e:
            _fail(*(explain(e, path) or (f"query failed: {str(e).splitlines()[0]}", EXIT_BAD_INPUT)))
        finally:
            spill.cleanup()
    finally:
        con.close()
    text = _render(columns, rows, fmt)
    if out:
        with open(out, "w") as f:
            if isinstance(text, str):
                f.write(text + "\n")
            else:  # a rich table, rendered as plain text
                from rich.console import Console

                Console(file=f, width=200, no_color=True, force_terminal=False).print(text)
        click.echo(f"{len(rows)} {'row' if len(rows) == 1 else 'rows'} written to {out}", err=True)
    elif isinstance(text, str):
        click.echo(text)
    else:
        from rich.console import Console

        Console(width=max(120, Console().width)).print(text)


@main.command()
@click.argument("step")
@pipeline_argument()
@store_option()
@legacy_pipeline_option
@click.option("--limit", default=5, show_default=True)
@click.option("--where", "where", help="SQL predicate, e.g. \"source = 'domain'\"")
def show(step, pipeline, store, pipeline_opt, limit, where):
    """Pretty-print samples of STEP as chats: datamix show STEP [PIPELINE.yaml | --store PATH]."""
    pipeline = pipeline or pipeline_opt
    import duckdb
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel

    from datamix.sql_readonly import Refused, check, lock_down
    from datamix.store import explain, quote

    con = _open_read_only(_store_path(pipeline, store))
    # --where is SQL text: the query it makes is held to `datamix sql`'s rules (one query, no
    # file access), or "1=1; COPY ... TO 'f'" would write a file
    try:
        try:
            query = check(con, f"SELECT * FROM {quote(step)}" + (f" WHERE {where}" if where else "") + " LIMIT ?")
        except (Refused, duckdb.Error) as e:
            _fail(f"cannot show {step} with --where {where!r}: it must be one SQL condition "
                  f"({str(e).splitlines()[0]})")
        spill = lock_down(con)
        try:
            rel = con.sql(query, params=[limit])
            columns, rows = rel.columns, rel.fetchall()
        except duckdb.Error as e:
            _fail(*(explain(e) or (f"cannot show {step}: {str(e).splitlines()[0]}", EXIT_BAD_INPUT)))
        finally:
            spill.cleanup()
    finally:
        con.close()
    console = Console()
    for r in rows:
        rec = dict(zip(columns, r))
        body = []
        for m in rec.pop("messages", None) or []:
            # samples are data, not markup: "[/]" in a chat must print as it is
            body.append(f"[bold]{escape(str(m['role']))}[/bold]: {escape(str(m['content']))}")
        extras = ", ".join(f"{k}={_cell(v)}" for k, v in rec.items() if k != "sample_id" and v is not None)
        # the other columns go inside the panel, where they wrap: as a subtitle the border cut them
        if extras:
            body.append(f"[dim]{escape(extras)}[/dim]")
        console.print(Panel("\n\n".join(body) or "(no messages)", title=escape(f"{step} {rec.get('sample_id')}")))


@main.command()
@click.argument("sample_id")
@pipeline_argument()
@store_option()
@legacy_pipeline_option
@format_option("tree", "json")
def lineage(sample_id, pipeline, store, pipeline_opt, fmt):
    """Every ancestor of SAMPLE_ID back to its source rows, with the decisions that kept it:
    datamix lineage SAMPLE_ID [PIPELINE.yaml | --store PATH]."""
    pipeline = pipeline or pipeline_opt
    from datamix.lineage import walk

    con = _open_read_only(_store_path(pipeline, store))
    records = walk(con, sample_id)
    con.close()
    if not records:
        _fail(f"no sample {sample_id} in any step of this store")
    if fmt == "json":
        click.echo(json.dumps(records, indent=2, default=str, ensure_ascii=False))
        return
    for r in records:
        pad = "  " * r["depth"]
        where = f"  <- {_origin_text(r['origin'])}" if r.get("origin") else ""
        facts = ", ".join(f"{k}={_cell(r[k]) if k != 'score' else format(r[k], '.3g')}" for k in ("source", "model", "score")
                          if r.get(k) is not None)
        shown = r["sample_id"] if r["sample_id"] is not None else "*"  # * : a whole step's rows (a model's input)
        click.echo(f"{pad}{shown}  [{r['step']} ({r['kind']})]{where}" + (f"  {facts}" if facts else ""))
        if r.get("summary"):
            click.echo(f"{pad}    {r['summary']}")
        for d in r.get("decisions", []):
            score = f" score={d['score']:.3g}" if d.get("score") is not None else ""
            reason = f" ({d['reason']})" if d.get("reason") else ""
            click.echo(f"{pad}    {d['step']}: {'kept' if d['kept'] else 'dropped'}{reason}{score}")


def _origin_text(o: dict) -> str:
    if "line" in o:
        return f"{o['file']}:{o['line']}"
    if "row" in o:
        return f"{o['file']} row {o['row']}"
    return f"{o.get('shard')} sequence {o.get('sequence')}"


@main.command()
@pipeline_argument()
@store_option()
@click.option("--out", type=click.Path(dir_okay=False), help="the HTML file (default: beside the store, NAME.report.html)")
@click.option("--open", "open_", is_flag=True, help="open it in the default browser")
@click.option("--title", help="the page's title (default: datamix report: PIPELINE)")
def report(pipeline, store, out, open_, title):
    """Write one self-contained HTML page about the store: pipeline, funnel, lengths, scores,
    dedup, mix, shards, training, evaluation and cost. It loads nothing at view time."""
    from datamix.report import connection_query, default_out, write

    path = _store_path(pipeline, store)
    con = _open_read_only(path)
    try:
        written = write(connection_query(con), os.path.abspath(path), out or default_out(path), title)
    finally:
        con.close()
    click.echo(written)
    if open_:
        import pathlib
        import webbrowser

        webbrowser.open(pathlib.Path(written).resolve().as_uri())
