"""judge: score every candidate answer.

`scorer: judges` (default): every judge model rates every candidate with a
scoring prompt (a 1-5 rubric, or a user template file); the score is parsed
robustly and aggregated over judges. `scorer: reward_model`: a sequence-
classification model's logit. `scorer: loglik`: the mean token log-likelihood of
the answer under a reference causal LM. `scorer: pmi`: the same mean with the
instruction minus the mean without it (the last user message emptied), per answer
token: how much the instruction explains the answer. A small model's own likelihood
prefers whatever is predictable anywhere (runs of digits, short generic fragments);
those score near 0 under pmi, answers that fit their instruction above it. Each candidate gets `score` (the
aggregate), `scores` (one struct per judge: judge, score, reason) and
`judge_raw` (one struct per judge: judge, text).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from datamix.steps.base import BadInput, Context, Output, StepConfig, StepError, register
from datamix.llm import Sampling, StepBatch, derive_seed, generate_cached, get_model, sampling_for

DEFAULT_RUBRIC = """Please act as an impartial judge and evaluate the quality of the response to the user instruction below. Consider helpfulness, relevance, accuracy, depth and clarity. Rate the response on a scale of 1 to 5: 1 = very poor, 2 = poor, 3 = acceptable, 4 = good, 5 = excellent.

[Instruction]
{instruction}

[Response]
{response}

Give a one-sentence justification, then the final rating on its own line as "Score: N" where N is 1, 2, 3, 4 or 5."""


class JudgeConfig(StepConfig):
    kind: Literal["judge"]
    model_options: ClassVar[tuple[str, ...]] = ("judges",)
    judges: list[str] = Field(min_length=1, description="declared model names")
    scorer: Literal["judges", "reward_model", "loglik", "pmi"] = "judges"
    prompt_file: str | None = None  # a user-message template with {instruction} and {response}
    scale: tuple[float, float] = (1.0, 5.0)  # parsed scores outside it are NULL (reason out_of_range)
    aggregate: Literal["mean", "median", "min"] = "mean"
    on_missing: Literal["skip", "zero", "fail"] = "skip"
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=256))
    batch_size: int = Field(default=8, ge=1, description="candidates per forward pass (reward_model, loglik)")
    seed: int | None = None
    chunk_size: int = Field(default=512, ge=1, description="candidates per committed chunk")
    batch: StepBatch = None  # openai judges' calls as batch files (datamix.llm.StepBatch)
    structured: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto/json: openai judges answer {score, reason} through the server's "
        "structured output (response_format JSON schema), falling back to text where it is refused; other "
        "backends and text: the score is parsed from free text")

    path_fields: ClassVar[tuple[str, ...]] = ("prompt_file",)

    @model_validator(mode="after")
    def _check(self):
        if self.scale[0] >= self.scale[1]:
            raise ValueError(f"scale must be [low, high] with low < high, got {list(self.scale)}")
        if self.prompt_file and self.scorer != "judges":
            raise ValueError("prompt_file applies to scorer: judges only")
        return self

    def model_calls(self, rows_in: int | None) -> int | None:
        return None if rows_in is None else rows_in * len(self.judges)

    def check_pipeline(self, pipeline, check_files: bool = True) -> list[tuple[tuple, str]]:
        """The prompt file's placeholders, read at validate time (the file itself is a Resource)."""
        import os

        if not self.prompt_file or not check_files:
            return []
        path = os.path.join(pipeline.base_dir, self.prompt_file)
        if not os.path.isfile(path):
            return []  # reported with the files
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        missing = [p for p in ("{instruction}", "{response}") if p not in text]
        return [(("prompt_file",), f"{path} lacks {', '.join(missing)}; put both placeholders where the texts go")] if missing else []

    def columns_out(self, inputs):
        # the candidates' columns, carried, plus the scores
        carried = inputs.get("input")
        return None if carried is None else carried | {"sample_id", "score", "score_note", "scores", "judge_raw",
                                                       "candidate_id"}


# ---------------------------------------------------------------- structured output

# Appended to the rubric when the judge answers in JSON: the schema constrains the form,
# the prompt says what goes in it (a model reads the prompt, not the schema).
JSON_INSTRUCTION = """

Answer with a JSON object only: {"score": N, "reason": "one sentence"}, where N is the rating."""

# Judges whose server refused response_format: text from then on (per process).
_NO_STRUCTURED: set[str] = set()


