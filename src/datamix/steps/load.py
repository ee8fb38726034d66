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
import glob
import json
import os
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from datamix.steps.base import BadInput, Chunk, Context, StepConfig, register
from datamix.store import literal, quote

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


def list_files(path: str) -> list[str]:
    if os.path.isdir(path):
        found = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
        return sorted(f for f in found if os.path.splitext(f)[1].lower() in FORMATS)
    matches = sorted(glob.glob(path))
    return matches if matches else ([path] if os.path.exists(path) else [])


def format_of(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise BadInput(f"{path}: cannot tell the format from the extension {ext!r}; set `format:` (jsonl, json, parquet, csv)")
    return FORMATS[ext]


def _jsonl_lines(path: str, limit: int | None):
    """Every line of a JSONL file as a string column, without a Python object per line.

    The file's bytes become the data buffer of an Arrow string array whose offsets
    are the newline positions. Only when the file is not valid UTF-8 does it fall
    back to decoding line by line, to say which lines are bad.
    """
    import numpy as np
    import pyarrow as pa

    with open(path, "rb") as f:
        data = f.read()
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))  # last line without a newline
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.zeros(0, dtype=np.int64)
    n = len(ends) if limit is None else min(len(ends), limit)
    line_numbers = pa.array(np.arange(1, n + 1, dtype=np.int64))
    stop = int(ends[n - 1]) if n else 0
    # drop the newline bytes between lines: bytes.replace is one C-level copy (memchr-fast)
    body = (data if n == len(ends) else data[:stop]).replace(b"\n", b"")
    # 32-bit offsets (a plain string array) when the text fits, so no cast copies it again
    large = len(body) >= 2**31
    offsets = np.zeros(n + 1, dtype=np.int64 if large else np.int32)
    np.cumsum(ends[:n] - starts[:n], out=offsets[1:])
    array_type = pa.LargeStringArray if large else pa.StringArray
    texts = array_type.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(body))
    errors = pa.nulls(n, pa.string())
    try:
        texts.validate(full=True)  # checks UTF-8
    except pa.ArrowInvalid:
        decoded, bad = [], []
        for s, e in zip(starts[:n], ends[:n]):
            chunk = data[s:e]
            try:
                decoded.append(chunk.decode("utf-8"))
                bad.append(None)
            except UnicodeDecodeError as err:
                decoded.append(chunk.decode("utf-8", errors="replace"))
                bad.append(f"undecodable bytes (not UTF-8) at byte {err.start}")
        texts, errors = pa.array(decoded, pa.string()), pa.array(bad, pa.string())
    return pa.table({"origin_line": line_numbers, "raw": texts, "decode_error": errors})


def _jsonl_clean_lines(path: str, limit: int | None):
    """The lines of a clean JSONL file through DuckDB's parallel JSON reader, or None.

    Clean: every line is exactly one JSON value, with no blank line, no whitespace or
    carriage return around it, and valid UTF-8. DuckDB's reader returns each value's
    text verbatim but skips blank lines and strips whitespace, so line numbers are only
    trusted when the byte count proves nothing was skipped: the file's size must equal
    the values' bytes plus one newline per value (the last may lack it). A malformed
    value or bad UTF-8 makes the reader fail. In every such case this returns None and
    the caller takes `_jsonl_lines`, which reports each bad line with its number.
    """
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    size = os.path.getsize(path)
    if limit is not None or size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(size - 1)
        ends_with_newline = f.read(1) == b"\n"
    con = duckdb.connect()
    try:
        raw = con.sql("SELECT json::VARCHAR AS raw FROM read_json_objects(?, format = 'newline_delimited')",
                      params=[path]).to_arrow_table().column("raw")
    except duckdb.Error:
        return None
    finally:
        con.close()
    n = len(raw)
    value_bytes = pc.sum(pc.binary_length(raw)).as_py() or 0
    if value_bytes + n - (0 if ends_with_newline else 1) != size:
        return None  # a blank line, surrounding whitespace or \r: line numbers unknown here
    return pa.table({"origin_line": pa.array(np.arange(1, n + 1, dtype=np.int64)),
                     "raw": raw, "decode_error": pa.nulls(n, pa.string())})


