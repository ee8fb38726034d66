"""What a plan's model calls would cost: calls, cache hits, tokens and money.

`datamix plan` used to count every call a step makes, including those the response
cache would answer. Here a step whose inputs are already in the store (its parents
are up to date) is *probed*: its own code runs with the store's cache and a Context
that makes the shared generation path (steps/generate.py, generate_cached) answer
from the cache and record the rest without calling any model, so the count of new
calls is exact, multi-turn follow-ups included. A step downstream of a step that will
rerun cannot be probed (its inputs do not exist yet): its calls come from its kind's
formula, and the cache is not taken into account (`exact` is false).

Tokens: prompt tokens of probed calls are counted from the prompts (exact for token
ids, about 4 characters a token for text). Completion tokens are the average this
step and model produced in earlier runs (dm.calls) when there were any, else the
step's max_tokens (an upper bound). Money: the model's `price:` per million tokens, times
the batch discount (about half) for calls that go as a hosted batch (`batch:` on the model
or the step).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from datamix.spec import Pipeline, models_used
from datamix.steps.base import REGISTRY, Context, StepConfig

# kinds whose model calls all go through generate_cached (a judge with a reward model or
# log-likelihood scorer runs the model itself, which a probe must not do)
PROBED_KINDS = ("reconstruct", "generate", "judge")


@dataclasses.dataclass
class CallEstimate:
    calls: int | None  # new model calls (completions requested)
    cached: int | None  # answered by the response cache; None: not known (not probed)
    prompt_tokens: int | None
    completion_tokens: int | None
    usd: float | None  # None: no model of the step has a price
    exact: bool  # probed against the store's cache (else: the kind's formula)


def estimate(pipeline: Pipeline, store, step: StepConfig, action: str, parents_ready: bool,
             formula_calls: int | None) -> CallEstimate | None:
    """The cost of the model calls `step` would make; None when it calls no model."""
    if formula_calls is None:
        return None
    records = _probe(pipeline, store, step, action) if store is not None and parents_ready else None
    history = _history(store, step.name)
    if records is not None:
        new = [r for r in records if not r["cached"]]
        per_model: dict[str, list[float]] = {}
        for r in new:
            avg = history.get(r["model"], {}).get("completion_per_call")
            completion = r["completion_tokens"] if avg is None else avg * r["completions"]
            m = per_model.setdefault(r["model"], [0, 0.0, 0.0])
            m[0] += r["completions"]
            m[1] += r["prompt_tokens"]
            m[2] += completion
        calls = sum(m[0] for m in per_model.values())
        cached = sum(r["completions"] for r in records if r["cached"])
        return CallEstimate(calls, cached, round(sum(m[1] for m in per_model.values())),
                            round(sum(m[2] for m in per_model.values())), _usd(pipeline, step, per_model), True)
    # not probed: the formula, split evenly over the step's models
    names = [m for m in models_used(step) if m in pipeline.models] or ["?"]
    max_tokens = getattr(getattr(step, "sampling", None), "max_tokens", None)
    per_model = {}
    for name in names:
        share = formula_calls / len(names)
        h = history.get(name, {})
        completion = share * h["completion_per_call"] if "completion_per_call" in h else (
            share * max_tokens if max_tokens else None)
        prompt = share * h["prompt_per_call"] if "prompt_per_call" in h else None
        per_model[name] = [share, prompt, completion]
    known = [m for m in per_model.values() if m[1] is not None]
    prompt_tokens = round(sum(m[1] for m in known)) if len(known) == len(per_model) else None
    completion = [m for m in per_model.values() if m[2] is not None]
    completion_tokens = round(sum(m[2] for m in completion)) if len(completion) == len(per_model) else None
    # unknown prompt tokens count as none: the money is then a lower bound on the completions' part
    usd = _usd(pipeline, step, per_model) if completion_tokens is not None else None
    return CallEstimate(formula_calls, None, prompt_tokens, completion_tokens, usd, False)


def _usd(pipeline: Pipeline, step: StepConfig, per_model: dict[str, list]) -> float | None:
    """Each model's tokens at its `price:`, discounted where the step's calls to it go as a
    hosted batch (BatchOptions.price_factor: about half)."""
    from datamix.llm import batch_for

    total, priced = 0.0, False
    for name, (_, prompt, completion) in per_model.items():
        spec = pipeline.models.get(name)
        price = getattr(spec, "price", None)
        if price is not None:
            priced = True
            batch = batch_for(spec, getattr(step, "batch", None))
            factor = batch.discount() if batch is not None else 1.0
            total += factor * ((prompt or 0) * price.input_per_m + (completion or 0) * price.output_per_m) / 1e6
    return total if priced else None


def _history(store, step: str) -> dict[str, dict[str, float]]:
    """Per model, the average prompt and completion tokens per completion of earlier calls."""
    if store is None or not store.has_table("dm", "calls"):
        return {}
    rows = store.con.execute(
        "SELECT model, sum(prompt_tokens) / sum(completions), sum(completion_tokens) / sum(completions) "
        "FROM dm.calls WHERE step = ? AND NOT cached AND completions > 0 GROUP BY model", [step]).fetchall()
    return {m: {"prompt_per_call": p, "completion_per_call": c} for m, p, c in rows}


def _probe(pipeline: Pipeline, store, step: StepConfig, action: str) -> list[dict] | None:
    """The dm.calls records the step would write, from a run of its code against the cache;
    None when the step cannot be probed (kind, scorer, or it failed on placeholder answers)."""
    from datamix.outputs import StoreInput
    from datamix.loop import step_chunks

    if step.kind not in PROBED_KINDS or getattr(step, "scorer", "judges") != "judges":
        return None
    records: list[dict] = []
    inputs = {label: StoreInput(store, parent) for label, parent in step.parent_steps().items()}
    with tempfile.TemporaryDirectory(prefix="datamix-plan-") as scratch:
        ctx = Context(
            step=step.name, pipeline_dir=pipeline.base_dir, output_dir=os.path.join(scratch, step.name),
            seed=pipeline.seed,
            done_keys=store.done_keys(step.name) if action == "resume" else frozenset(),
            models={m: pipeline.models[m] for m in models_used(step) if m in pipeline.models} or dict(pipeline.models),
            cache_get=store.cache_get, calls=records.append, probe=True,
        )
        try:
            for _ in step_chunks(REGISTRY[step.kind], step, inputs, ctx):
                pass
        except Exception:  # a step that cannot go on with placeholder answers: fall back to its formula
            return None
    return records
