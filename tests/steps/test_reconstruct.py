"""reconstruct: pre-query sampling with a tiny Qwen2.5-template model and a scripted backend."""

from __future__ import annotations

import polars as pl
import pytest

import datamix.models as models_mod
from datamix.ids import mint
from datamix.models import Completion, OpenAIModel, TransformersModel
from datamix.steps.base import BadInput, Context
from datamix.loop import chunks_of
from datamix.steps.reconstruct import ReconstructConfig

QWEN_PRE_QUERY = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("rec_qwen")), arch="qwen2", chat_template="qwen2.5-instruct")




def make_ctx(models, cache, done=frozenset(), step="instructions"):
    return Context(step=step, pipeline_dir=".", output_dir=".", seed=11, done_keys=frozenset(done), models=models,
                   cache_get=lambda keys: {k: cache[k] for k in keys if k in cache}, cache_put=cache.update)


def config(**kw):
    base = dict(name="instructions", kind="reconstruct", model="base", num_samples=10, chunk_size=4, min_chars=1,
                # random weights rarely emit the end-of-turn token: a common letter as stop string ends samples early
                sampling={"max_tokens": 12, "stop": ["e"]})
    return ReconstructConfig(**{**base, **kw})


def collect(cfg, ctx):
    chunks = chunks_of(cfg, {}, ctx)
    rows = pl.concat([c.rows for c in chunks])
    decisions = [c.decisions for c in chunks if c.decisions is not None]
    return chunks, rows, (pl.concat(decisions) if decisions else pl.DataFrame())


def test_samples_records_and_ids(tiny_qwen, counted):
    spec = {"base": TransformersModel(backend="transformers", path=tiny_qwen, batch_size=16)}
    chunks, rows, decisions = collect(config(), make_ctx(spec, {}))
    assert [c.key for c in chunks] == ["samples-0-4", "samples-4-8", "samples-8-10"]
    # every sample index once, kept as a row or dropped with a decision
    dropped = decisions["sample_id"].to_list() if decisions.height else []
    assert sorted(rows["sample_id"].to_list() + dropped) == sorted(mint("instructions", pl.Series(range(10))).to_list())
    assert rows.height > 0
    assert rows["sample_id"].to_list() == mint("instructions", rows["sample_index"]).to_list()
    assert set(rows["template"]) == {QWEN_PRE_QUERY}
    assert set(rows["model"]) == {"base"} and rows["system_prompt"].null_count() == rows.height
    assert all(len(m) == 1 and m[0]["role"] == "user" and m[0]["content"] == m[0]["content"].strip() for m in rows["messages"].to_list())
    assert all(p == [] for p in rows["parent_ids"].to_list())
    assert set(rows["finish_reason"]) == {"stop"}
    # the model saw the template's exact tokens, no BOS added (Qwen has none): one prompt per chunk, n = its samples
    tok = counted[0].tokenizer()
    assert counted[0].prompts[0].token_ids == tok(QWEN_PRE_QUERY, add_special_tokens=False)["input_ids"]
    assert counted[0].calls == 3 and counted[0].completions == 10


def test_rerun_hits_cache_and_resume_regenerates_exactly(tiny_qwen, counted):
    spec = {"base": TransformersModel(backend="transformers", path=tiny_qwen, batch_size=16)}
    cache: dict = {}
    _, first, first_dec = collect(config(), make_ctx(spec, cache))
    assert sum(c.calls for c in counted) == 3
    _, again, again_dec = collect(config(), make_ctx(spec, cache))  # a new run: its own pool of models
    assert sum(c.calls for c in counted) == 3  # second run: zero model calls
    assert again.equals(first) and again_dec.equals(first_dec)

    # killed after the first chunk committed, cache lost: the rest comes out exactly as uninterrupted
    chunks, rest, _ = collect(config(), make_ctx(spec, {}, done={"samples-0-4"}))
    assert [c.key for c in chunks] == ["samples-4-8", "samples-8-10"]
    assert sum(c.completions for c in counted) == 10 + 6
    assert rest.equals(first.filter(pl.col("sample_index") >= 4))


