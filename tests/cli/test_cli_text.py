"""Samples are data: brackets in a chat print as they are in show, sql and status (never as rich markup)."""

from __future__ import annotations

from tests.helpers import cli, run_pipeline, store_of, write_jsonl, write_pipeline

TRICKY = "keep [/] and [bold]this[/bold] and [red]that"


def test_brackets_in_samples_print_verbatim(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": TRICKY, "response": "[/red] fine"}])
    pipeline = write_pipeline(tmp_path, [{"name": "a", "kind": "load", "path": "a.jsonl"}])
    assert run_pipeline(pipeline).ok
    store = store_of(pipeline)
    shown = cli("show", "a", "--store", store)
    assert shown.exit_code == 0 and TRICKY in shown.output and "[/red] fine" in shown.output
    table = cli("sql", "SELECT messages[1].content AS c FROM a", "--store", store)
    assert table.exit_code == 0 and TRICKY in table.output
