"""Data files as raw records: JSONL, JSON, Parquet and CSV read into (origin_line, raw JSON text,
decode_error) Arrow tables, in file order, every record kept or named with why it cannot be read.

The load step normalises these records to chats (steps/load.py); dedup and evaluate read
reference and set files through the same functions.
"""

from __future__ import annotations

import codecs
import glob
import json
import os

from datamix.errors import BadInput

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


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
