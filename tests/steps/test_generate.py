"""generate: n answers per instruction per model, multi-turn append, cache and resume."""

from __future__ import annotations

import json

import polars as pl
import pytest

import datamix.models as models_mod
from datamix.ids import mint
from datamix.models import Completion, OpenAIModel, TransformersModel
from datamix.steps.base import BadInput, Context, InputTable
from datamix.loop import chunks_of
from datamix.steps.generate import GenerateConfig

MESSAGES = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("gen_models")
    return (build_tiny_model(str(root / "a"), arch="llama", chat_template="chatml"),
            build_tiny_model(str(root / "b"), arch="qwen2", chat_template="qwen2.5-instruct", seed=1))




def instructions(texts, ids=None):
    ids = ids or [f"i{k}" for k in range(len(texts))]
    frame = pl.DataFrame({"sample_id": ids, "messages": [[{"role": "user", "content": t}] for t in texts]},
                         schema={"sample_id": pl.Utf8, "messages": MESSAGES})
    table = frame.to_arrow()
    return {"input": InputTable("instructions", lambda cols: table, table.num_rows)}


def make_ctx(models, cache, done=frozenset()):
    return Context(step="answers", pipeline_dir=".", output_dir=".", seed=5, done_keys=frozenset(done), models=models,
                   cache_get=lambda keys: {k: cache[k] for k in keys if k in cache}, cache_put=cache.update)


def collect(cfg, inputs, ctx):
    chunks = chunks_of(cfg, inputs, ctx)
    return chunks, pl.concat([c.rows for c in chunks])


def test_answers_from_every_model(tiny_pair, counted):
    specs = {"a": TransformersModel(backend="transformers", path=tiny_pair[0]),
             "b": TransformersModel(backend="transformers", path=tiny_pair[1])}
    cfg = GenerateConfig(name="answers", kind="generate", models=["a", "b"], n=2, chunk_size=2, system_prompt="Be brief.",
                         sampling={"max_tokens": 6})
    inputs = instructions(["Name a fruit.", "Say hi.", "Count to three."])
    cache: dict = {}
    chunks, rows = collect(cfg, inputs, make_ctx(specs, cache))
    assert [c.key for c in chunks] == ["rows-0-2", "rows-2-3"]
    # every instruction answered by both models, twice each, once
    assert sorted(zip(rows["instruction_id"], rows["model"], rows["sample_index"])) == [
        (i, m, k) for i in ("i0", "i1", "i2") for m in ("a", "b") for k in (0, 1)]
    assert rows["sample_id"].to_list() == mint("answers", rows["instruction_id"], rows["model"], rows["sample_index"]).to_list()
    assert rows["sample_id"].n_unique() == 12
    assert rows["parent_ids"].to_list() == [[i] for i in rows["instruction_id"]]
    first = rows.filter((pl.col("instruction_id") == "i1") & (pl.col("model") == "b") & (pl.col("sample_index") == 0))
    conv = first["messages"].to_list()[0]
    assert [m["role"] for m in conv] == ["system", "user", "assistant"] and conv[1]["content"] == "Say hi."
    assert set(rows["finish_reason"]) <= {"stop", "length"} and (rows["tokens_out"] > 0).all() and (rows["tokens_in"] > 0).all()
    assert json.loads(rows["params"][0])["n"] == 2
    # the n answers of one prompt share its hash; different instructions do not
    assert rows.group_by("instruction_id", "model").agg(pl.col("prompt_hash").n_unique())["prompt_hash"].to_list() == [1] * 6
    assert sum(w.completions for w in counted) == 12

    _, again = collect(cfg, inputs, make_ctx(specs, cache))
    assert sum(w.completions for w in counted) == 12  # rerun: every answer from the cache
    assert again.drop("latency_s").equals(rows.drop("latency_s"))


def test_resume_skips_committed_chunks_and_matches(tiny_pair, counted):
    specs = {"a": TransformersModel(backend="transformers", path=tiny_pair[0])}
    cfg = GenerateConfig(name="answers", kind="generate", models=["a"], n=2, chunk_size=1, sampling={"max_tokens": 6})
    inputs = instructions(["Name a fruit.", "Say hi.", "Count to three."])
    _, full = collect(cfg, inputs, make_ctx(specs, {}))
    chunks, rest = collect(cfg, inputs, make_ctx(specs, {}, done={"rows-0-1"}))
    assert [c.key for c in chunks] == ["rows-1-2", "rows-2-3"]
    assert rest.drop("latency_s").equals(full.filter(pl.col("instruction_id") != "i0").drop("latency_s"))
    assert sum(w.completions for w in counted) == 6 + 4


class Scripted:
    """Answers chats with 'Because.' and continues raw (pre-query) prompts with a follow-up question."""

    name = "scripted"

    def __init__(self):
        self.raw = []

    def tokenizer(self):
        return None

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            if p.messages is not None:
                out.append([Completion(f"Because {len(p.messages)}.", "stop", 4, 2) for _ in range(params.n)])
            else:
                self.raw.append((p.text, list(params.stop)))
                out.append([Completion(" And why?<|im_end|>", "stop", 9, 3) for _ in range(params.n)])
        return out


