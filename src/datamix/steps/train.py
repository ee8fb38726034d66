"""`train`: fine-tune a model on exported shards with the FSDP2 recipe (datamix.train.recipe).

    - name: sft
      kind: train
      input: shards          # the export step (format: shards): its folder is the default `shards`
      model: base            # a model declared under `models:`, or an HF model folder
      nproc_per_node: 1
      options: {batch_tokens: 65536, lr: 2.0e-5, max_steps: 100}

    # early stopping: train until the loss on held-out chats stops improving
      validation: {input: heldout_chats}      # or {path: data/heldout.jsonl}: a step or a file of chats
      options: {epochs: 40, eval_every: 20, patience: 3}   # epochs is then the cap

The trained model lands in ctx.output_dir/model (Hugging Face format); the chunk
records that folder and no rows. With `validation:` the step writes the held-out chats
as shards (ctx.output_dir/validation: the model's tokenizer and chat template,
assistant tokens labelled, as the evaluate step's nll labels them, nothing truncated),
and the recipe measures their loss every `eval_every` steps, stops after `patience`
measurements without a new best and saves the best model (run.json: early_stopping).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from datamix.eval.sets import EvalSet, MetricSpec, NllMetric
from datamix.steps.base import (BadInput, ColumnUse, Context, InputTable, Output, Resource, StepConfig, StepError,
                                register)


class Validation(EvalSet):
    """Held-out chats for early stopping: a step's rows or a file (the shapes `load` reads)."""

    metrics: list[MetricSpec] = Field(default_factory=lambda: [NllMetric(metric="nll")],
                                      description="always nll: the held-out loss")

    @field_validator("metrics")
    @classmethod
    def _nll_only(cls, metrics):
        if [m.metric for m in metrics] != ["nll"]:
            raise ValueError("validation measures the held-out loss (nll) only; leave `metrics` out")
        return metrics


