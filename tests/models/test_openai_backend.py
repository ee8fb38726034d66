"""The openai backend against a real local HTTP server that fails at random."""

import json
import logging
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datamix.models import OpenAIModel, Prompt, SamplingParams, load_backend
from datamix.models.openai import (
    OpenAIBackend,
    OpenAIBackendError,
    backoff_delay,
    parse_retry_after,
    request_body,
)

KEY = "sk-test-7f3a9c-secret-never-logged"
TIMEOUT_S = 0.4


class FlakyServer:
    """OpenAI-compatible JSON; answers 429 / 500 / 503 / too slow at random, else echoes the prompt.

    `served` counts, per prompt, the 200 answers the client could actually read
    (slow answers are written only after the client's timeout, so they do not count).
    """

    def __init__(self, fail_rate=0.6, honour_n=True, seed=0, keep_alive=False, close_after=None):
        """keep_alive: HTTP/1.1 (connections stay open between requests, as real servers do);
        close_after: then close a connection after that many answers, without saying so."""
        self.rng = random.Random(seed)
        self.connections = 0
        self.lock = threading.Lock()
        self.fail_rate = fail_rate
        self.honour_n = honour_n
        self.served = Counter()
        self.outcomes = Counter()
        self.auth_headers = set()
        self.bodies = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args):  # keep test output quiet
                pass

            def setup(self):
                super().setup()
                self.answered = 0
                with server.lock:
                    server.connections += 1

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.auth_headers.add(self.headers.get("Authorization"))
                    server.bodies.append(body)
                    roll = server.rng.random()
                outcome = server.pick(roll)
                with server.lock:
                    server.outcomes[outcome] += 1
                if outcome == "429":
                    return self.reply(429, {"error": "rate limited"}, {"Retry-After": "0"})
                if outcome in ("500", "503"):
                    return self.reply(int(outcome), {"error": "boom"})
                if outcome == "slow":
                    time.sleep(TIMEOUT_S * 2)
                    try:
                        self.reply(200, server.answer(body))
                    except OSError:
                        pass
                    return
                key = json.dumps(body.get("prompt", body.get("messages")))
                with server.lock:
                    server.served[key] += 1
                self.reply(200, server.answer(body))

            def reply(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.answered += 1
                if close_after is not None and self.answered >= close_after:
                    self.close_connection = True  # no "Connection: close" header: the client finds out later

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def pick(self, roll):
        if roll >= self.fail_rate:
            return "ok"
        return ["429", "500", "503", "slow"][int(roll / self.fail_rate * 4)]

    def answer(self, body):
        n = body.get("n", 1) if self.honour_n else 1
        chat = "messages" in body
        src = body["messages"][-1]["content"] if chat else body["prompt"]
        choices = []
        for i in range(n):
            text = f"echo:{src}:{body.get('seed')}:{i}"
            choice = {"index": i, "finish_reason": "length" if body["max_tokens"] <= 3 else "stop"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            choices.append(choice)
        return {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 4 * n}}

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def make_backend(url, **kw):
    options = {"max_concurrency": 8, "timeout_s": TIMEOUT_S, "max_retries": 40, **kw}
    spec = OpenAIModel(backend="openai", path="served-model", base_url=url, api_key_env="DATAMIX_TEST_KEY", **options)
    return OpenAIBackend("remote", spec, backoff_base_s=0.005, backoff_cap_s=0.05)


@pytest.mark.parametrize("keep_alive", [False, True])
def test_every_request_completes_once_in_order_despite_failures(monkeypatch, caplog, keep_alive):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    prompts = [Prompt(text=f"p{i}") for i in range(24)] + [Prompt(messages=[{"role": "user", "content": "c0"}])]
    with FlakyServer(fail_rate=0.6, keep_alive=keep_alive) as server:
        b = make_backend(server.url)
        out = b.generate(prompts, SamplingParams(n=2, max_tokens=8, seed=11))
    # the failures really happened, of every kind
    assert all(server.outcomes[k] > 0 for k in ("429", "500", "503", "slow")), server.outcomes
    assert [per[0].text for per in out[:24]] == [f"echo:p{i}:11:0" for i in range(24)]
    assert [c.text for c in out[24]] == ["echo:c0:11:0", "echo:c0:11:1"]
    assert all(c.finish_reason == "stop" and c.tokens_in == 5 and c.tokens_out == 4 for per in out for c in per)
    # exactly one answered request per prompt: nothing retried after it succeeded
    assert set(server.served.values()) == {1} and len(server.served) == 25
    # the key went in the header, and nowhere else
    assert server.auth_headers == {f"Bearer {KEY}"}
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert all(KEY not in r.getMessage() and KEY not in str(r.args) for r in caplog.records)
    assert KEY not in repr(b) and KEY not in repr(b.spec) and KEY not in b.spec.model_dump_json()
    assert KEY not in repr(vars(b))


def test_connections_are_kept_alive_and_reused(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    prompts = [Prompt(text=f"p{i}") for i in range(60)]
    with FlakyServer(fail_rate=0.0, keep_alive=True) as server:
        b = make_backend(server.url, max_retries=0)  # max_concurrency 8
        out = b.generate(prompts, SamplingParams(seed=1))
        out += b.generate(prompts[:10], SamplingParams(seed=1))  # a second call reuses the first's
    assert [per[0].text for per in out] == [f"echo:p{i}:1:0" for i in range(60)] + [
        f"echo:p{i}:1:0" for i in range(10)]
    assert server.connections == b._pool.opened <= 8  # one per request in flight at most, not 70


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    prompts = [Prompt(text=f"p{i}") for i in range(30)]
    with FlakyServer(fail_rate=0.0, keep_alive=True, close_after=1) as server:
        b = make_backend(server.url, max_retries=0, max_concurrency=3)  # any counted failure would raise
        out = b.generate(prompts, SamplingParams(seed=2))
    assert [per[0].text for per in out] == [f"echo:p{i}:2:0" for i in range(30)]
    assert server.connections >= 30  # every answer closed its connection


def test_endpoints_and_bodies(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0) as server:
        b = make_backend(server.url)
        out = b.generate(
            [Prompt(token_ids=[1, 2, 3]), Prompt(messages=[{"role": "user", "content": "hi"}])],
            SamplingParams(max_tokens=3, temperature=0.5, top_k=20, stop=["\n"], stop_token_ids=[7]),
        )
    assert out[0][0].text == "echo:[1, 2, 3]:None:0" and out[0][0].finish_reason == "length"
    assert out[1][0].text == "echo:hi:None:0"
    first = server.bodies[0] if "prompt" in server.bodies[0] else server.bodies[1]
    assert first["prompt"] == [1, 2, 3] and first["top_k"] == 20 and first["stop"] == ["\n"]
    assert first["stop_token_ids"] == [7] and first["model"] == "served-model" and "seed" not in first


def test_server_that_ignores_n_gets_n_requests(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, honour_n=False) as server:
        out = make_backend(server.url).generate([Prompt(text="x")], SamplingParams(n=3, seed=5))
    assert [c.text for c in out[0]] == ["echo:x:5:0", "echo:x:6:0", "echo:x:7:0"]
    assert server.served[json.dumps("x")] == 3


def test_client_errors_fail_fast_without_the_key(monkeypatch, caplog):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)

    class Echo401(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            data = json.dumps({"error": f"bad key {self.headers['Authorization']}"}).encode()
            self.send_response(401)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo401)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        b = make_backend(f"http://127.0.0.1:{httpd.server_address[1]}/v1")
        with pytest.raises(OpenAIBackendError, match="HTTP 401") as err:
            b.generate([Prompt(text="x")], SamplingParams())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert KEY not in str(err.value) and "***" in str(err.value)


def test_unreachable_server_gives_up_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    b = make_backend("http://127.0.0.1:9/v1")  # discard port: connection refused
    b.spec = b.spec.model_copy(update={"max_retries": 2})
    with pytest.raises(OpenAIBackendError, match="failed after 3 attempts"):
        b.generate([Prompt(text="x")], SamplingParams())


def test_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("DATAMIX_TEST_KEY", raising=False)
    with pytest.raises(OpenAIBackendError, match="DATAMIX_TEST_KEY"):
        make_backend("http://127.0.0.1:9/v1").generate([Prompt(text="x")], SamplingParams())


def test_pure_helpers():
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None and parse_retry_after("junk") is None
    rng = random.Random(0)
    delays = [backoff_delay(a, 0.5, 30, None, rng) for a in range(12)]
    assert all(0 <= d <= min(30, 0.5 * 2**a) for a, d in enumerate(delays))
    assert backoff_delay(0, 0.5, 30, 7.0, rng) >= 7.0
    path, body = request_body("m", Prompt(text="t"), SamplingParams(), 1, None)
    assert path == "/completions" and "top_k" not in body and "stop" not in body


def test_load_backend_builds_it():
    spec = OpenAIModel(backend="openai", path="m", api_key_env="X")
    assert isinstance(load_backend("r", spec), OpenAIBackend)
    assert load_backend("r", spec).tokenizer() is None
