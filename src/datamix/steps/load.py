"""load: read JSONL, JSON, Parquet or CSV records and normalise them to `messages`.

Record shapes: OpenAI `messages`, ShareGPT `conversations`, Alpaca
`instruction`/`input`/`output`, and prompt/response columns named in the
config. Every row keeps its origin (file, and line for JSONL/CSV or 1-based row
number for JSON arrays and Parquet). Malformed rows go to quarantine with file,
line and reason; the step fails only when the bad fraction passes
`max_bad_fraction`. Every record is either loaded exactly as given or quarantined:
a text field that holds a number, boolean, object or list is quarantined (not turned
into its JSON text), and so is a CSV record with the wrong number of fields, broken
quoting or bytes that are not in the file's encoding.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import json
import os
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

# the file readers are public here too: dedup and eval.sets read reference and set files with them
from datamix.readers import FORMATS, format_of, list_files, read_raw_records  # noqa: F401
from datamix.steps.base import BadInput, Context, Output, Source, StepConfig, Unit, register
from datamix.store import literal, quote


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
    limit: int | None = Field(default=None, ge=1, description=(
        "read at most this many records in all, across the files in path order (lines of JSONL, "
        "records of CSV, elements of a JSON array, rows of Parquet; quarantined ones count too)"))
    encoding: str = Field(default="utf-8", description=(
        "text encoding of CSV files (e.g. latin-1, cp1252); a record with bytes that are not in it is "
        "quarantined. JSON and JSONL files are UTF-8"))
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="CSV field separator")
    # Two of DuckDB's row groups (122,880 rows each): a committed chunk that fills whole row
    # groups is written straight into the store file, while a smaller one goes through the
    # write-ahead log and a checkpoint at commit (1.9 s vs 3.5 s per 1M chats); two row
    # groups per chunk halve the commits (inserting 1M chats: 0.96 s vs 1.6 s).
    chunk_size: int = Field(default=245_760, ge=1)

    path_fields: ClassVar[tuple[str, ...]] = ("path",)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}: use a Python codec name such as utf-8, latin-1 "
                             "or cp1252") from None
        return value

    def columns_out(self, inputs):
        return frozenset({"sample_id", "messages", "origin_file", "origin_line", *self.keep_fields})

    def check_pipeline(self, pipeline, check_files: bool = True) -> list[tuple[tuple, str]]:
        """What the files are, at validate time: a folder with no data file, or a file whose format
        its extension does not tell (a missing path is reported with the files)."""
        if not check_files:
            return []
        problem = files_problem(self.path, self.format, pipeline.base_dir)
        return [] if problem is None else [(("format",) if "format" in problem else ("path",), problem)]


def files_problem(path: str, fmt: str, base_dir: str) -> str | None:
    """Why the data files at `path` (beside the YAML) cannot be read as `fmt`, before reading them:
    a folder without a data file, or a file whose extension does not tell its format."""
    full = os.path.normpath(os.path.join(base_dir, path))
    files = list_files(full)
    if os.path.isdir(full) and not files:
        return f"the folder {full} has no {', '.join(sorted(FORMATS))} file"
    unknown = [f for f in files if os.path.splitext(f)[1].lower() not in FORMATS]
    if fmt == "auto" and unknown:
        return (f"cannot tell the format of {os.path.relpath(unknown[0], base_dir)} from its extension; "
                "set `format:` (jsonl, json, parquet, csv)")
    return None


def structure(cfg: LoadConfig) -> dict:
    """Every record key any shape reads, with its type (json_transform's structure)."""
    message = [{"role": "VARCHAR", "content": "VARCHAR"}]
    keys = {"messages": message, "conversations": [{"from": "VARCHAR", "value": "VARCHAR"}],
            "instruction": "VARCHAR", "input": "VARCHAR", "output": "VARCHAR"}
    for name in (cfg.prompt_field, cfg.response_field, _system_key(cfg), *cfg.keep_fields):
        keys.setdefault(name, "VARCHAR")
    return keys


def _system_key(cfg: LoadConfig) -> str:
    return cfg.system_field or "__no_system_field__"  # a key that never matches


# normalize_records.sql's input when DuckDB's JSON reader parsed the records (columns origin_line, f)
PARSED_FIELDS = ("SELECT $origin_file::VARCHAR AS origin_file, origin_line, NULL::VARCHAR AS raw, "
                 "NULL::VARCHAR AS decode_error, f FROM @records@")


def normalize_sql(cfg: LoadConfig, parsed: bool = False, records: str = "_records") -> str:
    """sql/normalize_records.sql with this config's field names filled in, over raw lines
    (sql/parse_records.sql) or over records DuckDB's reader already parsed: the registered
    table `_records`, or a query giving them (`records`, see _parsed_query)."""
    from datamix.store import sql_text

    keep = "".join(f", f.{quote(k)} AS {quote(k)}" for k in cfg.keep_fields)
    keep_out = "".join(f", {quote(k)}" for k in cfg.keep_fields)
    fields = PARSED_FIELDS.replace("@records@", records) if parsed else sql_text("parse_records.sql")
    sql = sql_text("normalize_records.sql").replace("@fields@", fields)
    for key, value in (("prompt", quote(cfg.prompt_field)),
                       ("response", quote(cfg.response_field)), ("system", quote(_system_key(cfg))),
                       ("keep_out", keep_out), ("keep", keep)):
        sql = sql.replace(f"@{key}@", value)
    return sql


def _duckdb_type(value) -> str:
    """A structure entry as a DuckDB type: "VARCHAR", or [{key: type}] as a list of structs."""
    if isinstance(value, list):
        return "STRUCT(" + ", ".join(f"{quote(k)} {_duckdb_type(v)}" for k, v in value[0].items()) + ")[]"
    return value


def _parsed_query(cfg: LoadConfig) -> str | None:
    """The query giving (origin_line, f) for a JSONL file ($path) through DuckDB's JSON reader:
    each record parsed once, straight into the structure ($columns). origin_line is the record's
    position, its line when no line was blank (the reader skips blank lines: see
    _clean_file_rows). None when a record key is named `ordinality`, the position's column."""
    columns = structure(cfg)
    if "ordinality" in columns:
        return None
    pack = ", ".join(f"{quote(k)} := {quote(k)}" for k in columns)
    return (f"SELECT ordinality AS origin_line, struct_pack({pack}) AS f "
            "FROM read_json($path, format = 'newline_delimited', columns = $columns) WITH ORDINALITY")


def _clean_file_rows(path: str, cfg: LoadConfig, limit: int | None, run_query):
    """run_query(parsed query, its parameters) for a clean JSONL file, or None when DuckDB's JSON
    reader cannot vouch for the file.

    The reader fails on invalid JSON, bad UTF-8, duplicate keys and values it cannot convert,
    and skips blank lines; so the rows are the file's lines, in order, exactly when it succeeds
    and gives one row per line. Otherwise the caller reads the lines (read_raw_records), which
    names every bad one. The file's lines are counted while DuckDB reads it."""
    import threading

    import duckdb

    query = _parsed_query(cfg)
    if limit is not None or query is None or os.path.getsize(path) == 0:
        return None
    counted: list[int] = []
    counter = threading.Thread(target=lambda: counted.append(_count_lines(path)), name="datamix-count-lines")
    counter.start()
    try:
        table = run_query(query, {"path": path, "columns": {k: _duckdb_type(v) for k, v in structure(cfg).items()}})
    except duckdb.Error:
        return None
    finally:
        counter.join()
    return table if table.num_rows == counted[0] else None


def read_parsed_records(path: str, cfg: LoadConfig, limit: int | None = None):
    """(origin_line, f) for a clean JSONL file, each record parsed once by DuckDB's JSON
    reader straight into the structure; None when that reader cannot vouch for the file
    (_clean_file_rows). Parsing once instead of reading each record's text and parsing that:
    0.39-0.45 s against 0.77-1.0 s per 1M chats."""
    from datamix import scratch

    def run_query(query, params):
        with scratch.cursor() as con:
            return con.sql(query, params=params).to_arrow_table()

    return _clean_file_rows(path, cfg, limit, run_query)


def read_normalized(con, path: str, origin_file: str, cfg: LoadConfig, limit: int | None = None):
    """normalize(con, read_parsed_records(...)) in one query, for a clean JSONL file: its rows
    with the columns `reason` and `raw` (see normalize_records.sql), or None (_clean_file_rows).
    The parsed records never reach Arrow: on 100k texts of 1.4 KB, 0.31-0.38 s against
    0.31-0.44 s in two, and one copy of the texts fewer."""
    def run_query(query, params):
        return con.sql(normalize_sql(cfg, parsed=True, records=f"({query})"),
                       params={**_normalize_params(origin_file, cfg), **params}).to_arrow_table()

    return _clean_file_rows(path, cfg, limit, run_query)


_LINE_BLOCK = 1 << 24  # bytes read and compared at a time


def _count_lines(path: str) -> int:
    """Lines of a non-empty file (a last line without its newline counts). numpy's comparison
    over a reused 16 MB block: 0.057 s per 139 MB against bytes.count's 0.128 s."""
    import numpy as np

    block, is_newline = np.empty(_LINE_BLOCK, np.uint8), np.empty(_LINE_BLOCK, np.bool_)
    lines, last = 0, 10
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(block):
            np.equal(block[:n], 10, out=is_newline[:n])
            lines += int(np.count_nonzero(is_newline[:n]))
            last = int(block[n - 1])
    return lines + (last != 10)


def normalize(con, records, origin_file: str, cfg: LoadConfig):
    """Run sql/normalize_records.sql over raw records (origin_line, raw, decode_error) or parsed
    ones (origin_line, f; see read_parsed_records); returns (good rows, quarantine) as Arrow.

    Good rows: sample_id (minted from cfg.name, origin_file and origin_line), messages,
    origin_file, origin_line and the kept fields, in input order."""
    parsed = "f" in records.column_names
    con.register("_records", records)
    out = con.sql(
        normalize_sql(cfg, parsed=parsed),
        params={**_normalize_params(origin_file, cfg), **({} if parsed else {"structure": json.dumps(structure(cfg))})},
    ).to_arrow_table()
    con.unregister("_records")
    return split_quarantine(out)


def _normalize_params(origin_file: str, cfg: LoadConfig) -> dict:
    return {"origin_file": origin_file, "step": cfg.name, "shape": cfg.shape, "prompt_name": cfg.prompt_field,
            "response_name": cfg.response_field, "system_name": _system_key(cfg)}


def split_quarantine(out):
    """(good rows, quarantine) of normalize_records.sql's output."""
    reasons = out.column("reason")
    if reasons.null_count == out.num_rows:  # a clean chunk: no copy of the rows
        return out.drop_columns(["reason", "raw"]), _quarantine_of(out.slice(0, 0))
    import pyarrow.compute as pc

    bad_mask = pc.is_valid(reasons)
    good = out.filter(pc.invert(bad_mask)).drop_columns(["reason", "raw"])
    return good, _quarantine_of(out.filter(bad_mask))


def _quarantine_of(bad):
    import pyarrow as pa

    raw = bad.column("raw")
    if bad.num_rows:  # pyarrow.compute only where there is a row to cut (its import: ~0.03 s a run)
        import pyarrow.compute as pc

        raw = pc.utf8_slice_codeunits(raw, 0, 2000)
    return pa.table({"file": bad.column("origin_file"), "line": bad.column("origin_line"),
                     "reason": bad.column("reason"), "raw": raw})


@dataclasses.dataclass
class _File:
    """The records of one file as they are read: a JSONL file that came through a clean-file fast
    path is read again line by line at its first bad row (`robust` then), and its later parts
    are sliced from that reading."""

    path: str
    fmt: str
    origin: str  # the path relative to the YAML: rows' origin_file, chunk keys
    records: Any
    robust: bool
    normalized: bool = False  # records are rows already (read_normalized), every one good


def _read(cfg: LoadConfig, tally: "_Tally", path: str, fmt: str, origin: str, limit: int | None) -> _File:
    """A file's records: a clean JSONL file read and normalised in one query; one with a bad or
    suspect row read line by line, so that quarantine names each (the same lines); other files
    by their reader."""
    if fmt == "jsonl":
        rows = read_normalized(tally.con, path, origin, cfg, limit)
        if rows is not None and rows.column("reason").null_count == rows.num_rows:
            return _File(path, fmt, origin, rows, robust=False, normalized=True)
        if rows is not None:
            return _File(path, fmt, origin, read_raw_records(path, fmt, None, fast=False), robust=True)
    records = read_raw_records(path, fmt, limit, encoding=cfg.encoding, delimiter=cfg.delimiter)
    return _File(path, fmt, origin, records, robust=fmt != "jsonl")  # JSONL may have come the fast way


@dataclasses.dataclass
class _Tally:
    """What a load step's units share: one DuckDB connection, and the records read and
    quarantined over all files, which `max_bad_fraction` is checked against at the end."""

    con: Any
    total: int = 0
    bad: int = 0


@register("load", LoadConfig)
def run(cfg: LoadConfig, inputs, ctx: Context) -> Source:
    import duckdb

    full = ctx.resolve(cfg.path)
    files = list_files(full)
    if not files:
        raise BadInput(f"step {cfg.name}: path {cfg.path} matches no file (looked for {full})")
    tally = _Tally(duckdb.connect())
    return Source(units=_parts(cfg, files, ctx, tally), run=functools.partial(_load_part, cfg, tally),
                  committed=functools.partial(_normalize_part, cfg, tally),
                  finish=functools.partial(_check_bad_fraction, cfg, tally))


def _parts(cfg: LoadConfig, files: list[str], ctx: Context, tally: _Tally) -> Iterator[Unit]:
    """Units of `chunk_size` records, keyed "<file>:<first record>", over the files in path order;
    a file is read when its first part is reached, and `limit:` counts records across files."""
    remaining = cfg.limit  # records still to read, over all files
    for path in files:
        if remaining == 0:
            break
        fmt = format_of(path, cfg.format)
        origin = os.path.relpath(path, ctx.pipeline_dir)
        file = _read(cfg, tally, path, fmt, origin, remaining)
        records = file.records
        if remaining is not None:
            remaining -= records.num_rows
        for start in range(0, records.num_rows, cfg.chunk_size):
            yield Unit(f"{origin}:{start}", (file, start))


def _normalize_part(cfg: LoadConfig, tally: _Tally, unit: Unit):
    """(rows, quarantine, records read) of one part, counted into `tally`. A part an earlier run
    committed goes through here too: only its bad-row count is needed then."""
    file, start = unit.item
    part = file.records.slice(start, cfg.chunk_size)
    # sample ids are minted in the query: mint(cfg.name, origin_file, origin_line)
    rows, quarantine = split_quarantine(part) if file.normalized else normalize(tally.con, part, file.origin, cfg)
    if quarantine.num_rows and not file.robust:
        # a bad row, or one the fast path cannot vouch for ('recheck'): quarantine records
        # what the line-by-line reader gives (the same lines)
        file.records, file.robust = read_raw_records(file.path, file.fmt, None, fast=False), True
        part = file.records.slice(start, cfg.chunk_size)
        rows, quarantine = normalize(tally.con, part, file.origin, cfg)
    tally.total += part.num_rows
    tally.bad += quarantine.num_rows
    return rows, quarantine, part.num_rows


def _load_part(cfg: LoadConfig, tally: _Tally, unit: Unit) -> Output:
    rows, quarantine, n = _normalize_part(cfg, tally, unit)
    return Output(rows=rows, quarantine=quarantine, rows_in=n)


def _check_bad_fraction(cfg: LoadConfig, tally: _Tally) -> None:
    tally.con.close()
    total, bad_total = tally.total, tally.bad
    if total and bad_total / total > cfg.max_bad_fraction:
        raise BadInput(
            f"step {cfg.name}: {bad_total} of {total} input rows are malformed ({bad_total / total:.1%}), over "
            f"max_bad_fraction={cfg.max_bad_fraction}. They are in quarantine with file, line and reason: "
            f"datamix sql \"SELECT file, line, reason FROM dm.quarantine WHERE step = {literal(cfg.name)}\". "
            "Fix those rows, or raise max_bad_fraction to accept them."
        )
