"""evaluate: metrics of models on named evaluation sets, into dm.metrics and the step's table.

    - name: eval
      kind: evaluate
      models: [base, train_d, train_m]   # names under `models:` and/or `train` steps (their saved model)
      baseline: base                      # what forgetting/gain is measured against (default: the first)
      no_replay: train_d                  # optional: the no-replay arm of dm.forgetting's fractions
      batch_size: 8
      sets:
        general: {input: general_eval, metrics: [nll], role: general}
        domain:  {path: data/gsm8k_test.jsonl, prompt_field: question, response_field: answer,
                  metrics: [nll, {metric: exact_match, preset: gsm8k, max_tokens: 256}], role: domain}

The train steps and the sets' input steps are the step's parents: the runner runs it
after them, and its fingerprint changes when a model is retrained or a set changes, so
an unchanged evaluation is skipped like any step. One chunk per model (a crash resumes
after the models already evaluated). Output: one row per (model, set, metric) with the
value, n, stderr and 95% interval; a trained model's rows link to the train step's row
(lineage reaches the mix it was trained on). The same rows go to dm.metrics, which the
dm.forgetting view reads (sql/forgetting.sql). Metrics that generate or choose (exact_match,
choice, judge_winrate) also write every example's answer, extraction and verdicts to
outputs/<step>/<model>/<set>.<metric>.jsonl, named in the row's `samples_file`.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from datamix.eval.sets import EvalSet
from datamix.steps.base import BadInput, Context, InputTable, Output, Source, StepConfig, Unit, register

_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class EvaluateConfig(StepConfig):
    kind: Literal["evaluate"]
    models: list[str] = Field(min_length=1, description="models under `models:` and/or train steps to evaluate")
    baseline: str | None = Field(default=None, description="the model forgetting and gain are measured against "
                                 "(default: the first of `models`)")
    no_replay: str | None = Field(default=None, description="the no-replay arm (domain data only) for the "
                                  "fraction of forgetting removed and of domain gain kept")
    batch_size: int = Field(default=8, ge=1, description="sequences per forward pass")
    device: str = Field(default="auto", description="auto: cuda when available, else cpu")
    dtype: str = Field(default="auto", description="auto: the checkpoint's own; float32, bfloat16, float16")
    chat_template: str | None = Field(default=None, description="a bundled template name or .jinja file for every "
                                      "model (default: a declared model's own, else the model folder's)")
    sets: dict[str, EvalSet] = Field(min_length=1)
    # Which of `models` are declared models (the rest are train steps): set from the
    # pipeline's `models:` while validating (spec.load passes it as validation context).
    _declared: frozenset[str] | None = PrivateAttr(default=None)
    _step_names: frozenset[str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo):
        if self.input or self.inputs:
            raise ValueError("evaluate takes its inputs from `models:` (train steps) and `sets:` (input: STEP); "
                             "remove `input`/`inputs`")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a name twice: {self.models}")
        for option in ("baseline", "no_replay"):
            value = getattr(self, option)
            if value is not None and value not in self.models:
                raise ValueError(f"{option}: {value!r} is not one of the evaluated models {self.models}")
        for name in self.sets:
            if not _SET_NAME.fullmatch(name):
                raise ValueError(f"set name {name!r}: start with a letter, then letters, digits, _ or -")
        context = info.context if info is not None else None
        if isinstance(context, dict) and "models" in context:
            self._declared = frozenset(context["models"])
        if isinstance(context, dict) and "steps" in context:
            self._step_names = frozenset(context["steps"])
        return self

    @property
    def baseline_model(self) -> str:
        return self.baseline or self.models[0]

    def declared_models(self) -> list[str]:
        """The evaluated models declared under `models:` (the others are train steps)."""
        if self._declared is None:
            return []
        return [m for m in self.models if m in self._declared]

    def train_steps(self) -> list[str]:
        """The evaluated train steps (a name that is neither a model nor a step is left to
        check_pipeline, which says so once)."""
        declared = set(self.declared_models())
        return [m for m in self.models if m not in declared and (self._step_names is None or m in self._step_names)]

    def parent_steps(self) -> dict[str, str]:
        parents = {f"model-{m}": m for m in self.train_steps()}
        parents.update({f"set-{n}": s.input for n, s in self.sets.items() if s.input})
        return parents

    def model_refs(self) -> list[tuple[str, str]]:
        """(option, model name) of every declared model this step uses (spec.models_used)."""
        refs = [("models", m) for m in self.declared_models()]
        for n, s in self.sets.items():
            for i, m in enumerate(s.metrics):
                refs += [(f"sets.{n}.metrics[{i}].judges", j) for j in getattr(m, "judges", [])]
                ref = getattr(m, "reference", None)
                if ref and ref != "set" and ref not in self.models:
                    refs.append((f"sets.{n}.metrics[{i}].reference", ref))
        return refs

    def columns_read(self) -> list:
        """The columns each step-sourced set's metrics read (messages, and options/answer fields)."""
        from datamix.steps.base import ColumnUse

        uses = []
        for n, s in self.sets.items():
            if not s.input:
                continue
            uses.append(ColumnUse(f"set-{n}", ("sets", n, "input"), "messages",
                                  hint="an evaluation set's rows are chats (a messages column)"))
            for i, m in enumerate(s.metrics):
                for option in ("options_field", "answer_field"):
                    if getattr(m, option, None):
                        uses.append(ColumnUse(f"set-{n}", ("sets", n, "metrics", i, option), getattr(m, option)))
        return uses

    def columns_out(self, inputs) -> frozenset[str]:
        return frozenset(("sample_id", "model", "model_path", "set", "role", "metric", "value", "n", "stderr",
                          "ci_low", "ci_high", "higher_is_better", "samples_file", "source"))

    def _files(self) -> list[tuple[tuple, str]]:
        """(YAML location, path) of every file the options name: set files and judge prompt files."""
        out = [(("sets", n, "path"), s.path) for n, s in self.sets.items() if s.path]
        for n, s in self.sets.items():
            out += [(("sets", n, "metrics", i, "prompt_file"), m.prompt_file)
                    for i, m in enumerate(s.metrics) if getattr(m, "prompt_file", None)]
        return out

    def resources(self) -> list:
        from datamix.steps.base import Resource

        return [Resource(loc, path, "file") for loc, path in self._files()]

    def fingerprint_files(self) -> list[str]:
        """The set files and prompt files: the runner hashes their size and mtime into the fingerprint,
        so editing a set reruns the evaluation."""
        return [path for _, path in self._files()]

    def check_pipeline(self, pipeline, check_files: bool = True) -> list[tuple[tuple, str]]:
        """(YAML location inside the step, problem) for what only the whole pipeline can tell:
        unknown models, set files that are missing or malformed, metrics that do not fit a set,
        and a missing optional extra."""
        from datamix.eval.sets import SetError, check_fit, read_file_set

        problems: list[tuple[tuple, str]] = []
        kinds = {s.name: s.kind for s in pipeline.steps}
        for i, m in enumerate(self.models):
            if m in pipeline.models:
                continue
            if m not in kinds:
                problems.append((("models", i), f"no model or train step named {m!r} (models: "
                                 f"{', '.join(pipeline.models) or 'none'}; train steps: "
                                 f"{', '.join(n for n, k in kinds.items() if k == 'train') or 'none'})"))
            elif kinds[m] != "train":
                problems.append((("models", i), f"{m!r} is a {kinds[m]} step; evaluate takes models under "
                                 "`models:` or train steps"))
        for name, s in self.sets.items():
            where = ("sets", name)
            for i, metric in enumerate(s.metrics):  # an unknown judge or reference: spec's model check
                if metric.metric == "lm_eval":
                    from datamix.eval.lm_eval import missing_extra

                    if (msg := missing_extra()) is not None:
                        problems.append((where + ("metrics", i), msg))
            if s.input and s.input in kinds and kinds[s.input] == "train":
                problems.append((where + ("input",), f"{s.input!r} is a train step, not rows to evaluate on"))
            if s.path and check_files:
                from datamix.steps.load import list_files

                full = s.path if os.path.isabs(s.path) else os.path.join(pipeline.base_dir, s.path)
                if not list_files(full):
                    continue  # spec's file check (resources) says it does not exist
                try:
                    records = read_file_set(name, s, pipeline.base_dir)
                except SetError as e:
                    problems.append((where + ("path",), str(e)))
                    continue
                problems += [(where + ("metrics", i), p) for i, p in check_fit(s, records)]
        return problems


