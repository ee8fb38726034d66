"""Model calls shared by every step that calls a model (reconstruct, generate, judge, evaluate).

Sampling options, the models a run has loaded (the run's pool, carried in the step's
Context: one load per model per run, shared by the steps that use it, and nothing kept
between runs), and generation through the store's response cache, so a rerun after a change
elsewhere costs no model call for a request already answered. Backends never know about
steps; steps never load a backend themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from datamix.errors import BadInput, StepError
from datamix.models import BatchOptions

if TYPE_CHECKING:
    from datamix.models import Prompt, SamplingParams
    from datamix.steps.base import Context, StepConfig


class Sampling(BaseModel):
    """Sampling options of a step (the backend's SamplingParams without n and seed, which the step owns)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    max_tokens: int = Field(default=256, ge=1)
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)

    def params(self, **update) -> SamplingParams:
        from datamix.models import SamplingParams

        return SamplingParams(**{**self.model_dump(), **update})


def sampling_for(cfg: StepConfig, spec: Any) -> Sampling:
    """The sampling a step uses with one model: the keys the step's YAML sets win over the
    model's `sampling:`, which wins over the step kind's defaults. The result is what enters
    the response-cache key, so two names for one model folder at two temperatures never share
    answers (and the model's declaration is part of every step fingerprint that uses it)."""
    step = cfg.sampling
    declared = getattr(spec, "sampling", None)
    if declared is None:
        return step
    explicit = step.model_fields_set if "sampling" in cfg.model_fields_set else set()
    values = step.model_dump()
    for key, value in declared.model_dump(exclude_none=True).items():
        if key not in explicit:
            values[key] = value
    return Sampling(**values)


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any parts: chunk seeds depend only on (seed, chunk index), so resume is exact."""
    digest = hashlib.md5("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


# ---------------------------------------------------------------- the run's models


@dataclasses.dataclass
class LoadedModel:
    name: str
    spec: Any  # datamix.models.TransformersModel | VLLMModel | OpenAIModel
    backend: Any
    # how this step's calls to it go as batch files (datamix.models.BatchOptions), None: live
    batch: Any = None

    @property
    def cache_id(self) -> str:
        """Identity in cache keys: name and path (a different checkpoint under the same name misses)."""
        return f"{self.name}\x1f{self.spec.path}"


def _step_batch_flag(value):
    return {} if value is True else value


# `batch:` on a step that calls models (generate, judge, reconstruct): true or options send its
# calls to openai models as batch files, false sends them live, absent: as each model's own
# `batch:` says. Not fingerprinted (datamix.runner.run_settings): an answer's cache key is the
# same either way, so switching reruns nothing already answered.
StepBatch = Annotated[
    BatchOptions | Literal[False] | None,
    BeforeValidator(_step_batch_flag),
    Field(description="true / {runner: ..., ...}: this step's calls to openai models as batch files (about half "
          "the price on hosted APIs); false: live; absent: each model's own batch:"),
]


def batch_for(spec, step_batch) -> Any:
    """The batch files a model's calls in a step go as (BatchOptions), or None for live calls:
    the step's `batch:` where it sets one, else the model's own."""
    if getattr(spec, "backend", None) != "openai" or step_batch is False:
        return None
    return step_batch if step_batch is not None else spec.batch


def batch_problem(spec, name: str, step_batch) -> str | None:
    """Why a step's `batch:` cannot apply to model `name` (None when it can)."""
    if step_batch in (None, False) or spec is None or spec.backend == "openai":
        return None
    return (f"batch files are sent by openai models (an OpenAI-compatible server or `vllm run-batch`); model "
            f"{name!r} is backend {spec.backend}: remove `batch:` from the step, or declare the model with "
            "backend: openai")


def get_model(ctx: Context, name: str, where: str, batch=None) -> LoadedModel:
    """The declared model `name`, its backend loaded once per run (ctx.pool) and reused by every step;
    `batch`: the step's `batch:` option (see StepBatch)."""
    from datamix import models

    if name not in ctx.models:
        declared = ", ".join(sorted(ctx.models)) or "none"
        raise BadInput(f"{where}: model {name!r} is not declared under `models:` (declared: {declared}).")
    spec = ctx.models[name]
    if problem := batch_problem(spec, name, batch):
        raise BadInput(f"step {ctx.step!r}.batch: {problem}")
    batched = batch_for(spec, batch)
    if ctx.probe:  # plan: no model is loaded, at most its tokenizer
        return LoadedModel(name=name, spec=spec, backend=_ProbeBackend(name, spec, ctx.pipeline_dir), batch=batched)
    key = ("backend", name, spec.model_dump_json(), ctx.pipeline_dir)
    if key not in ctx.pool:
        ctx.pool[key] = models.load_backend(name, spec, ctx.pipeline_dir)
    return LoadedModel(name=name, spec=spec, backend=ctx.pool[key], batch=batched)


