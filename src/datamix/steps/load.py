"""load: read JSONL, JSON, Parquet or CSV records and normalise them to `messages`.

Record shapes: OpenAI `messages`, ShareGPT `conversations`, Alpaca
`instruction`/`input`/`output`, and prompt/response columns named in the
config. Every row keeps its origin (file, and line for JSONL/CSV or 1-based row
number for JSON arrays and Parquet). Malformed rows go to quarantine with file,
line and reason; the step fails only when the bad fraction passes
`max_bad_fraction`.
"""

from __future__ import annotations

import glob
import json
import os
from typing import ClassVar, Literal

from pydantic import Field

from datamix.steps.base import BadInput, Chunk, Context, StepConfig, register

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class LoadConfig(StepConfig):
    kind: Literal["load"]
    path: str = Field(description="a file, a glob or a folder (relative to the YAML)")
    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    shape: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_response"] = "auto"
    prompt_field: str = "prompt"
    response_field: str = "response"
    system_field: str = ""
    # Extra record fields to keep as VARCHAR columns (e.g. an id or a category).
    keep_fields: list[str] = Field(default_factory=list)
    max_bad_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    limit: int | None = Field(default=None, ge=1, description="read at most this many rows per file")
    chunk_size: int = Field(default=100_000, ge=1)

    path_fields: ClassVar[tuple[str, ...]] = ("path",)


def list_files(path: str) -> list[str]:
    if os.path.isdir(path):
        found = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
        return sorted(f for f in found if os.path.splitext(f)[1].lower() in FORMATS)
    matches = sorted(glob.glob(path))
    return matches if matches else ([path] if os.path.exists(path) else [])


