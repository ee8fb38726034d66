"""The `report` step kind: writes the page from the runner's store, records the file."""

from __future__ import annotations

import pytest

from datamix.report import connection_query
from datamix.steps.base import Context, StepError
from datamix.loop import chunks_of
from datamix.steps.report import ReportConfig
from datamix.store import Store


def test_the_step_writes_the_page_of_the_store_and_records_the_file(tmp_path):
    store = Store(str(tmp_path / "s.duckdb"))
    store.begin_step("rows", "load", "fp", {}, {}, False, "r1")
    store.finish_step("rows", "done", 1.5)
    ctx = Context(step="report", pipeline_dir=str(tmp_path), output_dir=str(tmp_path / "outputs" / "report"), seed=0,
                  query=connection_query(store.con))
    chunks = chunks_of(ReportConfig(name="report", kind="report", title="My data"), {}, ctx)
    store.close()
    out = tmp_path / "outputs" / "report" / "report.html"
    assert [c.files for c in chunks] == [[str(out)]]
    page = out.read_text()
    assert "<title>My data</title>" in page and 'data-step="rows"' in page
    assert str(tmp_path / "s.duckdb") in page  # the store it describes
    # a committed report is not written again
    ctx.done_keys = frozenset({"all"})
    assert chunks_of(ReportConfig(name="report", kind="report"), {}, ctx) == []


def test_without_the_runners_store_the_step_says_so(tmp_path):
    ctx = Context(step="report", pipeline_dir=str(tmp_path), output_dir=str(tmp_path), seed=0)
    with pytest.raises(StepError, match="needs the runner's store"):
        chunks_of(ReportConfig(name="report", kind="report"), {}, ctx)
