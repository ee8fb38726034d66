"""Whole generation pipelines through the real CLI: kill and resume, and secrets.

A run killed (SIGKILL) mid-generation and resumed must give the same final table
as an uninterrupted run with the same seed, without redoing committed chunks.
An API key set in the environment must never reach the store, its files or the logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from http.server import BaseHTTPRequestHandler

import duckdb
import pytest

from datamix.models.tiny import build_tiny_model
from tests.helpers import send_json, start_server


def datamix(*args, cwd, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "datamix.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny"), arch="llama", chat_template="chatml")


def write_instructions(folder, n):
    with open(folder / "instructions.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Write a sentence about the number {i}.", "response": "(unused)"}) + "\n")


GENERATION = """
name: gen
store: store.duckdb
seed: 3
models:
  m: {{backend: transformers, path: {model}, batch_size: 4}}
steps:
  - {{name: instructions, kind: load, path: instructions.jsonl}}
  - name: answers
    kind: generate
    input: instructions
    models: [m]
    n: 2
    chunk_size: 2
    sampling: {{temperature: 1.0, max_tokens: 6}}
"""


def answers(folder):
    con = duckdb.connect(str(folder / "store.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT sample_id, instruction_id, sample_index, messages FROM answers ORDER BY sample_id").fetchall()
    chunks = con.execute("SELECT key, count(*) FROM dm.chunks WHERE step = 'answers' GROUP BY key").fetchall()
    con.close()
    return rows, chunks


def test_killed_generation_resumes_to_the_uninterrupted_result(tmp_path, tiny):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
        write_instructions(folder, 10)
        (folder / "gen.yaml").write_text(GENERATION.format(model=tiny))
    assert datamix("run", "gen.yaml", "-q", cwd=whole).returncode == 0

    # Kill the second run as soon as two chunks of answers have committed.
    proc = subprocess.Popen([sys.executable, "-m", "datamix.cli", "run", "gen.yaml", "-v"], cwd=killed,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = 0
    for line in proc.stderr:
        if "committed answers chunk" in line:
            seen += 1
            if seen == 2:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    con = duckdb.connect(str(killed / "store.duckdb"), read_only=True)
    before = dict(con.execute("SELECT key, committed_at FROM dm.chunks WHERE step = 'answers'").fetchall())
    state = con.execute("SELECT state FROM dm.steps WHERE name = 'answers'").fetchall()[0][0]
    con.close()
    assert 2 <= len(before) < 5 and state == "partial"

    resumed = datamix("run", "gen.yaml", "-v", cwd=killed)
    assert resumed.returncode == 0, resumed.stderr
    # committed chunks were not generated again
    recommitted = [k for k in before if f"chunk {k}:" in resumed.stderr]
    assert recommitted == []
    rows_whole, chunks_whole = answers(whole)
    rows_killed, chunks_killed = answers(killed)
    assert len(rows_whole) == 10 * 2
    assert rows_killed == rows_whole
    assert sorted(chunks_killed) == sorted(chunks_whole) and all(n == 1 for _, n in chunks_killed)


KEY = "sk-datamix-test-0b6f3e9d2c-do-not-store"


class JudgeServer:
    """A small OpenAI-compatible server: answers chats, scores when asked to rate."""

    def __init__(self):
        self.auth = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.auth.append(self.headers.get("Authorization"))
                last = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
                text = "Score: 4" if "1 to 5" in last or "1-5" in last or "score" in last.lower() else "An answer."
                choices = [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                           for i in range(body.get("n", 1))]
                send_json(self, 200, {"choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

        self.httpd, self.url = start_server(Handler)


HOSTED = """
name: hosted
store: .datamix/hosted.duckdb
models:
  remote:
    backend: openai
    path: served-model
    base_url: {url}
    api_key_env: DATAMIX_TEST_SECRET
steps:
  - {{name: instructions, kind: load, path: instructions.jsonl}}
  - {{name: answers, kind: generate, input: instructions, models: [remote], n: 2}}
  - {{name: scored, kind: judge, input: answers, judges: [remote]}}
  - {{name: best, kind: select, input: scored}}
"""


def test_the_api_key_never_reaches_the_store_or_the_logs(tmp_path):
    server = JudgeServer()
    write_instructions(tmp_path, 4)
    (tmp_path / "hosted.yaml").write_text(HOSTED.format(url=server.url))
    env = {**os.environ, "DATAMIX_TEST_SECRET": KEY, "DATAMIX_DEBUG": "1"}
    run = datamix("run", "hosted.yaml", "-v", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert f"Bearer {KEY}" in server.auth  # the key was really used
    status = datamix("status", "hosted.yaml", "--format", "json", cwd=tmp_path, env=env)
    assert {r["name"]: r["rows_out"] for r in json.loads(status.stdout)}["best"] == 4
    dump = datamix("sql", "SELECT * FROM dm.steps", "hosted.yaml", "--format", "json", cwd=tmp_path, env=env)
    for text in (run.stdout, run.stderr, status.stdout, dump.stdout):
        assert KEY not in text
    files = [os.path.join(root, f) for root, _, fs in os.walk(tmp_path / ".datamix") for f in fs]
    assert files
    for path in files:
        with open(path, "rb") as f:
            assert KEY.encode() not in f.read(), f"the key leaked into {path}"


def test_an_unset_key_variable_stops_the_run_before_any_step(tmp_path):
    write_instructions(tmp_path, 2)
    (tmp_path / "hosted.yaml").write_text(HOSTED.format(url="http://127.0.0.1:9/v1"))
    env = {k: v for k, v in os.environ.items() if k != "DATAMIX_TEST_SECRET"}
    run = datamix("run", "hosted.yaml", cwd=tmp_path, env=env)
    assert run.returncode == 2
    assert "DATAMIX_TEST_SECRET" in run.stderr and "Traceback" not in run.stderr
    con = duckdb.connect(str(tmp_path / ".datamix" / "hosted.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM dm.steps").fetchall() == [(0,)]  # nothing ran, not even load
    con.close()


def test_a_missing_model_folder_is_bad_input(tmp_path):
    write_instructions(tmp_path, 2)
    (tmp_path / "gen.yaml").write_text(GENERATION.format(model=tmp_path / "no-such-model"))
    run = datamix("run", "gen.yaml", cwd=tmp_path)
    assert run.returncode == 2
    assert "no-such-model" in run.stderr and "Traceback" not in run.stderr