def judge_schema(low: float, high: float) -> dict:
    """The response_format asking for {"score": ..., "reason": "..."} on the judge's scale
    (an enum of the whole numbers on an integer scale: the keyword every server's guided
    decoding supports)."""
    if float(low).is_integer() and float(high).is_integer() and high - low <= 100:
        score: dict = {"type": "integer", "enum": list(range(int(low), int(high) + 1))}
    else:
        score = {"type": "number"}
    return {"type": "json_schema", "json_schema": {"name": "judgement", "strict": True, "schema": {
        "type": "object", "properties": {"score": score, "reason": {"type": "string"}},
        "required": ["score", "reason"], "additionalProperties": False}}}


def parse_structured(text: str, low: float = 1.0, high: float = 5.0) -> tuple[float | None, str | None]:
    """(score, None) or (None, reason) from a JSON judgement; text that is not one is parsed as free text."""
    try:
        value = json.loads(text)["score"]
    except (ValueError, TypeError, KeyError):
        return parse_score(text, low, high)
    if isinstance(value, str):
        return parse_score(value, low, high)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, "unparsable"
    if not (low <= value <= high):
        return None, f"out_of_range:{value}"
    return float(value), None


def _structured(cfg: JudgeConfig, model) -> bool:
    """Whether this judge is asked for JSON: its backend takes a response_format (the openai one)."""
    return (cfg.structured != "text" and getattr(model.backend, "supports_response_format", False)
            and model.cache_id not in _NO_STRUCTURED)


# ---------------------------------------------------------------- score parsing

