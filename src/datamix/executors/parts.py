"""A `batch` step's output as Parquet parts in the store's folder, registered in the store.

A worker runs one slice of the step's input (datamix.loop.run_batch, the same call the
local loop makes) and writes what it returned beside the store:

    outputs/<step>/parts/part-rows-<start>-<end>.parquet        the step's rows (no parent_ids)
    outputs/<step>/parts/edges-rows-<start>-<end>.parquet       (sample_id, parent_id)
    outputs/<step>/parts/decisions-rows-<start>-<end>.parquet   what a filter decided
    outputs/<step>/parts/quarantine-rows-<start>-<end>.parquet

Under the same executor, the steps whose rows the driver commits (a load, a generate) write them
as parts too, `outputs/<step>/parts/part-<n>.parquet` for the n-th chunk committed (their chunk
keys, such as a file's path, make no file names), so the steps after them on Ray read their
rows in their own tasks, not through the driver (Store.commit_chunk, runner).

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
import re
from typing import Any

from datamix.store import Store, literal, quote, write_parquet

OFFSET, END = "__datamix_offset", "__datamix_end"  # the slice a batch is, carried as columns


@dataclasses.dataclass
class SliceJob:
    """What a worker needs to run any slice of one step: no store, no callables bound to it."""

    entry: Any  # steps.base.StepKind
    step: Any  # the step's config
    ctx: Any  # steps.base.Context with only plain fields (paths, seed, models)
    parts_dir: str
    read: "PartsRead | None" = None  # how to read the input itself, when it is Parquet parts (run_planned)
    threads: int = 0  # DuckDB's threads in the task (the CPUs Ray reserved for it); 0: as it is


@dataclasses.dataclass
class PartsRead:
    """How a worker reads its slices of an input that is Parquet parts (a step that ran on Ray,
    or a pass-through chain over one): the rows the driver would read, without the driver."""

    columns: str | None  # the step's select list over its input
    schema: Any  # pa.Schema of the driver's read: each task's read is cast to it


@dataclasses.dataclass
class PartFile:
    """A rows part of a step's input: its path, the rows it gives the input, and the numbers
    (file row numbers, ascending) of its rows a pass-through chain dropped, which it leaves out."""

    path: str
    rows: int
    dropped: list[int] = dataclasses.field(default_factory=list)

    def file_row(self, row: int) -> int:
        """The file row number of the input's `row`-th row from this file (from 0)."""
        import bisect

        # the answer is row + j for the j dropped rows before it: the first j whose dropped row
        # lies past row + j (dropped[j] - j never decreases, so it is a bisection)
        return row + bisect.bisect_right([d - j for j, d in enumerate(self.dropped)], row)


def slice_key(offset: int, end: int) -> str:
    return f"rows-{offset}-{end}"  # the local loop's key (datamix.loop.step_chunks)


def run_slices(batch, job: SliceJob):
    """Ray Data's map_batches function: one or more whole slices in, consecutive (the executor
    gives a task several: datamix.executors.ray), one row per slice out describing its files."""
    import pyarrow as pa

    from datamix import scratch

    import pyarrow.compute as pc

    from datamix.errors import StepError

    records = []
    _limit_threads(job)
    with scratch.cursor() as con:  # one cursor writes every file of the task's slices
        start = 0
        while start < batch.num_rows:
            offset, end = batch.column(OFFSET)[start].as_py(), batch.column(END)[start].as_py()
            one = batch.slice(start, max(end - offset, 1))
            offsets, ends = pc.min_max(one.column(OFFSET)), pc.min_max(one.column(END))
            if (offsets["max"].as_py(), ends["min"].as_py(), ends["max"].as_py(), one.num_rows) != (offset, end, end,
                                                                                                      end - offset):
                raise StepError(f"step {job.step.name!r}: the Ray executor got part of a slice (rows {offset}-{end}, "
                                f"{one.num_rows} rows); its chunk keys would not match the local loop's")
            records.append(_run_one(one.drop_columns([OFFSET, END]), offset, end, job, con))
            start += max(end - offset, 1)
    return pa.Table.from_pylist(records, schema=_result_schema())


