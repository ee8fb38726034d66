"""report: write `datamix report`'s HTML page at the end of a pipeline.

    - name: report
      kind: report
      inputs: {data: export, model: train}   # what it comes after: it reruns when they change
      path: report.html                       # beside the YAML; default outputs/<step>/report.html

The page is datamix.report's (every section, from the store as it is when the step
runs); the step reads the store through the runner's query function and writes no
rows, only the file, which the chunk records so that a deleted page is written again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from datamix.steps.base import Chunk, Context, InputTable, StepConfig, StepError, register


class ReportConfig(StepConfig):
    kind: Literal["report"]
    path: str | None = Field(default=None, description="the HTML file; default outputs/<step>/report.html")
    title: str | None = None


@register("report", ReportConfig)
def run(cfg: ReportConfig, inputs: dict[str, InputTable], ctx: Context) -> Iterator[Chunk]:
    from datamix.report import write

    key = "report"
    if key in ctx.done_keys:
        return
    if ctx.query is None:
        raise StepError(f"step {cfg.name!r}: a report step needs the runner's store (ctx.query); run it with datamix run")
    out = ctx.resolve(cfg.path) if cfg.path else os.path.join(ctx.output_dir, "report.html")
    store = ctx.query("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    write(ctx.query, store[0]["path"] if store else "", out, cfg.title)
    yield Chunk(key=key, rows_in=sum(len(t) for t in inputs.values()), files=[out])
