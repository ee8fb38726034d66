"""mix: sample from several inputs at given ratios, by samples or by tokens.

    - name: mix
      kind: mix
      inputs: {general: select, domain: domain}
      ratio: {general: 0.83, domain: 0.17}
      unit: samples            # or tokens (estimated: characters / 4, or a tokenizer)
      total: 10000             # optional; default: as many as the ratios allow without replacement
      max_upsample: 1.0        # > 1 lets a too-small source be drawn with replacement, up to this many times its size
      seed: 0

Every output sample records its input label in `source` and its estimated
tokens in `est_tokens`; `SELECT * FROM dm.composition('mix')` shows the
achieved composition.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from datamix.steps.base import BadInput, Chunk, Context, StepConfig, register


class MixConfig(StepConfig):
    kind: Literal["mix"]
    ratio: dict[str, float]
    unit: Literal["samples", "tokens"] = "samples"
    total: int | None = Field(default=None, ge=1, description="samples (unit: samples) or tokens (unit: tokens)")
    max_upsample: float = Field(default=1.0, ge=1.0)
    seed: int = 0
    tokenizer: str | None = Field(default=None, description="model folder to count tokens; default chars/4")

    @model_validator(mode="after")
    def _check(self):
        if not self.inputs:
            raise ValueError("mix needs `inputs: {label: step, ...}`")
        missing = set(self.inputs) - set(self.ratio)
        extra = set(self.ratio) - set(self.inputs)
        if missing or extra:
            raise ValueError(
                f"ratio labels must match inputs labels (inputs: {sorted(self.inputs)}, ratio: {sorted(self.ratio)})"
            )
        if any(v < 0 for v in self.ratio.values()) or sum(self.ratio.values()) <= 0:
            raise ValueError("ratios must be >= 0 and not all 0")
        return self


def _tokens(df, cfg: MixConfig):
    import polars as pl

    from datamix.fields import field_expr

    text = df.select(field_expr("conversation")).to_series()
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        return pl.Series([len(x) for x in tok(text.to_list(), add_special_tokens=False)["input_ids"]], dtype=pl.Int64)
    # ~4 characters per token for English BPE vocabularies; enough to hit a ratio
    return ((text.str.len_chars() + 3) // 4).cast(pl.Int64)


def draw(n_avail: int, weights, need: float, cfg: MixConfig, label: str, rng) -> "list[int]":
    """Indexes drawn from one source: a permutation, cycled (with replacement) when allowed.

    `weights` are per-row sizes (1 per sample, or tokens); `need` is the amount to reach.
    """
    import numpy as np

    total_weight = float(weights.sum())
    if n_avail == 0 or total_weight == 0:
        if need > 0:
            raise BadInput(f"step {cfg.name}: input {label!r} is empty but its ratio asks for {need:.0f} {cfg.unit}")
        return []
    cap = total_weight * cfg.max_upsample
    if need > cap + 1e-9:
        raise BadInput(
            f"step {cfg.name}: input {label!r} has {total_weight:.0f} {cfg.unit} but the mix needs {need:.0f}; "
            f"lower `total`, change `ratio`, or allow drawing with replacement with max_upsample: "
            f"{need / total_weight:.2f} (or more)"
        )
    picks = []
    got = 0.0
    while got < need - 1e-9:
        perm = rng.permutation(n_avail)  # each pass uses every row once before any repeats
        cum = np.cumsum(weights[perm])
        k = int(np.searchsorted(cum, need - got, side="left")) + 1
        k = min(k, n_avail)
        picks.extend(perm[:k].tolist())
        got += float(cum[k - 1])
    return picks


@register("mix", MixConfig)
def run(cfg: MixConfig, inputs, ctx: Context):
    import numpy as np
    import polars as pl

    from datamix.ids import mint

    if "all" in ctx.done_keys:
        return
    frames = {label: inputs[label].polars() for label in cfg.inputs}
    weights = {}
    for label, df in frames.items():
        if cfg.unit == "tokens":  # every row's size matters for the draw
            frames[label] = df.with_columns(_tokens(df, cfg).alias("est_tokens"))
            weights[label] = frames[label]["est_tokens"].to_numpy().astype(np.float64)
        else:
            weights[label] = np.ones(len(df))
    share = {k: v / sum(cfg.ratio.values()) for k, v in cfg.ratio.items()}
    if cfg.total is not None:
        total = float(cfg.total)
    else:  # the largest mix every source can fill without replacement
        total = min(weights[k].sum() / share[k] for k in share if share[k] > 0)
    rng = np.random.default_rng(cfg.seed)
    parts = []
    rows_in = sum(len(df) for df in frames.values())
    for label in cfg.inputs:  # YAML order: reproducible draws
        need = share[label] * total
        picks = draw(len(frames[label]), weights[label], need, cfg, label, rng)
        df = frames[label]
        chosen = df[picks] if picks else df.clear()
        if "est_tokens" not in chosen.columns:  # sizes of the chosen rows only, for the composition view
            chosen = chosen.with_columns(
                (_tokens(chosen, cfg) if len(chosen) else pl.Series([], dtype=pl.Int64)).alias("est_tokens"))
        draw_index = pl.int_range(0, len(chosen), eager=True).alias("draw")
        chosen = chosen.with_columns(  # expressions see the parent's sample_id
            mint(cfg.name, chosen["sample_id"], pl.Series([label] * len(chosen)), draw_index).alias("sample_id"),
            pl.lit(label).alias("source"),
            pl.concat_list("sample_id").alias("parent_ids"),
        )
        parts.append(chosen)
    # sources may carry different columns (scores, origins): keep them all, null where absent
    mixed = pl.concat(parts, how="diagonal_relaxed")
    front = ["sample_id", "messages", "source", "est_tokens", "parent_ids"]
    # Rows stay grouped by source, each source in random draw order: shuffling the whole
    # frame would copy every row once more, and the trainer's sampler shuffles anyway.
    mixed = mixed.select(front + [c for c in mixed.columns if c not in front])
    ctx.progress(rows_in)
    yield Chunk(key="all", rows=mixed, rows_in=rows_in)
