"""Evaluation sets and their metrics, as the YAML writes them.

    sets:
      general: {input: general_eval, metrics: [nll], role: general}          # a step's rows
      domain:  {path: data/gsm8k_test.jsonl, prompt_field: question, response_field: answer,
                metrics: [nll, {metric: exact_match, preset: gsm8k, max_tokens: 256}], role: domain}

A file set is read with `load`'s readers and normalisation (the same shapes and
options), so a file that loads into a pipeline evaluates the same way. Every
record becomes `messages` plus the extra fields a metric reads (options, answer).
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class _Metric(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NllMetric(_Metric):
    """Mean negative log-likelihood per assistant token (nats) and bits per byte of the assistant text."""

    metric: Literal["nll"]


class ExactMatchMetric(_Metric):
    """Greedy answer to the chat before the last assistant turn, compared with the reference answer."""

    metric: Literal["exact_match"]
    preset: Literal["gsm8k"] | None = Field(default=None, description="gsm8k: '#### <number>', else the last number")
    regex: str | None = Field(default=None, description="answer pattern (its first group, else the match)")
    fallback: Literal["last_number", "none"] | None = Field(
        default=None, description="when the regex finds nothing: the last number in the text (gsm8k default) or none")
    answer_field: str | None = Field(default=None, description="record field holding the reference answer "
                                     "(default: the last assistant message)")
    max_tokens: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _check(self):
        import re

        if self.regex:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"regex {self.regex!r} does not compile: {e}") from None
        return self


class ChoiceMetric(_Metric):
    """Multiple choice: the option with the highest log-likelihood after the question."""

    metric: Literal["choice"]
    options_field: str = Field(default="options", description="record field holding the list of options")
    answer_field: str | None = Field(default=None, description="record field holding the answer (index, letter or "
                                     "option text; default: the last assistant message)")


class JudgeWinrateMetric(_Metric):
    """The model's answers against reference answers, judged pairwise in both orders."""

    metric: Literal["judge_winrate"]
    judges: list[str] = Field(min_length=1, description="judge models declared under `models:`")
    reference: str = Field(default="set", description="'set' (the set's own answers), or a model under `models:` "
                           "or an evaluated model whose greedy answers are the reference")
    max_tokens: int = Field(default=256, ge=1)
    judge_max_tokens: int = Field(default=256, ge=1)
    prompt_file: str | None = Field(default=None, description="pairwise prompt with {instruction}, {response_a}, "
                                    "{response_b}; the verdict line is 'Winner: A', 'Winner: B' or 'Winner: tie'")


class LmEvalMetric(_Metric):
    """lm-evaluation-harness tasks (optional extra datamix[eval]); the set needs no data of its own."""

    metric: Literal["lm_eval"]
    tasks: list[str] = Field(min_length=1)
    include_path: str | None = Field(default=None, description="folder of local task YAMLs (relative to the YAML)")
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=1, description="examples per task (smoke runs)")
    apply_chat_template: bool = False


def _named(value: Any) -> Any:
    """`nll` is short for `{metric: nll}`."""
    return {"metric": value} if isinstance(value, str) else value


MetricSpec = Annotated[
    Annotated[NllMetric | ExactMatchMetric | ChoiceMetric | JudgeWinrateMetric | LmEvalMetric,
              Field(discriminator="metric")],
    BeforeValidator(_named),
]
METRICS = ("nll", "exact_match", "choice", "judge_winrate", "lm_eval")


class EvalSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | None = Field(default=None, description="a pipeline step whose rows are the set")
    path: str | None = Field(default=None, description="a file, glob or folder `load` can read (relative to the YAML)")
    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    shape: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_response"] = "auto"
    prompt_field: str = "prompt"
    response_field: str = "response"
    system_field: str = ""
    limit: int | None = Field(default=None, ge=1, description="evaluate the first N records only")
    role: Literal["general", "domain"] | None = Field(
        default=None, description="which side of the forgetting/gain ledger (dm.forgetting) the set is on")
    metrics: list[MetricSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self):
        harness_only = all(m.metric == "lm_eval" for m in self.metrics)
        if self.input and self.path:
            raise ValueError("give `input:` (a step) or `path:` (a file), not both")
        if not (self.input or self.path) and not harness_only:
            raise ValueError("give `input:` (a step whose rows are the set) or `path:` (a file load can read)")
        return self

    def fields_needed(self) -> list[str]:
        """Record fields beyond messages that the metrics read."""
        out = []
        for m in self.metrics:
            out += [f for f in (getattr(m, "answer_field", None), getattr(m, "options_field", None)) if f]
        return list(dict.fromkeys(out))


