"""Batch files against the fake Batch API of tests/models/fake_openai.py, with the store's real response cache."""

import json
import sys
import textwrap

import pytest

from datamix.models import OpenAIModel, Prompt, SamplingParams
from datamix.models.openai import OpenAIBackend, OpenAIBackendError
from datamix.models.openai_batch import BatchRequest, generate_batched
from datamix.store import Store
from tests.models.fake_openai import FlakyServer

KEY = "sk-batch-test-key-never-stored"


def make_backend(url, **batch):
    spec = OpenAIModel(backend="openai", path="served-model", base_url=url, api_key_env="DATAMIX_TEST_KEY",
                       max_concurrency=4, timeout_s=5, max_retries=5, batch={"poll_s": 0.01, **batch})
    return OpenAIBackend("remote", spec, backoff_base_s=0.005, backoff_cap_s=0.05)


def requests(k=4):
    return [BatchRequest(f"key{i}", Prompt(messages=[{"role": "user", "content": f"q{i}"}]), 100 + i) for i in range(k)]


def run(backend, store, tmp_path, reqs=None, logs=None):
    return generate_batched("remote", backend, reqs or requests(), SamplingParams(max_tokens=8),
                            cache_get=store.cache_get, cache_put=store.cache_put, work_dir=str(tmp_path / "batches"),
                            log=(logs.append if logs is not None else lambda m: None))


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "store.duckdb"))
    yield s
    s.close()


def test_a_batch_answers_every_request_and_failed_lines_go_live(monkeypatch, tmp_path, store):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, batch_fail_lines={1}) as server:
        got = run(make_backend(server.url), store, tmp_path)
    assert {k: c.text for k, c in got.items()} == {f"key{i}": f"echo:q{i}:{100 + i}:0" for i in range(4)}
    assert server.calls["upload"] == 1 and server.calls["submit"] == 1 and server.calls["retrieve"] >= 2
    # the failed line, and only it, went as a live request, with its line's seed
    live = [b for b in server.bodies if b.get("messages") and b["messages"][0]["content"] == "q1"]
    assert len(live) == 2 and sum(server.served.values()) == 1  # once in the batch (failed), once live
    assert got["key1"].retries == 1 and got["key0"].retries == 0 and got["key0"].tokens_out == 4
    # the file is batch JSONL: custom_id = the cache key, one answer per line
    (path,) = (tmp_path / "batches").glob("batch-*.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == [f"key{i}" for i in range(4)]
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["body"]["n"] == 1 and lines[0]["body"]["seed"] == 100
    assert KEY not in path.read_text() and server.auth_headers == {f"Bearer {KEY}"}
    assert not any(KEY in str(v) for (v,) in store.con.execute("SELECT value FROM dm.cache").fetchall())


class Killed(Exception):
    pass


def kill_after(backend, stage):
    """The run dies right after `stage` (an SDK call's description) succeeded on the server."""
    call = backend.call

    async def dying(what, fn):
        result = await call(what, fn)
        if what.startswith(stage):
            raise Killed(what)
        return result

    backend.call = dying


@pytest.mark.parametrize("stage", ["upload", "batch submission", "status of batch", "download"])
def test_a_run_killed_at_any_stage_resumes_the_same_batch(monkeypatch, tmp_path, store, stage):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, polls_to_finish=3) as server:
        first = make_backend(server.url)
        kill_after(first, stage)
        with pytest.raises(Killed):
            run(first, store, tmp_path)
        first.close()
        logs = []
        got = run(make_backend(server.url), store, tmp_path, logs=logs)  # a new process, the same store
    assert {k: c.text for k, c in got.items()} == {f"key{i}": f"echo:q{i}:{100 + i}:0" for i in range(4)}
    assert server.calls["submit"] == 1, (stage, server.calls)  # never submitted twice
    assert len(server.batches) == 1
    assert sum(server.served.values()) == 0  # everything came from the batch, nothing live
    if stage == "batch submission":  # submitted, id not recorded: found again by its metadata
        assert any("submitted before" in m for m in logs)


def test_a_failing_batch_line_that_keeps_failing_live_fails_the_call(monkeypatch, tmp_path, store):
    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    with FlakyServer(fail_rate=0.0, batch_fail_lines={0}, script=["empty"] * 20) as server:
        with pytest.raises(OpenAIBackendError, match="no choices"):
            run(make_backend(server.url), store, tmp_path)
    assert server.outcomes == {"empty": 6}  # max_retries 5: bounded