class _ProbeBackend:
    """What a step sees of a model while `datamix plan` probes it: the tokenizer (pre-query
    templates need it), never a generation (generate_cached does not call it in a probe)."""

    def __init__(self, name: str, spec, base_dir: str):
        self.name, self.spec, self.base_dir = name, spec, base_dir
        self._tokenizer: Any = False

    def tokenizer(self):
        if self._tokenizer is False:
            from datamix import models

            path = getattr(self.spec, "tokenizer", None) if self.spec.backend == "openai" else self.spec.path
            if path is None:
                self._tokenizer = None
            else:
                spec = models.resolve_spec(self.spec.model_copy(update={"path": path}), self.base_dir)
                self._tokenizer = models.load_tokenizer(spec.path, spec.chat_template, self.name)
        return self._tokenizer

    def generate(self, prompts, params, **options):
        raise RuntimeError("a plan probe does not generate")

    def __getattr__(self, attr: str):
        """What the real backend declares about itself (supports_response_format, ...), read from
        its class without loading a model, so a probed step asks exactly what a run would."""
        import importlib

        if attr.startswith("_"):
            raise AttributeError(attr)
        module, name = {"openai": ("datamix.models.openai", "OpenAIBackend"),
                        "transformers": ("datamix.models.transformers", "TransformersBackend"),
                        "vllm": ("datamix.models.vllm", "VLLMBackend")}.get(self.spec.backend, (None, None))
        try:
            cls = getattr(importlib.import_module(module), name) if module else None
        except ImportError:
            cls = None
        value = vars(cls).get(attr) if cls is not None else None
        if value is None or callable(value) or isinstance(value, (property, staticmethod, classmethod)):
            raise AttributeError(attr)
        return value


def _prompt_tokens_estimate(prompt: Prompt) -> int:
    """Tokens of a prompt for a plan: exact for token ids, about 4 characters a token otherwise."""
    if prompt.token_ids is not None:
        return len(prompt.token_ids)
    if prompt.text is not None:
        return len(prompt.text) // 4 + 1
    return sum(len(str(m.get("content") or "")) // 4 + 4 for m in prompt.messages or [])


def chat_template_source(ctx: Context, model: LoadedModel) -> tuple[Any, str | None, str | None]:
    """(tokenizer or None, template text or None, bos token or None) for deriving pre-query prefixes.

    A `chat_template:` on the model declaration wins over the tokenizer's own.
    """
    import os

    from datamix.chat_templates import bos_token_for, load_chat_template

    tokenizer = model.backend.tokenizer()
    declared = model.spec.chat_template
    template = bos = None
    if declared:
        resolved = ctx.resolve(declared)
        template = load_chat_template(resolved if os.path.isfile(resolved) else declared)
        bos = getattr(tokenizer, "bos_token", None) if tokenizer is not None else bos_token_for(declared)
    if tokenizer is None and template is None:
        raise BadInput(
            f"model {model.name!r} has no tokenizer here (hosted API) and no `chat_template:`: the pre-query "
            "template cannot be derived. Set `tokenizer:` (a local tokenizer folder) or `chat_template:` on the model, "
            "or give the step an explicit `pre_query_template:`."
        )
    return tokenizer, template, bos


def raw_prompt(tokenizer, text: str) -> Prompt:
    """A raw prompt sent exactly: token ids when we have the tokenizer (no second BOS), else text."""
    from datamix.models import Prompt
    from datamix.templates import pre_query_token_ids

    if tokenizer is None:
        return Prompt(text=text)
    return Prompt(token_ids=pre_query_token_ids(tokenizer, text))


def end_of_turn_stops(tokenizer, end_of_turn: str | None) -> tuple[list[str], list[int]]:
    """Stop strings and ids that end a sampled user turn (its end-of-turn marker)."""
    if not end_of_turn:
        return [], []
    ids: list[int] = []
    if tokenizer is not None:
        token_id = tokenizer.convert_tokens_to_ids(end_of_turn)
        if isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None):
            ids = [token_id]
    return [end_of_turn], ids


