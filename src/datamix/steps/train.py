"""`train`: fine-tune a model on exported shards with the FSDP2 recipe (datamix.train.recipe).

    - name: sft
      kind: train
      input: shards          # the export step (format: shards): its folder is the default `shards`
      model: base            # a model declared under `models:`, or an HF model folder
      nproc_per_node: 1
      options: {batch_tokens: 65536, lr: 2.0e-5, max_steps: 100}

The trained model lands in ctx.output_dir/model (Hugging Face format); the chunk
records that folder and no rows.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from datamix.steps.base import (BadInput, ColumnUse, Context, InputTable, Output, Resource, StepConfig, StepError,
                                register)


class TrainStepConfig(StepConfig):
    kind: Literal["train"]
    model_options: ClassVar[tuple[str, ...]] = ("model",)
    model: str = Field(description="a model declared under `models:`, or an HF model folder to fine-tune")
    shards: str | None = Field(default=None, description="shards folder (manifest.json); default: the input export step's")
    nproc_per_node: int = Field(default=1, ge=1)
    torchrun_args: list[str] = Field(default_factory=list, description="extra torchrun flags (multi-node)")
    options: dict[str, Any] = Field(default_factory=dict, description="recipe config keys (batch_tokens, lr, max_steps, ...)")

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
        if self.shards or not self.input:
            return []
        return [ColumnUse("input", ("input",), "folder", hint="train on an export step with format: shards, "
                          "or give `shards:` (a folder with manifest.json)")]

    def resources(self) -> list[Resource]:
        return [Resource(("model",), self.model, "model")]  # a declared model, or a folder to fine-tune

    def check_pipeline(self, pipeline, check_files: bool = True) -> list[tuple[tuple, str]]:
        """`shards:` must be a folder that exists, or one an export step of this pipeline writes."""
        if not self.shards or not check_files:
            return []
        full = os.path.normpath(os.path.join(pipeline.base_dir, self.shards))
        written = [os.path.normpath(os.path.join(pipeline.base_dir, s.path)) for s in pipeline.steps
                   if s.kind == "export" and getattr(s, "format", None) == "shards" and getattr(s, "path", None)]
        if os.path.isdir(full) or full in written:
            return []
        return [(("shards",), f"{self.shards} does not exist (looked for {full}) and no export step with "
                 "format: shards writes it; or train on the export step with `input:`")]

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
    status = train_command(None, overrides, cfg.nproc_per_node, cfg.torchrun_args)
    if status != 0:
        raise StepError(f"step {cfg.name!r}: training exited with status {status}; see the log above and {ctx.output_dir}/metrics.jsonl")
    return Output(rows=_summary(cfg, model, shards, ctx), rows_in=_sequences(shards),
                  files=[os.path.join(ctx.output_dir, "model")])


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
