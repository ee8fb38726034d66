"""judge: score parsing, aggregation, judge models, reward model and log-likelihood scorers."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

import datamix.models as models_mod
from datamix.ids import mint
from datamix.models import Completion, OpenAIModel, TransformersModel
from datamix.steps import judge as judge_mod
from datamix.steps.base import BadInput, Context, InputTable, StepError
from datamix.loop import chunks_of
from datamix.steps.judge import JudgeConfig, aggregate_scores, parse_score

MESSAGES = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score: 4", (4.0, None)),
        ("The answer is thorough.\nScore: 5", (5.0, None)),
        ("score:3", (3.0, None)),
        ("I rate it 4/5.", (4.0, None)),
        ("Final verdict: **4**", (4.0, None)),
        ("Rating: 4.5", (4.5, None)),
        ('{"score": 4, "reason": "good"}', (4.0, None)),
        ('```json\n{"reason": "ok", "score": "2"}\n```', (2.0, None)),
        ("  3 ", (3.0, None)),
        ("**Score:** 2", (2.0, None)),
        ("At first I thought Score: 2, but on reflection Score: 4", (4.0, None)),
        ("Score: 7", (None, "out_of_range:7")),
        ("Score: 0", (None, "out_of_range:0")),
        ("8/10", (None, "scale_mismatch:8/10")),
        ("This response is great!", (None, "unparsable")),
        ("", (None, "empty")),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text, 1, 5) == expected


def test_aggregate_handles_missing_scores_explicitly():
    assert aggregate_scores([4.0, 2.0, None], "mean", "skip") == (3.0, "missing:1")
    assert aggregate_scores([4.0, 2.0, None], "mean", "zero") == (2.0, "missing:1")
    assert aggregate_scores([5.0, 1.0, 2.0], "median", "skip") == (2.0, None)
    assert aggregate_scores([5.0, 1.0, 2.0], "min", "skip") == (1.0, None)
    assert aggregate_scores([None, None], "mean", "skip") == (None, "no_judge_score")
    with pytest.raises(ValueError, match="1 of 2"):
        aggregate_scores([3.0, None], "mean", "fail")


def candidates():
    ids = ["c0", "c1"]
    msgs = [[{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."}],
            [{"role": "user", "content": "Say {hi}."}, {"role": "assistant", "content": "Hi there, friend."}]]
    frame = pl.DataFrame({"sample_id": ids, "parent_ids": [["i0"], ["i1"]], "messages": msgs, "instruction_id": ["i0", "i1"],
                          "model": ["m", "m"]}, schema_overrides={"messages": MESSAGES})
    table = frame.to_arrow()
    return {"input": InputTable("answers", lambda cols: table, table.num_rows)}


def make_ctx(models, cache, tmp_path=".", done=frozenset()):
    return Context(step="judged", pipeline_dir=str(tmp_path), output_dir=".", seed=3, done_keys=frozenset(done), models=models,
                   cache_get=lambda keys: {k: cache[k] for k in keys if k in cache}, cache_put=cache.update)


class ScriptedJudge:
    """Answers with a fixed text per candidate response (found in the scoring prompt)."""

    def __init__(self, name, by_response):
        self.name, self.by_response, self.prompts = name, by_response, []

    def tokenizer(self):
        return None

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            content = p.messages[-1]["content"]
            self.prompts.append(content)
            text = next(t for r, t in self.by_response.items() if r in content)
            out.append([Completion(text, "stop", 10, 4)])
        return out


@pytest.fixture
def judges(monkeypatch):
    backends = {
        "j1": ScriptedJudge("j1", {"Apple.": "Good.\nScore: 4", "Hi there": "**2**"}),
        "j2": ScriptedJudge("j2", {"Apple.": '{"score": 5}', "Hi there": "I cannot decide."}),
    }
    monkeypatch.setattr(models_mod, "load_backend", lambda name, spec, base_dir=".": backends[name])
    yield backends, {n: OpenAIModel(backend="openai", path=n) for n in backends}


def judged(cfg, ctx, inputs=None):
    return pl.concat([c.rows for c in chunks_of(cfg, inputs or candidates(), ctx)])


def test_judges_score_every_candidate(judges):
    backends, specs = judges
    cfg = JudgeConfig(name="judged", kind="judge", judges=["j1", "j2"])
    cache: dict = {}
    rows = judged(cfg, make_ctx(specs, cache))
    assert rows["candidate_id"].to_list() == ["c0", "c1"]
    assert rows["sample_id"].to_list() == mint("judged", ["c0", "c1"]).to_list()
    assert rows["parent_ids"].to_list() == [["c0"], ["c1"]]
    assert rows["instruction_id"].to_list() == ["i0", "i1"]  # candidate columns carried
    assert rows["score"].to_list() == [4.5, 2.0]
    assert rows["score_note"].to_list() == [None, "missing:1"]
    assert rows["scores"].to_list()[1] == [{"judge": "j1", "score": 2.0, "reason": None},
                                           {"judge": "j2", "score": None, "reason": "unparsable"}]
    assert rows["judge_raw"].to_list()[1][1] == {"judge": "j2", "text": "I cannot decide."}
    # the default rubric carries instruction and answer
    assert "Name a fruit." in backends["j1"].prompts[0] and "Apple." in backends["j1"].prompts[0]
    seen = len(backends["j1"].prompts)
    again = judged(cfg, make_ctx(specs, cache))
    assert len(backends["j1"].prompts) == seen and again.equals(rows)  # rerun: from the cache


def test_on_missing_fail_names_the_sample(judges):
    _, specs = judges
    cfg = JudgeConfig(name="judged", kind="judge", judges=["j1", "j2"], on_missing="fail")
    with pytest.raises(StepError, match=r"sample c1.*j2: unparsable 'I cannot decide\.'"):
        judged(cfg, make_ctx(specs, {}))


def test_prompt_file(judges, tmp_path):
    backends, specs = judges
    (tmp_path / "rubric.txt").write_text('Q: {instruction}\nA: {response}\nReply as JSON {"score": N}.')
    cfg = JudgeConfig(name="judged", kind="judge", judges=["j1"], prompt_file="rubric.txt", aggregate="min")
    rows = judged(cfg, make_ctx(specs, {}, tmp_path))
    assert backends["j1"].prompts[1] == 'Q: Say {hi}.\nA: Hi there, friend.\nReply as JSON {"score": N}.'
    assert rows["score"].to_list() == [4.0, 2.0]
    (tmp_path / "bad.txt").write_text("Rate: {response}")
    with pytest.raises(BadInput, match=r"lacks \{instruction\}"):
        judged(cfg.model_copy(update={"prompt_file": "bad.txt"}), make_ctx(specs, {}, tmp_path))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("judge_models")
    return build_tiny_model(str(root / "rm"), reward=True), build_tiny_model(str(root / "lm"))


def test_reward_model_scorer_matches_unpadded_forward(tiny_models, monkeypatch):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_path, _ = tiny_models
    specs = {"rm": TransformersModel(backend="transformers", path=rm_path)}
    cfg = JudgeConfig(name="judged", kind="judge", judges=["rm"], scorer="reward_model", batch_size=2)
    cache: dict = {}
    rows = judged(cfg, make_ctx(specs, cache))
    tok, model = AutoTokenizer.from_pretrained(rm_path), AutoModelForSequenceClassification.from_pretrained(rm_path).eval()
    for messages, score in zip(candidates()["input"].arrow().column("messages").to_pylist(), rows["score"]):
        ids = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            assert score == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-4)
    # rerun: no model is loaded, scores come from the cache
    monkeypatch.setattr(judge_mod, "_hf_model", lambda *a: pytest.fail("model loaded on a cached rerun"))
    assert judged(cfg, make_ctx(specs, cache)).equals(rows)


def test_loglik_scorer_is_mean_answer_token_logprob(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, lm_path = tiny_models
    specs = {"lm": TransformersModel(backend="transformers", path=lm_path)}
    rows = judged(JudgeConfig(name="judged", kind="judge", judges=["lm"], scorer="loglik", batch_size=2), make_ctx(specs, {}))
    tok, model = AutoTokenizer.from_pretrained(lm_path), AutoModelForCausalLM.from_pretrained(lm_path).eval()
    for messages, score in zip(candidates()["input"].arrow().column("messages").to_pylist(), rows["score"]):
        prompt = tok(tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        answer = tok(messages[1]["content"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0], -1)
        expected = sum(logp[len(prompt) + t - 1, a].item() for t, a in enumerate(answer)) / len(answer)
        assert math.isfinite(score) and score == pytest.approx(expected, abs=1e-4)


def test_pmi_scorer_is_the_answer_logprob_with_the_instruction_minus_without(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, lm_path = tiny_models
    specs = {"lm": TransformersModel(backend="transformers", path=lm_path)}
    rows = judged(JudgeConfig(name="judged", kind="judge", judges=["lm"], scorer="pmi", batch_size=2), make_ctx(specs, {}))
    tok, model = AutoTokenizer.from_pretrained(lm_path), AutoModelForCausalLM.from_pretrained(lm_path).eval()

    def answer_logprobs(prompt_messages, answer_text):
        prompt = tok(tok.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        answer = tok(answer_text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0], -1)
        return [logp[len(prompt) + t - 1, a].item() for t, a in enumerate(answer)]

    checked = 0
    for messages, score in zip(candidates()["input"].arrow().column("messages").to_pylist(), rows["score"]):
        given = answer_logprobs(messages[:1], messages[1]["content"])
        without = answer_logprobs([{"role": "user", "content": ""}], messages[1]["content"])
        expected = sum(g - w for g, w in zip(given, without)) / len(given)
        assert math.isfinite(score) and score == pytest.approx(expected, abs=1e-4)
        checked += expected != pytest.approx(0, abs=1e-6)
    assert checked  # the instruction changed some answer's likelihood: the two terms really differ


def test_config_checks_and_plan():
    with pytest.raises(ValueError, match="low < high"):
        JudgeConfig(name="j", kind="judge", judges=["a"], scale=(5, 1))
    with pytest.raises(ValueError, match="scorer: judges"):
        JudgeConfig(name="j", kind="judge", judges=["a"], scorer="loglik", prompt_file="x.txt")
    assert JudgeConfig(name="j", kind="judge", judges=["a", "b", "c"]).model_calls(9) == 27


def test_batches_by_length_pad_only_to_rows_of_similar_size():
    from datamix.steps.judge import batches_by_length

    lengths = [5, 300, 7, 290, 6, 310]
    batches = batches_by_length(lengths, batch_size=2)
    assert batches == [[5, 1], [3, 2], [4, 0]]  # longest first, each index once
    assert sorted(i for b in batches for i in b) == list(range(6))
    # a token budget splits a batch of long rows before the row limit does
    assert batches_by_length([100, 100, 100], batch_size=8, max_tokens=250) == [[0, 1], [2]]
    assert batches_by_length([], batch_size=4) == []


# ---------------------------------------------------------------- structured judges, against a real local server


def _judge_reply(body):
    """The same verdict for the same response, as JSON when a response_format was asked for, else as text."""
    prompt = body["messages"][-1]["content"]
    response = prompt.split("[Response]\n", 1)[1].split("\n", 1)[0]
    score = {"Apple.": 4, "Hi there, friend.": 2}[response]
    if "response_format" in body:
        return json.dumps({"score": score, "reason": "short"})
    return f"It is short.\nScore: {score}"


def _served_judge(monkeypatch, url, **kw):
    monkeypatch.setenv("DATAMIX_TEST_KEY", "k")
    return {"j": OpenAIModel(backend="openai", path="judge", base_url=url, api_key_env="DATAMIX_TEST_KEY",
                             timeout_s=5, max_retries=3, **kw)}


@pytest.mark.parametrize("mode", ["auto", "text"])
def test_structured_and_text_judges_give_the_same_scores(monkeypatch, mode):
    from tests.models.fake_openai import FlakyServer

    with FlakyServer(fail_rate=0.0, answer_text=_judge_reply) as server:
        specs = _served_judge(monkeypatch, server.url)
        rows = judged(JudgeConfig(name="judged", kind="judge", judges=["j"], structured=mode), make_ctx(specs, {}))
    assert rows["score"].to_list() == [4.0, 2.0]
    structured = [b for b in server.bodies if "response_format" in b]
    if mode == "auto":  # asked through the schema, with the JSON instruction in the prompt
        assert len(structured) == 2 and structured[0]["response_format"] == judge_mod.judge_schema(1.0, 5.0)
        assert structured[0]["response_format"]["json_schema"]["schema"]["properties"]["score"]["enum"] == [1, 2, 3, 4, 5]
        assert json.loads(rows["judge_raw"].to_list()[0][0]["text"]) == {"score": 4, "reason": "short"}
    else:
        assert not structured


def test_a_server_without_structured_output_falls_back_to_text(monkeypatch):
    """A server that ignores response_format (free text back) costs bounded attempts, then text parsing."""
    from tests.models.fake_openai import FlakyServer

    judge_mod._NO_STRUCTURED.clear()
    with FlakyServer(fail_rate=0.0, answer_text=lambda b: _judge_reply({k: v for k, v in b.items()
                                                                       if k != "response_format"})) as server:
        specs = _served_judge(monkeypatch, server.url)
        logs = []
        ctx = make_ctx(specs, {})
        ctx.log = logs.append
        rows = judged(JudgeConfig(name="judged", kind="judge", judges=["j"]), ctx)
    judge_mod._NO_STRUCTURED.clear()
    assert rows["score"].to_list() == [4.0, 2.0]
    assert any("no structured output" in m for m in logs)
    asked = [b for b in server.bodies if "response_format" in b]
    assert 1 <= len(asked) <= 8  # bounded (max_retries 3, two prompts), then text only
    assert len(server.bodies) - len(asked) == 2


@pytest.mark.parametrize("text, expected", [
    ('{"score": 4, "reason": "ok"}', (4.0, None)),
    ('{"score": "3", "reason": "ok"}', (3.0, None)),
    ('{"score": 9, "reason": "ok"}', (None, "out_of_range:9")),
    ('{"score": null, "reason": "ok"}', (None, "unparsable")),
    ('{"reason": "no score. Score: 2"}', (2.0, None)),  # not the schema: parsed as text
    ("Score: 5", (5.0, None)),
])
def test_parse_structured(text, expected):
    assert judge_mod.parse_structured(text, 1.0, 5.0) == expected


def test_parse_failures_are_counted_per_judge_in_the_store(judges, tmp_path):
    from datamix.store import Store

    _, specs = judges
    rows = judged(JudgeConfig(name="judged", kind="judge", judges=["j1", "j2"]), make_ctx(specs, {}))
    store = Store(str(tmp_path / "s.duckdb"))
    try:
        store.con.register("_rows", rows.select("scores").to_arrow())
        store.con.execute("CREATE TABLE judged AS SELECT * FROM _rows")
        counts = store.con.execute("SELECT judge, candidates, failures, reasons FROM dm.judge_failures('judged')").fetchall()
    finally:
        store.close()
    assert counts == [("j1", 2, 0, None), ("j2", 2, 1, {"unparsable": 1})]


def test_reward_model_passes_go_to_dm_calls_and_a_rerun_is_all_cache_hits(tiny_models):
    rm_path, _ = tiny_models
    specs = {"rm": TransformersModel(backend="transformers", path=rm_path)}
    cfg = JudgeConfig(name="judged", kind="judge", judges=["rm"], scorer="reward_model", batch_size=2)
    cache: dict = {}
    calls: list[dict] = []
    ctx = make_ctx(specs, cache)
    ctx.calls = calls.append
    judged(cfg, ctx)
    assert [(c["model"], c["cached"], c["completions"]) for c in calls] == [("rm", False, 2)]
    assert calls[0]["latency_s"] > 0 and calls[0]["prompt_tokens"] is None  # a forward pass: no tokens billed
    calls.clear()
    judged(cfg, ctx)
    assert [(c["model"], c["cached"], c["completions"]) for c in calls] == [("rm", True, 2)]
