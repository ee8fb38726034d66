"""Named text fields of a chat, as Polars expressions over the `messages` column.

Filters and dedup address text by field name: `instruction` (the first user
turn), `response` (the last assistant turn), `system`, `conversation` (every
turn's content joined), `user` / `assistant` (all turns of that role joined),
or any other column of the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the step kinds import this module when a pipeline is loaded
    import polars as pl

CHAT_FIELDS = ("instruction", "response", "system", "conversation", "user", "assistant")


def _contents(role: str | None) -> pl.Expr:
    import polars as pl

    msgs = pl.col("messages")
    if role is None:
        return msgs.list.eval(pl.element().struct.field("content"))
    return msgs.list.eval(
        pl.element().filter(pl.element().struct.field("role") == role).struct.field("content")
    )


def field_expr(field: str) -> pl.Expr:
    """The text of `field` for every row (empty string when the chat has none)."""
    import polars as pl

    if field == "instruction":
        expr = _contents("user").list.first()
    elif field == "response":
        expr = _contents("assistant").list.last()
    elif field == "system":
        expr = _contents("system").list.first()
    elif field == "conversation":
        expr = _contents(None).list.join("\n")
    elif field in ("user", "assistant"):
        expr = _contents(field).list.join("\n")
    else:
        expr = pl.col(field).cast(pl.Utf8)
    return expr.fill_null("").alias(field)


# The same fields as DuckDB expressions over `messages`, for steps that let the store
# extract the text while it reads (only the strings reach Python, not the chats). They
# equal field_expr row for row, nulls and empty chats included (tests/core/test_fields.py).
_FIRST = "coalesce(list_filter(messages, lambda m: m.role = '{role}')[{at}].content, '')"
_JOINED = "coalesce(array_to_string(list_transform({chats}, lambda m: m.content), chr(10)), '')"
SQL_FIELDS = {
    "instruction": _FIRST.format(role="user", at=1),
    "response": _FIRST.format(role="assistant", at=-1),
    "system": _FIRST.format(role="system", at=1),
    "conversation": _JOINED.format(chats="messages"),
    "user": _JOINED.format(chats="list_filter(messages, lambda m: m.role = 'user')"),
    "assistant": _JOINED.format(chats="list_filter(messages, lambda m: m.role = 'assistant')"),
}


def sql_select(field: str, alias: str) -> str:
    """A select-list item reading `field` as `alias`: a chat field's text, or the column as it is
    (cast to text with `cast_text`, as field_expr casts it)."""
    from datamix.store import quote

    return f"{SQL_FIELDS[field] if field in SQL_FIELDS else quote(field)} AS {quote(alias)}"


def cast_text(column: str) -> pl.Expr:
    """A column read by sql_select as field_expr's text: Polars' cast to text, null as ''."""
    import polars as pl

    return pl.col(column).cast(pl.Utf8).fill_null("")


def text_of(df: pl.DataFrame, fields: list[str]) -> pl.Series:
    """The named fields joined with a blank line, one string per row."""
    import polars as pl

    if len(fields) == 1:
        return df.select(field_expr(fields[0])).to_series()
    return df.select(pl.concat_str([field_expr(f) for f in fields], separator="\n\n").alias("text")).to_series()


def check_field(field: str, columns: list[str]) -> str | None:
    """An error message when `field` is neither a chat field nor a column."""
    if field in CHAT_FIELDS or field in columns:
        return None
    return f"unknown field {field!r}: use one of {', '.join(CHAT_FIELDS)} or a column ({', '.join(columns)})"