def read_raw_records(path: str, fmt: str, limit: int | None = None, fast: bool = True,
                     encoding: str = "utf-8", delimiter: str = ","):
    """(origin_line, raw JSON text, decode_error) as an Arrow table, in file order.

    JSONL files are read by DuckDB's JSON reader when they are clean (`_jsonl_clean_lines`)
    unless `fast` is False; the rows are the same either way. decode_error is the reason a
    record could not be read at all (bad bytes, a broken CSV record); normalize quarantines it."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    if fmt == "jsonl":
        clean = _jsonl_clean_lines(path, limit) if fast else None
        return clean if clean is not None else _jsonl_lines(path, limit)
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
        elif not isinstance(records, list):
            raise BadInput(f"{path}: the file holds {type(records).__name__} {json.dumps(records)[:40]}, not records: "
                           "write a JSON array of objects (or one object), or one object per line as .jsonl")
        if limit is not None:
            records = records[:limit]
        return pa.table({
            "origin_line": pa.array(np.arange(1, len(records) + 1, dtype=np.int64)),
            "raw": pa.array([json.dumps(r, ensure_ascii=False) for r in records], pa.string()),
            "decode_error": pa.nulls(len(records), pa.string()),
        })
    if fmt == "csv":
        return _csv_records(path, limit, encoding, delimiter)
    con = duckdb.connect()
    try:
        # Parquet: the origin is the 1-based row number
        table = con.sql("SELECT to_json(t)::VARCHAR AS raw FROM read_parquet($path) t"
                        + (" LIMIT $limit" if limit else ""),
                        params={"path": path, **({"limit": limit} if limit else {})}).to_arrow_table()
    except duckdb.Error as e:
        raise BadInput(f"{path}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
    n = table.num_rows
    return pa.table({
        "origin_line": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "raw": table.column("raw"),
        "decode_error": pa.nulls(n, pa.string()),
    })


def _csv_records(path: str, limit: int | None, encoding: str, delimiter: str):
    """Every CSV record as (origin_line: the physical line it starts on, raw: a JSON object of
    header -> field text, decode_error: why the record cannot be used, with its text as raw).

    Python's csv module rather than DuckDB's reader: DuckDB sniffs the dialect, skips or
    pads records with the wrong number of fields depending on its options, and stops at the
    first byte that is not UTF-8, so rows were lost or shifted without a word. Here each
    record is kept exactly (fields as given, "" stays "") or named with its reason: bytes not
    in `encoding`, broken quoting, a field count unlike the header's. Blank lines are not
    records. The csv module is strict about quotes and counts physical lines (line_num), so
    a quoted field over several lines keeps the line its record starts on."""
    import csv
    import io
    import re

    import pyarrow as pa

    with open(path, "rb") as f:
        data = f.read()
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        text, undecodable = data.decode(codec), None
    except UnicodeDecodeError:
        # keep going: each bad byte becomes a lone surrogate, found again per record below
        text, undecodable = data.decode(codec, errors="surrogateescape"), re.compile("[\udc80-\udcff]")
    lines = io.StringIO(text, newline="").readlines()
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a long answer is one field; the default stops at 128 KiB
    origin, raw, errors = [], [], []
    header = None
    try:
        reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
        while limit is None or len(origin) < limit:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                row, problem = None, f"broken CSV record: {e}"
            else:
                problem = None
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
            text_of_record = "".join(lines[start - 1:reader.line_num])
            if problem is None and undecodable is not None and undecodable.search(text_of_record):
                problem = (f"undecodable bytes (not {encoding}); if the file is in another encoding, "
                           "set the step's encoding: (e.g. latin-1)")
            if header is None:
                if problem is not None:
                    raise BadInput(f"{path}:{start}: the header cannot be read ({problem})")
                header = _csv_header(path, row, delimiter)
                continue
            if problem is None and len(row) != len(header):
                problem = f"{len(row)} field{'' if len(row) == 1 else 's'} where the header has {len(header)}"
            origin.append(start)
            if problem is None:
                raw.append(json.dumps(dict(zip(header, row)), ensure_ascii=False))
                errors.append(None)
            else:
                raw.append(text_of_record.rstrip("\r\n").encode("utf-8", "replace").decode("utf-8"))
                errors.append(problem)
    finally:
        csv.field_size_limit(old_limit)
    return pa.table({
        "origin_line": pa.array(origin, pa.int64()),
        "raw": pa.array(raw, pa.string()),
        "decode_error": pa.array(errors, pa.string()),
    })


def _csv_header(path: str, row: list[str], delimiter: str) -> list[str]:
    seen = set()
    for name in row:
        if name in seen:
            raise BadInput(f"{path}:1: the header names the column {name!r} twice; rename one")
        seen.add(name)
    if len(row) == 1 and delimiter == "," and any(c in row[0] for c in ";\t|"):
        raise BadInput(f"{path}:1: the header is one column ({row[0][:60]!r}); if fields are separated by "
                       "something other than a comma, set the step's delimiter: (e.g. ';' or '\\t')")
    return row


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
                 "NULL::VARCHAR AS decode_error, f FROM _records")


def normalize_sql(cfg: LoadConfig, parsed: bool = False) -> str:
    """sql/normalize_records.sql with this config's field names filled in, over raw lines
    (sql/parse_records.sql) or over records DuckDB's reader already parsed."""
    from datamix.store import sql_text

    keep = "".join(f", f.{quote(k)} AS {quote(k)}" for k in cfg.keep_fields)
    keep_out = "".join(f", {quote(k)}" for k in cfg.keep_fields)
    sql = sql_text("normalize_records.sql").replace("@fields@", PARSED_FIELDS if parsed else sql_text("parse_records.sql"))
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


