"""Loading the MinHash kernels in the background (datamix.dedup.warm.start_for): started only for
a MinHash dedup step that will run, done before that step, and harmless when it fails."""

from __future__ import annotations

import subprocess
import sys

from datamix.dedup.warm import Warming, start_for
from datamix.steps.dedup import DedupConfig

from tests.helpers import chat, query, run_pipeline, store_of, write_jsonl, write_pipeline


def dedup_step(name: str, method: str, **opts) -> DedupConfig:
    return DedupConfig.model_validate({"name": name, "kind": "dedup", "input": "src", "method": method, **opts})


def test_started_only_for_a_minhash_step_that_will_run():
    minhash, exact = dedup_step("near", "minhash"), dedup_step("same", "exact")
    asked = []

    def will_run(step):
        asked.append(step.name)
        return step.name != "near"

    assert start_for([exact, minhash], will_run).thread is None  # minhash up to date, exact needs no numba
    assert asked == ["near"]  # only MinHash steps are looked up in the store
    warming = start_for([exact, minhash], lambda s: True)
    assert warming.thread is not None
    warming.wait()
    assert warming.thread is None
    warming.wait()  # waiting twice (the step, then the run's end) is fine


def test_the_kernels_the_step_runs_are_loaded_when_it_is_done():
    """In a fresh process: after the wait, the fused kernel has its compiled variant, so the
    step's first call loads nothing."""
    probe = (
        "from datamix.dedup import kernels\n"
        "from tests.dedup.test_warm import dedup_step\n"
        "from datamix.dedup.warm import start_for\n"
        "assert not kernels.FUSED_WORD_KERNEL.signatures\n"
        "start_for([dedup_step('near', 'minhash', threshold=0.7)], lambda s: True).wait()\n"
        "print(len(kernels.FUSED_WORD_KERNEL.signatures))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 1


def test_a_failing_warm_up_leaves_the_error_to_the_step():
    class Broken:
        def model_copy(self, update):
            raise RuntimeError("broken options")

    warming = Warming([(Broken(), False)])
    warming.wait()  # no exception here: the step meets and reports the problem itself


def test_a_run_with_a_minhash_step_removes_the_same_rows_as_before(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog again and again",
             "the quick brown fox jumps over the lazy dog again and again!",
             "a completely different sentence about something else entirely here"]
    write_jsonl(tmp_path / "in.jsonl", [chat("q", t) for t in texts])
    pipeline = write_pipeline(tmp_path, [
        {"name": "src", "kind": "load", "path": "in.jsonl"},
        {"name": "near", "kind": "dedup", "input": "src", "method": "minhash", "fields": ["response"]}])
    result = run_pipeline(pipeline)
    assert result.ok, result.error
    removed = query(store_of(pipeline), "SELECT s.origin_line, d.reason FROM dm.decisions d "
                    "JOIN src s USING (sample_id) WHERE d.step = 'near' AND NOT d.kept")
    assert removed == [(2, "near_duplicate")]
