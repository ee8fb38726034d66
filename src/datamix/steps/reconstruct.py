"""reconstruct: sample the base model's own instruction distribution (Magpie).

The model is fed only the pre-query template (the chat-template prefix that
opens a user turn) and writes a user message until its end-of-turn marker.
Samples come in chunks of `chunk_size` (the step's units; the runner's loop skips the
committed ones); chunk c is seeded from (seed, c) only, so a resumed run samples exactly
what an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datamix.steps.base import BadInput, Context, InputTable, Output, Source, StepConfig, Unit, register
from datamix.llm import (
    Sampling,
    StepBatch,
    chat_template_source,
    derive_seed,
    end_of_turn_stops,
    generate_cached,
    get_model,
    raw_prompt,
    sampling_for,
)


class SystemPromptVariant(BaseModel):
    """A system prompt to sample under (e.g. 'You are a math tutor.') and its share of the samples."""

    model_config = ConfigDict(extra="forbid")

    name: str
    text: str | None = None  # None: no system prompt (the template's default, if it has one)
    weight: float = Field(default=1.0, gt=0)


class ReconstructConfig(StepConfig):
    kind: Literal["reconstruct"]
    model_options: ClassVar[tuple[str, ...]] = ("model",)
    model: str
    num_samples: int = Field(ge=1)
    pre_query_template: str | None = None  # explicit prefix; default: derived from the model's chat template
    system_prompts: list[SystemPromptVariant] | None = None
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=1.0, top_p=1.0, max_tokens=128))
    min_chars: int = Field(default=3, ge=0, description="shorter instructions are dropped as too_short")
    seed: int | None = None  # default: the pipeline seed
    chunk_size: int = Field(default=1000, ge=1, description="samples per committed chunk")
    chunk_size_changes_output: ClassVar[bool] = True  # chunk c's draws are seeded from (seed, c)
    batch: StepBatch = None

    @model_validator(mode="after")
    def _one_template_source(self):
        if self.pre_query_template is not None and self.system_prompts:
            raise ValueError("give either `pre_query_template:` or `system_prompts:` (variants derive their own templates), not both")
        return self

    def columns_out(self, inputs):
        return frozenset({"sample_id", "messages", "model", "template", "system_prompt", "params", "seed",
                          "sample_index", "finish_reason", "tokens_in", "tokens_out"})

    def model_calls(self, rows_in: int | None) -> int | None:
        return self.num_samples


def _variant_templates(cfg: ReconstructConfig, ctx: Context, model) -> list[tuple[str | None, str, str | None, float]]:
    """(variant name, pre-query text, end-of-turn marker, weight) per variant."""
    from datamix.templates import TemplateError, derive_pre_query_template

    if cfg.pre_query_template is not None:
        return [(None, cfg.pre_query_template, None, 1.0)]
    tokenizer, template, bos = chat_template_source(ctx, model)
    variants = cfg.system_prompts or [SystemPromptVariant(name="", text=None)]
    out = []
    for v in variants:
        try:
            pq = derive_pre_query_template(tokenizer, chat_template=template, bos_token=bos, system_prompt=v.text)
        except TemplateError as exc:
            raise BadInput(f"step {ctx.step!r}, model {model.name!r}: {exc}") from exc
        if pq.note:
            ctx.log(f"{ctx.step}: pre-query template for variant {v.name or '(none)'!r}: {pq.note}")
        out.append((v.name or None, pq.text, pq.end_of_turn, v.weight))
    return out


def _clean(text: str, finish_reason: str, end_of_turn: str | None, min_chars: int) -> tuple[str, str | None]:
    """(instruction, reason it is dropped or None)."""
    if end_of_turn and end_of_turn in text:  # a backend that returns the stop string with the text
        text = text.split(end_of_turn, 1)[0]
    text = text.strip()
    if finish_reason == "length":
        return text, "cut_off"  # hit max_tokens: the instruction is unfinished
    if finish_reason != "stop":
        return text, f"no_end_of_turn:{finish_reason}"
    if not text:
        return text, "empty"
    if len(text) < min_chars:
        return text, "too_short"
    return text, None


@dataclasses.dataclass(frozen=True)
class _Sampler:
    """What every chunk of samples uses, set up once per run: the model, its variants and sampling."""

    model: Any
    tokenizer: Any
    variants: list[tuple[str | None, str, str | None, float]]
    weights: Any  # the variants' shares, summing to 1
    sampling: Sampling
    params_json: str
    seed: int


@register("reconstruct", ReconstructConfig)
def run(cfg: ReconstructConfig, inputs: dict[str, InputTable], ctx: Context) -> Source:
    import numpy as np

    if inputs:
        raise BadInput(f"step {ctx.step!r}: reconstruct samples from a model and takes no `input:`.")
    model = get_model(ctx, cfg.model, f"step {ctx.step!r}.model", batch=cfg.batch)
    tokenizer = model.backend.tokenizer()
    variants = _variant_templates(cfg, ctx, model)
    weights = np.array([w for *_, w in variants], dtype=float)
    sampling = sampling_for(cfg, model.spec)  # the step's keys over the model's `sampling:`
    sampler = _Sampler(model, tokenizer, variants, weights / weights.sum(), sampling,
                       json.dumps(sampling.model_dump(), sort_keys=True), ctx.seed if cfg.seed is None else cfg.seed)
    units = [Unit(f"samples-{start}-{min(start + cfg.chunk_size, cfg.num_samples)}", chunk_index)
             for chunk_index, start in enumerate(range(0, cfg.num_samples, cfg.chunk_size))]
    return Source(units=units, run=functools.partial(_sample_chunk, cfg, sampler, ctx))


def _sample_chunk(cfg: ReconstructConfig, sampler: _Sampler, ctx: Context, unit: Unit) -> Output:
    """Chunk `unit.item` of the samples: its draws are seeded from (seed, chunk index) only."""
    import numpy as np
    import polars as pl

    from datamix.ids import mint

    chunk_index = unit.item
    start = chunk_index * cfg.chunk_size
    end = min(start + cfg.chunk_size, cfg.num_samples)
    seed, variants, sampling, tokenizer = sampler.seed, sampler.variants, sampler.sampling, sampler.tokenizer
    chunk_seed = derive_seed(seed, chunk_index)
    assigned = np.random.default_rng(chunk_seed).choice(len(variants), size=end - start, p=sampler.weights)
    records = []
    for v, (name, text, end_of_turn, _) in enumerate(variants):
        indices = [start + j for j in np.flatnonzero(assigned == v).tolist()]
        if not indices:
            continue
        stop, stop_ids = end_of_turn_stops(tokenizer, end_of_turn)
        params = sampling.params(stop=[*sampling.stop, *stop], stop_token_ids=[*sampling.stop_token_ids, *stop_ids])
        prompt = raw_prompt(tokenizer, text)
        # one prompt, n = its samples in this chunk: copies of one prompt under one seed would
        # come back identical, the n samples of a prompt are distinct draws in every backend
        (results,) = generate_cached(ctx, sampler.model, [prompt], [indices], params, seed=seed,
                                     call_seed=derive_seed(chunk_seed, v))
        for index, res in zip(indices, results):
            instruction, reason = _clean(res["text"], res["finish_reason"], end_of_turn, cfg.min_chars)
            records.append({"sample_index": index, "instruction": instruction, "reason": reason, "system_prompt": name,
                            "template": text, "finish_reason": res["finish_reason"],
                            "tokens_in": res["tokens_in"], "tokens_out": res["tokens_out"]})
    frame = pl.DataFrame(records).sort("sample_index")
    frame = frame.with_columns(mint(ctx.step, frame["sample_index"]).alias("sample_id"))
    kept = frame.filter(pl.col("reason").is_null())
    rows = kept.select(
        "sample_id",
        pl.lit([], dtype=pl.List(pl.Utf8)).alias("parent_ids"),
        pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("instruction").alias("content"))).alias("messages"),
        pl.lit(cfg.model).alias("model"),
        "template",
        pl.col("system_prompt").cast(pl.Utf8),
        pl.lit(sampler.params_json).alias("params"),
        pl.lit(chunk_seed).cast(pl.Int64).alias("seed"),
        "sample_index", "finish_reason", "tokens_in", "tokens_out",
    )
    dropped = frame.filter(pl.col("reason").is_not_null())
    decisions = dropped.select(
        "sample_id", pl.lit(False).alias("kept"), "reason",
        pl.lit(None, dtype=pl.Float64).alias("score"), pl.lit(None, dtype=pl.Utf8).alias("related_id"),
    )
    return Output(rows=rows, decisions=decisions if decisions.height else None, rows_in=end - start)
