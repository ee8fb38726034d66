"""select: best of N per instruction, deterministic ties, decisions for every candidate."""

from __future__ import annotations

import polars as pl
import pytest

from datamix.ids import mint
from datamix.steps.base import BadInput, Context, InputTable
from datamix.loop import chunks_of
from datamix.steps.select import SelectConfig

MESSAGES = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))

# (sample_id, instruction_id, score, answer)
CANDIDATES = [
    ("a1", "A", 3.0, "medium answer"),
    ("a2", "A", 4.5, "the best answer"),
    ("a3", "A", None, "unscored"),
    ("b1", "B", 4.0, "a longer answer here"),  # ties with b2 and b3 on score
    ("b2", "B", 4.0, "short"),
    ("b3", "B", 4.0, "tiny!"),  # same length as b2: sample_id decides (b2)
    ("c1", "C", 1.5, "poor"),
    ("c2", "C", 2.0, "weak"),
]


def inputs(rows=CANDIDATES):
    frame = pl.DataFrame(
        {"sample_id": [r[0] for r in rows], "parent_ids": [["x"] for _ in rows], "instruction_id": [r[1] for r in rows],
         "score": [r[2] for r in rows],
         "messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": r[3]}] for r in rows]},
        schema_overrides={"messages": MESSAGES, "score": pl.Float64},
    )
    table = frame.sample(fraction=1.0, shuffle=True, seed=1).to_arrow()  # input order must not matter
    return {"input": InputTable("judged", lambda cols: table, table.num_rows)}


def ctx(done=frozenset()):
    return Context(step="best", pipeline_dir=".", output_dir=".", seed=0, done_keys=frozenset(done))


def collect(cfg, done=frozenset()):
    chunks = chunks_of(cfg, inputs(), ctx(done))
    return chunks, pl.concat([c.rows for c in chunks]), pl.concat([c.decisions for c in chunks])


def test_winners_and_reasons():
    _, rows, decisions = collect(SelectConfig(name="best", kind="select", min_score=2.5))
    assert rows["winner_id"].to_list() == ["a2", "b2"]
    assert rows["sample_id"].to_list() == mint("best", ["a2", "b2"]).to_list()
    assert rows["parent_ids"].to_list() == [["a2"], ["b2"]]
    assert rows["score"].to_list() == [4.5, 4.0]
    got = {r["sample_id"]: (r["kept"], r["reason"], r["related_id"]) for r in decisions.to_dicts()}
    assert got == {
        "a1": (False, "lost", "a2"), "a2": (True, None, None), "a3": (False, "no_score", "a2"),
        "b1": (False, "lost", "b2"), "b2": (True, None, None), "b3": (False, "lost", "b2"),
        "c1": (False, "below_min_score", None), "c2": (False, "below_min_score", None),
    }
    assert decisions.filter(pl.col("sample_id") == "a1")["score"].to_list() == [3.0]


def test_prefer_longer_and_no_min_score():
    _, rows, _ = collect(SelectConfig(name="best", kind="select", prefer="longer"))
    assert rows["winner_id"].to_list() == ["a2", "b1", "c2"]


def test_rerun_is_identical_and_a_committed_select_is_not_redone():
    cfg = SelectConfig(name="best", kind="select")
    chunks, rows, decisions = collect(cfg)
    assert [c.key for c in chunks] == ["all"]  # a whole step: one chunk
    _, again, again_dec = collect(cfg)
    assert again.equals(rows) and again_dec.equals(decisions)
    assert chunks_of(cfg, inputs(), ctx({"all"})) == []


def test_missing_column_is_an_actionable_error():
    with pytest.raises(BadInput, match="no column 'grp'"):
        collect(SelectConfig(name="best", kind="select", group_by="grp"))