class TrainStepConfig(StepConfig):
    kind: Literal["train"]
    model_options: ClassVar[tuple[str, ...]] = ("model",)
    model: str = Field(description="a model declared under `models:`, or an HF model folder to fine-tune")
    shards: str | None = Field(default=None, description="shards folder (manifest.json); default: the input export step's")
    nproc_per_node: int = Field(default=1, ge=1)
    torchrun_args: list[str] = Field(default_factory=list, description="extra torchrun flags (multi-node)")
    options: dict[str, Any] = Field(default_factory=dict, description="recipe config keys (batch_tokens, lr, max_steps, ...)")
    validation: Validation | None = Field(default=None, description="held-out chats whose loss decides when "
                                          "training stops (options eval_every, patience) and which model is kept")

    @model_validator(mode="after")
    def _early_stopping(self):
        if self.validation is not None and self.validation.role is not None:
            raise ValueError("validation: `role` belongs to evaluation sets; leave it out")
        if self.validation is not None and "eval_shards" in self.options:
            raise ValueError("give `validation:` or options.eval_shards (a shards folder), not both")
        if self.validation is None and "eval_shards" not in self.options:
            stray = [k for k in ("eval_every", "patience") if self.options.get(k)]
            if stray:
                raise ValueError(f"options {', '.join(stray)} need held-out chats: add `validation:` "
                                 "({input: STEP} or {path: FILE})")
        return self

    def parent_steps(self) -> dict[str, str]:
        parents = super().parent_steps()
        if self.validation is not None and self.validation.input:
            parents["validation"] = self.validation.input
        return parents

    def fingerprint_files(self) -> list[str]:
        """A validation file's size and mtime: editing it reruns training."""
        return [self.validation.path] if self.validation is not None and self.validation.path else []

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Unknown recipe keys and values of the wrong type are reported by `datamix validate`,
        not an hour into a run."""
        import math

        defaults = recipe_defaults()
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(f"unknown train options {unknown}; valid: {', '.join(sorted(defaults))}")
        for key, value in options.items():
            want = type(defaults[key])
            if want in (int, float) and isinstance(value, str):
                try:
                    value = float(value)  # the recipe reads "1e-3" (a YAML string) as a number
                except ValueError:
                    raise ValueError(f"train option {key}: expected a number, got {value!r}") from None
            if want in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"train option {key}: expected a number, got {value!r}")
            if want in (int, float) and not math.isfinite(value):
                raise ValueError(f"train option {key}: must be a finite number, got {value!r}")
            if want is int and value != int(value):
                raise ValueError(f"train option {key}: expected a whole number, got {value!r}")
            if want is bool and not isinstance(value, bool):
                raise ValueError(f"train option {key}: expected true or false, got {value!r}")
        return options

    def columns_read(self) -> list[ColumnUse]:
        uses = []
        if self.validation is not None and self.validation.input:
            uses.append(ColumnUse("validation", ("validation", "input"), "messages",
                                  hint="held-out rows are chats (a messages column)"))
        if self.shards or not self.input:
            return uses
        return uses + [ColumnUse("input", ("input",), "folder", hint="train on an export step with format: shards, "
                                 "or give `shards:` (a folder with manifest.json)")]

    def resources(self) -> list[Resource]:
        found = [Resource(("model",), self.model, "model")]  # a declared model, or a folder to fine-tune
        if self.validation is not None and self.validation.path:
            found.append(Resource(("validation", "path"), self.validation.path, "file"))
        return found

    def check_pipeline(self, pipeline, check_files: bool = True) -> list[tuple[tuple, str]]:
        """`shards:` must be a folder that exists, or one an export step of this pipeline writes;
        a validation file must read as chats with assistant replies."""
        problems = self._check_validation(pipeline, check_files)
        if not self.shards or not check_files:
            return problems
        full = os.path.normpath(os.path.join(pipeline.base_dir, self.shards))
        written = [os.path.normpath(os.path.join(pipeline.base_dir, s.path)) for s in pipeline.steps
                   if s.kind == "export" and getattr(s, "format", None) == "shards" and getattr(s, "path", None)]
        if os.path.isdir(full) or full in written:
            return problems
        return problems + [(("shards",), f"{self.shards} does not exist (looked for {full}) and no export step "
                            "with format: shards writes it; or train on the export step with `input:`")]

    def _check_validation(self, pipeline, check_files: bool) -> list[tuple[tuple, str]]:
        v = self.validation
        if v is None:
            return []
        if v.input:
            kinds = {s.name: s.kind for s in pipeline.steps}
            if kinds.get(v.input) in ("train", "evaluate", "export"):
                return [(("validation", "input"), f"{v.input!r} is a {kinds[v.input]} step, not chats to hold out")]
            return []
        if not check_files:
            return []
        from datamix.eval.sets import SetError, read_file_set
        from datamix.steps.load import list_files

        full = v.path if os.path.isabs(v.path) else os.path.join(pipeline.base_dir, v.path)
        if not list_files(full):
            return []  # spec's file check (resources) says it does not exist
        try:
            records = read_file_set("validation", v, pipeline.base_dir)
        except SetError as e:
            return [(("validation", "path"), str(e))]
        return [(("validation", "path"), p) for p in _unlabelled(records)]

    def columns_out(self, inputs):
        return frozenset({"sample_id", "model_path", "base_model", "shards", "shards_manifest_sha256", "steps",
                          "final_loss", "tokens"})


def recipe_defaults() -> dict[str, Any]:
    """The recipe's config keys a pipeline may set, with their defaults (model, shards and
    output_dir come from the step). Read from the recipe's source, not imported: the recipe
    imports torch at the top (it is one self-contained file), and validating a YAML must not."""
    import ast
    import importlib.util

    origin = importlib.util.find_spec("datamix.train.recipe").origin
    with open(origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), origin)
    config = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    defaults = {}
    for node in config.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            try:
                defaults[node.target.id] = ast.literal_eval(node.value)
            except ValueError:  # not a literal: no type check for it
                defaults[node.target.id] = None
    return {k: v for k, v in defaults.items() if k not in ("model", "shards", "output_dir")}


def recipe_options() -> set[str]:
    """The recipe's config keys a pipeline may set (model, shards and output_dir come from the step)."""
    return set(recipe_defaults())


@register("train", TrainStepConfig, shape="whole")
def run(cfg: TrainStepConfig, inputs: dict[str, InputTable], ctx: Context) -> Output:
    from datamix.train.launch import train_command

    if cfg.shards:
        shards = ctx.resolve(cfg.shards)
    elif "input" in inputs and "folder" in inputs["input"].arrow("*").schema.names:
        shards = inputs["input"].arrow("folder").column(0)[0].as_py()
    else:
        raise BadInput(f"step {cfg.name!r}: give `shards:` (a folder with manifest.json) or `input:` an export step with format: shards")
    if not os.path.isfile(os.path.join(shards, "manifest.json")):
        raise BadInput(f"step {cfg.name!r}: no manifest.json in shards folder {shards!r}; run the export step with format: shards")
    if cfg.model in ctx.models:  # a declared model: its folder (built first if it is a tiny one)
        from datamix.models import resolve_model_path

        model = resolve_model_path(ctx.models[cfg.model], ctx.pipeline_dir)
    else:
        model = ctx.resolve(cfg.model)
    overrides = [f"model={model}", f"shards={shards}", f"output_dir={ctx.output_dir}"]
    overrides += [f"seed={ctx.seed}"] if "seed" not in cfg.options else []
    overrides += [f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in cfg.options.items()]
    if cfg.validation is not None:
        overrides.append(f"eval_shards={_validation_shards(cfg, inputs, ctx, shards)}")
    # under `run -q` the trainer's lines go to a file beside its outputs (its own fresh-run
    # housekeeping moves only checkpoints, model, metrics and run.json aside)
    log_file = os.path.join(ctx.output_dir, "train.log") if ctx.quiet else None
    status = train_command(None, overrides, cfg.nproc_per_node, cfg.torchrun_args, log_file=log_file)
    if status != 0:
        raise StepError(f"step {cfg.name!r}: training exited with status {status}; see "
                        f"{log_file or 'the log above'} and {ctx.output_dir}/metrics.jsonl")
    return Output(rows=_summary(cfg, model, shards, ctx), rows_in=_sequences(shards),
                  files=[os.path.join(ctx.output_dir, "model")])


