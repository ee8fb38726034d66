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
from typing import Literal

from pydantic import Field

from datamix.steps.base import Context, InputTable, Output, StepConfig, StepError, register


class ReportConfig(StepConfig):
    kind: Literal["report"]
    path: str | None = Field(default=None, description="the HTML file; default outputs/<step>/report.html")
    title: str | None = None


@register("report", ReportConfig, shape="whole")
def run(cfg: ReportConfig, inputs: dict[str, InputTable], ctx: Context) -> Output:
    from datamix.report import write

    if ctx.query is None:
        raise StepError(f"step {cfg.name!r}: a report step needs the runner's store (ctx.query); run it with datamix run")
    out = ctx.resolve(cfg.path) if cfg.path else os.path.join(ctx.output_dir, "report.html")
    store = ctx.query("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    write(ctx.query, store[0]["path"] if store else "", out, cfg.title)
    return Output(files=[out])
