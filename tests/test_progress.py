"""The progress file and what `datamix status` makes of it (datamix/progress.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from datamix.progress import HEARTBEAT_S, Progress, describe, progress_path, read_progress


def test_a_run_writes_its_progress_beside_the_store_and_removes_it_at_the_end(tmp_path):
    store = str(tmp_path / "s.duckdb")
    with Progress(False, store, {"run_id": "r1", "pipeline": "p"}) as bars:
        bars.plan(["load", "answers", "best"])
        bars.mark("load", "skipped")
        step = bars.step("answers", "generate", 10, calls_total=40)
        step.advance(4)
        step.record_call({"cached": True, "completions": 8})
        step.record_call({"cached": False, "completions": 12, "retries": 3, "failed": 0})
        step.call_progress(5)  # five completions of a call still in flight
        bars.write()
        data = read_progress(store)
        assert data["alive"] and data["pid"] == os.getpid() and data["run_id"] == "r1"
        assert [s["state"] for s in data["steps"]] == ["skipped", "running", "pending"]
        now = data["step"]
        assert (now["name"], now["unit"], now["done"], now["total"]) == ("answers", "rows", 4, 10)
        assert now["calls"]["done"] == 8 + 12 + 5 and now["calls"]["total"] == 40
        assert (now["calls"]["cached"], now["calls"]["retried"], now["calls"]["failed"]) == (8, 3, 0)
        assert now["eta_s"] is not None and now["eta_s"] >= 0
        text = "\n".join(describe(data))
        assert "is in progress" in text and "step answers (generate)" in text and "4/10 rows" in text
        assert "model calls 25/40 (8 cached, 3 retried, 0 failed)" in text
        assert "load skipped, answers running, best pending" in text
        bars.mark("answers", "done")
        assert read_progress(store)["step"] is None
    assert not os.path.exists(progress_path(store))
    assert HEARTBEAT_S <= 5  # "refreshed every few seconds"


def test_a_file_left_by_a_killed_run_says_its_process_is_gone(tmp_path):
    store = str(tmp_path / "s.duckdb")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(progress_path(store), "w") as f:
        json.dump({"pid": int(dead.stdout), "run_id": "r0", "pipeline": "p", "steps": [], "step": None}, f)
    data = read_progress(store)
    assert data["alive"] is False
    assert "was in progress, but its process is gone" in describe(data)[0]


def test_training_steps_are_counted_from_the_trainers_metrics(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n')
    with Progress(False, str(tmp_path / "s.duckdb")) as bars:
        step = bars.step("train", "train", 8, unit="training steps", poll=lambda: sum(1 for _ in open(metrics)))
        snap = step.snapshot()
    assert (snap["unit"], snap["done"], snap["total"]) == ("training steps", 2, 8)