def _format_of(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise BadInput(f"{path}: cannot tell the format from the extension {ext!r}; set `format:` (jsonl, json, parquet, csv)")
    return FORMATS[ext]


def read_raw_records(path: str, fmt: str, limit: int | None = None):
    """(origin_line, raw JSON text, decode_error) as an Arrow table, in file order."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if fmt == "jsonl":
        with open(path, "rb") as f:
            data = f.read()
        raw_lines = data.split(b"\n")
        if raw_lines and raw_lines[-1] == b"":
            raw_lines.pop()
        if limit is not None:
            raw_lines = raw_lines[:limit]
        errors: list[str | None] = [None] * len(raw_lines)
        try:  # the fast path: the whole file is UTF-8
            texts = data[: sum(len(x) + 1 for x in raw_lines)].decode("utf-8").split("\n")[: len(raw_lines)]
        except UnicodeDecodeError:
            texts = []
            for i, b in enumerate(raw_lines):
                try:
                    texts.append(b.decode("utf-8"))
                except UnicodeDecodeError as e:
                    texts.append(b.decode("utf-8", errors="replace"))
                    errors[i] = f"undecodable bytes (not UTF-8) at byte {e.start}"
        table = pa.table({
            "origin_line": pa.array(np.arange(1, len(texts) + 1, dtype=np.int64)),
            "raw": pa.array(texts, pa.string()),
            "decode_error": pa.array(errors, pa.string()),
        })
        blank = pc.equal(pc.utf8_trim_whitespace(table.column("raw")), "")
        return table.filter(pc.invert(blank))  # blank lines are not records
    if fmt == "json":
        try:
            with open(path, encoding="utf-8") as f:
                records = json.load(f)
        except UnicodeDecodeError as e:
            raise BadInput(f"{path}: undecodable bytes (not UTF-8) at byte {e.start}") from None
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}:{e.lineno}: invalid JSON ({e.msg}); for one record per line use .jsonl") from None
        if isinstance(records, dict):
            records = [records]
        if limit is not None:
            records = records[:limit]
        return pa.table({
            "origin_line": pa.array(np.arange(1, len(records) + 1, dtype=np.int64)),
            "raw": pa.array([json.dumps(r, ensure_ascii=False) for r in records], pa.string()),
            "decode_error": pa.nulls(len(records), pa.string()),
        })
    con = duckdb.connect()
    reader = "read_parquet(?)" if fmt == "parquet" else "read_csv(?, all_varchar = true, header = true)"
    # CSV: line = row + 1 (the header is line 1); Parquet: 1-based row number.
    offset = 1 if fmt == "csv" else 0
    try:
        table = con.sql(f"SELECT to_json(t)::VARCHAR AS raw FROM {reader} t" + (f" LIMIT {int(limit)}" if limit else ""),
                        params=[path]).to_arrow_table()
    except duckdb.Error as e:
        raise BadInput(f"{path}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
    n = table.num_rows
    return pa.table({
        "origin_line": pa.array(np.arange(1 + offset, n + 1 + offset, dtype=np.int64)),
        "raw": table.column("raw"),
        "decode_error": pa.nulls(n, pa.string()),
    })


def normalize(con, records, origin_file: str, cfg: LoadConfig):
    """Run sql/normalize_records.sql over raw records; returns (good rows, quarantine) as Arrow."""
    import pyarrow as pa

    from datamix.store import sql_text

    records = records.append_column("origin_file", pa.array([origin_file] * records.num_rows, pa.string()))
    con.register("_records", records)
    params = {
        "prompt_field": cfg.prompt_field,
        "response_field": cfg.response_field,
        "system_field": cfg.system_field or "__no_system_field__",  # a path that never matches
        "shape": cfg.shape,
    }
    keep = "".join(
        f", json_extract_string(raw, '$.\"' || ${'k%d' % i} || '\"') AS \"{name}\"" for i, name in enumerate(cfg.keep_fields)
    )
    params.update({f"k{i}": name for i, name in enumerate(cfg.keep_fields)})
    out = con.sql(
        f"SELECT origin_file, origin_line, messages, reason, raw{keep} FROM ({sql_text('normalize_records.sql')})",
        params=params,
    ).to_arrow_table()
    con.unregister("_records")
    import pyarrow.compute as pc

    bad_mask = pc.is_valid(out.column("reason"))
    bad = out.filter(bad_mask)
    good = out.filter(pc.invert(bad_mask)).drop_columns(["reason", "raw"])
    quarantine = pa.table({
        "file": bad.column("origin_file"),
        "line": bad.column("origin_line"),
        "reason": bad.column("reason"),
        "raw": pc.utf8_slice_codeunits(bad.column("raw"), 0, 2000),
    })
    return good, quarantine


@register("load", LoadConfig)
def run(cfg: LoadConfig, inputs, ctx: Context):
    import duckdb
    import polars as pl

    from datamix.ids import mint

    full = ctx.resolve(cfg.path)
    files = list_files(full)
    if not files:
        raise BadInput(f"step {cfg.name}: path {cfg.path} matches no file (looked for {full})")
    con = duckdb.connect()
    total = bad_total = 0
    for path in files:
        fmt = _format_of(path, cfg.format)
        origin = os.path.relpath(path, ctx.pipeline_dir)
        records = read_raw_records(path, fmt, cfg.limit)
        for start in range(0, records.num_rows, cfg.chunk_size):
            part = records.slice(start, cfg.chunk_size)
            total += part.num_rows
            key = f"{origin}:{start}"
            if key in ctx.done_keys:
                # committed by an earlier run: only its bad-row count is needed here
                bad_total += part.num_rows - _good_count(con, part, origin, cfg)
                continue
            good, quarantine = normalize(con, part, origin, cfg)
            bad_total += quarantine.num_rows
            rows = pl.from_arrow(good)
            rows = rows.with_columns(mint(cfg.name, rows["origin_file"], rows["origin_line"]).alias("sample_id"))
            rows = rows.select(["sample_id", "messages", "origin_file", "origin_line", *cfg.keep_fields])
            ctx.progress(part.num_rows)
            yield Chunk(key=key, rows=rows, quarantine=quarantine, rows_in=part.num_rows)
    con.close()
    if total and bad_total / total > cfg.max_bad_fraction:
        raise BadInput(
            f"step {cfg.name}: {bad_total} of {total} input rows are malformed ({bad_total / total:.1%}), over "
            f"max_bad_fraction={cfg.max_bad_fraction}. They are in quarantine with file, line and reason: "
            f"datamix sql \"SELECT file, line, reason FROM dm.quarantine WHERE step = '{cfg.name}'\". "
            "Fix those rows, or raise max_bad_fraction to accept them."
        )


def _good_count(con, part, origin: str, cfg: LoadConfig) -> int:
    good, _ = normalize(con, part, origin, cfg)
    return good.num_rows
