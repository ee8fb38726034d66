"""filter: drop samples by rules; every dropped sample records the rule that dropped it.

Rules run in order; a sample is dropped by the first rule it fails, and the
decision keeps that rule's name as the reason and the measured value (length,
fraction) as the score. A filter is pass-through: its output is its input's
rows minus the dropped ones, with the same sample ids.

    rules:
      - {rule: length, field: response, min: 20, max: 4000, unit: words}
      - {rule: regex, field: response, exclude: "(?i)as an ai language model"}
      - {rule: repetition, field: response, max_duplicate_line_fraction: 0.3}
      - {rule: phrases, field: response, preset: refusals}
      - {rule: shape, roles_alternate: true, ends_with: assistant}
      - {rule: sql, where: "len(messages) >= 2"}
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datamix.steps.base import BadInput, ColumnUse, Context, Output, Resource, StepConfig, register

if TYPE_CHECKING:
    import polars as pl

PRESETS = {
    "refusals": [
        "as an ai language model", "as an ai assistant", "i'm sorry, but i can", "i am sorry, but i can",
        "i cannot fulfill", "i can't fulfill", "i cannot assist", "i can't assist", "i'm unable to",
        "i am unable to", "i cannot provide", "i can't provide", "i'm not able to", "i will not",
    ],
    "boilerplate": [
        "lorem ipsum", "click here", "all rights reserved", "subscribe to our newsletter",
        "terms of service", "cookie policy",
    ],
}


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, description="the reason recorded for samples this rule drops")


class LengthRule(_Rule):
    rule: Literal["length"]
    field: str = "response"
    unit: Literal["chars", "words", "tokens"] = "chars"
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)
    tokenizer: str | None = Field(default=None, description="model folder whose tokenizer counts tokens")

    @model_validator(mode="after")
    def _check(self):
        if self.unit == "tokens" and not self.tokenizer:
            raise ValueError("unit: tokens needs `tokenizer:` (a model folder)")
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


class RegexRule(_Rule):
    rule: Literal["regex"]
    field: str = "response"
    include: str | None = Field(default=None, description="keep only samples that match")
    exclude: str | None = Field(default=None, description="drop samples that match")

    @model_validator(mode="after")
    def _check(self):
        if not (self.include or self.exclude):
            raise ValueError("give include, exclude or both")
        for p in (self.include, self.exclude):
            if p:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ValueError(f"invalid regular expression {p!r}: {e}") from None
        return self


class RepetitionRule(_Rule):
    """Gopher-style repetition: duplicate lines and repeated word n-grams."""

    rule: Literal["repetition"]
    field: str = "response"
    max_duplicate_line_fraction: float | None = Field(default=0.3, ge=0, le=1)
    # fraction of characters covered by the most frequent repeated n-gram (Gopher: n=2 0.2, 3 0.18, 4 0.16)
    top_ngram: int = Field(default=2, ge=1)
    max_top_ngram_fraction: float | None = Field(default=0.2, ge=0, le=1)
    # fraction of n-grams that occur more than once (Gopher: n=5..10, 0.15..0.10)
    duplicate_ngram: int = Field(default=5, ge=1)
    max_duplicate_ngram_fraction: float | None = Field(default=0.15, ge=0, le=1)


class PhrasesRule(_Rule):
    rule: Literal["phrases"]
    field: str = "response"
    phrases: list[str] = Field(default_factory=list)
    preset: Literal["refusals", "boilerplate"] | None = None

    @model_validator(mode="after")
    def _check(self):
        if not self.phrases and not self.preset:
            raise ValueError("give phrases, a preset (refusals, boilerplate), or both")
        return self


class ShapeRule(_Rule):
    rule: Literal["shape"]
    roles_alternate: bool = True
    ends_with: Literal["assistant", "user", "any"] = "assistant"
    min_turns: int = Field(default=2, ge=1)


class SqlRule(_Rule):
    rule: Literal["sql"]
    where: str = Field(description="a DuckDB predicate over the sample's columns; samples where it is not true are dropped")

    @field_validator("where")
    @classmethod
    def _one_predicate(cls, where: str) -> str:
        """Parsed by DuckDB now, so a typo fails `validate` rather than the run after hours of
        generation; and one predicate, never a second statement after it."""
        import duckdb

        try:
            statements = duckdb.extract_statements(f"SELECT coalesce(({where}), false) AS ok FROM sample")
        except duckdb.Error as e:
            raise ValueError(f"invalid predicate {where!r}: {str(e).splitlines()[0]}") from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ValueError(f"invalid predicate {where!r}: write one condition over the sample's columns, "
                             "e.g. len(messages) >= 2")
        return where


Rule = Annotated[LengthRule | RegexRule | RepetitionRule | PhrasesRule | ShapeRule | SqlRule, Field(discriminator="rule")]


class FilterConfig(StepConfig):
    kind: Literal["filter"]
    rules: list[Rule] = Field(min_length=1)

    @field_validator("input")
    @classmethod
    def _needs_input(cls, v):
        if not v:
            raise ValueError("a filter needs `input: <step>`")
        return v

    def columns_read(self) -> list[ColumnUse]:
        return [ColumnUse("input", ("rules", i, "field"), rule.field, chat_field=True)
                for i, rule in enumerate(self.rules) if isinstance(getattr(rule, "field", None), str)]

    def columns_out(self, inputs):
        return inputs.get("input")  # pass-through: its input's rows and columns

    def resources(self) -> list[Resource]:
        return [Resource(("rules", i, "tokenizer"), rule.tokenizer, "tokenizer")
                for i, rule in enumerate(self.rules) if getattr(rule, "tokenizer", None)]


def rule_label(rule) -> str:
    if rule.name:
        return rule.name
    field = getattr(rule, "field", None)
    return f"{rule.rule}({field})" if field else rule.rule


# ---- the rules: each returns (passes, measured value or None) -------------------


def _length(df, rule: LengthRule, text_of):
    import polars as pl

    text = text_of(rule.field)
    if rule.unit == "chars":
        n = text.str.len_chars()
    elif rule.unit == "words":
        # words = non-empty pieces between single spaces = maximal runs of non-space characters:
        # pieces minus empty pieces, from one literal split (4x faster than the regex [^ ]+,
        # 2x faster than a list.eval over the pieces)
        pieces = pl.DataFrame({"t": text}).select(pl.col("t").str.split(" ").alias("w"))
        n = pieces.select((pl.col("w").list.len() - pl.col("w").list.count_matches("")).cast(pl.UInt32)).to_series()
    else:
        n = pl.Series([len(ids) for ids in _tokenizer(rule.tokenizer)(text.to_list(), add_special_tokens=False)["input_ids"]])
    ok = pl.Series([True] * len(df))
    if rule.min is not None:
        ok = ok & (n >= rule.min)
    if rule.max is not None:
        ok = ok & (n <= rule.max)
    return ok, n.cast(pl.Float64)


_TOKENIZERS: dict = {}


def _tokenizer(path: str):
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


def _regex(df, rule: RegexRule, text_of):
    text = text_of(rule.field)
    ok = text.str.contains(rule.include) if rule.include else text.str.len_chars() >= 0
    if rule.exclude:
        ok = ok & ~text.str.contains(rule.exclude)
    return ok, None


def _repetition(df, rule: RepetitionRule, text_of):
    import polars as pl

    text = text_of(rule.field)
    frame = pl.DataFrame({"text": text}).with_row_index("row")
    worst = pl.Series([0.0] * len(df))
    ok = pl.Series([True] * len(df))
    # the first criterion each failing row broke, and its measured value: a dropped sample's
    # reason names the criterion (song lyrics fail on duplicate lines, lists on n-grams)
    fired = pl.Series([None] * len(df), dtype=pl.Utf8)
    fired_value = pl.Series([None] * len(df), dtype=pl.Float64)

    def check(frac, limit, criterion):
        nonlocal ok, worst, fired, fired_value
        fails = frac > limit
        first = fails & fired.is_null()
        fired = pl.select(pl.when(first).then(pl.lit(criterion)).otherwise(fired)).to_series()
        fired_value = pl.select(pl.when(first).then(frac).otherwise(fired_value)).to_series()
        ok = ok & ~fails
        worst = pl.max_horizontal(worst, frac)
    if rule.max_duplicate_line_fraction is not None:
        lines = frame.select(
            "row", pl.col("text").str.split("\n").list.eval(pl.element().str.strip_chars().filter(pl.element() != ""))
        )
        frac = lines.select(
            (1 - pl.col("text").list.unique().list.len() / pl.col("text").list.len()).fill_nan(0.0).fill_null(0.0)
        ).to_series()
        check(frac, rule.max_duplicate_line_fraction, "duplicate_lines")
    words = frame.select("row", pl.col("text").str.to_lowercase().str.split(" ").list.eval(
        pl.element().filter(pl.element() != "")).alias("w"))

    def ngram_counts(n: int):
        grams = words.select("row", pl.col("w").list.eval(
            pl.concat_str([pl.element().shift(-i) for i in range(n)], separator=" ").drop_nulls()).alias("g"))
        return grams.explode("g").drop_nulls("g").group_by("row", "g").len()

    if rule.max_top_ngram_fraction is not None:
        # Gopher: characters covered by the most frequent n-gram over all word characters
        counts = ngram_counts(rule.top_ngram).filter(pl.col("len") > 1)
        top = counts.group_by("row").agg(
            (pl.col("len") * pl.col("g").str.replace_all(" ", "").str.len_chars()).max().alias("top")
        )
        chars = words.select("row", pl.col("w").list.eval(pl.element().str.len_chars()).list.sum().alias("chars"))
        joined = chars.join(top, on="row", how="left").sort("row")
        frac = (joined["top"].fill_null(0).cast(pl.Float64) / joined["chars"].cast(pl.Float64)).fill_nan(0.0)
        frac = frac.fill_null(0.0).clip(0.0, 1.0)
        check(frac, rule.max_top_ngram_fraction, f"top_{rule.top_ngram}gram")
    if rule.max_duplicate_ngram_fraction is not None:
        counts = ngram_counts(rule.duplicate_ngram)
        agg = counts.group_by("row").agg(
            pl.col("len").filter(pl.col("len") > 1).sum().alias("dup"), pl.col("len").sum().alias("all")
        )
        agg = frame.select("row").join(agg, on="row", how="left").sort("row")
        frac = (agg["dup"].cast(pl.Float64) / agg["all"].cast(pl.Float64)).fill_nan(0.0).fill_null(0.0)
        check(frac, rule.max_duplicate_ngram_fraction, f"duplicate_{rule.duplicate_ngram}grams")
    return ok, fired_value.fill_null(worst), fired


def _phrases(df, rule: PhrasesRule, text_of):
    phrases = [p.lower() for p in rule.phrases + PRESETS.get(rule.preset or "", [])]
    text = text_of(rule.field, lower=True)
    return ~text.str.contains_any(phrases), None


def _shape(df, rule: ShapeRule, text_of):
    import polars as pl

    roles = df.select(pl.col("messages").list.eval(pl.element().struct.field("role")).alias("r"))
    # system turns only at the start; the rest alternate user/assistant
    turns = roles.select(pl.col("r").list.eval(pl.element().filter(pl.element() != "system")).alias("t"))
    ok = turns.select(pl.col("t").list.len() >= rule.min_turns).to_series()
    if rule.roles_alternate:
        alternate = turns.select(
            pl.col("t").list.eval(
                (pl.element() != pl.element().shift(1)).fill_null(True).all()
                & (pl.element().first() == "user")
            ).list.first()
        ).to_series().fill_null(False)
        sys_first = roles.select(
            pl.col("r").list.eval(
                ((pl.element() == "system").cast(pl.Int32).diff().fill_null(0) <= 0).all()
            ).list.first()
        ).to_series().fill_null(True)
        ok = ok & alternate & sys_first
    if rule.ends_with != "any":
        ok = ok & (roles.select(pl.col("r").list.last() == rule.ends_with).to_series().fill_null(False))
    return ok, None


def _sql(df, rule: SqlRule, text_of):
    import duckdb
    import polars as pl

    from datamix import scratch

    with scratch.cursor() as con:
        con.register("sample", df.to_arrow())
        try:
            out = con.sql(f"SELECT coalesce(({rule.where}), false) AS ok FROM sample").to_arrow_table()
        except duckdb.Error as e:
            raise BadInput(f"rule sql: invalid predicate {rule.where!r}: {str(e).splitlines()[0]}") from None
    return pl.Series(out.column("ok").to_pylist(), dtype=pl.Boolean), None


RULES = {"length": _length, "regex": _regex, "repetition": _repetition, "phrases": _phrases, "shape": _shape, "sql": _sql}


def decide(df, rules) -> "pl.DataFrame":
    """Decisions for the samples that fail a rule: sample_id, kept=False, reason, score."""
    import polars as pl

    from datamix.fields import check_field, field_expr

    alive = pl.Series([True] * len(df))
    reason = pl.Series([None] * len(df), dtype=pl.Utf8)
    score = pl.Series([None] * len(df), dtype=pl.Float64)
    texts: dict = {}

    def text_of(field: str, lower: bool = False):
        """A field's text, extracted once per chunk however many rules read it."""
        if (field, lower) not in texts:
            texts[(field, lower)] = (text_of(field).str.to_lowercase() if lower
                                     else df.select(field_expr(field)).to_series())
        return texts[(field, lower)]

    for rule in rules:
        field = getattr(rule, "field", None)
        if field and (problem := check_field(field, df.columns)):
            raise BadInput(f"rule {rule_label(rule)}: {problem}")
        ok, value, *criterion = RULES[rule.rule](df, rule, text_of)
        newly = alive & ~ok.fill_null(False)
        label = pl.lit(rule_label(rule))
        if criterion:  # a rule with several criteria says which one fired: "repetition(response): duplicate_lines"
            label = pl.concat_str([label, pl.lit(": "), criterion[0]]).fill_null(label)
        reason = pl.select(pl.when(newly).then(label).otherwise(reason)).to_series()
        if value is not None:
            score = pl.select(pl.when(newly).then(value).otherwise(score)).to_series()
        alive = alive & ~newly
    dropped = pl.DataFrame({"sample_id": df["sample_id"], "reason": reason, "score": score}).filter(~alive)
    return dropped.select(
        "sample_id", pl.lit(False).alias("kept"), "reason", "score", pl.lit(None, dtype=pl.Utf8).alias("related_id")
    )


def _columns_read(rules) -> str | None:
    """The columns the rules need: sample_id and messages when every rule reads a chat
    field (most of a table's bytes can be other columns); all of them (None) for a `sql`
    rule or a rule over another column."""
    from datamix.fields import CHAT_FIELDS

    for rule in rules:
        if rule.rule == "sql" or getattr(rule, "field", None) not in (None, *CHAT_FIELDS):
            return None
    return "sample_id, messages"


def _columns(cfg: FilterConfig) -> str | None:
    return _columns_read(cfg.rules)


@register("filter", FilterConfig, passthrough=True, shape="batch", columns=_columns)
def run(cfg: FilterConfig, batch, ctx: Context) -> Output:
    """Decisions for one batch of the input: the samples that fail a rule, with the reason."""
    import polars as pl

    # a tokenizer is a declared model's name or a folder beside the YAML, whatever the working folder
    rules = [r.model_copy(update={"tokenizer": ctx.resolve_model(r.tokenizer)}) if getattr(r, "tokenizer", None) else r
             for r in cfg.rules]
    return Output(decisions=decide(pl.from_arrow(batch), rules))
