"""A small real pipeline whose store has something for every section of the report.

Generation and judging go to a real OpenAI-compatible HTTP server on 127.0.0.1 (no
torch in those steps, so the run is quick); shards and a 3-step training run use a
tiny random model built on the spot. The server counts what it served, so tests can
compare the report's cost columns with the server's own numbers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from datamix.models.tiny import build_tiny_model
from tests.helpers import send_json, start_server


class AnswerServer:
    """Answers chats deterministically: judges get 'Score: N', others an answer (some short, some
    duplicated). Counts requests and the tokens it reports per model."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.completion_tokens: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model, n, last = body["model"], body.get("n", 1), body["messages"][-1]["content"]
                texts = [server.answer(model, last, i, "response_format" in body) for i in range(n)]
                usage = {"prompt_tokens": len(last.split()), "completion_tokens": sum(len(t.split()) for t in texts)}
                with server.lock:
                    server.requests[model] = server.requests.get(model, 0) + 1
                    server.prompt_tokens[model] = server.prompt_tokens.get(model, 0) + usage["prompt_tokens"]
                    server.completion_tokens[model] = server.completion_tokens.get(model, 0) + usage["completion_tokens"]
                choices = [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
                           for i, t in enumerate(texts)]
                send_json(self, 200, {"choices": choices, "usage": usage})

        self.httpd, self._url = start_server(Handler)

    @staticmethod
    def answer(model: str, prompt: str, i: int, structured: bool = False) -> str:
        if "[Response]" in prompt:  # a judge's rubric: score by the response's length, each judge a little apart
            response = prompt.split("[Response]", 1)[1].split("Give a one-sentence", 1)[0].strip()
            offset = 0 if model == "writer" else 1
            score = 1 + (len(response.split()) + offset * (len(response) % 2)) % 5
            # asked for JSON (response_format), a real server answers JSON
            return json.dumps({"score": score, "reason": "reasonable"}) if structured else f"Reasonable.\nScore: {score}"
        topic = re.sub(r"[^a-z0-9 ]", "", prompt.lower())
        k = int(re.sub(r"\D", "", prompt) or 0)
        if model == "critic":  # both samples the same: exact duplicates for dedup
            return f"In short, {topic} is a good question and here is a plain answer."
        if k % 4 == 0 and i == 1:
            return "ok"  # too short: the filter drops it
        return f"Here is answer {i} about {topic}: " + " ".join(f"point{j}" for j in range(3 + (k + i) % 7)) + "."

    @property
    def url(self):
        return self._url

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


PIPELINE = """
name: tiny-report
seed: 0
models:
  writer: {{backend: openai, path: writer, base_url: {url}, price: {{input_per_m: 0.15, output_per_m: 0.6}}}}
  critic: {{backend: openai, path: critic, base_url: {url}}}
  tiny: {{backend: transformers, path: {model}}}
steps:
  - {{name: instructions, kind: load, path: instructions.jsonl}}
  - {{name: answers, kind: generate, input: instructions, models: [writer, critic], n: 2}}
  - {{name: scored, kind: judge, input: answers, judges: [writer, critic]}}
  - name: clean
    kind: filter
    input: scored
    rules: [{{rule: length, field: response, min: 12, unit: chars}}]
  - {{name: dedup, kind: dedup, input: clean, method: exact, fields: [response], keep: highest, keep_column: score}}
  - {{name: benchmark, kind: load, path: benchmark.jsonl}}
  - {{name: decon, kind: dedup, input: dedup, method: exact, fields: [response], reference: benchmark}}
  - {{name: best, kind: select, input: decon}}
  - {{name: domain, kind: load, path: domain.jsonl, prompt_field: question, response_field: answer}}
  - name: mix
    kind: mix
    inputs: {{general: best, domain: domain}}
    ratio: {{general: 0.7, domain: 0.3}}
    seed: 0
  - {{name: shards, kind: export, input: mix, format: shards, shards: {{tokenizer: {model}, seq_len: 128}}}}
  - name: train
    kind: train
    input: shards
    model: tiny
    options: {{max_steps: 3, batch_tokens: 256, lr: 1.0e-3, warmup_steps: 1}}
  - {{name: report, kind: report, inputs: {{model: train}}, path: report.html}}
"""


CONTAMINATED = "In short, tell me about topic 3 and why it matters is a good question and here is a plain answer."


def datamix(*args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "datamix.cli", *args], cwd=cwd, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def report_run(tmp_path_factory):
    """(folder, store path, server) after a real `datamix run` of PIPELINE."""
    folder = tmp_path_factory.mktemp("report")
    model = build_tiny_model(str(folder / "tiny"), arch="llama", chat_template="chatml")
    with open(folder / "instructions.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"prompt": f"Tell me about topic {i} and why it matters", "response": "-"}) + "\n")
    with open(folder / "domain.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"question": f"Domain question {i}?", "answer": f"Domain answer {i}, " + "detail " * i})
                    + "\n")
    with open(folder / "benchmark.jsonl", "w") as f:  # holds one of the critic's answers: a contamination hit
        f.write(json.dumps({"prompt": "a benchmark question", "response": CONTAMINATED}) + "\n")
    server = AnswerServer()
    (folder / "report.yaml").write_text(PIPELINE.format(url=server.url, model=model))
    run = datamix("run", "report.yaml", "-q", cwd=folder)
    assert run.returncode == 0, run.stderr[-4000:]
    yield folder, folder / ".datamix" / "tiny-report.duckdb", server
    server.close()