# ---------------------------------------------------------------- the response cache


def _prompt_repr(prompt: Prompt) -> list:
    if prompt.token_ids is not None:
        return ["ids", list(prompt.token_ids)]
    if prompt.text is not None:
        return ["text", prompt.text]
    return ["messages", prompt.messages]


def prompt_hash(prompt: Prompt) -> str:
    return hashlib.md5(json.dumps(_prompt_repr(prompt), ensure_ascii=False).encode()).hexdigest()


def cache_key(model: LoadedModel, prompt: Prompt, params: SamplingParams, seed: int, index: int,
              options: dict | None = None) -> str:
    """md5 of (model name + path, prompt, sampling params without n/seed, step seed, sample index,
    backend options such as a response_format when there are any)."""
    sampling = params.model_dump(exclude={"n", "seed"})
    parts = [model.cache_id, _prompt_repr(prompt), sampling, seed, index] + ([options] if options else [])
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return hashlib.md5(payload.encode()).hexdigest()


def generate_cached(
    ctx: Context,
    model: LoadedModel,
    prompts: list[Prompt],
    indices: list[list[int]],
    params: SamplingParams,
    *,
    seed: int,
    call_seed: int,
    options: dict | None = None,
) -> list[list[dict]]:
    """For each prompt, one completion per sample index in `indices[p]`, from the cache where present.

    Returns dicts {text, finish_reason, tokens_in, tokens_out, latency_s}. The
    missing ones are generated in as few backend calls as possible (prompts
    missing the same indices share a call with n = that many), seeded with
    `call_seed` (derived by the caller from the chunk, so a resumed chunk samples
    exactly as the first attempt did) and put in the cache together. `options` go to the
    backend's generate (an openai judge's `response_format` and `require`) and into the keys.
    A model with `batch:` (its own, or the step's: model.batch) answers through batch files instead
    (_generate_batched).
    """
    keys = [[cache_key(model, prompt, params, seed, i, options) for i in idx] for prompt, idx in zip(prompts, indices)]
    found = ctx.cache_get([k for row in keys for k in row]) if prompts else {}
    price = getattr(model.spec, "price", None)
    cost = {"model": model.name, "price_input_per_m": price.input_per_m if price else None,
            "price_output_per_m": price.output_per_m if price else None}
    hits = [[found[k] for k in row if k in found] for row in keys]
    if any(hits):  # what the cache saved: the tokens the cached responses cost when they were made
        ctx.calls({**cost, "cached": True, "prompts": sum(1 for h in hits if h), "completions": sum(map(len, hits)),
                   "prompt_tokens": sum(int(h[0].get("tokens_in") or 0) for h in hits if h),
                   "completion_tokens": sum(int(v.get("tokens_out") or 0) for h in hits for v in h),
                   "latency_s": 0.0, "retries": 0, "failed": 0})
    groups: dict[tuple[int, ...], list[int]] = {}
    for p, row in enumerate(keys):
        missing = tuple(j for j, k in enumerate(row) if k not in found)
        if missing:
            groups.setdefault(missing, []).append(p)
    fresh: dict[str, dict] = {}
    if groups and model.batch is not None and not getattr(ctx, "probe", False):
        fresh = _generate_batched(ctx, model, prompts, keys, groups, params, call_seed, options, cost)
        groups = {}
    for missing, members in sorted(groups.items()):
        call = params.model_copy(update={"n": len(missing), "seed": derive_seed(call_seed, *missing)})
        if ctx.probe:  # plan: count the call; a placeholder answer lets the step carry on (next turns)
            ctx.calls({**cost, "cached": False, "probe": True, "prompts": len(members),
                       "completions": len(members) * len(missing),
                       "prompt_tokens": sum(_prompt_tokens_estimate(prompts[p]) for p in members),
                       "completion_tokens": len(members) * len(missing) * params.max_tokens,
                       "latency_s": 0.0, "retries": 0, "failed": 0})
            for p in members:
                for j in missing:
                    fresh[keys[p][j]] = {"text": "...", "finish_reason": "stop", "tokens_in": 0, "tokens_out": 0,
                                         "latency_s": 0.0}
            continue
        started = time.perf_counter()
        outputs = _call_backend(ctx, model, [prompts[p] for p in members], call, cost, options)
        elapsed = time.perf_counter() - started
        per_prompt = elapsed / max(len(members), 1)
        if len(outputs) != len(members) or any(len(o) != len(missing) for o in outputs):
            raise StepError(f"model {model.name!r} returned {len(outputs)} results for {len(members)} prompts (n={len(missing)}): backend bug")
        tokens = 0
        prompt_tokens = retries = 0
        for p, completions in zip(members, outputs):
            # a prompt is sent (and billed) once for its n samples; a request's retries are on its
            # first completion only (models.Completion), so they add up over completions
            prompt_tokens += int(completions[0].tokens_in) if completions else 0
            retries += sum(int(getattr(c, "retries", 0) or 0) for c in completions)
            for j, c in zip(missing, completions):
                fresh[keys[p][j]] = {
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "tokens_in": int(c.tokens_in),
                    "tokens_out": int(c.tokens_out),
                    "latency_s": float(c.latency_s or per_prompt / len(missing)),
                }
                tokens += int(c.tokens_out)
        ctx.calls({**cost, "cached": False, "prompts": len(members), "completions": len(members) * len(missing),
                   "prompt_tokens": prompt_tokens, "completion_tokens": tokens, "latency_s": elapsed,
                   "retries": retries, "failed": 0})
        ctx.progress(0, tokens=tokens)
    if fresh and not ctx.probe:
        ctx.cache_put(fresh)
    return [[found.get(k) or fresh[k] for k in row] for row in keys]