def read_parsed_records(path: str, cfg: LoadConfig, limit: int | None = None):
    """(origin_line, f) for a clean JSONL file, each record parsed once by DuckDB's JSON
    reader straight into the structure; None when that reader cannot vouch for the file.

    The reader fails on invalid JSON, bad UTF-8, duplicate keys and values it cannot
    convert, and skips blank lines; so the rows are the file's lines, in order, exactly
    when it succeeds and gives one row per line. Otherwise the caller reads the lines
    (read_raw_records), which names every bad one. Parsing once instead of reading each
    record's text and parsing that: 0.39-0.45 s against 0.77-1.0 s per 1M chats.
    """
    import duckdb
    import numpy as np
    import pyarrow as pa

    size = os.path.getsize(path)
    if limit is not None or size == 0:
        return None
    lines = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    columns = {k: _duckdb_type(v) for k, v in structure(cfg).items()}
    con = duckdb.connect()
    try:
        # t: the whole row as one struct (the structure's keys, in its order)
        table = con.sql("SELECT t AS f FROM read_json(?, format = 'newline_delimited', columns = ?) t",
                        params=[path, columns]).to_arrow_table()
    except duckdb.Error:
        return None
    finally:
        con.close()
    if table.num_rows != lines:
        return None  # blank lines were skipped: which row is which line is unknown here
    return pa.table({"origin_line": pa.array(np.arange(1, lines + 1, dtype=np.int64)), "f": table.column("f")})


def normalize(con, records, origin_file: str, cfg: LoadConfig):
    """Run sql/normalize_records.sql over raw records (origin_line, raw, decode_error) or parsed
    ones (origin_line, f; see read_parsed_records); returns (good rows, quarantine) as Arrow.

    Good rows: sample_id (minted from cfg.name, origin_file and origin_line), messages,
    origin_file, origin_line and the kept fields, in input order."""
    import pyarrow.compute as pc

    parsed = "f" in records.column_names
    con.register("_records", records)
    out = con.sql(
        normalize_sql(cfg, parsed=parsed),
        params={"origin_file": origin_file, "step": cfg.name, "shape": cfg.shape,
                "prompt_name": cfg.prompt_field, "response_name": cfg.response_field,
                "system_name": _system_key(cfg),
                **({} if parsed else {"structure": json.dumps(structure(cfg))})},
    ).to_arrow_table()
    con.unregister("_records")
    reasons = out.column("reason")
    if reasons.null_count == out.num_rows:  # a clean chunk: no copy of the rows
        return out.drop_columns(["reason", "raw"]), _quarantine_of(out.slice(0, 0))
    bad_mask = pc.is_valid(reasons)
    good = out.filter(pc.invert(bad_mask)).drop_columns(["reason", "raw"])
    return good, _quarantine_of(out.filter(bad_mask))


def _quarantine_of(bad):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.table({
        "file": bad.column("origin_file"),
        "line": bad.column("origin_line"),
        "reason": bad.column("reason"),
        "raw": pc.utf8_slice_codeunits(bad.column("raw"), 0, 2000),
    })


@register("load", LoadConfig)
def run(cfg: LoadConfig, inputs, ctx: Context):
    import duckdb

    full = ctx.resolve(cfg.path)
    files = list_files(full)
    if not files:
        raise BadInput(f"step {cfg.name}: path {cfg.path} matches no file (looked for {full})")
    con = duckdb.connect()
    total = bad_total = 0
    remaining = cfg.limit  # records still to read, over all files
    for path in files:
        if remaining == 0:
            break
        fmt = format_of(path, cfg.format)
        origin = os.path.relpath(path, ctx.pipeline_dir)
        records = read_parsed_records(path, cfg, remaining) if fmt == "jsonl" else None
        if records is None:
            records = read_raw_records(path, fmt, remaining, encoding=cfg.encoding, delimiter=cfg.delimiter)
        if remaining is not None:
            remaining -= records.num_rows
        robust = fmt != "jsonl"  # JSONL may have come through a clean-file fast path
        for start in range(0, records.num_rows, cfg.chunk_size):
            part = records.slice(start, cfg.chunk_size)
            key = f"{origin}:{start}"
            # sample ids are minted in the query: mint(cfg.name, origin_file, origin_line)
            rows, quarantine = normalize(con, part, origin, cfg)
            if quarantine.num_rows and not robust:
                # a bad row, or one the fast path cannot vouch for ('recheck'): quarantine records
                # what the line-by-line reader gives (the same lines)
                records, robust = read_raw_records(path, fmt, None, fast=False), True
                part = records.slice(start, cfg.chunk_size)
                rows, quarantine = normalize(con, part, origin, cfg)
            total += part.num_rows
            bad_total += quarantine.num_rows
            if key in ctx.done_keys:
                continue  # committed by an earlier run: only its bad-row count was needed
            ctx.progress(part.num_rows)
            yield Chunk(key=key, rows=rows, quarantine=quarantine, rows_in=part.num_rows)
    con.close()
    if total and bad_total / total > cfg.max_bad_fraction:
        raise BadInput(
            f"step {cfg.name}: {bad_total} of {total} input rows are malformed ({bad_total / total:.1%}), over "
            f"max_bad_fraction={cfg.max_bad_fraction}. They are in quarantine with file, line and reason: "
            f"datamix sql \"SELECT file, line, reason FROM dm.quarantine WHERE step = {literal(cfg.name)}\". "
            "Fix those rows, or raise max_bad_fraction to accept them."
        )

