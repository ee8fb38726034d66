"""datamix plan's cost of model calls: new calls exact against the store's cache, tokens, money.

A real OpenAI-compatible server on 127.0.0.1 answers; after each plan the pipeline is
run and the server's own request count must grow by exactly the calls plan announced.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler

import pytest
from tests.helpers import send_json, start_server


class Server:
    def __init__(self):
        self.completions = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n, last = body.get("n", 1), body["messages"][-1]["content"]
                judged = '{"score": 4, "reason": "fine"}' if "response_format" in body else "Fine.\nScore: 4"
                texts = [(judged if "[Response]" in last else f"answer {body.get('seed')} {i} three") for i in range(n)]
                with server.lock:
                    server.completions += n
                send_json(self, 200, {"choices": [{"index": i, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": texts[i]}} for i in range(n)],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": 3 * n}})

        self.httpd, self.url = start_server(Handler)


PIPELINE = """
name: est
store: est.duckdb
models:
  m: {{backend: openai, path: m, base_url: {url}, price: {{input_per_m: 1.0, output_per_m: 4.0}}}}
steps:
  - {{name: instructions, kind: load, path: instructions.jsonl}}
  - {{name: answers, kind: generate, input: instructions, models: [m], n: {n}, sampling: {{max_tokens: 50}}}}
  - {{name: scored, kind: judge, input: answers, judges: [m], aggregate: {aggregate}}}
"""


def datamix(*args, cwd):
    return subprocess.run([sys.executable, "-m", "datamix.cli", *args], cwd=cwd, capture_output=True, text=True)


def plan(folder, **values):
    (folder.path / "est.yaml").write_text(PIPELINE.format(**{"n": 2, "aggregate": "mean", **values,
                                                             "url": folder.server.url}))
    out = datamix("plan", "est.yaml", "--format", "json", cwd=folder.path)
    assert out.returncode == 0, out.stderr
    return {e["name"]: e for e in json.loads(out.stdout)}


@pytest.fixture
def folder(tmp_path):
    server = Server()
    with open(tmp_path / "instructions.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"prompt": f"Question number {i}?", "response": "-"}) + "\n")
    yield types.SimpleNamespace(path=tmp_path, server=server)
    server.httpd.shutdown()
    server.httpd.server_close()


def run_and_count(folder) -> int:
    """Completions the server answered during one `datamix run`."""
    before = folder.server.completions
    out = datamix("run", "est.yaml", "-q", cwd=folder.path)
    assert out.returncode == 0, out.stderr
    return folder.server.completions - before


def test_plan_counts_only_the_calls_the_cache_cannot_answer(folder):
    first = plan(folder)
    # nothing in a store yet: how many instructions the file holds is known only once it is loaded
    assert first["answers"]["action"] == "run" and first["answers"]["model_calls"] is None
    assert run_and_count(folder) == 24

    again = plan(folder)
    assert {e["action"] for e in again.values()} == {"skip"} and again["answers"]["model_calls"] is None

    # a change that asks the same questions: every call is a cache hit
    same = plan(folder, aggregate="median")
    assert same["scored"]["action"] == "run" and same["scored"]["calls_exact"] is True
    assert same["scored"]["model_calls"] == 0 and same["scored"]["cached_calls"] == 12
    assert run_and_count(folder) == 0

    # one more answer per instruction: 6 new calls, 12 cached; the judge, downstream, by formula
    more = plan(folder, n=3, aggregate="median")
    answers = more["answers"]
    assert answers["calls_exact"] is True and answers["model_calls"] == 6 and answers["cached_calls"] == 12
    assert answers["completion_tokens"] == 6 * 3  # the step's earlier average (3 per answer), not max_tokens
    assert answers["prompt_tokens"] > 0
    assert answers["usd"] == pytest.approx((answers["prompt_tokens"] * 1.0 + 18 * 4.0) / 1e6)
    scored = more["scored"]
    # downstream of a step that reruns: its formula (the cache not known), tokens from its earlier calls
    assert scored["calls_exact"] is False and scored["cached_calls"] is None and scored["model_calls"] == 18
    assert scored["prompt_tokens"] == 18 * 10 and scored["completion_tokens"] == 18 * 3
    assert scored["usd"] == pytest.approx((18 * 10 * 1.0 + 18 * 3 * 4.0) / 1e6)
    new_calls = run_and_count(folder)
    assert new_calls == 6 + 6  # the judge's 12 old candidates were cached after all
    assert more["answers"]["model_calls"] + more["scored"]["model_calls"] >= new_calls  # formula: at most
