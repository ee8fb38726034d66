"""A run seen from outside while it holds the store, and what its model calls cost.

A real `datamix run` (a subprocess) generates through the openai backend against a
real HTTP server on 127.0.0.1 that holds its answers until the test lets them go, so
the run is reliably in the middle of a step while `datamix status` and `datamix sql`
look at the busy store. Afterwards dm.calls must add up to what the server itself
counted (requests, prompt and completion tokens, failures it answered with 503).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

import duckdb
import pytest

from datamix.models import Completion
from tests.helpers import send_json, start_server

PROMPT_TOKENS, TOKENS_PER_ANSWER = 7, 3


class GatedServer:
    """OpenAI-compatible chat server that answers only once `gate` is set; counts what it served.

    fail_first: the first that many requests get a 503 (retried by the backend)."""

    def __init__(self, fail_first=0):
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.requests = self.prompt_tokens = self.completion_tokens = self.failures = self.waiting = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.waiting += 1
                server.gate.wait(120)
                with server.lock:
                    fail = server.failures < fail_first
                    server.failures += fail
                if fail:
                    return self.reply(503, {"error": "busy"})
                n = body.get("n", 1)
                choices = [{"index": i, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"answer {i} to {body['messages'][-1]['content']}"}}
                           for i in range(n)]
                usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": TOKENS_PER_ANSWER * n}
                with server.lock:
                    server.requests += 1
                    server.prompt_tokens += usage["prompt_tokens"]
                    server.completion_tokens += usage["completion_tokens"]
                self.reply(200, {"choices": choices, "usage": usage})

            def reply(self, status, payload):
                send_json(self, status, payload)

        self.httpd, self._url = start_server(Handler)

    @property
    def url(self):
        return self._url

    def close(self):
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


PIPELINE = """
name: costs
store: .datamix/costs.duckdb
models:
  remote:
    backend: openai
    path: served-model
    base_url: {url}
    max_retries: 4
    price: {{input_per_m: 2.0, output_per_m: 8.0}}
steps:
  - {{name: instructions, kind: load, path: instructions.jsonl}}
  - {{name: {name}, kind: generate, input: instructions, models: [remote], n: 2, chunk_size: 4}}
  - {{name: clean, kind: filter, input: {name}, rules: [{{rule: length, field: response, max: 40, unit: chars}}]}}
"""


def datamix(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "datamix.cli", *args], cwd=cwd, capture_output=True, text=True, **kw)


def write_instructions(folder, n):
    with open(folder / "instructions.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Say something about {'very ' * (i % 3)}{i}.", "response": "-"}) + "\n")


def wait_for(predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server():
    s = GatedServer(fail_first=2)
    yield s
    s.close()


def test_status_and_sql_on_a_store_a_run_holds_and_the_cost_of_its_calls(tmp_path, server):
    write_instructions(tmp_path, 6)
    (tmp_path / "costs.yaml").write_text(PIPELINE.format(url=server.url, name="answers"))
    store = tmp_path / ".datamix" / "costs.duckdb"
    run = subprocess.Popen([sys.executable, "-m", "datamix.cli", "run", "costs.yaml", "-v"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the run is inside `answers`, its requests held by the server
        def first_request():
            if run.poll() is not None:
                raise AssertionError(f"the run ended before its first request: {run.communicate()[1][-3000:]}")
            return server.waiting >= 1

        wait_for(first_request, "the first request")
        progress_file = str(store) + ".progress.json"
        progress = json.loads(open(progress_file).read())
        assert progress["pid"] == run.pid and progress["step"]["name"] == "answers"
        assert {s["name"]: s["state"] for s in progress["steps"]} == {"instructions": "done", "answers": "running",
                                                                      "clean": "pending"}
        assert progress["step"]["calls"]["total"] == 6 * 2 and progress["step"]["calls"]["done"] == 0

        status = datamix("status", "costs.yaml", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert "in progress" in status.stdout and f"process {run.pid}" in status.stdout
        assert "step answers (generate)" in status.stdout and "0/6 rows" in status.stdout
        assert "model calls 0/12" in status.stdout
        as_json = json.loads(datamix("status", "costs.yaml", "--format", "json", cwd=tmp_path).stdout)
        assert as_json["in_progress"] is True and as_json["step"]["name"] == "answers"

        sql = datamix("sql", "SELECT 1", "costs.yaml", cwd=tmp_path)
        assert sql.returncode == 1 and "Traceback" not in sql.stderr
        assert f"being written by process {run.pid}" in sql.stderr and "datamix status" in sql.stderr
    finally:
        server.gate.set()
        out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    assert "committed answers chunk rows-0-4: 4 rows in, 8 out" in err
    # a pass-through step writes no rows: -v says what it kept, not "0 out"
    assert "committed clean chunk rows-0-12: 12 rows in, 8 kept, 4 dropped" in err
    assert not os.path.exists(str(store) + ".progress.json")  # removed when the run ends

    con = duckdb.connect(str(store), read_only=True)
    calls, cached, prompt_t, completion_t, retries, failed, usd = con.execute(
        "SELECT sum(calls), sum(cache_hits), sum(prompt_tokens), sum(completion_tokens), sum(retries), sum(failed), "
        "sum(usd) FROM dm.cost WHERE step = 'answers' AND model = 'remote'").fetchall()[0]
    per_chunk = con.execute("SELECT count(*) FROM dm.calls WHERE NOT cached").fetchall()[0][0]
    con.close()
    # the server's own counts: one request per instruction (n=2 in one request)
    assert server.requests == 6
    assert calls == 12 and cached == 0 and failed == 0
    assert prompt_t == server.prompt_tokens and completion_t == server.completion_tokens
    assert usd == pytest.approx((server.prompt_tokens * 2.0 + server.completion_tokens * 8.0) / 1e6)
    assert per_chunk == 2  # one row per backend call: two chunks of instructions
    if "retries" in Completion.__dataclass_fields__:  # the backend reports its retries (engineer D's change)
        assert retries == server.failures == 2

    # the same step under another name asks the same questions: no request, every answer a cache hit
    (tmp_path / "costs.yaml").write_text(PIPELINE.format(url=server.url, name="answers_again"))
    again = datamix("run", "costs.yaml", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert server.requests == 6
    con = duckdb.connect(str(store), read_only=True)
    hits, saved = con.execute("SELECT sum(cache_hits), sum(saved_usd) FROM dm.cost WHERE step = 'answers_again'").fetchall()[0]
    con.close()
    assert hits == 12 and saved == pytest.approx(usd)
