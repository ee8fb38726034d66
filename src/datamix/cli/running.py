"""`datamix run`, `validate` and `plan`: a pipeline's steps, what would run and why."""

from __future__ import annotations

import json
import os
import sys

import click

from datamix.cli.common import (EXIT_BAD_INPUT, EXIT_FAILED, _fail, _load_pipeline, _open_read_only, _store_path,
                         format_option, main, pipeline_argument, store_option)


@main.command()
@pipeline_argument(required=True)
@click.argument("overrides", nargs=-1)
@store_option("DuckDB file to use instead of the pipeline's store")
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
        sweep, rule = _load_sweep(pipeline, overrides, sweep_spec, pick_rule, store)
        spec = sweep.pipeline
    else:
        spec = _load_pipeline(pipeline, overrides, store=store)
    # --store is a path from the current folder (a `store:` in the YAML is relative to the YAML)
    path = spec.store_path(os.path.abspath(store) if store else None)
    try:
        result = runner.run(spec, path, progress=not quiet and sys.stderr.isatty(),
                            log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)), verbose=verbose,
                            quiet=quiet)
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


def _load_sweep(pipeline, overrides, sweep_spec, pick_rule, store=None):
    from datamix.spec import SpecError
    from datamix.sweep import expand, parse_pick, parse_sweep

    if not sweep_spec:
        _fail("--pick goes with --sweep VAR=V1,V2,...")
    try:
        var, values = parse_sweep(sweep_spec)
        rule = parse_pick(pick_rule)
        return expand(pipeline, list(overrides), var, values, store=store), rule
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
    # one pick per swept train step (M, P, ... arms each get their best value)
    arms = dict.fromkeys(r["arm_of"] for r in rows if r["value"] is not None)
    for arm in arms:
        best, why = pick([r for r in rows if r["value"] is None or r["arm_of"] == arm], rule)
        if best is None:
            click.echo(f"best {sweep.var} for {arm}: none; {why}")
        else:
            click.echo(f"best {sweep.var} for {arm}: {best['value']} ({best['model']}); {why}")


@main.command()
@pipeline_argument(required=True)
@click.argument("overrides", nargs=-1)
def validate(pipeline, overrides):
    """Check PIPELINE without running it: kinds, options, inputs, cycles, files, models."""
    spec = _load_pipeline(pipeline, overrides)
    click.echo(f"{pipeline}: ok ({len(spec.steps)} steps, {len(spec.models)} models)")


@main.command()
@pipeline_argument(required=True)
@click.argument("overrides", nargs=-1)
@store_option("DuckDB file to compare against")
@format_option("table", "json")
def plan(pipeline, overrides, store, fmt):
    """Which steps would run and which are up to date, and why."""
    from datamix import runner
    from datamix.store import Store, StoreError

    spec = _load_pipeline(pipeline, overrides, store=store)
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
@pipeline_argument()
@store_option()
@format_option("table", "json")
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
