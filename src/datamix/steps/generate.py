"""generate: n answers to every instruction from each listed model (model calls: datamix.llm)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from datamix.llm import (Sampling, StepBatch, chat_template_source, derive_seed, end_of_turn_stops, generate_cached, get_model,
                         prompt_hash, raw_prompt, sampling_for)
from datamix.steps.base import BadInput, Context, Output, StepConfig, register

if TYPE_CHECKING:
    import polars as pl


class GenerateConfig(StepConfig):
    kind: Literal["generate"]
    model_options: ClassVar[tuple[str, ...]] = ("models",)
    models: list[str] = Field(min_length=1, description="declared model names; each answers every instruction")
    n: int = Field(default=1, ge=1, description="answers per instruction per model")
    system_prompt: str | None = None
    turns: int = Field(default=1, ge=1, description="user turns per conversation; >1 appends Magpie follow-ups")
    sampling: Sampling = Field(default_factory=Sampling)
    seed: int | None = None  # default: the pipeline seed
    chunk_size: int = Field(default=256, ge=1, description="instructions per committed chunk")
    batch: StepBatch = None

    def columns_out(self, inputs):
        return frozenset({"sample_id", "messages", "instruction_id", "model", "sample_index", "params", "turns",
                          "tokens_in", "tokens_out", "latency_s", "finish_reason", "prompt_hash"})

    def model_calls(self, rows_in: int | None) -> int | None:
        # each turn: one answer; each extra turn also one follow-up question
        return None if rows_in is None else rows_in * self.n * len(self.models) * (2 * self.turns - 1)


def _conversation(messages: list[dict] | None, system_prompt: str | None, where: str) -> list[dict]:
    chat = [{"role": m["role"], "content": m["content"]} for m in (messages or [])]
    # Existing SFT data (user, assistant) gets its answers regenerated: answer the last user turn.
    while chat and chat[-1]["role"] == "assistant":
        chat.pop()
    if not chat or chat[-1]["role"] != "user":
        raise BadInput(f"{where}: the input's messages need a user turn to answer (got {[m['role'] for m in messages or []]}).")
    if system_prompt is not None and chat[0]["role"] != "system":
        chat = [{"role": "system", "content": system_prompt}, *chat]
    return chat


def _clean_followup(text: str, end_of_turn: str | None) -> str:
    text = text.strip()
    if end_of_turn and end_of_turn in text:
        text = text.split(end_of_turn, 1)[0].strip()
    return text


def _answer_chunk(cfg: GenerateConfig, ctx: Context, batch: pl.DataFrame) -> pl.DataFrame:
    """All answers (every model, every sample index, every turn) for one chunk of instructions."""
    import polars as pl

    from datamix.models import Prompt
    from datamix.templates import derive_pre_query_template, next_user_turn_prefix

    seed = ctx.seed if cfg.seed is None else cfg.seed
    where = f"step {ctx.step!r}"
    chats = [_conversation(m, cfg.system_prompt, f"{where}, sample {sid}") for sid, m in zip(batch["sample_id"], batch["messages"].to_list())]
    records: list[dict] = []
    for model_name in cfg.models:
        model = get_model(ctx, model_name, f"{where}.models", batch=cfg.batch)
        params = sampling_for(cfg, model.spec).params()
        # state per (instruction, sample index): the conversation so far and its costs
        convs = [[list(chat) for _ in range(cfg.n)] for chat in chats]
        stats = [[{"tokens_in": 0, "tokens_out": 0, "latency_s": 0.0, "finish_reason": None, "prompt_hash": None} for _ in range(cfg.n)] for _ in chats]
        live = [(i, k) for i in range(len(chats)) for k in range(cfg.n)]
        for turn in range(cfg.turns):
            if turn > 0:
                live = _ask_followups(ctx, model, cfg, convs, stats, live, seed, turn, derive_pre_query_template, next_user_turn_prefix)
            if turn == 0:  # one prompt per instruction, n samples of it (backends share the prefix)
                prompts = [Prompt(messages=chat) for chat in chats]
                indices = [list(range(cfg.n)) for _ in chats]
            else:  # conversations have diverged: one prompt per (instruction, sample index)
                prompts = [Prompt(messages=convs[i][k]) for i, k in live]
                indices = [[k] for _, k in live]
            results = generate_cached(
                ctx, model, prompts, indices, params,
                seed=derive_seed(seed, "answer", turn) if turn else seed,
                call_seed=derive_seed(seed, model_name, "answer", turn),
            )
            if turn == 0:
                prompts = [prompts[i] for i, _ in live]
                results = [[results[i][k]] for i, k in live]
            for (i, k), prompt, (res,) in zip(live, prompts, results):
                convs[i][k].append({"role": "assistant", "content": res["text"].strip()})
                s = stats[i][k]
                s["prompt_hash"] = s["prompt_hash"] or prompt_hash(prompt)
                s["tokens_in"] += res["tokens_in"]
                s["tokens_out"] += res["tokens_out"]
                s["latency_s"] += res["latency_s"]
                s["finish_reason"] = res["finish_reason"]
        params_json = json.dumps({**params.model_dump(exclude={"n", "seed"}), "n": cfg.n, "seed": seed, "turns": cfg.turns}, sort_keys=True)
        for i, instruction_id in enumerate(batch["sample_id"]):
            for k in range(cfg.n):
                records.append(
                    {"instruction_id": instruction_id, "model": model_name, "sample_index": k, "messages": convs[i][k],
                     "params": params_json, "turns": sum(m["role"] == "user" for m in convs[i][k]), **stats[i][k]}
                )
    from datamix.ids import mint

    frame = pl.DataFrame(records, schema_overrides={"messages": pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))})
    frame = frame.with_columns(
        mint(ctx.step, frame["instruction_id"], frame["model"], frame["sample_index"]).alias("sample_id"),
        pl.col("instruction_id").map_elements(lambda x: [x], return_dtype=pl.List(pl.Utf8)).alias("parent_ids"),
    )
    first = ["sample_id", "parent_ids", "messages", "instruction_id", "model", "sample_index"]
    return frame.select(first + [c for c in frame.columns if c not in first])


def _ask_followups(ctx, model, cfg, convs, stats, live, seed, turn, derive_pre_query_template, next_user_turn_prefix):
    """Sample the user's next message from the model itself; conversations whose follow-up fails stop here."""
    tokenizer, template, bos = chat_template_source(ctx, model)
    end_of_turn = derive_pre_query_template(tokenizer, chat_template=template, bos_token=bos).end_of_turn
    stop, stop_ids = end_of_turn_stops(tokenizer, end_of_turn)
    sampling = sampling_for(cfg, model.spec)
    params = sampling.params(stop=[*sampling.stop, *stop], stop_token_ids=[*sampling.stop_token_ids, *stop_ids])
    prompts = [raw_prompt(tokenizer, next_user_turn_prefix(convs[i][k], tokenizer, chat_template=template, bos_token=bos)) for i, k in live]
    results = generate_cached(
        ctx, model, prompts, [[k] for _, k in live], params,
        seed=derive_seed(seed, "followup", turn), call_seed=derive_seed(seed, model.name, "followup", turn),
    )
    still = []
    for (i, k), (res,) in zip(live, results):
        text = _clean_followup(res["text"], end_of_turn)
        stats[i][k]["tokens_in"] += res["tokens_in"]
        stats[i][k]["tokens_out"] += res["tokens_out"]
        stats[i][k]["latency_s"] += res["latency_s"]
        if text and res["finish_reason"] == "stop":
            convs[i][k].append({"role": "user", "content": text})
            still.append((i, k))
    return still


@register("generate", GenerateConfig, shape="batch", columns=lambda cfg: "sample_id, messages")
def run(cfg: GenerateConfig, batch, ctx: Context) -> Output:
    """Every model's answers to one batch of instructions."""
    import polars as pl

    return Output(rows=_answer_chunk(cfg, ctx, pl.from_arrow(batch)))