FAKE_VLLM = textwrap.dedent('''
    """Stands in for `vllm run-batch -i IN -o OUT --model M`: echoes; fails line 0 on its first run."""
    import json, os, sys
    args = sys.argv[1:]
    src, out, model = args[args.index("-i") + 1], args[args.index("-o") + 1], args[args.index("--model") + 1]
    log = os.path.join(os.path.dirname(src), "runs.log")
    with open(log, "a") as f:
        f.write(src + "\\n")
    first = sum(1 for _ in open(log)) == 1
    with open(src) as f, open(out, "w") as o:
        for i, line in enumerate(f):
            req = json.loads(line)
            assert req["body"]["model"] == model
            if first and i == 0:
                o.write(json.dumps({"id": "x", "custom_id": req["custom_id"], "response": None,
                                    "error": {"message": "boom"}}) + "\\n")
                continue
            text = "vllm:" + req["body"]["messages"][-1]["content"]
            body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
            o.write(json.dumps({"id": "x", "custom_id": req["custom_id"],
                                "response": {"status_code": 200, "body": body}, "error": None}) + "\\n")
''')


def test_vllm_run_batch_runner_same_file_same_ingest(tmp_path, store):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_VLLM)
    spec = OpenAIModel(backend="openai", path="served-model", batch={"runner": "vllm",
                                                                    "command": [sys.executable, str(script)]})
    backend = OpenAIBackend("offline", spec)
    got = run(backend, store, tmp_path)
    assert {k: c.text for k, c in got.items()} == {f"key{i}": f"vllm:q{i}" for i in range(4)}
    assert got["key1"].tokens_in == 3 and got["key1"].tokens_out == 2
    runs = (tmp_path / "batches" / "runs.log").read_text().splitlines()
    assert len(runs) == 2  # the failed line ran again as a second, one-line batch
    again = run(backend, store, tmp_path)  # its output files answer every line: not run again
    assert {k: c.text for k, c in again.items()} == {k: c.text for k, c in got.items()}
    assert len((tmp_path / "batches" / "runs.log").read_text().splitlines()) == 2


def test_a_runner_that_fails_says_so(tmp_path, store):
    spec = OpenAIModel(backend="openai", path="m", batch={"runner": "vllm", "command": [sys.executable, "-c",
                                                                                      "import sys; sys.exit('no GPU')"]})
    with pytest.raises(OpenAIBackendError, match="exited with 1: no GPU"):
        run(OpenAIBackend("offline", spec), store, tmp_path)


def test_the_generation_path_sends_a_batch_model_through_batch_files(monkeypatch, tmp_path, store):
    """generate_cached (every model-calling step): misses go as one batch, hits come from the cache."""
    from datamix.steps.base import Context
    from datamix.llm import generate_cached, get_model

    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    calls = []
    with FlakyServer(fail_rate=0.0) as server:
        spec = make_backend(server.url).spec
        ctx = Context(step="answers", pipeline_dir=str(tmp_path), output_dir=str(tmp_path / "out"), seed=0,
                      models={"remote": spec}, cache_get=store.cache_get, cache_put=store.cache_put,
                      calls=calls.append)
        model = get_model(ctx, "remote", "test")
        prompts = [Prompt(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)]
        first = generate_cached(ctx, model, prompts, [[0, 1]] * 3, SamplingParams(max_tokens=8), seed=0, call_seed=7)
        again = generate_cached(ctx, model, prompts, [[0, 1]] * 3, SamplingParams(max_tokens=8), seed=0, call_seed=7)
    assert server.calls["submit"] == 1 and sum(server.served.values()) == 0  # no live call, one batch
    assert [[r["text"].split(":")[1] for r in row] for row in first] == [[f"q{i}", f"q{i}"] for i in range(3)]
    assert first == again  # the second call is answered by the cache
    assert len({r["text"] for row in first for r in row}) == 6  # two samples per prompt, seeded apart
    assert calls[0]["completions"] == 6 and calls[0]["cached"] is False and calls[-1]["cached"] is True
    assert list((tmp_path / "out" / "batches").glob("batch-*.jsonl"))


