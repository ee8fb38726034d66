"""Lineage: an exported mixed sample back to its source file and line, in tree and JSON form."""

from __future__ import annotations

import json

from tests.helpers import cli, query, store_of


def export_ids(store, source):
    return [sid for (sid,) in query(store, "SELECT e.sample_id FROM export e JOIN mix m USING (sample_id) "
                                           "WHERE m.source = ? ORDER BY e.row", [source])]


def test_exported_general_sample_back_to_its_source_line(core_ran):
    store = store_of(core_ran)
    sid = export_ids(store, "general")[0]
    result = cli("lineage", sid, "--store", store, "--format", "json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [(r["step"], r["kind"], r["depth"]) for r in records] == [
        ("export", "export", 0), ("mix", "mix", 1), ("dedup", "dedup", 2), ("clean", "filter", 3),
        ("general", "load", 4)]
    assert records[0]["sample_id"] == records[1]["sample_id"] == sid
    assert records[1]["source"] == "general"
    row = records[0]["origin"]["row"]
    assert records[0]["origin"]["file"] == "data.jsonl"
    line_in_export = (core_ran.parent / "out" / "data.jsonl").read_text().splitlines()[row - 1]
    assert json.loads(line_in_export)["sample_id"] == sid
    source = records[-1]
    origin = source["origin"]
    assert origin["file"] == "data/general.jsonl"
    # the source line in the file holds the very chat that was exported
    line = (core_ran.parent / origin["file"]).read_text().splitlines()[origin["line"] - 1]
    assert json.loads(line)["messages"] == json.loads(line_in_export)["messages"]
    assert query(store, "SELECT origin_line FROM general WHERE sample_id = ?", [source["sample_id"]]) == [
        (origin["line"],)]
    # the filter and the dedup let it through: the decisions that kept it are listed
    assert [d["step"] for r in records for d in r["decisions"] if d["kept"]] == ["dedup", "clean"]
    assert all("origin" not in r for r in records[1:-1])


def test_exported_domain_sample_and_the_tree(core_ran):
    store = store_of(core_ran)
    sid = export_ids(store, "domain")[0]
    records = json.loads(cli("lineage", sid, "--store", store, "--format", "json").stdout)
    assert [r["step"] for r in records] == ["export", "mix", "domain"]
    origin = records[-1]["origin"]
    line = json.loads((core_ran.parent / origin["file"]).read_text().splitlines()[origin["line"] - 1])
    mixed = query(store, "SELECT messages FROM mix WHERE sample_id = ?", [sid])[0][0]
    assert [m["content"] for m in mixed] == [line["question"], line["answer"]]
    tree = cli("lineage", sid, core_ran)
    assert tree.exit_code == 0
    lines = tree.stdout.splitlines()
    assert lines[0].startswith(f"{sid}  [export (export)]  <- data.jsonl row ")
    assert f"[domain (load)]  <- data/domain.jsonl:{origin['line']}" in tree.stdout
    assert any(x.startswith("    " + records[-1]["sample_id"]) for x in lines)  # depth 2: indented twice


def test_lineage_of_a_sample_that_was_filtered_out(core_ran):
    """A dropped sample still has its source row; the decision that dropped it is one query away."""
    store = store_of(core_ran)
    sid, reason = query(store, "SELECT sample_id, reason FROM dm.decisions WHERE step = 'clean' AND NOT kept "
                               "ORDER BY reason LIMIT 1")[0]
    records = json.loads(cli("lineage", sid, "--store", store, "--format", "json").stdout)
    assert [(r["step"], r["depth"]) for r in records] == [("general", 0)]
    assert records[0]["origin"]["line"] == 13 and reason == "length(response)"


def test_a_duplicate_removed_by_dedup_points_at_the_kept_sample(core_ran):
    store = store_of(core_ran)
    rows = query(store, """
        SELECT g.origin_line, k.origin_line FROM dm.decisions d
        JOIN general g ON g.sample_id = d.sample_id JOIN general k ON k.sample_id = d.related_id
        WHERE d.step = 'dedup' AND NOT d.kept""")
    assert rows == [(15, 1)]