def test_system_prompt_variants(tiny_qwen, counted):
    spec = {"base": TransformersModel(backend="transformers", path=tiny_qwen, batch_size=16)}
    cfg = config(num_samples=24, chunk_size=24, min_chars=0, sampling={"max_tokens": 4, "stop": ["e"]},
                 system_prompts=[{"name": "math", "text": "You are a math tutor.", "weight": 1}, {"name": "plain", "weight": 1}])
    _, rows, decisions = collect(cfg, make_ctx(spec, {}))
    templates = dict(zip(rows["system_prompt"], rows["template"]))
    assert set(templates) == {"math", "plain"}
    assert templates["math"] == "<|im_start|>system\nYou are a math tutor.<|im_end|>\n<|im_start|>user\n"
    assert templates["plain"] == QWEN_PRE_QUERY
    assert counted[0].calls == 2  # one call per variant in the chunk


class Scripted:
    """A backend with no tokenizer (like a hosted API) that returns canned completions in order."""

    name = "scripted"

    def __init__(self, outputs):
        self.outputs, self.prompts = list(outputs), []

    def tokenizer(self):
        return None

    def generate(self, prompts, params):
        self.prompts += prompts
        out = []
        for _ in prompts:
            out.append([Completion(text=t, finish_reason=f, tokens_in=5, tokens_out=3) for t, f in self.outputs[: params.n]])
            del self.outputs[: params.n]
        return out


def test_cleaning_records_why_samples_are_dropped(monkeypatch):
    script = Scripted([("  What is 2+2?  ", "stop"), ("", "stop"), ("Write a poem about", "length"),
                       ("Hi<|im_end|>", "stop"), ("Name a color.", "abort")])
    monkeypatch.setattr(models_mod, "load_backend", lambda name, spec, base_dir=".": script)
    spec = {"base": OpenAIModel(backend="openai", path="served", chat_template="chatml")}
    _, rows, decisions = collect(config(num_samples=5, chunk_size=5, min_chars=3), make_ctx(spec, {}))
    # no tokenizer: the ChatML pre-query goes as text, its BOS included
    assert script.prompts[0].text == "<s><|im_start|>user\n" and script.prompts[0].token_ids is None
    assert rows["messages"].to_list() == [[{"role": "user", "content": "What is 2+2?"}]]
    ids = mint("instructions", [0, 1, 2, 3, 4]).to_list()
    assert decisions.sort("sample_id").rows() == sorted(
        [(ids[1], False, "empty", None, None), (ids[2], False, "cut_off", None, None),
         (ids[3], False, "too_short", None, None), (ids[4], False, "no_end_of_turn:abort", None, None)]
    )


def test_explicit_template_is_sent_verbatim(monkeypatch):
    script = Scripted([("Tell me a joke.", "stop")])
    monkeypatch.setattr(models_mod, "load_backend", lambda name, spec, base_dir=".": script)
    spec = {"base": OpenAIModel(backend="openai", path="served")}
    _, rows, _ = collect(config(num_samples=1, pre_query_template="### User:\n"), make_ctx(spec, {}))
    assert script.prompts[0].text == "### User:\n"
    assert rows["template"].to_list() == ["### User:\n"]


def test_errors_and_plan():
    with pytest.raises(ValueError, match="not both"):
        config(pre_query_template="x", system_prompts=[{"name": "a", "text": "b"}])
    with pytest.raises(BadInput, match="not declared"):
        chunks_of(config(), {}, make_ctx({}, {}))
    spec = {"base": OpenAIModel(backend="openai", path="served")}  # no tokenizer, no chat_template
    with pytest.raises(BadInput, match="pre_query_template"):
        chunks_of(config(), {}, make_ctx(spec, {}))
    assert config(num_samples=1234).model_calls(None) == 1234
