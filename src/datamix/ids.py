"""Stable sample ids.

An id is the first 16 hex digits of md5(step name, parts...): the same inputs and
config give the same ids on a rerun, and different steps never collide. Hashing
runs vectorised in DuckDB over Arrow, never in a Python loop per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


def mint(step: str, *parts: "pl.Series | list") -> "pl.Series":
    """Ids for rows whose identity is `parts` (columns of equal length) in `step`.

    Example: generate mints one id per (instruction id, model, sample index):
    ``mint("answers", df["parent"], df["model"], df["index"])``.
    """
    import duckdb
    import polars as pl

    cols = [p if isinstance(p, pl.Series) else pl.Series(p) for p in parts]
    if not cols:
        raise ValueError("mint needs at least one column")
    frame = pl.DataFrame({f"p{i}": c.cast(pl.Utf8) for i, c in enumerate(cols)})
    expr = " || chr(31) || ".join(f"coalesce(p{i}, chr(0))" for i in range(len(cols)))
    con = duckdb.connect()
    con.register("frame", frame.to_arrow())
    out = con.sql(
        f"SELECT substr(md5($step || chr(30) || {expr}), 1, 16) AS sample_id FROM frame", params={"step": step}
    ).to_arrow_table()
    con.close()
    return pl.Series("sample_id", out.column("sample_id").combine_chunks()) if out.num_rows else pl.Series("sample_id", [], dtype=pl.Utf8)


def mint_one(step: str, *parts: object) -> str:
    """The id `mint` gives a single row: for code paths that handle one sample."""
    import hashlib

    text = step + "\x1e" + "\x1f".join("\x00" if p is None else str(p) for p in parts)
    return hashlib.md5(text.encode("utf-8")).hexdigest()[:16]