_NUM = r"(-?\d+(?:\.\d+)?)"
_JSON_SCORE = re.compile(r'"score"\s*:\s*"?' + _NUM)
_LABELLED = re.compile(r"(?:score|rating)\**\s*(?:is|:|=)?\s*\**\s*" + _NUM + r"(?:\s*/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_FRACTION = re.compile(_NUM + r"\s*/\s*(\d+(?:\.\d+)?)")
_BOLD = re.compile(r"\*\*\s*" + _NUM + r"\s*\*\*")
_BARE = re.compile(r"^\s*" + _NUM + r"\s*\.?\s*$")


def parse_score(text: str, low: float = 1.0, high: float = 5.0) -> tuple[float | None, str | None]:
    """(score, None) or (None, reason). Finds the judge's final rating in its free text.

    Accepts 'Score: 4', 'Rating: 4.5', '4/5', '**4**', JSON {"score": 4} and a bare
    number. The last labelled rating wins (judges reason first, conclude last). A
    fraction over another scale ('8/10' on 1-5) is not rescaled: NULL, scale_mismatch.
    """
    if text is None or not text.strip():
        return None, "empty"
    found: tuple[str, str | None] | None = None
    for pattern in (_JSON_SCORE, _LABELLED, _FRACTION, _BOLD, _BARE):
        matches = list(pattern.finditer(text))
        if matches:
            last = matches[-1]
            found = (last.group(1), last.group(2) if last.re.groups > 1 else None)
            break
    if found is None:
        return None, "unparsable"
    value, denominator = float(found[0]), found[1]
    if denominator is not None and float(denominator) != high:
        return None, f"scale_mismatch:{found[0]}/{denominator}"
    if not (low <= value <= high):
        return None, f"out_of_range:{found[0]}"
    return value, None


def aggregate_scores(scores: list[float | None], how: str, on_missing: str) -> tuple[float | None, str | None]:
    """One score from the judges' scores, NULLs handled as `on_missing` says: (score, note)."""
    missing = sum(s is None for s in scores)
    if missing and on_missing == "fail":
        raise ValueError(f"{missing} of {len(scores)} judge scores are missing")
    values = [0.0 if s is None else s for s in scores] if on_missing == "zero" else [s for s in scores if s is not None]
    if not values:
        return None, "no_judge_score"
    note = f"missing:{missing}" if missing else None
    if how == "mean":
        return statistics.fmean(values), note
    if how == "median":
        return float(statistics.median(values)), note
    return min(values), note


# ---------------------------------------------------------------- candidates


def _instruction_and_response(messages: list[dict]) -> tuple[list[dict], str, str]:
    """(conversation before the last answer, the last user message, the last answer)."""
    last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last_answer is None:
        raise ValueError("no assistant message to score")
    before = messages[:last_answer]
    user = next((m["content"] for m in reversed(before) if m["role"] == "user"), "")
    return before, user, messages[last_answer]["content"]


def _load_rubric(cfg: JudgeConfig, ctx: Context) -> str:
    if not cfg.prompt_file:
        return DEFAULT_RUBRIC
    path = Path(ctx.resolve(cfg.prompt_file))
    if not path.is_file():
        raise BadInput(f"step {ctx.step!r}.prompt_file: no file at {path}.")
    text = path.read_text(encoding="utf-8")
    missing = [p for p in ("{instruction}", "{response}") if p not in text]
    if missing:
        raise BadInput(f"step {ctx.step!r}.prompt_file {path}: the template lacks {', '.join(missing)}; put both placeholders where the texts go.")
    return text


def _judge_with_models(cfg: JudgeConfig, ctx: Context, convs: list[tuple[list[dict], str, str]]) -> list[list[dict]]:
    """Per candidate, per judge: {judge, score, reason, text}."""
    from datamix.models import Prompt

    rubric = _load_rubric(cfg, ctx)
    seed = ctx.seed if cfg.seed is None else cfg.seed
    # str.replace, not format: user rubrics often show JSON examples with braces
    prompts = [Prompt(messages=[{"role": "user", "content": rubric.replace("{instruction}", u).replace("{response}", r)}]) for _, u, r in convs]
    per_candidate: list[list[dict]] = [[] for _ in convs]
    for judge in cfg.judges:
        model = get_model(ctx, judge, f"step {ctx.step!r}.judges", batch=cfg.batch)
        params = sampling_for(cfg, model.spec).params()
        call_seed = derive_seed(seed, judge)  # not the chunk: a changed chunk_size changes no score
        structured = _structured(cfg, model)
        if structured:
            from datamix.models.openai import OpenAIBackendError

            asked = [Prompt(messages=[{"role": "user", "content": p.messages[0]["content"] + JSON_INSTRUCTION}])
                     for p in prompts]
            options = {"require": "json", "response_format": judge_schema(*cfg.scale)}
            try:
                results = generate_cached(ctx, model, asked, [[0] for _ in prompts], params, seed=seed,
                                          call_seed=call_seed, options=options)
            except OpenAIBackendError as e:
                # refused (400/422), or ignored (replies that are not JSON): this server has no
                # structured output for us; today's text parsing instead
                if e.status not in (400, 422) and "not a JSON object" not in str(e):
                    raise
                _NO_STRUCTURED.add(model.cache_id)
                ctx.log(f"step {ctx.step!r}: judge {judge!r} has no structured output here ({str(e)[:200]}); "
                        "its scores are parsed from text")
                structured = False
        if not structured:
            results = generate_cached(ctx, model, prompts, [[0] for _ in prompts], params, seed=seed,
                                      call_seed=call_seed)
        parse = parse_structured if structured else parse_score
        failed = 0
        for out, (res,) in zip(per_candidate, results):
            score, reason = parse(res["text"], *cfg.scale)
            failed += score is None
            out.append({"judge": judge, "score": score, "reason": reason, "text": res["text"]})
        if failed:  # each one is in the rows' scores (reason); dm.judge_failures(step) counts them
            ctx.log(f"step {ctx.step!r}: judge {judge!r}: {failed} of {len(results)} scores could not be parsed")
    return per_candidate


# ---------------------------------------------------------------- reward model and log-likelihood scorers

def _hf_model(ctx: Context, name: str, head: str):
    """(tokenizer, model, device) loaded with transformers directly, once per run (ctx.pool)."""
    spec = ctx.models.get(name)
    if spec is None:
        raise BadInput(f"step {ctx.step!r}.judges: model {name!r} is not declared under `models:`.")
    from datamix.models import load_tokenizer, resolve_spec

    spec = resolve_spec(spec, ctx.pipeline_dir)
    key = ("hf", spec.path, head)
    if key not in ctx.pool:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        device = getattr(spec, "device", "auto")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        cls = AutoModelForSequenceClassification if head == "reward_model" else AutoModelForCausalLM
        tokenizer = load_tokenizer(spec.path, spec.chat_template, name)
        ctx.pool[key] = (tokenizer, cls.from_pretrained(spec.path).to(device).eval(), device)
    return ctx.pool[key]


def _chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return "\n".join(m["content"] for m in messages) + ("\n" if add_generation_prompt else "")


def batches_by_length(lengths: list[int], batch_size: int, max_tokens: int = 32768) -> list[list[int]]:
    """Row indices in batches of similar length, longest first, at most `batch_size` rows and
    about `max_tokens` padded tokens each. Scoring real answers in input order padded every
    batch to its longest row, and attention cost grows with the square of that length: sorted,
    a batch pads only to rows of its own size (the judge step scored ~12 rows/s before)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]  # the first row of a batch is its longest
        if batch and (len(batch) >= batch_size or width * (len(batch) + 1) > max_tokens):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def _padded(rows: list[list[int]], pad: int):
    """(ids, attention mask) right-padded to the longest row: positions stay 0..len-1."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, r in enumerate(rows):
        ids[row, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[row, : len(r)] = 1
    return ids, mask


def _reward_scores(tokenizer, model, device, convs, batch_size: int) -> list[float]:
    import torch

    texts = [_chat_text(tokenizer, [*before, {"role": "assistant", "content": r}], False) for before, _, r in convs]
    tokenizer.padding_side = "right"  # the classification head reads the last non-pad token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out: list[float] = [0.0] * len(texts)
    with torch.inference_mode():
        for batch in batches_by_length([len(e) for e in encoded], batch_size):
            ids, mask = _padded([encoded[i] for i in batch], tokenizer.pad_token_id)
            scores = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().tolist()
            for i, score in zip(batch, scores):
                out[i] = score
    return out


def _loglik_scores(tokenizer, model, device, convs, batch_size: int) -> list[float | None]:
    """Mean log p(answer token | everything before it), answer tokens only."""
    import torch

    prompts = [_chat_text(tokenizer, before, True) for before, _, _ in convs]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if convs else []
    answer_ids = tokenizer([r for _, _, r in convs], add_special_tokens=False)["input_ids"] if convs else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float | None] = [None] * len(convs)
    with torch.inference_mode():
        for batch in batches_by_length([len(prompt_ids[i]) + len(answer_ids[i]) for i in range(len(convs))], batch_size):
            ids, mask = _padded([prompt_ids[i] + answer_ids[i] for i in batch], pad)
            answer = torch.zeros(ids.shape, dtype=torch.bool)
            for row, i in enumerate(batch):
                answer[row, len(prompt_ids[i]) : len(prompt_ids[i]) + len(answer_ids[i])] = True
            ids, target = ids.to(device), answer[:, 1:].to(device)
            logits = model(input_ids=ids, attention_mask=mask.to(device)).logits.float()
            # token t is predicted from position t-1; log p = logit - logsumexp, without the
            # full log_softmax tensor
            picked = logits[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            logp = picked - torch.logsumexp(logits[:, :-1], dim=-1)
            sums, counts = (logp * target).sum(-1).tolist(), target.sum(-1).tolist()
            for i, s, c in zip(batch, sums, counts):
                out[i] = None if int(c) == 0 else float(s) / int(c)
    return out


def _pmi_scores(tokenizer, model, device, convs, batch_size: int) -> list[float | None]:
    """Per answer token, mean log p(token | conversation) - log p(token | conversation with the last
    user message emptied). The answer's tokens are the same in both (tokenized on their own), so the
    difference of the two means is the mean of the per-token differences."""
    blank = []
    for before, _, answer in convs:
        last_user = max((i for i, m in enumerate(before) if m["role"] == "user"), default=None)
        emptied = [dict(m, content="") if i == last_user else m for i, m in enumerate(before)]
        blank.append((emptied, "", answer))
    given = _loglik_scores(tokenizer, model, device, convs, batch_size)
    without = _loglik_scores(tokenizer, model, device, blank, batch_size)
    return [None if a is None or b is None else a - b for a, b in zip(given, without)]


def _score_with_hf(cfg: JudgeConfig, ctx: Context, convs) -> list[list[dict]]:
    """reward_model / loglik / pmi scores through the response cache (key: scorer, model, conversation)."""
    per_candidate: list[list[dict]] = [[] for _ in convs]
    for name in cfg.judges:
        spec = ctx.models.get(name)
        ident = f"{cfg.scorer}\x1f{name}\x1f{getattr(spec, 'path', '')}"
        keys = [hashlib.md5(json.dumps([ident, before, r], ensure_ascii=False).encode()).hexdigest() for before, _, r in convs]
        found = ctx.cache_get(keys) if keys else {}
        todo = [i for i, k in enumerate(keys) if k not in found]
        # dm.calls: one forward pass per candidate; no tokens are generated and the prompt's are
        # not counted (NULL), so the cost section shows these calls and their time
        call = {"model": name, "prompt_tokens": None, "completion_tokens": 0, "retries": 0, "failed": 0}
        if len(keys) > len(todo):
            hits = len(keys) - len(todo)
            ctx.calls({**call, "cached": True, "prompts": hits, "completions": hits, "latency_s": 0.0})
        if todo:
            started = time.perf_counter()
            tokenizer, model, device = _hf_model(ctx, name, cfg.scorer)
            fn = {"reward_model": _reward_scores, "loglik": _loglik_scores, "pmi": _pmi_scores}[cfg.scorer]
            values = fn(tokenizer, model, device, [convs[i] for i in todo], cfg.batch_size)
            ctx.calls({**call, "cached": False, "prompts": len(todo), "completions": len(todo),
                       "latency_s": time.perf_counter() - started})
            fresh = {keys[i]: {"score": v} for i, v in zip(todo, values)}
            ctx.cache_put(fresh)
            found = {**found, **fresh}
        for out, k in zip(per_candidate, keys):
            value = found[k]["score"]
            ok = value is not None and math.isfinite(value)
            out.append({"judge": name, "score": value if ok else None, "reason": None if ok else "no_answer_tokens", "text": None})
    return per_candidate


# ---------------------------------------------------------------- the step


def _score_chunk(cfg: JudgeConfig, ctx: Context, frame):
    import polars as pl

    from datamix.ids import mint

    convs = []
    for sid, messages in zip(frame["sample_id"], frame["messages"].to_list()):
        try:
            convs.append(_instruction_and_response(messages))
        except ValueError as exc:
            raise BadInput(f"step {ctx.step!r}, sample {sid}: {exc}; judge expects answers (the output of generate).") from exc
    if cfg.scorer == "judges":
        per_candidate = _judge_with_models(cfg, ctx, convs)
    else:
        per_candidate = _score_with_hf(cfg, ctx, convs)
    aggregated, notes = [], []
    for sid, judged in zip(frame["sample_id"], per_candidate):
        try:
            score, note = aggregate_scores([j["score"] for j in judged], cfg.aggregate, cfg.on_missing)
        except ValueError as exc:
            raw = "; ".join(f"{j['judge']}: {j['reason']} {str(j['text'])[:200]!r}" for j in judged if j["score"] is None)
            raise StepError(f"step {ctx.step!r}, sample {sid}: {exc} (on_missing: fail). {raw}. "
                            "Use on_missing: skip or zero to keep going.") from exc
        aggregated.append(score)
        notes.append(note)
    score_struct = pl.List(pl.Struct({"judge": pl.Utf8, "score": pl.Float64, "reason": pl.Utf8}))
    raw_struct = pl.List(pl.Struct({"judge": pl.Utf8, "text": pl.Utf8}))
    extra = pl.DataFrame(
        {
            "score": aggregated,
            "score_note": notes,
            "scores": [[{k: j[k] for k in ("judge", "score", "reason")} for j in judged] for judged in per_candidate],
            "judge_raw": [[{"judge": j["judge"], "text": j["text"]} for j in judged] for judged in per_candidate],
        },
        schema={"score": pl.Float64, "score_note": pl.Utf8, "scores": score_struct, "judge_raw": raw_struct},
    )
    carried = frame.drop([c for c in ("parent_ids", "score", "score_note", "scores", "judge_raw") if c in frame.columns])
    out = pl.concat([carried, extra], how="horizontal")
    return out.with_columns(
        mint(ctx.step, frame["sample_id"]).alias("sample_id"),
        frame["sample_id"].map_elements(lambda x: [x], return_dtype=pl.List(pl.Utf8)).alias("parent_ids"),
        frame["sample_id"].alias("candidate_id"),
    )


@register("judge", JudgeConfig, shape="batch")
def run(cfg: JudgeConfig, batch, ctx: Context) -> Output:
    """Every judge's score of one batch of candidates, aggregated."""
    import polars as pl

    return Output(rows=_score_chunk(cfg, ctx, pl.from_arrow(batch)))
