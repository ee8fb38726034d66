"""What every `datamix` command shares: the group, exit statuses, failing with a message, finding
the pipeline and store, rendering rows, and the options every command spells the same way.

The command modules (running, inspecting, tools) import these from here, and the package
imports the command modules, so nothing imports back into the package.
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


def _load_pipeline(path: str, overrides=(), check_files: bool = True, store: str | None = None):
    from datamix.spec import SpecError, load

    try:
        return load(path, list(overrides), check_files=check_files, store=store)
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


# ---- options every command spells the same way ----------------------------------------

def store_option(help: str = "DuckDB file (default: the pipeline's store)"):
    return click.option("--store", help=help)


def format_option(*choices: str, default: str | None = None):
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=default or choices[0],
                        show_default=True)


def pipeline_argument(required: bool = False):
    """The pipeline is a positional PIPELINE.yaml in every command (its store, with no --store)."""
    return click.argument("pipeline", required=required, type=click.Path(dir_okay=False))


def legacy_pipeline_option(f):
    """`-p PIPELINE.yaml`, as show and lineage once took it; hidden, kept so old commands still work."""
    return click.option("--pipeline", "-p", "pipeline_opt", type=click.Path(dir_okay=False), hidden=True)(f)
