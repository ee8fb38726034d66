"""The dedup step's out-of-core MinHash path: the same decisions as in memory, chosen by
`out_of_core` or by the run's memory budget (pipeline `memory_limit:` or DATAMIX_MEMORY_LIMIT),
which is a run setting outside fingerprints."""

from __future__ import annotations

import random

import pytest

from datamix import runner, spec
from datamix.store import Store
from tests.helpers import chat, cli, query, run_pipeline, store_of, write_jsonl, write_pipeline


def _records(seed=0):
    """300 chats, some answers near-duplicates of others (one or two words changed), some copies."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(900)]
    answers = [[rng.choice(vocab) for _ in range(80)] for _ in range(240)]
    for _ in range(60):
        w = list(rng.choice(answers[:240]))
        for pos in rng.sample(range(80), rng.choice([0, 1, 2])):
            w[pos] = "changed"
        answers.append(w)
    rng.shuffle(answers)
    return [{**chat(f"question {i}", " ".join(a)), "score": rng.random()} for i, a in enumerate(answers)]


def _pipeline(tmp_path, out_of_core, **top):
    write_jsonl(tmp_path / "in.jsonl", _records())
    steps = [{"name": "src", "kind": "load", "path": "in.jsonl", "keep_fields": ["score"]},
             {"name": "clean", "kind": "filter", "input": "src",  # dedup reads through a pass-through input
              "rules": [{"rule": "length", "field": "response", "min": 3, "unit": "words"}]},
             {"name": "dd", "kind": "dedup", "input": "clean", "method": "minhash", "fields": ["response"],
              "threshold": 0.75, "keep": "highest", "keep_column": "score", "out_of_core": out_of_core,
              "chunk_size": 64}]
    return write_pipeline(tmp_path, steps, **top)


DECISIONS = "SELECT sample_id, kept, reason, score, related_id FROM dm.decisions WHERE step = 'dd' ORDER BY sample_id"


def _decisions(pipeline):
    return query(store_of(pipeline), DECISIONS)


def _headroom_limit(extra_mb: int = 2000) -> str:
    """A memory_limit `extra_mb` above what this process holds now: the budget counts the whole
    process, and a test process that has run many tests holds more than a fresh one."""
    from datamix.dedup.budget import rss

    return f"{rss() // 10**6 + extra_mb}MB"


def test_out_of_core_step_decides_as_in_memory(tmp_path):
    from datamix.dedup.budget import parse_size, size_text

    logs = []
    decided = {}
    limit = _headroom_limit()
    for mode in (False, True):
        pipeline = _pipeline(tmp_path / str(mode), mode, memory_limit=limit)
        p = spec.load(str(pipeline), [])
        result = runner.run(p, str(p.store_path()), log=logs.append)
        assert result.ok, result.error
        decided[mode] = _decisions(pipeline)
    assert len(decided[False]) > 40  # copies and one- or two-word edits of 80-word answers
    assert decided[True] == decided[False]  # same removed samples, kept sample, similarity
    said = [m for m in logs if "out of core" in m or "out-of-core" in m]
    assert said and f"memory limit {size_text(parse_size(limit))}" in said[0]
    assert not (tmp_path / "True" / ".datamix" / "outputs" / "dd" / "minhash").exists()  # work files removed


def test_memory_budget_chooses_the_path_and_changes_no_fingerprint(tmp_path, monkeypatch):
    pipeline = _pipeline(tmp_path, "auto")
    assert run_pipeline(pipeline).ok
    in_memory = _decisions(pipeline)
    before = runner.fingerprints(spec.load(str(pipeline), []))
    # a budget that 300 texts seem to outgrow (each counted as 10 MB in memory) sends them out of
    # core; every step is still up to date
    from datamix.dedup import ooc

    monkeypatch.setattr(ooc, "IN_MEMORY_BYTES_PER_DOC", 10**7)
    monkeypatch.setenv("DATAMIX_MEMORY_LIMIT", "4GB")
    p = spec.load(str(pipeline), [])
    assert p.memory_settings()[0] == 4 * 10**9
    assert runner.fingerprints(p) == before
    store = Store(str(p.store_path()))
    try:
        assert {e.action for e in runner.plan(p, store)} == {"skip"}
    finally:
        store.close()
    # in a new store, the dedup goes out of core (the log says so) and decides the same
    logs = []
    monkeypatch.setenv("DATAMIX_TEMP_DIRECTORY", str(tmp_path / "spill"))
    result = runner.run(p, str(tmp_path / "other.duckdb"), log=logs.append)
    assert result.ok, result.error
    assert any("dedup dd: out of core, memory limit 4.0 GB" in m for m in logs)
    assert any("memory limit 4.0 GB for the whole process" in m and "DuckDB" in m for m in logs)
    assert query(tmp_path / "other.duckdb", DECISIONS) == in_memory


def test_a_memory_limit_the_process_cannot_keep_is_refused(tmp_path, monkeypatch):
    """500 KB sends even 300 texts out of core, and no process fits in it: the run stops with
    what the limit would need (exit 2) instead of overrunning it."""
    pipeline = _pipeline(tmp_path, "auto")
    monkeypatch.setenv("DATAMIX_MEMORY_LIMIT", "500KB")
    result = cli("run", pipeline)
    assert result.exit_code == 2, result.output
    assert "memory_limit 500 KB is too small for out-of-core MinHash over 300 documents" in result.output
    assert "Raise memory_limit" in result.output and "to at least" in result.output


@pytest.mark.parametrize("value", ["lots", "4 parsecs"])
def test_bad_memory_limit_is_a_clear_error(tmp_path, value):
    pipeline = _pipeline(tmp_path, "auto", memory_limit=value)
    result = cli("validate", pipeline)
    assert result.exit_code == 2
    assert "memory_limit" in result.output and "write e.g. 4GB" in result.output


def test_bad_memory_limit_in_the_environment_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMIX_MEMORY_LIMIT", "plenty")
    result = cli("validate", _pipeline(tmp_path, "auto"))
    assert result.exit_code == 2
    assert "DATAMIX_MEMORY_LIMIT: 'plenty' is not a size" in result.output
