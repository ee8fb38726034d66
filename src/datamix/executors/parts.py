"""A `batch` step's output as Parquet parts in the store's folder, registered in the store.

A worker runs one slice of the step's input (datamix.loop.run_batch, the same call the
local loop makes) and writes what it returned beside the store:

    outputs/<step>/parts/part-rows-<start>-<end>.parquet        the step's rows (no parent_ids)
    outputs/<step>/parts/edges-rows-<start>-<end>.parquet       (sample_id, parent_id)
    outputs/<step>/parts/decisions-rows-<start>-<end>.parquet   what a filter decided
    outputs/<step>/parts/quarantine-rows-<start>-<end>.parquet

Each file is written under a temporary name and renamed into place, so a reader never sees
half a file, and a slice run twice (its worker died, the run was resumed) writes the same
bytes under the same name: nothing is duplicated. The driver then registers the parts of a
task in one transaction (`register`): the edges, decisions and quarantine go into dm.edges,
dm.decisions and dm.quarantine, each part's chunk key into dm.chunks; the step's view over
its committed row parts, in slice order, is redefined now and then and when the step ends (a
definition reads every part's footer). The rows themselves stay in the Parquet files: DuckDB
reads them in place, so SQL on the step's name, `show`, `lineage` and `status` work as
for a stored table. A part without its marker in dm.chunks is not in the view.

Ids are the step's own (minted from the step name and the rows' parents, datamix.ids), so a
slice gives the same ids wherever it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from datamix.store import Store, literal, quote

OFFSET, END = "__datamix_offset", "__datamix_end"  # the slice a batch is, carried as columns


@dataclasses.dataclass
class SliceJob:
    """What a worker needs to run any slice of one step: no store, no callables bound to it."""

    entry: Any  # steps.base.StepKind
    step: Any  # the step's config
    ctx: Any  # steps.base.Context with only plain fields (paths, seed, models)
    parts_dir: str


def slice_key(offset: int, end: int) -> str:
    return f"rows-{offset}-{end}"  # the local loop's key (datamix.loop.step_chunks)


def run_slices(batch, job: SliceJob):
    """Ray Data's map_batches function: one or more whole slices in, consecutive (the executor
    gives a task several: datamix.executors.ray), one row per slice out describing its files."""
    import pyarrow as pa

    from datamix import scratch

    records = []
    with scratch.cursor() as con:  # one cursor writes every file of the task's slices
        start = 0
        while start < batch.num_rows:
            offset, end = batch.column(OFFSET)[start].as_py(), batch.column(END)[start].as_py()
            records.append(_run_one(batch.slice(start, max(end - offset, 1)), job, con))
            start += max(end - offset, 1)
    return pa.Table.from_pylist(records, schema=_result_schema())


def _run_one(batch, job: SliceJob, con) -> dict:
    import pyarrow.compute as pc

    from datamix.errors import StepError
    from datamix.loop import run_batch

    offsets, ends = pc.min_max(batch.column(OFFSET)), pc.min_max(batch.column(END))
    offset, end = offsets["min"].as_py(), ends["min"].as_py()
    if offsets["max"].as_py() != offset or ends["max"].as_py() != end or batch.num_rows != end - offset:
        raise StepError(f"step {job.step.name!r}: the Ray executor got part of a slice (rows {offset}-{end}, "
                        f"{batch.num_rows} rows); its chunk keys would not match the local loop's")
    batch = batch.drop_columns([OFFSET, END])
    key = slice_key(offset, end)
    out = run_batch(job.entry, job.step, batch, job.ctx)
    if out.metrics is not None:
        raise StepError(f"step {job.step.name!r}: a batch step returned metrics, which only source steps record")
    record = {"key": key, "rows_in": out.rows_in if out.rows_in is not None else batch.num_rows,
              "rows_out": 0, "rows": None, "edges": None, "decisions": None, "quarantine": None,
              "files": json.dumps(list(out.files))}
    rows = _arrow(out.rows)
    if rows is not None:
        record["rows_out"] = rows.num_rows
        record["rows"], record["edges"] = _write_rows(job, key, rows, con)
    for name in ("decisions", "quarantine"):
        table = _arrow(getattr(out, name))
        if table is not None and table.num_rows:
            record[name] = _write(con, table, "SELECT * FROM _t", _path(job, name, key))
    return record


def _path(job: SliceJob, what: str, key: str) -> str:
    return os.path.join(job.parts_dir, f"{what}-{key}.parquet")


def _write_rows(job: SliceJob, key: str, rows, con) -> tuple[str, str | None]:
    """The rows' part and, for a step that mints new ids, its lineage edges."""
    has_parents = "parent_ids" in rows.schema.names
    if job.entry.keeps_ids and has_parents:
        from datamix.store import _check_keeps_ids, _one_parent_each

        _check_keeps_ids(job.step.name, rows, _one_parent_each(rows.column("parent_ids")))
    rows_file = _write(con, rows, "SELECT * EXCLUDE (parent_ids) FROM _t" if has_parents else "SELECT * FROM _t",
                       _path(job, "part", key))
    edges = None
    if has_parents and not job.entry.keeps_ids:
        # unnest: a row with several parents has an edge to each, one with none has no edge
        edges = _write(con, rows, "SELECT sample_id, unnest(parent_ids) AS parent_id FROM _t", _path(job, "edges", key))
    return rows_file, edges


