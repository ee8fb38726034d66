"""loop: the runner-owned loop of a `source` step (units, committed keys, progress, the check after
the last unit), with a toy kind and with load's state across files."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from datamix.loop import chunks_of, step_chunks
from datamix.steps.base import REGISTRY, BadInput, Context, Output, Source, StepConfig, StepKind, Unit
from datamix.steps.load import LoadConfig


def toy_kind(seen: list):
    """A source kind of three units; it records what the loop asks of it, in order."""

    def run(cfg, inputs, ctx):
        def units():
            for i in range(3):
                seen.append(("listed", i))  # lazily: a unit is listed when the loop reaches it
                yield Unit(f"part-{i}", i)

        def one(unit):
            seen.append(("run", unit.item))
            return Output(rows=pa.table({"sample_id": [f"s{unit.item}"]}), rows_in=unit.item + 10)

        return Source(units=units(), run=one, committed=lambda unit: seen.append(("committed", unit.item)),
                      finish=lambda: seen.append(("finish",)))

    return StepKind(kind="toy", config=StepConfig, run=run, shape="source")


def test_the_loop_skips_committed_units_counts_the_others_and_finishes_after_the_last():
    seen, progress = [], []
    ctx = Context(step="t", pipeline_dir=".", output_dir=".", seed=0, done_keys=frozenset({"part-1"}),
                  progress=lambda rows, tokens=0: progress.append(rows))
    chunks = []
    for chunk in step_chunks(toy_kind(seen), StepConfig(name="t", kind="toy"), {}, ctx):
        seen.append(("yielded", chunk.key))
        chunks.append(chunk)
    assert [(c.key, c.rows_in, c.rows.column("sample_id").to_pylist()) for c in chunks] == [
        ("part-0", 10, ["s0"]), ("part-2", 12, ["s2"])]
    # each chunk is yielded (and so committed by the runner) before the next unit is even listed
    assert seen == [("listed", 0), ("run", 0), ("yielded", "part-0"), ("listed", 1), ("committed", 1),
                    ("listed", 2), ("run", 2), ("yielded", "part-2"), ("finish",)]
    assert progress == [10, 12]


def test_a_resumed_load_still_counts_the_bad_rows_of_the_parts_it_skips(tmp_path):
    """max_bad_fraction is over all records of all files: the part a killed run committed still counts."""
    good = json.dumps({"prompt": "q?", "response": "a."})
    (tmp_path / "a.jsonl").write_text("\n".join(["{bad", good, good, good]) + "\n")  # the bad row: part a.jsonl:0
    (tmp_path / "b.jsonl").write_text("\n".join([good] * 4) + "\n")
    cfg = LoadConfig(name="l", kind="load", path="*.jsonl", chunk_size=2, max_bad_fraction=0.1)
    ctx = Context(step="l", pipeline_dir=str(tmp_path), output_dir=str(tmp_path), seed=0,
                  done_keys=frozenset({"a.jsonl:0"}))
    made = []
    with pytest.raises(BadInput, match=r"1 of 8 input rows are malformed \(12.5%\), over max_bad_fraction=0.1"):
        for chunk in step_chunks(REGISTRY["load"], cfg, {}, ctx):
            made.append((chunk.key, chunk.rows.column("origin_line").to_pylist(), chunk.quarantine.num_rows))
    # the parts after the committed one, each with its lines, were made before the check failed
    assert made == [("a.jsonl:2", [3, 4], 0), ("b.jsonl:0", [1, 2], 0), ("b.jsonl:2", [3, 4], 0)]
    # with the fraction allowed, the same resumed run makes the same parts and no error
    ok = chunks_of(cfg.model_copy(update={"max_bad_fraction": 0.2}), {}, ctx)
    assert [(c.key, c.rows.column("origin_line").to_pylist(), c.quarantine.num_rows) for c in ok] == made


def test_limit_counts_records_across_files_and_keys_stay_per_file(tmp_path):
    good = json.dumps({"prompt": "q?", "response": "a."})
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jsonl").write_text("\n".join([good] * 3) + "\n")
    cfg = LoadConfig(name="l", kind="load", path="*.jsonl", chunk_size=2, limit=5)
    ctx = Context(step="l", pipeline_dir=str(tmp_path), output_dir=str(tmp_path), seed=0)
    chunks = chunks_of(cfg, {}, ctx)
    assert [(c.key, c.rows.column("origin_file").to_pylist(), c.rows.column("origin_line").to_pylist())
            for c in chunks] == [("a.jsonl:0", ["a.jsonl"] * 2, [1, 2]), ("a.jsonl:2", ["a.jsonl"], [3]),
                                 ("b.jsonl:0", ["b.jsonl"] * 2, [1, 2])]


def test_a_source_kind_written_for_the_old_protocol_fails_with_what_to_return(tmp_path):
    """A step kind that still yields chunks instead of returning a Source is named, not an AttributeError."""
    from typing import Literal

    from datamix.steps.base import Chunk, register
    from tests.helpers import run_pipeline, write_pipeline

    class OldConfig(StepConfig):
        kind: Literal["old_source"]

    @register("old_source", OldConfig)
    def _old(cfg, inputs, ctx):
        yield Chunk(key="all", rows_in=0)

    try:
        result = run_pipeline(write_pipeline(tmp_path, [{"name": "a", "kind": "old_source"}]))
        assert not result.ok and result.failed_step == "a"
        assert "'old_source' has shape 'source'" in result.error and "not generator" in result.error
    finally:
        REGISTRY.pop("old_source", None)