def _generate_batched(ctx: Context, model: LoadedModel, prompts, keys, groups, params, call_seed, options,
                      cost) -> dict[str, dict]:
    """The missing answers as batch files (datamix/models/openai_batch.py): one line per answer,
    custom_id = its cache key, seeded per chunk and sample index; the batch's ids go into the
    response cache as soon as they are known, so a killed run resumes the same batch."""
    import os

    from datamix.models.openai_batch import BatchRequest, generate_batched

    requests = [BatchRequest(keys[p][j], prompts[p], derive_seed(call_seed, "batch", j))
                for missing, members in sorted(groups.items()) for p in members for j in missing]
    started = time.perf_counter()
    got = generate_batched(model.name, model.backend, requests, params, opts=model.batch, cache_get=ctx.cache_get,
                           cache_put=ctx.cache_put, work_dir=os.path.join(ctx.output_dir, "batches"), log=ctx.log,
                           **(options or {}))
    elapsed = time.perf_counter() - started
    fresh = {r.key: {"text": got[r.key].text, "finish_reason": got[r.key].finish_reason,
                     "tokens_in": int(got[r.key].tokens_in), "tokens_out": int(got[r.key].tokens_out),
                     "latency_s": float(got[r.key].latency_s or elapsed / len(requests))} for r in requests}
    tokens = sum(v["tokens_out"] for v in fresh.values())
    ctx.calls({**cost, "cached": False, "prompts": len(requests), "completions": len(requests),
               "prompt_tokens": sum(v["tokens_in"] for v in fresh.values()), "completion_tokens": tokens,
               "latency_s": elapsed, "retries": sum(int(c.retries) for c in got.values()), "failed": 0})
    ctx.progress(0, tokens=tokens)
    return fresh


def _call_backend(ctx: Context, model: LoadedModel, prompts: list[Prompt], call: SamplingParams, cost: dict,
                  options: dict | None = None) -> list:
    """model.backend.generate with the progress of a long call shown as it goes, and a call
    that fails for good recorded in dm.calls (it may have cost retries) before it propagates."""
    from datamix import models

    models._progress_hook = ctx.calls_progress
    started = time.perf_counter()
    try:
        return model.backend.generate(prompts, call, **(options or {}))
    except Exception:
        ctx.calls({**cost, "cached": False, "prompts": len(prompts), "completions": 0, "prompt_tokens": 0,
                   "completion_tokens": 0, "latency_s": time.perf_counter() - started, "retries": 0,
                   "failed": len(prompts) * call.n})
        raise
    finally:
        models._progress_hook = None


# ---------------------------------------------------------------- the generate step