def test_multi_turn_append_asks_the_model_for_the_next_user_turn(monkeypatch):
    script = Scripted()
    monkeypatch.setattr(models_mod, "load_backend", lambda name, spec, base_dir=".": script)
    specs = {"m": OpenAIModel(backend="openai", path="served", chat_template="chatml")}
    cfg = GenerateConfig(name="answers", kind="generate", models=["m"], turns=2)
    _, rows = collect(cfg, instructions(["Why is the sky blue?"]), make_ctx(specs, {}))
    assert rows["messages"].to_list()[0] == [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Because 1."},
        {"role": "user", "content": "And why?"},
        {"role": "assistant", "content": "Because 3."},
    ]
    # the follow-up prompt: the ChatML conversation so far, then the opening of a user turn (written by hand)
    assert script.raw == [("<s><|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\nBecause 1.<|im_end|>\n"
                           "<|im_start|>user\n", ["<|im_end|>"])]
    assert rows["turns"].to_list() == [2]
    assert rows["tokens_out"].to_list() == [2 + 3 + 2]
    assert cfg.model_calls(10) == 10 * 1 * 1 * 3


def test_errors():
    cfg = GenerateConfig(name="answers", kind="generate", models=["nope"])
    with pytest.raises(BadInput, match="not declared"):
        collect(cfg, instructions(["x"]), make_ctx({}, {}))
    with pytest.raises(BadInput, match="input"):
        chunks_of(cfg, {}, make_ctx({}, {}))


class Recording:
    """Answers every chat with its sampling temperature; records the params of each call."""

    def __init__(self, name):
        self.name, self.params = name, []

    def tokenizer(self):
        return None

    def generate(self, prompts, params):
        self.params.append(params)
        return [[Completion(f"t={params.temperature}", "stop", 3, 1) for _ in range(params.n)] for _ in prompts]


def test_sampling_per_model_under_the_steps_keys(monkeypatch):
    """One model folder declared twice at two temperatures acts as two answerers; a key the step
    sets wins over the model's; the model's sampling is part of the response-cache key."""
    backends = {}
    monkeypatch.setattr(models_mod, "load_backend", lambda name, spec, base_dir=".": backends.setdefault(name, Recording(name)))
    specs = {"cool": TransformersModel(backend="transformers", path="same", sampling={"temperature": 0.2, "max_tokens": 9}),
             "warm": TransformersModel(backend="transformers", path="same", sampling={"temperature": 0.9}),
             "plain": TransformersModel(backend="transformers", path="same")}
    inputs = instructions(["Name a fruit."])
    cache: dict = {}
    cfg = GenerateConfig(name="answers", kind="generate", models=["cool", "warm", "plain"], sampling={"max_tokens": 5})
    _, rows = collect(cfg, inputs, make_ctx(specs, cache))
    answers = dict(zip(rows["model"], [m[-1]["content"] for m in rows["messages"].to_list()]))
    assert answers == {"cool": "t=0.2", "warm": "t=0.9", "plain": "t=1.0"}
    # max_tokens: the step's key wins over the model's
    assert [p.max_tokens for name in ("cool", "warm", "plain") for p in backends[name].params] == [5, 5, 5]
    assert json.loads(rows.filter(pl.col("model") == "warm")["params"][0])["temperature"] == 0.9

    # a step that sets the temperature overrides both models
    cfg_t = GenerateConfig(name="answers", kind="generate", models=["cool", "warm"], sampling={"temperature": 0.0})
    _, rows_t = collect(cfg_t, inputs, make_ctx(specs, cache))
    assert set(m[-1]["content"] for m in rows_t["messages"].to_list()) == {"t=0.0"}
    # without a step `sampling:`, the model's keys win over the kind's defaults (max_tokens 256)
    cfg_d = GenerateConfig(name="answers", kind="generate", models=["cool"])
    collect(cfg_d, inputs, make_ctx(specs, cache))
    assert backends["cool"].params[-1].max_tokens == 9 and backends["cool"].params[-1].temperature == 0.2

    # the same name with another temperature misses the cache: a new call, a new answer
    calls = len(backends["warm"].params)
    hotter = {**specs, "warm": TransformersModel(backend="transformers", path="same", sampling={"temperature": 1.3})}
    backends.clear()
    _, rows_h = collect(cfg, inputs, make_ctx(hotter, cache))
    assert "warm" in backends and len(backends["warm"].params) == 1 and calls >= 1
    assert backends["cool"].params == [] and backends["plain"].params == []  # unchanged models: from the cache
    assert rows_h.filter(pl.col("model") == "warm")["messages"].to_list()[0][-1]["content"] == "t=1.3"


def test_answers_do_not_depend_on_the_chunk_size(tiny_pair):
    # chunk_size is a run setting (it does not enter the fingerprint), so the answers a fresh
    # store gets must be the same whatever the chunking: seeds come from the step, the model,
    # the prompt and the sample index, never from the chunk
    specs = {"a": TransformersModel(backend="transformers", path=tiny_pair[0])}
    texts = ["Name a fruit.", "Say hi.", "Count to three.", "Name a colour.", "Spell cat."]
    outs = []
    for size in (1, 2, 5):
        cfg = GenerateConfig(name="answers", kind="generate", models=["a"], n=2, chunk_size=size,
                             sampling={"max_tokens": 5, "temperature": 1.0})
        _, rows = collect(cfg, instructions(texts), make_ctx(specs, {}))  # a fresh cache each time
        outs.append(rows.select("sample_id", pl.col("messages").list.last().struct.field("content")).sort("sample_id"))
    assert outs[0].equals(outs[1]) and outs[0].equals(outs[2])
    assert outs[0]["content"].n_unique() > 1  # really sampled