def run_planned(batch, job: SliceJob):
    """Ray Data's map_batches function for an input the workers read themselves (`job.read`):
    a row per task (from `plan_tasks`) naming the part files that hold its slices, one row per
    slice out, as run_slices gives. The driver reads none of the rows."""
    import pyarrow as pa

    from datamix import scratch
    from datamix.errors import StepError

    records = []
    _limit_threads(job)
    with scratch.cursor() as con:
        for task in batch.to_pylist():
            rows = read_task(con, task, job.read)
            first = task["offsets"][0]
            if rows.num_rows != task["ends"][-1] - first:
                raise StepError(f"step {job.step.name!r}: its input's parts hold other rows than the store counts "
                                f"(rows {first}-{task['ends'][-1]} asked of {task['files']}, {rows.num_rows} read); "
                                "rerun the input step")
            for offset, end in zip(task["offsets"], task["ends"]):
                records.append(_run_one(_compact(rows.slice(offset - first, end - offset)), offset, end, job, con))
    return pa.Table.from_pylist(records, schema=_result_schema())


def _compact(table):
    """`table` in buffers of its own: a slice still points into the whole read's buffers, and
    Polars copies those whole (pl.from_arrow of 10,000 chats sliced out of 120,000: 10 ms, of
    the same rows on their own: 1 ms; compacting them costs ~3 ms)."""
    import pyarrow as pa

    return pa.Table.from_arrays([pa.concat_arrays(column.chunks) for column in table.columns], schema=table.schema)


def _limit_threads(job: SliceJob) -> None:
    """DuckDB's threads in this worker to the task's CPUs (datamix.executors.ray.task_threads)."""
    from datamix import scratch

    if job.threads:
        scratch.set_threads(job.threads)


def read_task(con, task: dict, read: PartsRead):
    """A planned task's input rows (a row of plan_tasks' table): of each of its files the rows
    between its file row numbers lo and hi, less those a pass-through chain dropped (skip), in
    order, with the driver's columns and types. Only the row groups holding them are read."""
    import pyarrow as pa

    select = read.columns or "* EXCLUDE (file_row_number)"
    tables = []
    for path, lo, hi, skip in zip(task["files"], task["lo"], task["hi"], task["skip"]):
        # the rows skipped in the scan, not in Arrow afterwards (a filter there copies every chat)
        skipping = " AND file_row_number NOT IN (SELECT unnest(?::BIGINT[]))" if skip else ""
        table = con.sql(f"SELECT {select} FROM read_parquet(?, file_row_number = true) WHERE file_row_number >= ? "
                        f"AND file_row_number < ?{skipping}", params=[path, lo, hi, *([skip] if skip else [])]
                        ).to_arrow_table()
        # a part may lack a column (or type it otherwise) that the view's union over all of them
        # has: the driver's types win, a missing column is nulls
        tables.append(pa.Table.from_arrays(
            [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
             for f in read.schema], schema=read.schema))
    return pa.concat_tables(tables) if tables else read.schema.empty_table()


def _run_one(batch, offset: int, end: int, job: SliceJob, con) -> dict:
    from datamix.errors import StepError
    from datamix.loop import run_batch

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
    """`select` over `table` (as _t) to a Parquet part (store.write_parquet: whole or absent)."""
    con.register("_t", table)
    try:
        return write_parquet(con, select, path)
    finally:
        con.unregister("_t")


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
    """chunk key -> rows part of the parts the store has committed for `step`, in the view's order."""
    from datamix.outputs import output_folder

    rows = store.con.execute("SELECT key, files FROM dm.chunks WHERE step = ?", [step]).fetchall()
    own = os.path.join(output_folder(store, step), "parts")  # not a file of the step's own named alike
    parts = {}
    for key, files in rows:
        for f in json.loads(files or "[]"):
            name = os.path.basename(f)
            if name == f"part-{key}.parquet" or (_DRIVER_PART.fullmatch(name) and os.path.dirname(f) == own):
                parts[key] = f
    return dict(sorted(parts.items(), key=lambda item: part_order(item[1])))


_DRIVER_PART = re.compile(r"part-(\d+)\.parquet")  # the n-th chunk the driver committed (driver_part)


def driver_part(parts_dir: str, n: int) -> str:
    """Where the driver writes the rows of a step's n-th committed chunk (Store.commit_chunk)."""
    return os.path.join(parts_dir, f"part-{n}.parquet")


def part_order(path: str) -> int:
    """Where a rows part goes in its step's view: a slice's first input row (part-rows-<start>-
    <end>, the local loop's order) or the number of a chunk the driver committed (part-<n>, the
    order the local table was filled in)."""
    name = os.path.basename(path)
    driver = _DRIVER_PART.fullmatch(name)
    return int(driver.group(1)) if driver else int(name.split("-")[2])