def test_plan_says_what_a_batch_costs_and_batch_options_are_not_fingerprinted(tmp_path):
    from tests.helpers import cli, general_records, write_jsonl, write_pipeline

    write_jsonl(tmp_path / "g.jsonl", general_records(4))
    steps = [{"name": "src", "kind": "load", "path": "g.jsonl"},
             {"name": "answers", "kind": "generate", "input": "src", "models": ["hosted"]}]
    model = {"backend": "openai", "path": "gpt-x", "base_url": "http://127.0.0.1:9/v1"}
    live = write_pipeline(tmp_path, steps, name="p", models={"hosted": model})
    out = cli("plan", live, "--format", "json")
    assert out.exit_code == 0, out.output
    live_entries = json.loads(out.stdout)
    batched = write_pipeline(tmp_path, steps, name="p", models={"hosted": {**model, "batch": True, "rpm": 500}})
    entries = json.loads(cli("plan", batched, "--format", "json").stdout)
    answers = next(e for e in entries if e["name"] == "answers")
    assert "hosted as an OpenAI Batch: about half the price of live calls" in answers["reason"]
    assert "Batch" not in next(e for e in live_entries if e["name"] == "answers")["reason"]
    # batch files and rate budgets change no answer: the same fingerprints
    assert [e["fingerprint"] for e in entries] == [e["fingerprint"] for e in live_entries]


def test_datamix_run_generates_through_a_batch(monkeypatch, tmp_path):
    from tests.helpers import cli, general_records, query, store_of, write_jsonl, write_pipeline

    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    write_jsonl(tmp_path / "g.jsonl", general_records(3))
    with FlakyServer(fail_rate=0.0, batch_fail_lines={2}) as server:
        model = {"backend": "openai", "path": "served", "base_url": server.url, "api_key_env": "DATAMIX_TEST_KEY",
                 "timeout_s": 5, "batch": {"poll_s": 0.01}}
        pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "g.jsonl"},
                                             {"name": "answers", "kind": "generate", "input": "src",
                                              "models": ["remote"], "n": 2}], models={"remote": model})
        first = cli("run", pipeline, "-q")
        again = cli("run", pipeline, "steps.answers.chunk_size=1")  # same answers: from the cache
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert server.calls["submit"] == 1 and sum(server.served.values()) == 1  # one batch; its failed line live
    rows = query(store_of(pipeline), "SELECT messages[-1].content FROM answers ORDER BY sample_id")
    assert len(rows) == 6 and all(r[0].startswith("echo:") for r in rows)


# ---------------------------------------------------------------- `batch:` on a step


def _two_models(url):
    common = {"backend": "openai", "base_url": url, "api_key_env": "DATAMIX_TEST_KEY", "timeout_s": 5}
    return {"plain": {**common, "path": "plain-model"},
            "batchy": {**common, "path": "batchy-model", "batch": {"poll_s": 0.01}}}


def test_batch_on_a_step_overrides_its_models_and_switching_reruns_nothing(monkeypatch, tmp_path):
    from tests.helpers import cli, general_records, query, store_of, write_jsonl, write_pipeline

    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    write_jsonl(tmp_path / "g.jsonl", general_records(3))
    with FlakyServer(fail_rate=0.0) as server:
        steps = [{"name": "src", "kind": "load", "path": "g.jsonl"},
                 # a live model, batched by the step; a batch model, live in this step
                 {"name": "batched", "kind": "generate", "input": "src", "models": ["plain"],
                  "batch": {"poll_s": 0.01}},
                 {"name": "live", "kind": "generate", "input": "src", "models": ["batchy"], "batch": False}]
        pipeline = write_pipeline(tmp_path, steps, models=_two_models(server.url))
        first = cli("run", pipeline, "-q")
        assert first.exit_code == 0, first.output
        after_first = (server.calls["submit"], sum(server.served.values()))
        # the other way round: the answers are in the cache under the same keys, nothing is asked again
        plan = json.loads(cli("plan", pipeline, "steps.batched.batch=false", "steps.live.batch=true",
                              "--format", "json").stdout)
        again = cli("run", pipeline, "steps.batched.batch=false", "steps.live.batch=true", "-q")
    assert again.exit_code == 0, again.output
    assert after_first == (1, 3)  # one batch (the `batched` step), three live requests (`live`)
    assert (server.calls["submit"], sum(server.served.values())) == after_first
    assert [e["action"] for e in plan] == ["skip", "skip", "skip"]  # `batch:` is not fingerprinted
    (path,) = (tmp_path / ".datamix").rglob("batch-*.jsonl")
    assert {json.loads(x)["body"]["model"] for x in path.read_text().splitlines()} == {"plain-model"}
    # the fake server sees batch lines as bodies too: only the batch model's went live
    assert len([b for b in server.bodies if b["model"] == "batchy-model"]) == 3
    rows = query(store_of(pipeline), "SELECT count(*) FROM batched UNION ALL SELECT count(*) FROM live")
    assert rows == [(3,), (3,)]


