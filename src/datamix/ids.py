"""Stable sample ids.

An id is the first 16 hex digits of md5(step name, parts...): the same inputs and
config give the same ids on a rerun, and different steps never collide. Hashing
runs vectorised in DuckDB over Arrow, never in a Python loop per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa


def mint(step: str, *parts: "pl.Series | pa.Array | list") -> "pl.Series":
    """Ids for rows whose identity is `parts` (columns of equal length) in `step`.

    Example: generate mints one id per (instruction id, model, sample index):
    ``mint("answers", df["parent"], df["model"], df["index"])``. Arrow string and
    integer arrays are hashed as they are (no Polars round trip); integers are
    written in decimal either way, so the ids do not depend on the column's type.
    """
    import polars as pl
    import pyarrow as pa

    from datamix import scratch

    if not parts:
        raise ValueError("mint needs at least one column")
    frame = pa.table({f"p{i}": _as_text(p) for i, p in enumerate(parts)})
    expr = " || chr(31) || ".join(f"coalesce(p{i}, chr(0))" for i in range(len(parts)))
    with scratch.cursor() as con:
        con.register("frame", frame)
        out = con.sql(
            f"SELECT substr(md5($step || chr(30) || {expr}), 1, 16) AS sample_id FROM frame", params={"step": step}
        ).to_arrow_table()
    return pl.Series("sample_id", out.column("sample_id").combine_chunks()) if out.num_rows else pl.Series("sample_id", [], dtype=pl.Utf8)


def _as_text(part) -> "pa.Array":
    """One column as Arrow strings, written as Polars' cast to Utf8 writes it."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(part, pa.ChunkedArray):
        part = part.combine_chunks()
    if isinstance(part, pa.Array):
        if pa.types.is_string(part.type) or pa.types.is_large_string(part.type):
            return part
        if pa.types.is_integer(part.type):
            return pc.cast(part, pa.string())
        part = pl.Series(part)  # other types: Polars' text form, as for a Series
    series = part if isinstance(part, pl.Series) else pl.Series(part)
    return series.cast(pl.Utf8).to_arrow()


def mint_one(step: str, *parts: object) -> str:
    """The id `mint` gives a single row: for code paths that handle one sample."""
    import hashlib

    text = step + "\x1e" + "\x1f".join("\x00" if p is None else str(p) for p in parts)
    return hashlib.md5(text.encode("utf-8")).hexdigest()[:16]