def load_config(name: str, s: EvalSet):
    """The `load` step config that reads this set's file (same shapes and options as a load step)."""
    from datamix.steps.load import LoadConfig

    return LoadConfig(name=name, kind="load", path=s.path or "", format=s.format, shape=s.shape,
                      prompt_field=s.prompt_field, response_field=s.response_field, system_field=s.system_field,
                      keep_fields=s.fields_needed(), limit=s.limit)


class SetError(ValueError):
    """A set cannot be read or does not fit its metrics; the message names the file and line."""


def read_file_set(name: str, s: EvalSet, base_dir: str) -> list[dict]:
    """The set's records ({sample_id, messages, extra fields}) in file order. Raises SetError."""
    import duckdb

    from datamix.steps.base import BadInput
    from datamix.steps.load import format_of, list_files, normalize, read_parsed_records, read_raw_records

    full = s.path if os.path.isabs(s.path) else os.path.join(base_dir, s.path)
    files = list_files(full)
    if not files:
        raise SetError(f"{s.path} matches no file (looked for {full})")
    cfg = load_config(name, s)
    con = duckdb.connect()
    records: list[dict] = []
    try:
        for path in files:
            fmt = format_of(path, s.format)
            raw = read_parsed_records(path, cfg) if fmt == "jsonl" else None
            raw = raw if raw is not None else read_raw_records(path, fmt, s.limit)
            # records name their file as the user did: relative to the YAML (or the working folder)
            origin = path if os.path.isabs(s.path) else os.path.relpath(path, base_dir)
            good, bad = normalize(con, raw, origin, cfg)
            if bad.num_rows and fmt == "jsonl":  # the fast reader does not name bad lines: read them one by one
                good, bad = normalize(con, read_raw_records(path, fmt, s.limit, fast=False), origin, cfg)
            if bad.num_rows:
                first = bad.slice(0, 1).to_pylist()[0]
                hint = ' (write it as a string, e.g. "2")' if "not a string" in first["reason"] else ""
                raise SetError(f"{origin}:{first['line']}: {first['reason']}{hint} ({bad.num_rows} bad record(s)); "
                               "an evaluation set must be clean: fix or remove those records")
            records += good.to_pylist()
    except BadInput as e:
        raise SetError(str(e)) from None
    finally:
        con.close()
    if not records:
        raise SetError(f"{s.path} has no records")
    return records[: s.limit] if s.limit else records


def check_fit(s: EvalSet, records: list[dict]) -> list[tuple[int, str]]:
    """(metric index, problem) for metrics that do not fit the set's records (first offending record named)."""
    problems = []
    for i, m in enumerate(s.metrics):
        if m.metric == "choice":
            for r in records:
                try:
                    options_of(r, m.options_field)
                except ValueError as e:
                    problems.append((i, f"choice: {_record_name(r)}: {e}; choice needs records with a list of options"))
                    break
        answer_field = getattr(m, "answer_field", None)
        if m.metric in ("exact_match", "choice"):
            for r in records:
                if answer_field and r.get(answer_field) in (None, ""):
                    problems.append((i, f"{m.metric}: {_record_name(r)} has no answer field {answer_field!r}"))
                    break
                if not answer_field and not _last_assistant(r["messages"]):
                    problems.append((i, f"{m.metric}: {_record_name(r)} has no reference answer: give the records "
                                        "an assistant reply (response_field) or set `answer_field:`"))
                    break
        if m.metric in ("exact_match", "choice", "judge_winrate"):
            for r in records:
                if not any(x["role"] == "user" for x in r["messages"]):
                    problems.append((i, f"{m.metric}: {_record_name(r)} has no user message to answer"))
                    break
    return problems


def _record_name(r: dict) -> str:
    if r.get("origin_file"):
        return f"{r['origin_file']}:{r.get('origin_line')}"
    return f"sample {r.get('sample_id')}"


def _last_assistant(messages: list[dict]) -> str | None:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), None)


def prompt_and_reference(messages: list[dict]) -> tuple[list[dict], str | None]:
    """(the chat before the last assistant turn, that turn's text); the whole chat and None without one."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return list(messages), None
    return list(messages[:last]), messages[last]["content"]


def options_of(record: dict, field: str) -> list[str]:
    """A record's options as a list of strings (a list, or its JSON text as load keeps it)."""
    value = record.get(field)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"field {field!r} is not a JSON list of options") from None
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError(f"field {field!r} is missing or has fewer than two options")
    return [str(v) for v in value]
