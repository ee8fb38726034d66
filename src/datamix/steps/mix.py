"""mix: sample from several inputs at given ratios, by samples or by tokens.

    - name: mix
      kind: mix
      inputs: {general: select, domain: domain}
      ratio: {general: 0.83, domain: 0.17}
      unit: samples            # or tokens (estimated: characters / 4, or a tokenizer)
      total: 10000             # optional; default: as many as the ratios allow without replacement
      max_upsample: 1.0        # > 1 lets a too-small source be drawn with replacement, up to this many times its size
      size_by: domain          # optional, instead of total: every row of this input, the others drawn so that
                               # it is its ratio's share of the whole (domain 17% of the mix, all domain rows used)
      seed: 0

Every output sample records its input label in `source` and its estimated
tokens in `est_tokens`; `SELECT * FROM dm.composition('mix')` shows the
achieved composition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from datamix.steps.base import BadInput, Context, Output, Resource, StepConfig, register

if TYPE_CHECKING:
    import numpy as np


class MixConfig(StepConfig):
    kind: Literal["mix"]
    ratio: dict[str, float]
    unit: Literal["samples", "tokens"] = "samples"
    total: int | None = Field(default=None, ge=1, description="samples (unit: samples) or tokens (unit: tokens)")
    max_upsample: float = Field(default=1.0, ge=1.0)
    seed: int = 0
    tokenizer: str | None = Field(default=None, description="model folder to count tokens; default chars/4")
    size_by: str | None = Field(default=None, description="an input label: all of its rows, the total sized so that "
                                "they are its ratio's share (instead of `total`)")

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
        if self.size_by is not None:
            if self.size_by not in self.inputs:
                raise ValueError(f"size_by: {self.size_by!r} is not an input label (inputs: {sorted(self.inputs)})")
            if self.total is not None:
                raise ValueError("give `total` or `size_by`, not both: size_by sets the total from that input's size")
            if self.ratio[self.size_by] <= 0:
                raise ValueError(f"size_by: {self.size_by!r} has ratio 0, so no total makes it its share; give it a ratio > 0")
        return self

    def columns_out(self, inputs):
        # every input's columns (null where a source lacks one), plus the mix's own
        if any(inputs.get(label) is None for label in self.inputs or {}):
            return None
        return frozenset().union(*inputs.values()) | {"sample_id", "messages", "source", "est_tokens"}

    def resources(self) -> list[Resource]:
        return [Resource(("tokenizer",), self.tokenizer, "tokenizer")] if self.tokenizer else []


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


def draw(n_avail: int, weights, need: float, cfg: MixConfig, label: str, rng) -> "np.ndarray":
    """Indexes drawn from one source: a permutation, cycled (with replacement) when allowed.

    `weights` are per-row sizes (1 per sample, or tokens); `need` is the amount to reach.
    """
    import numpy as np

    total_weight = float(weights.sum())
    if n_avail == 0 or total_weight == 0:
        if need > 0:
            raise BadInput(f"step {cfg.name}: input {label!r} is empty but its ratio asks for {need:.0f} {cfg.unit}")
        return np.zeros(0, dtype=np.int64)
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
        picks.append(perm[:k])
        got += float(cum[k - 1])
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, dtype=np.int64)


@register("mix", MixConfig, shape="whole")
def run(cfg: MixConfig, inputs, ctx: Context) -> Output:
    import numpy as np
    import pyarrow as pa

    from datamix.ids import mint

    if cfg.tokenizer:  # a declared model's name or a folder beside the YAML, whatever the working folder
        cfg = cfg.model_copy(update={"tokenizer": ctx.resolve_model(cfg.tokenizer)})
    # Arrow end to end: the rows are copied once (the draw's gather), not through Polars.
    weights, tokens = {}, {}
    for label in cfg.inputs:
        if cfg.unit == "tokens":  # every row's size matters for the draw
            tokens[label] = _tokens_of(inputs[label].arrow("messages"), cfg)
            weights[label] = tokens[label].to_numpy().astype(np.float64)
        else:
            weights[label] = np.ones(len(inputs[label]))
    share = {k: v / sum(cfg.ratio.values()) for k, v in cfg.ratio.items()}
    if cfg.total is not None:
        total = float(cfg.total)
    elif cfg.size_by is not None:  # every row of that input is its share of the total
        total = float(weights[cfg.size_by].sum()) / share[cfg.size_by]
    else:  # the largest mix every source can fill without replacement
        total = min(weights[k].sum() / share[k] for k in share if share[k] > 0)
    rng = np.random.default_rng(cfg.seed)
    parts = []
    rows_in = sum(len(weights[label]) for label in cfg.inputs)
    for label in cfg.inputs:  # YAML order: reproducible draws
        need = share[label] * total
        if cfg.unit == "samples":  # whole samples: 0.75 of 25 is 19, not 20
            need = float(round(need))
        picks = pa.array(draw(len(weights[label]), weights[label], need, cfg, label, rng), pa.int64())
        chosen = inputs[label].take(picks)  # one gather from the store's rows
        n = chosen.num_rows
        # sizes of the chosen rows only, for the composition view
        est = tokens[label].take(picks) if label in tokens else _tokens_of(chosen, cfg)
        parents = chosen.column("sample_id").combine_chunks()
        source = _repeated(label, n)
        ids = mint(cfg.name, parents, source, pa.array(np.arange(n, dtype=np.int64)))
        columns = {
            "sample_id": ids.to_arrow(),
            "messages": chosen.column("messages"),
            "source": source,
            "est_tokens": est,
            "parent_ids": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), parents),
        }
        rest = [c for c in chosen.column_names if c not in columns]
        parts.append(pa.table({**columns, **{c: chosen.column(c) for c in rest}}))
    # sources may carry different columns (scores, origins): keep them all, null where absent
    mixed = pa.concat_tables(parts, promote_options="permissive")
    # Rows stay grouped by source, each source in random draw order: shuffling the whole
    # table would copy every row once more, and the trainer's sampler shuffles anyway.
    ctx.progress(rows_in)
    return Output(rows=mixed, rows_in=rows_in)


def _repeated(text: str, n: int):
    """`text` n times as an Arrow string array, built from its buffers (no Python list of n strings)."""
    import numpy as np
    import pyarrow as pa

    data = text.encode()
    if n * len(data) >= 2**31:  # past 32-bit offsets: as before
        return pa.array([text] * n, pa.string())
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(data))
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data * n))


def _tokens_of(table, cfg: MixConfig):
    """`_tokens` of an Arrow table's rows, as an Int64 Arrow array (only `messages` is converted)."""
    import polars as pl
    import pyarrow as pa

    if table.num_rows == 0:
        return pa.array([], pa.int64())
    if not cfg.tokenizer:
        return _estimated_tokens(table.column("messages"))
    df = pl.from_arrow(table.select(["messages"]))
    return _tokens(df, cfg).to_arrow()


def _estimated_tokens(messages):
    """(characters of the `conversation` field + 3) // 4 per row, from the flattened message
    contents: the length of the contents joined with newlines (null contents skipped, as the
    join skips them) without building the joined strings."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    messages = messages.combine_chunks() if isinstance(messages, pa.ChunkedArray) else messages
    n = len(messages)
    row = pc.list_parent_indices(messages).to_numpy()
    chars = pc.utf8_length(pc.struct_field(pc.list_flatten(messages), "content"))
    present = pc.is_valid(chars).to_numpy(zero_copy_only=False)
    total = np.bincount(row, weights=pc.fill_null(chars, 0).to_numpy(), minlength=n)
    joins = np.maximum(np.bincount(row[present], minlength=n) - 1, 0)  # one newline between two contents
    return pa.array((total.astype(np.int64) + joins + 3) // 4, pa.int64())
