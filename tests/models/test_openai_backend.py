"""The openai backend against a real local HTTP server that fails at random."""

import json
import logging
import random
import threading
import time
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
from tests.models.fake_openai import TIMEOUT_S, FlakyServer

KEY = "sk-test-7f3a9c-secret-never-logged"


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
    assert server.connections <= 8  # one per request in flight at most, not 70


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
    seen = []

    class Echo401(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            seen.append(self.path)
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
    assert len(seen) == 1 and err.value.status == 401  # at once: a wrong key is not retried


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


# ---------------------------------------------------------------- replies that cannot be used


def test_a_reply_with_no_choices_is_a_failed_attempt_not_a_loop(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, script=["empty"] * 50) as server:
        b = make_backend(server.url, max_retries=3)
        with pytest.raises(OpenAIBackendError, match="failed after 4 attempts") as err:
            b.generate([Prompt(messages=[{"role": "user", "content": "hi"}])], SamplingParams())
    assert server.outcomes == {"empty": 4}  # bounded: 4 requests, not 1,332 a minute
    assert "a reply with no choices" in str(err.value) and '"choices": []' in str(err.value)  # the server's reply


def test_unusable_replies_are_retried_and_counted(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, script=["empty", "notjson", "blank", "500"]) as server:
        b = make_backend(server.url, timeout_s=5)  # no timeouts of a loaded machine among the counted attempts
        (out,) = b.generate([Prompt(messages=[{"role": "user", "content": "hi"}])], SamplingParams(seed=3),
                            require="text")
    assert [c.text for c in out] == ["echo:hi:3:0"]
    assert out[0].retries == 4 and out[0].tokens_in == 5 and out[0].tokens_out == 4 and out[0].latency_s > 0
    assert server.outcomes == {"empty": 1, "notjson": 1, "blank": 1, "500": 1, "ok": 1}  # one good answer, used


def test_empty_text_is_accepted_unless_text_is_required(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, script=["blank"]) as server:
        (out,) = make_backend(server.url, timeout_s=5).generate([Prompt(text="x")], SamplingParams())
    assert out[0].text == "" and out[0].retries == 0  # a pre-query sample may be empty: the step filters it


def test_json_where_json_is_required(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    replies = ["Score: 4"]  # the first reply is free text, every later one JSON
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    with FlakyServer(fail_rate=0.0, answer_text=lambda body: replies.pop() if replies else
                     '{"score": 4, "reason": "ok"}') as server:
        (out,) = make_backend(server.url, timeout_s=5).generate(
            [Prompt(messages=[{"role": "user", "content": "q"}])], SamplingParams(), require="json",
            response_format=schema)
    assert json.loads(out[0].text) == {"score": 4, "reason": "ok"} and out[0].retries == 1
    assert all(body["response_format"] == schema for body in server.bodies)


def test_failed_attempts_are_bounded_per_call(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, script=["500"] * 500) as server:
        b = make_backend(server.url, max_retries=30, max_failures=12, max_concurrency=4)
        with pytest.raises(OpenAIBackendError, match=r"more than max_failures \(12\)"):
            b.generate([Prompt(text=f"p{i}") for i in range(20)], SamplingParams())
        time.sleep(0.1)
    # 20 prompts x 31 attempts would be 620 requests; the call stops after 13 failures (+ those in flight)
    assert 13 <= server.outcomes["500"] <= 13 + 4


# ---------------------------------------------------------------- rate budgets


def _most_in_window(times, window_s):
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start < window_s) for i, start in enumerate(times))


def test_rpm_budget_is_respected_on_the_server_side(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    prompts = [Prompt(text=f"p{i}") for i in range(45)]
    with FlakyServer(fail_rate=0.0, keep_alive=True) as server:
        out = make_backend(server.url, rpm=1200, timeout_s=5).generate(prompts, SamplingParams(seed=1))
    assert [per[0].text for per in out] == [f"echo:p{i}:1:0" for i in range(45)]
    # 1200 rpm = 20 a second, at most one second's worth at once: <= 20 + 10 in any half second
    # (without the budget all 45 arrive within a few hundredths of a second)
    assert _most_in_window(server.times, 0.5) <= 31


def test_the_servers_rate_limit_headers_are_followed(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    prompts = [Prompt(text=f"p{i}") for i in range(40)]
    with FlakyServer(fail_rate=0.0, keep_alive=True, rate_limit=(10, 0.3)) as server:
        b = make_backend(server.url, timeout_s=5)
        out = b.generate(prompts, SamplingParams(seed=1))
    assert [per[0].text for per in out] == [f"echo:p{i}:1:0" for i in range(40)]
    assert set(server.served.values()) == {1}
    # the client waits for the window's reset instead of bouncing off 429s
    # (blind, 8 in flight, 40 requests against 10 per 0.3 s: most of them would be refused)
    assert server.outcomes["429"] <= 3, server.outcomes


def test_a_429_halves_the_requests_in_flight(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, script=["429", "429"]) as server:
        b = make_backend(server.url)
        b.generate([Prompt(text=f"p{i}") for i in range(4)], SamplingParams())
    assert b.limit.lowest <= 4 and server.outcomes["429"] == 2


def test_a_run_against_a_server_with_no_choices_fails_the_step_naming_the_reply(monkeypatch, tmp_path):
    """Issue 14: 1,332 requests in 60 s against such a server; now a bounded few and exit 1."""
    from tests.helpers import cli, general_records, write_jsonl, write_pipeline

    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    write_jsonl(tmp_path / "g.jsonl", general_records(3))
    with FlakyServer(fail_rate=0.0, script=["empty"] * 1000) as server:
        model = {"backend": "openai", "path": "served", "base_url": server.url, "api_key_env": "DATAMIX_TEST_KEY",
                 "max_retries": 2, "timeout_s": 5}
        pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "g.jsonl"},
                                             {"name": "answers", "kind": "generate", "input": "src",
                                              "models": ["remote"]}], models={"remote": model})
        result = cli("run", pipeline, "-q")
    assert result.exit_code == 1
    assert "a reply with no choices" in result.output and '"choices": []' in result.output
    assert 3 <= server.outcomes["empty"] <= 9  # at most 3 attempts for each of 3 prompts
    assert KEY not in result.output


def test_tpm_budget_is_respected_on_the_server_side(monkeypatch):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    prompts = [Prompt(text=f"p{i}") for i in range(40)]
    with FlakyServer(fail_rate=0.0, keep_alive=True) as server:
        # each request: ~1 prompt token + max_tokens 19 = 20 estimated; 6,000 tpm = 100 a second
        out = make_backend(server.url, tpm=6000, timeout_s=5).generate(prompts, SamplingParams(max_tokens=19))
    assert len(out) == 40
    # the server counts 9 tokens a request (usage), and the rest of each estimate comes back:
    # 40 x 9 = 360 tokens at 100 a second after a burst of 100 take at least 2.6 s, and any half
    # second holds at most (100 + 50 + one estimate) / 9 = 18 requests (without the budget all 40
    # arrive within a tenth of a second)
    assert max(server.times) - min(server.times) >= 2.0
    assert _most_in_window(server.times, 0.5) <= 19


def test_requests_go_through_a_proxy_from_the_environment(monkeypatch):
    """The SDK's httpx client honours HTTP(S)_PROXY; the proxy here is the test server itself."""
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with FlakyServer(fail_rate=0.0) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.rsplit("/v1", 1)[0])
        out = make_backend("http://api.example.invalid/v1").generate([Prompt(text="x")], SamplingParams(seed=1))
    assert out[0][0].text == "echo:x:1:0" and proxy.auth_headers == {f"Bearer {KEY}"}