def _models(cfg: EvaluateConfig, inputs: dict[str, InputTable], ctx: Context):
    """name -> (EvalModel, the train step's row id or None)."""
    from datamix.eval.lm import EvalModel
    from datamix.models import resolve_spec

    template = ctx.resolve(cfg.chat_template) if cfg.chat_template and os.path.isfile(
        ctx.resolve(cfg.chat_template)) else cfg.chat_template
    out = {}
    for name in cfg.models:
        if name in cfg.declared_models():
            # any declared model whose weights are in a local folder (vllm's too): evaluation runs
            # it with transformers; a hosted (openai) model has no weights to score with
            spec = resolve_spec(ctx.models[name], ctx.pipeline_dir)
            if not os.path.isfile(os.path.join(spec.path, "config.json")):
                raise BadInput(f"step {cfg.name!r}.models: {name!r} is not a local model folder ({spec.path}); "
                               "evaluate scores weights with transformers, so give a folder with config.json")
            out[name] = (EvalModel(name, spec.path, template or spec.chat_template, cfg.device, cfg.batch_size,
                                   cfg.dtype), None)
        else:
            table = inputs[f"model-{name}"].arrow("sample_id, model_path").to_pylist()
            if not table:
                raise BadInput(f"step {cfg.name!r}.models: train step {name!r} has no saved model row")
            out[name] = (EvalModel(name, table[0]["model_path"], template, cfg.device, cfg.batch_size, cfg.dtype),
                         table[0]["sample_id"])
    return out