def test_batch_on_a_step_with_a_model_that_sends_no_batch_files_is_bad_input(tmp_path):
    from tests.helpers import cli, general_records, write_jsonl, write_pipeline

    write_jsonl(tmp_path / "g.jsonl", general_records(2))
    models = {"local": {"backend": "transformers", "path": "gpt2"},
              "hosted": {"backend": "openai", "path": "gpt-x", "base_url": "http://127.0.0.1:9/v1"}}
    steps = [{"name": "src", "kind": "load", "path": "g.jsonl"},
             {"name": "answers", "kind": "generate", "input": "src", "models": ["hosted", "local"], "batch": True}]
    out = cli("validate", write_pipeline(tmp_path, steps, models=models))
    assert out.exit_code == 2
    assert "steps[1] (name: answers).batch:" in out.output and "model 'local' is backend transformers" in out.output
    steps[1]["batch"] = {"runer": "vllm"}  # a misspelt option
    out = cli("validate", write_pipeline(tmp_path, steps, models=models))
    assert out.exit_code == 2 and "runer" in out.output


def test_plan_prices_batch_calls_at_the_batch_discount(tmp_path):
    from tests.helpers import cli, general_records, write_jsonl, write_pipeline

    write_jsonl(tmp_path / "g.jsonl", general_records(4))
    model = {"backend": "openai", "path": "gpt-x", "base_url": "http://127.0.0.1:9/v1",
             "price": {"input_per_m": 2.0, "output_per_m": 8.0}}
    steps = [{"name": "src", "kind": "load", "path": "g.jsonl"},
             {"name": "answers", "kind": "generate", "input": "src", "models": ["hosted"], "n": 2,
              "sampling": {"max_tokens": 100}}]

    # the load step done, so that the plan probes the generate step's calls
    assert cli("run", write_pipeline(tmp_path, steps[:1]), "-q").exit_code == 0

    def answers(models, *overrides):
        out = cli("plan", write_pipeline(tmp_path, steps, models=models), *overrides, "--format", "json")
        assert out.exit_code == 0, out.output
        return next(e for e in json.loads(out.stdout) if e["name"] == "answers")

    live = answers({"hosted": model})
    on_model = answers({"hosted": {**model, "batch": True}})
    on_step = answers({"hosted": model}, "steps.answers.batch=true")
    local_runner = answers({"hosted": {**model, "batch": {"runner": "vllm"}}})
    off_on_step = answers({"hosted": {**model, "batch": True}}, "steps.answers.batch=false")
    assert live["usd"] > 0 and live["model_calls"] == on_step["model_calls"] == 8
    assert on_model["usd"] == pytest.approx(live["usd"] / 2) and on_step["usd"] == pytest.approx(live["usd"] / 2)
    assert "USD here at 0.5x its price" in on_step["reason"] and "Batch" not in live["reason"]
    assert local_runner["usd"] == pytest.approx(live["usd"])  # vllm run-batch on this machine: no discount
    assert off_on_step["usd"] == pytest.approx(live["usd"]) and "Batch" not in off_on_step["reason"]


def test_a_judge_step_with_batch_scores_through_one_batch(monkeypatch, tmp_path):
    from tests.helpers import cli, general_records, query, store_of, write_jsonl, write_pipeline

    monkeypatch.setenv("DATAMIX_TEST_KEY", KEY)
    write_jsonl(tmp_path / "g.jsonl", general_records(3))
    with FlakyServer(fail_rate=0.0, answer_text=lambda body: '{"score": 4, "reason": "fine"}') as server:
        steps = [{"name": "src", "kind": "load", "path": "g.jsonl"},
                 {"name": "scored", "kind": "judge", "input": "src", "judges": ["plain"], "batch": {"poll_s": 0.01}}]
        out = cli("run", write_pipeline(tmp_path, steps, models=_two_models(server.url)), "-q")
    assert out.exit_code == 0, out.output
    assert server.calls["submit"] == 1 and sum(server.served.values()) == 0  # all three in one batch
    (path,) = (tmp_path / ".datamix").rglob("batch-*.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 3 and all(x["body"]["response_format"]["type"] == "json_schema" for x in lines)
    assert query(store_of(tmp_path / "t.yaml"), "SELECT score FROM scored") == [(4.0,)] * 3