def _unlabelled(records: list[dict]) -> list[str]:
    """The first held-out record without an assistant reply (nothing to measure the loss on)."""
    from datamix.eval.sets import _record_name

    for r in records:
        if not any(m["role"] == "assistant" and m["content"] for m in r["messages"]):
            return [f"{_record_name(r)} has no assistant reply: held-out chats need one to measure the loss on"]
    return []


def _validation_shards(cfg: TrainStepConfig, inputs: dict[str, InputTable], ctx: Context, train_shards: str) -> str:
    """Write the held-out chats as shards for the recipe; returns their folder.

    Tokenizer and chat template are the training shards' (the model's own), labels the
    evaluate step's nll labels (every assistant turn, nothing of the user turns, whatever
    the training shards label), and seq_len fits the longest chat: the recipe's held-out
    loss is then the evaluate step's nll of the same chats."""
    import json

    import polars as pl

    from datamix.eval.sets import SetError, read_file_set
    from datamix.export.shards import ShardsConfig, _Tokenizer, tokenize_rows, write_shards

    v = cfg.validation
    if v.input:
        table = inputs["validation"]
        if "messages" not in table.column_names():
            raise BadInput(f"step {cfg.name!r}.validation.input: step {v.input!r} has no messages column")
        records = table.arrow("sample_id, messages").to_pylist()
        records = records[: v.limit] if v.limit else records
    else:
        try:
            records = read_file_set("validation", v, ctx.pipeline_dir)
        except SetError as e:
            raise BadInput(f"step {cfg.name!r}.validation.path: {e}") from None
    if not records:
        raise BadInput(f"step {cfg.name!r}.validation: no held-out chats ({v.input or v.path} is empty); "
                       "early stopping needs some")
    problems = _unlabelled(records)
    if problems:
        raise BadInput(f"step {cfg.name!r}.validation: {problems[0]}")
    with open(os.path.join(train_shards, "manifest.json")) as f:
        manifest = json.load(f)
    tokenizer = manifest.get("tokenizer") or ""
    template = manifest.get("chat_template")
    options = ShardsConfig(tokenizer=tokenizer, chat_template=template, seq_len=8, train_on="all_assistant")
    tk = _Tokenizer(options.tokenizer, options.chat_template)
    rows = tokenize_rows([r["messages"] for r in records], "all_assistant", tk)
    longest = max((len(r[0]) for r in rows if r is not None), default=8)
    out = os.path.join(ctx.output_dir, "validation")
    frame = pl.DataFrame({"sample_id": [str(r["sample_id"]) for r in records],
                          "messages": [[{"role": m["role"], "content": m["content"] or ""} for m in r["messages"]]
                                       for r in records]})
    written, _ = write_shards(frame, out, options.model_copy(update={"seq_len": -(-longest // 64) * 64}))
    ctx.log(f"step {cfg.name!r}: {len(records)} held-out chats, {written.get('label_tokens')} label tokens "
            f"({out}); early stopping: eval_every {cfg.options.get('eval_every', 0) or 'one epoch'}, "
            f"patience {cfg.options.get('patience', 0) or 'none (keeps the best model)'}")
    return out


def _sequences(shards: str) -> int:
    import json

    with open(os.path.join(shards, "manifest.json")) as f:
        manifest = json.load(f)
    return int(manifest.get("sequences") or sum(s.get("sequences", 0) for s in manifest.get("shards", [])))


def _summary(cfg: TrainStepConfig, model: str, shards: str, ctx: Context):
    """One row: the trained model, where it came from, and how training ended (from metrics.jsonl)."""
    import json

    import polars as pl

    from datamix.ids import mint_one

    with open(os.path.join(ctx.output_dir, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    last = metrics[-1] if metrics else {}
    with open(os.path.join(ctx.output_dir, "run.json")) as f:  # what the recipe trained on (its run identity)
        identity = json.load(f)["identity"]
    return pl.DataFrame({
        "sample_id": [mint_one(cfg.name, "model")],
        "model_path": [os.path.join(ctx.output_dir, "model")],
        "base_model": [model],
        "shards": [shards],
        "shards_manifest_sha256": [identity["shards_manifest_sha256"]],
        "steps": [int(last.get("step", 0))],
        "final_loss": [last.get("loss")],
        "tokens": [sum(int(m.get("tokens", 0)) for m in metrics)],
    })
