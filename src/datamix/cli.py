"""The `datamix` command: parses arguments, delegates, prints. No logic here.

Exit status: 0 success, 1 a step or run failed, 2 bad spec or bad input.
Heavy modules are imported inside the commands so `datamix --help` is instant.
"""

from __future__ import annotations

import json
import os
import sys

import click

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _fail(message: str, status: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def _load_pipeline(path: str, overrides=(), check_files: bool = True):
    from datamix.spec import SpecError, load

    try:
        return load(path, list(overrides), check_files=check_files)
    except SpecError as e:
        click.echo(f"{path}: {len(e.problems)} problem(s):", err=True)
        for p in e.problems:
            click.echo(f"  {p}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _store_path(pipeline_path: str | None, store: str | None) -> str:
    """--store wins; else the pipeline's store; else the only store under ./.datamix."""
    if store:
        return store
    if pipeline_path:
        from datamix.spec import SpecError, store_path_of

        try:
            return store_path_of(pipeline_path)
        except SpecError as e:
            _fail("; ".join(e.problems))
    found = sorted(f for f in os.listdir(".datamix") if f.endswith(".duckdb")) if os.path.isdir(".datamix") else []
    if len(found) == 1:
        return os.path.join(".datamix", found[0])
    _fail("name the store: give PIPELINE.yaml or --store PATH" + (f" (found {', '.join(found)})" if found else ""))


def _open_read_only(path: str):
    from datamix.store import StoreError, connect

    try:
        return connect(path, read_only=True)
    except StoreError as e:
        _fail(str(e), EXIT_FAILED if "being written" in str(e) else EXIT_BAD_INPUT)


class _Main(click.Group):
    """Every command's last word on a store that cannot be read or a full disk: one message
    saying what happened and what to do (datamix.store.explain), never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            from datamix.store import explain

            problem = explain(e)
            if problem is None:
                raise
            _fail(*problem)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="datamix")
def main():
    """datamix: rebuild an instruct model's general SFT data from the model itself and mix it
    with your domain data, so fine-tuning does not make it forget.

    Pipelines are YAML; the store is one DuckDB file you can query with `datamix sql`."""
    # datamix shows its own progress; transformers' per-model bars would interleave with it
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# ---- pipelines -----------------------------------------------------------------


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--store", help="DuckDB file to use instead of the pipeline's store")
@click.option("--quiet", "-q", is_flag=True, help="print nothing on success (no progress, no status table)")
@click.option("--verbose", "-v", is_flag=True, help="log every committed chunk")
@click.option("--sweep", "sweep_spec", metavar="VAR=V1,V2,...",
              help="one arm per value of a var: the steps that depend on it (and their descendants) run once per "
                   "value as NAME__VAR_VALUE, the rest once; evaluate steps compare every arm")
@click.option("--pick", "pick_rule", metavar="RULE", help="with --sweep: how to pick the best value, e.g. "
              "'max_gain, forgetting<=50%' (the default: the most domain gain with at most half the no-replay "
              "arm's forgetting), 'max_gain, forgetting<=0.05', 'min_forgetting, kept>=90%'")
def run(pipeline, overrides, store, quiet, verbose, sweep_spec, pick_rule):
    """Run PIPELINE's steps in dependency order, skipping those up to date.

    OVERRIDES are KEY=VALUE: a var (n=100) or a step option (steps.mix.ratio.general=0.8)."""
    from datamix import runner
    from datamix.store import StoreError

    sweep = None
    if sweep_spec or pick_rule:
        sweep, rule = _load_sweep(pipeline, overrides, sweep_spec, pick_rule)
        spec = sweep.pipeline
    else:
        spec = _load_pipeline(pipeline, overrides)
    # --store is a path from the current folder (a `store:` in the YAML is relative to the YAML)
    path = spec.store_path(os.path.abspath(store) if store else None)
    try:
        result = runner.run(spec, path, progress=not quiet and sys.stderr.isatty(),
                            log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)), verbose=verbose)
    except StoreError as e:
        _fail(str(e), EXIT_FAILED)
    if not result.ok:
        from datamix.store import explain

        problem = explain(result.error or "", path)  # a damaged store or a full disk met by a step
        if problem:
            _fail(f"step {result.failed_step} stopped: {problem[0]}", problem[1])
        click.echo(f"step {result.failed_step} failed: {result.error}", err=True)
        click.echo(f"committed work is kept; fix the cause and rerun `datamix run {pipeline}` to resume.", err=True)
        sys.exit(EXIT_BAD_INPUT if result.bad_input else EXIT_FAILED)
    if not quiet:
        _print_status(result.steps, path, "table")
    if sweep is not None:
        _print_sweep(sweep, rule, path)


def _print_replicates(sweep, rows: list[dict], metric: str) -> None:
    """Per arm over the sweep's values (seeds): mean +- standard deviation and the range."""
    from datamix.sweep import replicates

    click.echo(f"per arm over the {len(sweep.values)} values of {sweep.var} ({metric}; mean +- sd [min, max]):")

    def cell(stat, places=4):
        if stat is None:
            return ""
        mean, low, high, sd = stat
        return f"{mean:.{places}f} +- {sd:.{places}f} [{low:.{places}f}, {high:.{places}f}]"

    head = ["arm", "n", "forgetting", "domain gain", "forgetting removed", "gain kept"]
    table = [[e["arm"], str(e["n"]), cell(e["forgetting"]), cell(e["domain_gain"]), cell(e["forgetting_removed"], 3),
              cell(e["domain_gain_kept"], 3)] for e in replicates(rows)]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    for line in [head, ["-" * w for w in widths], *table]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def _load_sweep(pipeline, overrides, sweep_spec, pick_rule):
    from datamix.spec import SpecError
    from datamix.sweep import expand, parse_pick, parse_sweep

    if not sweep_spec:
        _fail("--pick goes with --sweep VAR=V1,V2,...")
    try:
        var, values = parse_sweep(sweep_spec)
        rule = parse_pick(pick_rule)
        return expand(pipeline, list(overrides), var, values), rule
    except SpecError as e:
        click.echo(f"{pipeline}: {len(e.problems)} problem(s):", err=True)
        for p in e.problems:
            click.echo(f"  {p}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _print_sweep(sweep, rule, path: str) -> None:
    """The forgetting-vs-domain-gain trade-off per value, and the value the rule picks."""
    from datamix.sweep import pick, report

    con = _open_read_only(path)
    try:
        rows, metric = report(con, sweep)
    finally:
        con.close()
    click.echo(f"sweep {sweep.var}: {len(sweep.values)} arms ({', '.join(map(str, sweep.values))}); "
               f"steps per arm: {', '.join(sweep.variants)}")
    if not rows:
        click.echo("no evaluate step compares the arms: add one (kind: evaluate) over the train steps to get the "
                   "forgetting-vs-gain table and a pick")
        return
    def fmt(x, places=4):
        return "" if x is None else f"{x:.{places}f}"

    table = [[str(r["value"]) if r["value"] is not None else "-", r["model"], fmt(r["forgetting"]), fmt(r["domain_gain"]),
              fmt(r["forgetting_removed"], 3), fmt(r["domain_gain_kept"], 3)] for r in rows]
    head = [sweep.var, "model", f"forgetting ({metric})", f"domain gain ({metric})", "forgetting removed", "gain kept"]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    for line in [head, ["-" * w for w in widths], *table]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    if sweep.evaluate_value:  # every value evaluated apart (against its own no-replay arm): replicates
        _print_replicates(sweep, rows, metric)
        return
    best, why = pick(rows, rule)
    if best is None:
        click.echo(f"best {sweep.var}: none; {why}")
    else:
        click.echo(f"best {sweep.var}: {best['value']} ({best['model']}); {why}")


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(pipeline, overrides):
    """Check PIPELINE without running it: kinds, options, inputs, cycles, files, models."""
    spec = _load_pipeline(pipeline, overrides)
    click.echo(f"{pipeline}: ok ({len(spec.steps)} steps, {len(spec.models)} models)")


@main.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--store", help="DuckDB file to compare against")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def plan(pipeline, overrides, store, fmt):
    """Which steps would run and which are up to date, and why."""
    from datamix import runner
    from datamix.store import Store, StoreError

    spec = _load_pipeline(pipeline, overrides)
    path = spec.store_path(os.path.abspath(store) if store else None)
    st = None
    if os.path.exists(path):
        try:
            st = Store(path, read_only=True)
        except StoreError as e:
            _fail(str(e), EXIT_FAILED)
    entries = runner.plan(spec, st)
    if st:
        st.close()
    if fmt == "json":
        click.echo(json.dumps([e.__dict__ for e in entries], indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("step", "kind", "action", "why", "model calls", "cached", "tokens in / out", "USD")
    for e in entries:
        calls = "" if e.model_calls is None else f"{e.model_calls:,}" + ("" if e.calls_exact else " (at most)")
        cached = "" if e.model_calls is None else ("?" if e.cached_calls is None else f"{e.cached_calls:,}")
        tokens = "" if e.model_calls is None else (
            f"{'?' if e.prompt_tokens is None else format(e.prompt_tokens, ',')} / "
            f"{'?' if e.completion_tokens is None else format(e.completion_tokens, ',')}")
        table.add_row(e.name, e.kind, e.action, Text(e.reason), calls, cached, tokens,
                      "" if e.usd is None else f"{'' if e.prompt_tokens is not None else '>= '}${e.usd:,.4f}")
    Console(width=max(120, Console().width)).print(table)  # a narrow terminal wrapped "up to date"
    if any(e.model_calls for e in entries):
        click.echo("calls the response cache would answer are not counted; tokens are estimates (completions: the "
                   "step's earlier average, else its max_tokens); USD from each model's price: per million tokens",
                   err=True)


@main.command()
@click.argument("pipeline", required=False, type=click.Path(dir_okay=False))
@click.option("--store", help="DuckDB file (default: the pipeline's store)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def status(pipeline, store, fmt):
    """Per step: state, rows in and out, rows dropped per reason, seconds."""
    path = _store_path(pipeline, store)
    rows = []
    if os.path.exists(path):
        _status_of_busy_store(path, fmt)  # returns when the store is not being written
        con = _open_read_only(path)
        rows = _step_rows(con)
        con.close()
    elif not pipeline:
        _fail(f"no store at {path}: run the pipeline first")
    if pipeline:  # steps of the pipeline not in the store yet are pending
        known = {r["name"] for r in rows}
        spec = _load_pipeline(pipeline, check_files=False)
        rows += [dict(name=s.name, kind=s.kind, state="pending", rows_in=0, rows_out=0, seconds=0.0, dropped={},
                      quarantined=0) for s in spec.steps if s.name not in known]
    _print_status(rows, path, fmt)
    if fmt == "table" and os.path.exists(path):
        _print_trained_on(path)
        _print_forgetting(path)


def _print_forgetting(path: str) -> None:
    """dm.forgetting, when an evaluate step has filled it: forgetting and domain gain per arm and metric."""
    from datamix.eval.report import forgetting_table

    con = _open_read_only(path)
    try:
        table = forgetting_table(con)
    finally:
        con.close()
    if table is not None:
        from rich.console import Console

        Console(width=max(120, Console().width)).print(table)


def _status_of_busy_store(path: str, fmt: str) -> None:
    """While a run writes the store (DuckDB lets nobody else open it), print its progress file and exit."""
    from datamix.progress import describe, read_progress
    from datamix.store import StoreError, connect

    try:
        connect(path, read_only=True).close()
        return
    except StoreError as e:
        if "being written" not in str(e):
            _fail(str(e))
        busy = str(e)
    progress = read_progress(path)
    if progress is None:
        _fail(busy, EXIT_FAILED)
    if fmt == "json":
        click.echo(json.dumps({"in_progress": True, **progress}, indent=2, default=str))
    else:
        for line in describe(progress):
            click.echo(line)
    sys.exit(0)


def _print_trained_on(path: str) -> None:
    """Which shards each trained model was trained on (the manifest's hash), so a stale model shows."""
    from datamix.store import quote

    con = _open_read_only(path)
    lines = []
    for (name,) in con.execute("SELECT name FROM dm.steps WHERE kind = 'train' AND state = 'done' ORDER BY name").fetchall():
        cols = [c[0] for c in con.execute(f"DESCRIBE {quote(name)}").fetchall()]
        if "shards_manifest_sha256" in cols:
            for model, shards, sha, steps in con.execute(
                    f"SELECT model_path, shards, shards_manifest_sha256, steps FROM {quote(name)}").fetchall():
                lines.append(f"{name}: {model} trained {steps} steps on {shards} (manifest sha256 {sha[:12]})")
    con.close()
    for line in lines:
        click.echo(line)


def _step_rows(con) -> list[dict]:
    try:
        steps = con.execute(
            "SELECT name, kind, state, rows_in, rows_out, round(seconds, 2), error FROM dm.steps "
            "ORDER BY started_at NULLS LAST, name"
        ).fetchall()
    except Exception:
        return []
    dropped: dict[str, dict[str, int]] = {}
    # a kept sample with a reason (a truncated shard sequence) is counted too, marked "(kept)"
    for step, reason, n in con.execute(
        "SELECT step, CASE WHEN kept THEN reason || ' (kept)' ELSE coalesce(reason, 'dropped') END, count(*) "
        "FROM dm.decisions WHERE NOT kept OR reason IS NOT NULL GROUP BY ALL ORDER BY 3 DESC"
    ).fetchall():
        dropped.setdefault(step, {})[reason] = n
    quarantined = dict(con.execute("SELECT step, count(*) FROM dm.quarantine GROUP BY step").fetchall())
    return [
        dict(name=n, kind=k, state=s, rows_in=ri, rows_out=ro, seconds=sec, dropped=dropped.get(n, {}),
             quarantined=quarantined.get(n, 0), error=err)
        for n, k, s, ri, ro, sec, err in steps
    ]


def _print_status(rows: list[dict], path: str, fmt: str) -> None:
    if rows and "dropped" not in rows[0]:  # rows straight from Store.steps()
        con = _open_read_only(path)
        rows = _step_rows(con)
        con.close()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("step", "kind", "state", "rows in", "rows out", "dropped (reason: rows)", "seconds",
                  title=f"store {path}")
    for r in rows:
        drops = ", ".join(f"{k}: {v:,}" for k, v in r["dropped"].items())
        if r.get("quarantined"):
            drops = ", ".join(x for x in (drops, f"quarantined: {r['quarantined']:,}") if x)
        table.add_row(Text(r["name"]), r["kind"], r["state"], f"{r['rows_in']:,}", f"{r['rows_out']:,}", Text(drops),
                      f"{r['seconds'] or 0:.2f}")
    Console(width=max(120, Console().width)).print(table)


# ---- looking at the store -------------------------------------------------------




@main.command()
@click.argument("query")
@click.argument("pipeline", required=False, type=click.Path(dir_okay=False))
@click.option("--store", help="DuckDB file (default: the pipeline's store)")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
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


def _render(columns, rows, fmt):
    if fmt == "json":
        return json.dumps([dict(zip(columns, r)) for r in rows], indent=2, default=str, ensure_ascii=False)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[json.dumps(v, default=str) if isinstance(v, (list, dict)) else v for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns)
    for r in rows:
        table.add_row(*[Text(_cell(v)) for v in r])  # Text: cells are data, never rich markup
    return table


def _cell(v) -> str:
    if v is None:
        return ""
    s = json.dumps(v, default=str, ensure_ascii=False) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= 120 else s[:117] + "..."


@main.command()
@click.argument("step")
@click.option("--store", help="DuckDB file")
@click.option("--pipeline", "-p", type=click.Path(dir_okay=False), help="take the store from this pipeline")
@click.option("--limit", default=5, show_default=True)
@click.option("--where", "where", help="SQL predicate, e.g. \"source = 'domain'\"")
def show(step, store, pipeline, limit, where):
    """Pretty-print samples of STEP as chats."""
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
@click.option("--store", help="DuckDB file")
@click.option("--pipeline", "-p", type=click.Path(dir_okay=False), help="take the store from this pipeline")
@click.option("--format", "fmt", type=click.Choice(["tree", "json"]), default="tree")
def lineage(sample_id, store, pipeline, fmt):
    """Every ancestor of SAMPLE_ID back to its source rows, with the decisions that kept it."""
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
@click.argument("pipeline", required=False, type=click.Path(dir_okay=False))
@click.option("--store", help="DuckDB file (default: the pipeline's store)")
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


# ---- models and training --------------------------------------------------------


@main.group()
def models():
    """Model helpers (tiny offline models for tests and the quickstart)."""


@models.command("tiny")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--arch", type=click.Choice(["llama", "qwen2"]), default="llama", show_default=True)
@click.option("--chat-template", default="chatml", show_default=True, help="a bundled name or a .jinja file")
@click.option("--reward", is_flag=True, help="a reward model (sequence classification, 1 label)")
@click.option("--seed", default=0, show_default=True)
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=8), help="hidden size")
@click.option("--layers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--heads", default=4, show_default=True, type=click.IntRange(min=1), help="attention heads")
@click.option("--vocab", default=1000, show_default=True, type=click.IntRange(min=300), help="BPE vocabulary size")
@click.option("--tokenizer-data", "tokenizer_data", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL / JSON / text files to train the tokenizer on (default: a small built-in text)")
@click.argument("more_data", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def models_tiny(path, arch, chat_template, reward, seed, hidden, layers, heads, vocab, tokenizer_data, more_data):
    """Write a tiny random model with a tokenizer trained on the spot to PATH.

    --tokenizer-data FILE [FILE ...] trains the BPE tokenizer on those files."""
    from datamix.models.tiny import build_tiny_model

    if more_data and not tokenizer_data:  # files after PATH belong to --tokenizer-data
        _fail(f"unexpected arguments {' '.join(more_data)}: data files go after --tokenizer-data")
    try:
        out = build_tiny_model(path, arch=arch, chat_template=chat_template, reward=reward, seed=seed,
                               hidden_size=hidden, num_layers=layers, num_heads=heads, vocab_size=vocab,
                               tokenizer_data=[*tokenizer_data, *more_data] or None)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    click.echo(out)


@main.command()
@click.argument("model_path", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--system-prompt", default=None, help="include this system prompt where the template allows one")
def template(model_path, fmt, system_prompt):
    """Print the pre-query template derived from MODEL_PATH's chat template."""
    from transformers import AutoTokenizer

    from datamix.templates import derive_pre_query_template

    try:
        tok = AutoTokenizer.from_pretrained(model_path)
        pq = derive_pre_query_template(tok, system_prompt=system_prompt)
    except (OSError, ValueError) as e:
        _fail(f"{model_path}: {e}")
    if fmt == "json":
        click.echo(json.dumps({"pre_query_template": pq.text}))
    else:
        click.echo(pq.text, nl=False)
        if sys.stdout.isatty():
            click.echo()


@main.command("eval")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--set", "set_args", multiple=True, metavar="NAME=FILE[:metric[,metric]]",
              help="an evaluation set (a file load reads) and its metrics: nll (default), exact_match, choice")
@click.option("--role", "role_args", multiple=True, metavar="NAME=general|domain", help="which side a set is on")
@click.option("--option", "option_args", multiple=True, metavar="NAME.KEY=VALUE",
              help="a set option (prompt_field, response_field, shape, limit) or metric option (preset, max_tokens, "
                   "options_field, answer_field, regex)")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--chat-template", default=None, help="a bundled template name or .jinja file (default: the model's)")
@click.option("--device", default="auto", show_default=True, help="auto: cuda when available, else cpu")
@click.option("--dtype", default="auto", show_default=True, help="auto: the checkpoint's own; float32, bfloat16, float16")
def eval_(model_dir, set_args, role_args, option_args, fmt, batch_size, chat_template, device, dtype):
    """Evaluate MODEL_DIR on evaluation sets and print the metrics (the evaluate step outside a pipeline)."""
    from datamix.eval.adhoc import AdhocError, build_sets, evaluate_folder
    from datamix.eval.report import metrics_rows

    try:
        sets = build_sets(list(set_args), list(role_args), list(option_args))
        rows = evaluate_folder(model_dir, sets, batch_size, chat_template, device, dtype=dtype)
    except AdhocError as e:
        _fail(str(e))
    columns, table = metrics_rows(rows, for_table=fmt == "table")
    out = _render(columns, table, fmt)
    if fmt == "table":
        from rich.console import Console

        Console(width=max(120, Console().width)).print(out)
    else:
        click.echo(out)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--nproc-per-node", default=1, show_default=True, help="processes on this node (torchrun)")
def train(config, overrides, nproc_per_node):
    """Train with the FSDP2 recipe on exported shards: CONFIG.yaml [KEY=VALUE ...].

    Other --flags go to torchrun, for several nodes: --nnodes 2 --node-rank 0 --rdzv-endpoint host:29500."""
    from datamix.train.launch import train_command

    flags = [o for o in overrides if o.startswith("-")]
    settings = [o for o in overrides if not o.startswith("-")]
    sys.exit(train_command(config, settings, nproc_per_node=nproc_per_node, extra_torchrun_args=flags))


if __name__ == "__main__":
    main()
