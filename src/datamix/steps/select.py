"""select: best of N per instruction by score.

The winner of a group (rows sharing `group_by`, by default `instruction_id`) is
the highest score, then the shorter (or longer) last message, then the smallest
sample_id: the same input always picks the same winner. Every candidate gets a
decision: the winner kept; the others "lost" (related_id = the winner),
"below_min_score" or "no_score". Output rows are the winners, re-minted with the
winner as parent.
"""

from __future__ import annotations

from typing import Literal

from datamix.steps.base import BadInput, ColumnUse, Context, InputTable, Output, StepConfig, register


class SelectConfig(StepConfig):
    kind: Literal["select"]
    group_by: str = "instruction_id"
    score: str = "score"  # the column to maximise
    min_score: float | None = None  # a best candidate below it leaves the group without a winner
    prefer: Literal["shorter", "longer"] = "shorter"  # tie-break on the length of the last message

    def columns_read(self) -> list[ColumnUse]:
        return [ColumnUse("input", ("group_by",), self.group_by), ColumnUse("input", ("score",), self.score)]

    def columns_out(self, inputs):
        return None if inputs.get("input") is None else inputs["input"] | {"winner_id"}


def rank_candidates(df, cfg: SelectConfig):
    """Add `_rank` (1 = best in its group), `_len` and `_winner` / `_reason` / `_related` columns."""
    import polars as pl

    df = df.with_columns(pl.col("messages").list.last().struct.field("content").str.len_chars().alias("_len"))
    df = df.sort(
        [cfg.group_by, cfg.score, "_len", "sample_id"],
        descending=[False, True, cfg.prefer == "longer", False],
        nulls_last=True,
    )
    df = df.with_columns(pl.int_range(1, pl.len() + 1).over(cfg.group_by).alias("_rank"))
    eligible = pl.col(cfg.score).is_not_null()
    if cfg.min_score is not None:
        eligible = eligible & (pl.col(cfg.score) >= cfg.min_score)
    df = df.with_columns(((pl.col("_rank") == 1) & eligible).alias("_winner"))
    winner_id = pl.when(pl.col("_winner")).then(pl.col("sample_id")).max().over(cfg.group_by)
    below = pl.col(cfg.score) < cfg.min_score if cfg.min_score is not None else pl.lit(False)
    reason = (
        pl.when(pl.col("_winner")).then(None)
        .when(pl.col(cfg.score).is_null()).then(pl.lit("no_score"))
        .when(below).then(pl.lit("below_min_score"))
        .otherwise(pl.lit("lost"))
    )
    return df.with_columns(reason.alias("_reason"), pl.when(pl.col("_winner")).then(None).otherwise(winner_id).alias("_related"))


@register("select", SelectConfig, shape="whole")
def run(cfg: SelectConfig, inputs: dict[str, InputTable], ctx: Context) -> Output | None:
    """The best candidate of every group; every candidate gets a decision (the winner kept)."""
    import polars as pl

    from datamix.ids import mint

    if "input" not in inputs:
        raise BadInput(f"step {ctx.step!r}: select needs `input:` (scored candidates, e.g. the judge step).")
    df = inputs["input"].polars()
    for column in (cfg.group_by, cfg.score, "messages"):
        if column not in df.columns:
            raise BadInput(f"step {ctx.step!r}: input {inputs['input'].name!r} has no column {column!r} (has: {', '.join(df.columns)}).")
    if df.height == 0:
        return None
    ranked = rank_candidates(df.with_columns(pl.col(cfg.score).cast(pl.Float64)), cfg)
    decisions = ranked.select(
        "sample_id", pl.col("_winner").alias("kept"), pl.col("_reason").alias("reason"),
        pl.col(cfg.score).alias("score"), pl.col("_related").alias("related_id"),
    )
    winners = ranked.filter(pl.col("_winner"))
    rows = winners.drop([c for c in winners.columns if c.startswith("_") or c == "parent_ids"]).with_columns(
        mint(ctx.step, winners["sample_id"]).alias("sample_id"),
        winners["sample_id"].map_elements(lambda x: [x], return_dtype=pl.List(pl.Utf8)).alias("parent_ids"),
        winners["sample_id"].alias("winner_id"),
    )
    ctx.progress(ranked.height)
    return Output(rows=rows, decisions=decisions, rows_in=ranked.height)