def _write(con, table, select: str, path: str) -> str:
    """`select` over `table` (as _t) to a zstd Parquet file, written by DuckDB (`con`): the types
    it reads back are those the local path's CREATE TABLE from the same Arrow gives."""
    tmp = f"{path}.{os.getpid()}.tmp"
    con.register("_t", table)
    try:
        con.execute(f"COPY ({select}) TO ? (FORMAT PARQUET, COMPRESSION ZSTD)", [tmp])
    finally:
        con.unregister("_t")
    os.replace(tmp, path)  # atomic: a part is whole or absent
    return path


def _arrow(frame):
    if frame is None:
        return None
    return frame.to_arrow() if hasattr(frame, "to_arrow") else frame


def _result_schema():
    import pyarrow as pa

    text = pa.string()
    return pa.schema([("key", text), ("rows_in", pa.int64()), ("rows_out", pa.int64()), ("rows", text),
                      ("edges", text), ("decisions", text), ("quarantine", text), ("files", text)])


# ---- the driver's side ----------------------------------------------------------------------

def committed_parts(store: Store, step: str) -> dict[str, str]:
    """chunk key -> rows part of the parts the store has committed for `step`."""
    rows = store.con.execute("SELECT key, files FROM dm.chunks WHERE step = ?", [step]).fetchall()
    parts = {}
    for key, files in rows:
        for f in json.loads(files or "[]"):
            if os.path.basename(f) == f"part-{key}.parquet":
                parts[key] = f
    return parts


def register(store: Store, step: str, new: list[dict], parent_step: str | None, parts: dict[str, str],
             view: bool = True) -> None:
    """The parts of one task (`new`, one record per slice, as run_slices returns them): their
    markers, edges, decisions and quarantine, and (with `view`) the step's view over its row
    parts (`parts`, updated here), in one transaction: a crash leaves them wholly in or wholly
    out. Defining the view reads every part's footer, so a caller registering many parts
    defines it now and then and once at the end (see datamix.executors.ray)."""
    con = store.con
    kinds = {name: [p[name] for p in new if p[name]] for name in ("rows", "edges", "decisions", "quarantine")}
    with store.transaction():
        # one statement per kind for all of a task's files: a transaction and its statements
        # cost the driver ~7 ms a part, which two workers' light slices made a third of its work
        if kinds["edges"] and parent_step is not None:
            con.execute("INSERT INTO dm.edges SELECT ?, sample_id, ?, parent_id FROM read_parquet(?)",
                        [step, parent_step, kinds["edges"]])
        if kinds["decisions"]:
            con.execute("INSERT INTO dm.decisions SELECT ?, sample_id, kept, reason, score, related_id "
                        "FROM read_parquet(?)", [step, kinds["decisions"]])
        if kinds["quarantine"]:
            con.execute("INSERT INTO dm.quarantine SELECT ?, file, line, reason, raw FROM read_parquet(?)",
                        [step, kinds["quarantine"]])
        con.executemany("INSERT INTO dm.chunks VALUES (?, ?, ?, ?, ?, now())",
                        [[step, p["key"], p["rows_in"], p["rows_out"],
                          json.dumps(json.loads(p["files"] or "[]") + ([p["rows"]] if p["rows"] else []))]
                         for p in new])
        con.execute("UPDATE dm.steps SET rows_in = rows_in + ?, rows_out = rows_out + ? WHERE name = ?",
                    [sum(p["rows_in"] for p in new), sum(p["rows_out"] for p in new), step])
        if kinds["rows"] and view:
            define_view(store, step, {**parts, **{p["key"]: p["rows"] for p in new if p["rows"]}})
    for p in new:
        if p["rows"]:  # committed: the view now holds it
            parts[p["key"]] = p["rows"]
    for name in ("edges", "decisions", "quarantine"):  # copied into the store: not needed any more
        for path in kinds[name]:
            if os.path.exists(path):
                os.remove(path)


def define_view(store: Store, step: str, parts: dict[str, str]) -> None:
    """The step's output: its row parts read in place, in slice order (the local table's order)."""
    ordered = [parts[k] for k in sorted(parts, key=lambda k: int(k.split("-")[1]))]
    # a view's text holds no parameters: the paths go in as literals (see store.literal)
    files = ", ".join(literal(os.path.abspath(p)) for p in ordered)
    store.con.execute(f"CREATE OR REPLACE VIEW {quote(step)} AS SELECT * FROM read_parquet([{files}], "
                      "union_by_name = true)")