def register(store: Store, step: str, new: list[dict], parent_step: str | None, parts: dict[str, str],
             view: bool = True) -> None:
    """The parts of one task (`new`, one record per slice, as run_slices returns them): their
    markers, edges, decisions and quarantine, and (with `view`) the step's view over its row
    parts (`parts`, updated here), in one transaction: a crash leaves them wholly in or wholly
    out. Defining the view reads every part's footer, so a caller registering many parts
    defines it now and then and once at the end (see datamix.executors.ray)."""
    import pyarrow as pa

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
        # the markers in one statement too: executemany ran one insert a slice (~1 ms each)
        markers = pa.table({"key": [p["key"] for p in new], "rows_in": [p["rows_in"] for p in new],
                            "rows_out": [p["rows_out"] for p in new],
                            "files": [json.dumps(json.loads(p["files"] or "[]") + ([p["rows"]] if p["rows"] else []))
                                      for p in new]})
        con.register("_markers", markers)
        try:
            con.execute("INSERT INTO dm.chunks SELECT ?, key, rows_in, rows_out, files, now() FROM _markers", [step])
        finally:
            con.unregister("_markers")
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


def parts_input(store: Store, name: str, columns: str | None) -> tuple[PartsRead, list[PartFile]] | None:
    """When step `name`'s output is Parquet parts (or a pass-through chain over them): how a
    worker reads it (PartsRead) and its files in order, each with the rows it gives the input
    (the part's rows less those the chain dropped, whose file row numbers it names). None when
    its rows are in a stored table, which only the driver can read (DuckDB's file has one
    writer)."""
    from datamix.outputs import _dropped, _in_parquet, stored_ancestor

    stored, deciders = stored_ancestor(store, name)
    if not _in_parquet(store, stored):
        return None
    parts = committed_parts(store, stored)  # in the view's order
    counts = dict(store.con.execute("SELECT key, rows_out FROM dm.chunks WHERE step = ?", [stored]).fetchall())
    files = [PartFile(os.path.abspath(f), counts[k]) for k, f in parts.items()]
    if deciders and files:
        # where in its file each dropped row is: a task reads a range of file rows and leaves
        # these out, so no task needs the ids of the whole input's drops
        dropped_sql, params = _dropped(deciders)
        where = dict(store.con.execute(
            f"SELECT filename, list(file_row_number ORDER BY file_row_number) FROM read_parquet(?, filename = true, "
            f"file_row_number = true) WHERE sample_id IN ({dropped_sql}) GROUP BY filename",
            [[f.path for f in files], *params]).fetchall())
        for f in files:
            f.dropped = where.get(f.path, [])
            f.rows -= len(f.dropped)
    if sum(f.rows for f in files) != store.step_row(name)["rows_out"]:
        return None  # parts and counts disagree: the driver reads the view, as it always could
    schema = store.con.sql(f"SELECT {columns or '*'} FROM {quote(stored)} LIMIT 0").to_arrow_table().schema
    return PartsRead(columns, schema), files


def plan_tasks(files: list[PartFile], groups) -> list:
    """One single-row Arrow table per group of slices ((offset, end) of the input's rows), for
    run_planned: the slices, and the part files that hold their rows (`files`, in order), each
    with the range of file row numbers [lo, hi) to read and the dropped ones in it to skip."""
    import bisect
    import itertools

    import pyarrow as pa

    starts = [0, *itertools.accumulate(f.rows for f in files)]
    tasks = []
    for group in groups:
        low, high = group[0][0], group[-1][1]
        paths, lo, hi, skip = [], [], [], []
        # the files starting at or before `low` (the last of them) up to those starting before `high`
        for i in range(bisect.bisect_right(starts, low) - 1, bisect.bisect_left(starts, high)):
            f, begin = files[i], starts[i]
            first, last = max(low, begin) - begin, min(high, starts[i + 1]) - begin  # its input rows needed
            if last <= first:
                continue  # a part with no rows for the input
            start, stop = f.file_row(first), f.file_row(last - 1) + 1
            paths.append(f.path)
            lo.append(start)
            hi.append(stop)
            skip.append(f.dropped[bisect.bisect_left(f.dropped, start):bisect.bisect_left(f.dropped, stop)])
        tasks.append(pa.table({"files": [paths], "lo": [lo], "hi": [hi],
                               "skip": pa.array([skip], pa.list_(pa.list_(pa.int64()))),
                               "offsets": [[o for o, _ in group]], "ends": [[e for _, e in group]]}))
    return tasks


def define_view(store: Store, step: str, parts: dict[str, str]) -> None:
    """The step's output: its row parts read in place, in the local table's order (part_order)."""
    ordered = sorted(parts.values(), key=part_order)
    # a view's text holds no parameters: the paths go in as literals (see store.literal)
    files = ", ".join(literal(os.path.abspath(p)) for p in ordered)
    store.con.execute(f"CREATE OR REPLACE VIEW {quote(step)} AS SELECT * FROM read_parquet([{files}], "
                      "union_by_name = true)")