def _records(cfg: EvaluateConfig, name: str, s: EvalSet, inputs: dict[str, InputTable], ctx: Context) -> list[dict]:
    from datamix.eval.sets import SetError, check_fit, read_file_set

    if s.input:
        table = inputs[f"set-{name}"]
        have = set(table.column_names())
        missing = [c for c in ("messages", *s.fields_needed()) if c not in have]
        if missing:
            raise BadInput(f"step {cfg.name!r}.sets.{name}: step {s.input!r} has no column "
                           f"{', '.join(missing)} (columns: {', '.join(sorted(have))})")
        from datamix.store import quote

        records = table.arrow(", ".join(quote(c) for c in ("sample_id", "messages", *s.fields_needed()))).to_pylist()
        records = records[: s.limit] if s.limit else records
    elif s.path:
        try:
            records = read_file_set(name, s, ctx.pipeline_dir)
        except SetError as e:
            raise BadInput(f"step {cfg.name!r}.sets.{name}.path: {e}") from None
    else:
        return []  # lm_eval tasks bring their own data
    problems = check_fit(s, records)
    if problems:
        raise BadInput("; ".join(f"step {cfg.name!r}.sets.{name}.metrics[{i}]: {p}" for i, p in problems))
    return records


@register("evaluate", EvaluateConfig)
def run(cfg: EvaluateConfig, inputs: dict[str, InputTable], ctx: Context) -> Source:
    models = _models(cfg, inputs, ctx)
    sets = {name: _records(cfg, name, s, inputs, ctx) for name, s in cfg.sets.items()}
    res = _resources(cfg, ctx, models)
    # one unit (and chunk) per model, on every set: a crash resumes after the models already evaluated
    return Source(units=[Unit(f"model-{name}", name) for name in models],
                  run=functools.partial(_evaluate_model, cfg, models, sets, res, ctx))


