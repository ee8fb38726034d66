"""The runner hands a step's rows to the next step in memory while their commit runs behind.

The next step must see exactly what it would read from the store (same rows, order, types),
the store must end up exactly as without the handoff, and a commit that fails behind the
next step must still fail the step that wrote it, resumable like any failed commit.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from datamix import outputs, runner, spec
from datamix.store import Store

from tests.helpers import query, run_pipeline, short_and_repeated_chats, store_of, write_jsonl, write_pipeline

TABLES = ("raw", "clean", "dedup", "mixed")


def pipeline(folder, name="held"):
    """load (several chunks) -> filter -> dedup -> mix: each step reads the one before it."""
    write_jsonl(folder / "data.jsonl", short_and_repeated_chats(60))
    return write_pipeline(folder, [
        {"name": "raw", "kind": "load", "path": "data.jsonl", "chunk_size": 16},
        {"name": "clean", "kind": "filter", "input": "raw", "chunk_size": 25,
         "rules": [{"rule": "length", "field": "response", "min": 3, "unit": "words"}]},
        {"name": "dedup", "kind": "dedup", "input": "clean", "method": "exact", "fields": ["instruction"]},
        {"name": "mixed", "kind": "mix", "inputs": {"a": "dedup"}, "ratio": {"a": 1.0}, "seed": 3},
    ], name=name)


def contents(store) -> dict:
    out = {t: query(store, f"SELECT * FROM {t} ORDER BY sample_id") for t in TABLES}
    out["raw order"] = query(store, "SELECT sample_id FROM raw ORDER BY rowid")
    for table in ("edges", "decisions", "quarantine"):
        out[table] = query(store, f"SELECT * FROM dm.{table} ORDER BY ALL")
    out["chunks"] = query(store, "SELECT * EXCLUDE (committed_at) FROM dm.chunks ORDER BY ALL")
    out["steps"] = query(store, "SELECT name, state, rows_in, rows_out FROM dm.steps ORDER BY name")
    return out


def test_the_next_step_reads_held_rows_and_the_store_ends_the_same(tmp_path, monkeypatch):
    reads = []
    real = outputs.HeldInput._select
    monkeypatch.setattr(outputs.HeldInput, "_select",
                        lambda self, columns=None: reads.append(self.name) or real(self, columns))
    held = pipeline(tmp_path / "held")
    assert run_pipeline(held).ok
    # raw is held for clean (a batch step); clean is a pass-through (no rows of its own to hold);
    # dedup likewise; mixed reads dedup from the store
    assert set(reads) == {"raw"}

    monkeypatch.setattr(runner, "HOLD_BYTES", 0)  # nothing held: every step reads the store
    reads.clear()
    plain = pipeline(tmp_path / "plain")
    assert run_pipeline(plain).ok
    assert reads == []
    assert contents(store_of(held)) == contents(store_of(plain))


def test_held_rows_read_as_the_stored_table_reads(tmp_path):
    """A select over the held Arrow rows gives what the same select over the stored table gives."""
    assert run_pipeline(pipeline(tmp_path)).ok
    store = Store(str(store_of(tmp_path / "held.yaml")))
    try:
        stored = store.con.sql("SELECT * FROM raw").to_arrow_table()
        held = outputs.HeldInput(store, "raw", pa.Table.from_batches(stored.to_batches(max_chunksize=7)))
        from_store = outputs.StoreInput(store, "raw")
        for columns in (None, "sample_id, messages[1].content AS q", "origin_line + 1 AS n"):
            assert held.arrow(columns).equals(from_store.arrow(columns))
        assert held.column_names() == from_store.column_names() and len(held) == len(from_store)
        assert [t.num_rows for _, t in held.slices(25)] == [25, 25, 10]
    finally:
        store.close()


def test_a_commit_failing_behind_the_next_step_fails_its_own_step_and_resumes(tmp_path, monkeypatch):
    ref = pipeline(tmp_path / "ref", name="ref")
    assert run_pipeline(ref).ok
    real = Store.commit_chunk

    def last_raw_chunk_fails(self, step, key, *a, **k):
        if step == "raw" and key.endswith(":48"):
            raise OSError("No space left on device")
        return real(self, step, key, *a, **k)

    monkeypatch.setattr(Store, "commit_chunk", last_raw_chunk_fails)
    broken = pipeline(tmp_path / "broken", name="ref")
    result = run_pipeline(broken)
    assert not result.ok and result.failed_step == "raw"
    assert "OSError: No space left on device" in result.error
    store = store_of(broken)
    assert query(store, "SELECT name, state FROM dm.steps ORDER BY name") == [("raw", "failed")]
    assert query(store, "SELECT count(*) FROM dm.chunks WHERE step = 'raw'") == [(3,)]  # 0, 16, 32 kept

    monkeypatch.setattr(Store, "commit_chunk", real)
    assert run_pipeline(broken).ok
    assert contents(store) == contents(store_of(ref))


@pytest.mark.parametrize("actions, why", [
    ({"raw": "resume", "clean": "run", "dedup": "run", "mixed": "run"}, "its earlier chunks are in the store only"),
    ({"raw": "run", "clean": "skip", "dedup": "skip", "mixed": "skip"}, "nothing after it runs"),
    ({"raw": "run", "clean": "skip", "dedup": "run", "mixed": "run"}, "the next step to run does not read it"),
])
def test_rows_are_held_only_for_the_next_step_of_a_step_run_from_its_start(tmp_path, actions, why):
    p = spec.load(str(pipeline(tmp_path)))
    raw = p.order()[0]
    assert runner._Held(p, actions).start(raw) is None, why
    assert runner._Held(p, {s: "run" for s in actions}).start(raw) is not None


def test_holding_stops_at_a_second_schema_or_past_the_limit(tmp_path, monkeypatch):
    p = spec.load(str(pipeline(tmp_path)))
    raw, actions = p.order()[0], {s.name: "run" for s in p.order()}
    held = runner._Held(p, actions).start(raw)
    held.add(pa.table({"sample_id": ["a"], "parent_ids": [["x"]]}))  # parent_ids is not stored
    assert held.input(None, "raw").column_names() == ["sample_id"]
    held.add(pa.table({"sample_id": ["b"], "n": [1]}))  # another schema: inserted by name, not held
    assert held.input(None, "raw") is None

    monkeypatch.setattr(runner, "HOLD_BYTES", 100)
    held = runner._Held(p, actions).start(raw)
    held.add(pa.table({"sample_id": ["x" * 200]}))
    assert held.input(None, "raw") is None
