"""`train`: fine-tune a model on exported shards with the FSDP2 recipe (datamix.train.recipe).

    - name: sft
      kind: train
      input: shards          # the export step (format: shards); for now also give its folder:
      shards: out/shards     # folder with manifest.json
      model: models/base     # HF model folder
      nproc_per_node: 1
      options: {batch_tokens: 65536, lr: 2.0e-5, max_steps: 100}

The trained model lands in ctx.output_dir/model (Hugging Face format); the chunk
records that folder and no rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import Field

from datamix.steps.base import BadInput, Chunk, Context, InputTable, StepConfig, StepError, register


class TrainStepConfig(StepConfig):
    kind: str = "train"
    model: str = Field(description="HF model folder to fine-tune")
    shards: str = Field(description="shards folder (manifest.json) written by the export step")
    nproc_per_node: int = Field(default=1, ge=1)
    torchrun_args: list[str] = Field(default_factory=list, description="extra torchrun flags (multi-node)")
    options: dict[str, Any] = Field(default_factory=dict, description="recipe config keys (batch_tokens, lr, max_steps, ...)")

    path_fields: ClassVar[tuple[str, ...]] = ("model",)


@register("train", TrainStepConfig)
def run(cfg: TrainStepConfig, inputs: dict[str, InputTable], ctx: Context) -> Iterator[Chunk]:
    from datamix.train.launch import train_command
    from datamix.train.recipe import Config

    key = "model"
    if key in ctx.done_keys:
        return
    valid = {f for f in Config.__dataclass_fields__} - {"model", "shards", "output_dir"}
    unknown = sorted(set(cfg.options) - valid)
    if unknown:
        raise BadInput(f"step {cfg.name!r}: unknown train options {unknown}; valid: {', '.join(sorted(valid))}")
    shards = ctx.resolve(cfg.shards)
    if not os.path.isfile(os.path.join(shards, "manifest.json")):
        raise BadInput(f"step {cfg.name!r}: no manifest.json in shards folder {shards!r}; run the export step with format: shards")
    overrides = [f"model={ctx.resolve(cfg.model)}", f"shards={shards}", f"output_dir={ctx.output_dir}"]
    overrides += [f"seed={ctx.seed}"] if "seed" not in cfg.options else []
    overrides += [f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in cfg.options.items()]
    status = train_command(None, overrides, cfg.nproc_per_node, cfg.torchrun_args)
    if status != 0:
        raise StepError(f"step {cfg.name!r}: training exited with status {status}; see the log above and {ctx.output_dir}/metrics.jsonl")
    yield Chunk(key=key, rows=None, files=[os.path.join(ctx.output_dir, "model")])