def _evaluate_model(cfg: EvaluateConfig, models: dict, sets: dict[str, list[dict]], res, ctx: Context,
                    unit: Unit) -> Output:
    import polars as pl

    from datamix.eval.run import rows_for
    from datamix.ids import mint_one

    name = unit.item
    model, parent_id = models[name]
    rows = []
    for set_name, s in cfg.sets.items():
        ctx.log(f"evaluate {name} on {set_name}")
        try:
            rows += rows_for(model, set_name, s, sets[set_name], res)
        except ValueError as e:  # a record a metric cannot use (an answer that is no option, ...)
            raise BadInput(f"step {cfg.name!r}.sets.{set_name} ({name}): {e}") from None
    model.release()
    for r in rows:  # per-example detail beside the store: outputs/<step>/<model>/<set>.<metric>.jsonl
        samples = r.pop("samples", None)
        r["samples_file"] = _write_samples(ctx.output_dir, name, r["set"], r["metric"], samples) if samples else None
    schema = _schema()
    metrics = pl.DataFrame([[r[c] for c in schema] for r in rows], schema=schema, orient="row")
    out = metrics.with_columns(
        pl.Series("sample_id", [mint_one(cfg.name, r["model"], r["set"], r["metric"]) for r in rows], pl.Utf8),
        pl.Series("parent_ids", [[parent_id] if parent_id else [] for _ in rows], pl.List(pl.Utf8)),
        # which parent the row's parent id belongs to (the runner maps labels to steps)
        pl.lit(f"model-{name}" if parent_id else None, pl.Utf8).alias("source"),
        pl.Series("samples_file", [r["samples_file"] for r in rows], pl.Utf8),
    )
    columns = ["sample_id", *schema, "samples_file", "source", "parent_ids"]
    return Output(rows=out.select(columns), metrics=metrics, rows_in=sum(len(r) for r in sets.values()))


def _write_samples(output_dir: str, model: str, set_name: str, metric: str, samples: list[dict]) -> str:
    import json

    folder = os.path.join(output_dir, model)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{set_name}.{metric}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False, default=str) + "\n")
    return path


def _schema() -> dict:
    """The metric columns (dm.metrics without run_id, step and created_at), as Polars types."""
    import polars as pl

    text, num = pl.Utf8, pl.Float64
    return {"model": text, "model_path": text, "set": text, "role": text, "metric": text, "value": num,
            "n": pl.Int64, "stderr": num, "ci_low": num, "ci_high": num, "higher_is_better": pl.Boolean}


def _resources(cfg: EvaluateConfig, ctx: Context, models: dict):
    """Judges and reference answers for judge_winrate: the pipeline's declared models, loaded once per
    process and answered through the store's response cache, as the judge step calls them."""
    from datamix.eval.run import Resources
    from datamix.models import Prompt
    from datamix.llm import Sampling, derive_seed, generate_cached, get_model

    def judge_texts(name: str, prompts: list[str], max_tokens: int) -> list[str]:
        model = get_model(ctx, name, f"step {cfg.name!r}.sets")
        chats = [Prompt(messages=[{"role": "user", "content": p}]) for p in prompts]
        params = Sampling(temperature=0.0, max_tokens=max_tokens).params()
        out = generate_cached(ctx, model, chats, [[0] for _ in chats], params, seed=ctx.seed,
                              call_seed=derive_seed(ctx.seed, cfg.name, name))
        return [r[0]["text"] for r in out]

    def answers_of(name: str, set_name: str, chats: list[list[dict]], max_tokens: int) -> list[str]:
        from datamix.eval.exact_match import greedy

        if name in models:
            return greedy(models[name][0].backend(), chats, max_tokens)
        return greedy(get_model(ctx, name, f"step {cfg.name!r}.sets.{set_name}.reference").backend, chats, max_tokens)

    return Resources(judge_texts=judge_texts, answers_of=answers_of, base_dir=ctx.pipeline_dir, seed=ctx.seed,
                     log=ctx.log)
