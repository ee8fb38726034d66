"""The DuckDB store: open and lock, write committed chunks, read step outputs, lineage.

One DuckDB file. A step's output is a table (or, for pass-through steps, a view)
named after the step; bookkeeping lives in schema `dm` (see sql/schema.sql).
Only the runner writes; CLI queries open the file read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
# Order matters: views and macros refer to the tables.
SQL_FILES = ("schema.sql", "funnel.sql", "lineage.sql", "composition.sql", "clusters.sql", "calls.sql",
             "metrics.sql", "forgetting.sql", "judge_failures.sql")


class StoreError(Exception):
    """The store cannot be opened or used; the message says why and what to do."""


class WriteFailed(Exception):
    """A write the store ran behind the runner (Store.writing_behind) failed: `step` wrote it,
    `error` is what DuckDB or the file system raised. Raised at the runner's next use of the store."""

    def __init__(self, step: str, what: str, error: BaseException):
        super().__init__(f"step {step}: {what} failed: {type(error).__name__}: {error}")
        self.step, self.what, self.error = step, what, error


class StoreDamaged(Exception):
    """The store file is not a readable DuckDB database (corrupt, truncated, overwritten).
    Not a StoreError: commands let it through to the CLI's one handler (exit 2)."""


# Stores this process opened, latest last: an error DuckDB raises later (a corrupt block met
# by a query) does not always name the file, and the message must say which store it is.
OPENED: list[str] = []

# DuckDB's words for a file it cannot read as a database; a truncated file shows up as a short
# read of the store's own path (a short read of an input file is not the store's problem)
_DAMAGED = ("corrupt database file", "not a valid duckdb database file", "checksum", "database file is corrupted")
_SHORT_READ = ("could not read enough bytes from file", "failed to read")
_DISK_FULL = ("no space left on device", "disk quota exceeded")


def damaged(path: str, detail: str) -> StoreDamaged:
    detail = detail.splitlines()[0] if detail else "unreadable"
    return StoreDamaged(
        f"the store {path} is damaged and cannot be read ({detail}). Nothing in it can be trusted. "
        f"Restore it from a copy if you have one; otherwise move it aside (mv {path} {path}.damaged) and run "
        "the pipeline again to rebuild it. Files it exported stay where they are, and other stores are not affected."
    )


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def explain(error: "BaseException | str", path: str | None = None) -> tuple[str, int] | None:
    """(message, exit status) when `error` (or anything in its chain) is a damaged store (2) or a
    full disk (1); None for anything else. `path`: the store, else the last one opened."""
    import errno

    path = path or (OPENED[-1] if OPENED else None)
    errors = [error] if isinstance(error, str) else list(_chain(error))
    for e in errors:
        text = e if isinstance(e, str) else str(e)
        low = text.lower()
        if isinstance(e, StoreDamaged):
            return str(e), 2
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or any(m in low for m in _DISK_FULL):
            named = None if isinstance(e, OSError) else re.search(r'file "([^"]+)"', text)
            where = getattr(e, "filename", None) or (named and named.group(1)) or path or "the output"
            return (f"the disk is full: writing {where} failed ({text.splitlines()[0]}). Work committed before "
                    f"this point is kept in the store{f' {path}' if path else ''} and a rerun resumes from it: "
                    f"free some space (df -h {os.path.dirname(os.path.abspath(where))}) and run the same command "
                    "again.", 1)
        if path is None:
            continue
        named = re.search(r'file "([^"]+)"', text)
        is_store = named is None or os.path.abspath(named.group(1)) in (
            os.path.abspath(path), os.path.abspath(path) + ".wal")
        if is_store and (any(m in low for m in _DAMAGED)
                         or (named is not None and any(m in low for m in _SHORT_READ))):
            return str(damaged(path, text)), 2
    return None


def sql_text(name: str) -> str:
    path = SQL_DIR / name
    if not path.exists():
        raise StoreError(f"missing SQL file {path}: is datamix installed from its source tree (pip install -e .)?")
    return path.read_text()


def first(cursor):
    """The first row of a result, or None. DuckDB 2 keeps an execute() result open
    until every row is fetched, so fetch them all (callers use LIMIT 1)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """`value` as a SQL string literal, for the few places DuckDB takes no parameter (a view's
    definition is stored as text and cannot hold one). Everywhere else values are bound
    parameters. DuckDB's plain '...' strings have one escape, the doubled quote (a backslash is
    an ordinary character), so doubling quotes is complete; a NUL byte could end the text early
    in C code, so it is refused."""
    if "\0" in value:
        raise ValueError(f"{value!r}: a NUL character cannot be stored in SQL text")
    return "'" + value.replace("'", "''") + "'"


def _holder_of_lock(message: str) -> str:
    """Turn DuckDB's lock-conflict message into 'PID n (command line)'."""
    m = re.search(r"PID (\d+)", message)
    if not m:
        return "another process"
    pid = m.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return f"process {pid}" + (f" ({cmd})" if cmd else "")


def connect(path: str, read_only: bool = False) -> "duckdb.DuckDBPyConnection":
    import duckdb

    if read_only and not os.path.exists(path):
        raise StoreError(f"no store at {path}: run the pipeline first (datamix run PIPELINE.yaml)")
    if not read_only:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    OPENED.append(path)
    try:
        if read_only:
            return duckdb.connect(path, read_only=True)
        return _attach(duckdb, path)
    except duckdb.Error as e:
        problem = explain(e, path)
        if problem and problem[1] == 2:
            raise damaged(path, str(e)) from None
        if problem:
            raise StoreError(problem[0]) from None
        if not isinstance(e, duckdb.IOException):
            raise
        if "lock" in str(e).lower():
            holder = _holder_of_lock(str(e))
            if read_only:
                raise StoreError(
                    f"the store {path} is being written by {holder}. DuckDB lets no other process open a file "
                    "while one writes it, so it cannot be read right now; wait for that run to finish "
                    "(`datamix status` with the same pipeline or --store shows how far it is) and query again."
                ) from None
            raise StoreError(
                f"the store {path} is in use by {holder}; only one `datamix run` can write a store at a time. "
                "Wait for it to finish, stop it, or pass --store to use another file."
            ) from None
        raise StoreError(f"cannot open the store {path}: {e}") from None


# Rows per row group of the tables a run writes (DuckDB's default: 122,880). DuckDB writes
# and compresses whole row groups as an insert fills them, on several threads; an insert of
# fewer rows than one goes through the write-ahead log and is compressed again by the next
# checkpoint, on one. A load of 100k texts of 200 words (136 MB) took 1.32 s from insert to
# checkpoint at the default, 0.46 s at 16,384 rows in batches of one row group each
# (`_row_group_batches`); the same file size, scans as fast.
ROW_GROUP_SIZE = 16_384


def _attach(duckdb, path: str):
    """A read-write connection to the store file: the file attached with the run's row-group
    size (an ATTACH option only, not kept in the file) and made the default catalog, under the
    name `duckdb.connect(path)` would give it."""
    con = duckdb.connect()
    name = os.path.splitext(os.path.basename(path))[0]
    if name.lower() in ("", "memory", "main", "temp", "system"):  # taken or reserved catalog names
        name = "store"
    try:
        con.execute(f"ATTACH ? AS {quote(name)} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})", [path])
        con.execute(f"USE {quote(name)}")
    except BaseException:
        con.close()
        raise
    return con


class Store:
    """Read-write handle used by the runner. Every write of a chunk is one transaction."""

    def __init__(self, path: str, read_only: bool = False):
        self.path = path
        self.read_only = read_only
        self._con = connect(path, read_only=read_only)
        self._behind: _WriteBehind | None = None
        if not read_only:
            # Text columns compressed with zstd, not DuckDB's default pick (DICT_FSST): on 100k
            # texts of 200 words (136 MB) its checkpoint took 1.35 s for a 77 MB file, zstd's
            # 0.80 s for 52 MB (alpaca_eval's answers: 4 MB against 19 MB). Reads cost more
            # (0.22 s against 0.12 s for those 136 MB), once per step that reads the text.
            # Other types keep DuckDB's choice (this setting only forces methods a type has).
            self.con.execute("SET force_compression = 'zstd'")
            for name in SQL_FILES:
                self.con.execute(sql_text(name))

    @property
    def con(self) -> "duckdb.DuckDBPyConnection":
        """The store's connection. While writes run behind (writing_behind), taking it waits for
        them, so every read sees and every write follows what the runner wrote before."""
        behind = self._behind
        if behind is not None and not behind.on_its_thread():
            behind.wait()
        return self._con

    @contextlib.contextmanager
    def writing_behind(self) -> Iterator[None]:
        """Writes given to `later` run in order on one thread of their own while the caller goes
        on: the runner hands a step's output to the next step in memory while its commit (DuckDB
        compressing the rows) runs. Leaving waits for the writes and raises a failed one's
        WriteFailed."""
        self._behind = _WriteBehind()
        try:
            yield
        except BaseException:
            # the exception in flight is what the caller reports (an interrupt, a bug): the writes
            # before it still run; one that failed leaves its step partial, resumed by the next run
            behind, self._behind = self._behind, None
            with contextlib.suppress(WriteFailed):
                behind.close()
            raise
        behind, self._behind = self._behind, None
        behind.close()

    def later(self, step: str, what: str, write: Callable[[], Any]) -> None:
        """Run `write` (which uses the store) after every write given before it: on the writer's
        thread while writing behind (waiting while PENDING_WRITES are queued), at once otherwise.
        A failure stops the writes after it."""
        if self._behind is None or self._behind.on_its_thread():  # a write giving a write: in its turn
            write()
        else:
            self._behind.put(step, what, write)

    def flush(self) -> None:
        """Wait for the writes running behind; raise a failed one's WriteFailed."""
        if self._behind is not None:
            self._behind.wait()

    def limit_memory(self, limit: int | None, temp_directory: str | None) -> None:
        """Under a run's memory budget DuckDB gets a quarter of it (the rest is the steps':
        out-of-core dedup plans its share from what the process holds when it starts,
        datamix.dedup.budget) and spills to the run's temp directory."""
        if limit:
            self.con.execute("SET memory_limit = ?", [f"{max(limit // 4, 64 * 2**20) // 2**20}MB"])
        if temp_directory:
            self.con.execute("SET temp_directory = ?", [temp_directory])

    def cursor(self):
        """A second connection to the store, for reading while the runner commits on `con`.
        A DuckDB cursor starts in the instance's default catalog (in-memory, for a writer that
        attached the file: `_attach`), so it is pointed at the store's."""
        cursor = self.con.cursor()
        # fetchall, not fetchone: a result left unfinished on `con` blocks its next statement
        catalog = self.con.execute("SELECT current_database()").fetchall()[0][0]
        cursor.execute(f"USE {quote(catalog)}")
        return cursor

    def close(self) -> None:
        self.con.close()

    # ---- bookkeeping -------------------------------------------------------

    def step_row(self, name: str) -> dict[str, Any] | None:
        if not self.has_table("dm", "steps"):
            return None
        cur = self.con.execute("SELECT * FROM dm.steps WHERE name = ?", [name])
        row = first(cur)
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row))

    def steps(self) -> list[dict[str, Any]]:
        if not self.has_table("dm", "steps"):
            return []
        cur = self.con.execute("SELECT * FROM dm.steps ORDER BY started_at NULLS LAST, name")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def has_table(self, schema: str, name: str) -> bool:
        """True when schema.name exists as a table or a view."""
        return self.con.execute(
            "SELECT (SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?)"
            " + (SELECT count(*) FROM duckdb_views() WHERE schema_name = ? AND view_name = ?)",
            [schema, name, schema, name],
        ).fetchall()[0][0] > 0

    def output_exists(self, name: str) -> bool:
        return self.has_table("main", name)

    def done_keys(self, step: str) -> frozenset[str]:
        return frozenset(r[0] for r in self.con.execute("SELECT key FROM dm.chunks WHERE step = ?", [step]).fetchall())

    def recorded_files(self, step: str) -> list[str]:
        """Files a sink step recorded writing (exports, shards, models), in chunk order."""
        rows = self.con.execute("SELECT files FROM dm.chunks WHERE step = ? ORDER BY key", [step]).fetchall()
        return [f for (files,) in rows for f in json.loads(files or "[]")]

    def missing_files(self, step: str) -> list[str]:
        """Files a sink step recorded writing that are no longer there."""
        return [f for f in self.recorded_files(step) if not os.path.exists(f)]

    def reset_step(self, name: str) -> None:
        """Forget everything a step wrote (its fingerprint changed)."""
        kind = first(self.con.execute(
            "SELECT 'VIEW' FROM duckdb_views() WHERE schema_name = 'main' AND view_name = ? "
            "UNION ALL SELECT 'TABLE' FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = ?",
            [name, name]))
        with self.transaction():
            if kind:
                self.con.execute(f"DROP {kind[0]} {quote(name)}")
            for table in ("chunks", "edges", "decisions", "quarantine", "metrics"):
                self.con.execute(f"DELETE FROM dm.{table} WHERE step = ?", [name])
            self.con.execute("DELETE FROM dm.steps WHERE name = ?", [name])

    def begin_step(self, name: str, kind: str, fingerprint: str, config: dict, parents: dict,
                   passthrough: bool, run_id: str, keeps_ids: bool = False) -> None:
        row = self.step_row(name)
        if row is None:
            self.con.execute(
                "INSERT INTO dm.steps (name, kind, fingerprint, config, parents, passthrough, keeps_ids, state, "
                "started_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, 'partial', now(), ?)",
                [name, kind, fingerprint, json.dumps(config, default=str), json.dumps(parents), passthrough,
                 keeps_ids, run_id],
            )
        else:
            self.con.execute(
                "UPDATE dm.steps SET state = 'partial', error = NULL, run_id = ?, started_at = coalesce(started_at, now()) "
                "WHERE name = ?",
                [run_id, name],
            )

    def set_step_code(self, name: str, code: dict[str, str]) -> None:
        """{file: hash} of the code the step runs (datamix.runner.step_code), to name what changed."""
        self.con.execute("UPDATE dm.steps SET code = ? WHERE name = ?", [json.dumps(code, sort_keys=True), name])

    def finish_step(self, name: str, state: str, seconds: float, error: str | None = None) -> None:
        self.con.execute(
            "UPDATE dm.steps SET state = ?, seconds = seconds + ?, finished_at = now(), error = ? WHERE name = ?",
            [state, seconds, error, name],
        )

    def start_run(self, run_id: str, pipeline: str, spec_path: str) -> None:
        self.con.execute(
            "INSERT INTO dm.runs VALUES (?, ?, ?, now(), NULL, 'running', ?)", [run_id, pipeline, spec_path, os.getpid()]
        )

    def finish_run(self, run_id: str, status: str) -> None:
        self.con.execute("UPDATE dm.runs SET finished_at = now(), status = ? WHERE run_id = ?", [status, run_id])

    # ---- writing -----------------------------------------------------------

    def transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store.con.execute("BEGIN TRANSACTION")

            def __exit__(self, exc_type, exc, tb):
                store.con.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()

    def create_passthrough_view(self, name: str, stored: str, deciders: list[str] | None = None) -> None:
        """A pass-through step's output: the rows of `stored` (the first step up its chain whose rows
        are stored) minus those it or any pass-through step between dropped (`deciders`; default:
        the step alone, `stored` being its parent). One level over the stored table: a view over
        the parent's view made a chain of 199 filters re-walk every level on each read (3 s for
        a count at the end of it)."""
        # a view cannot hold a parameter: the step names go in as literals (see `literal`)
        steps = ", ".join(literal(s) for s in (deciders or [name]))
        self.con.execute(
            f"CREATE OR REPLACE VIEW {quote(name)} AS SELECT p.* FROM {quote(stored)} p "
            f"ANTI JOIN (SELECT sample_id FROM dm.decisions WHERE step IN ({steps}) "
            "AND NOT kept) d USING (sample_id)"
        )

    def commit_chunk(self, step: str, key: str, rows: "pa.Table | None", decisions: "pa.Table | None",
                     quarantine: "pa.Table | None", rows_in: int, files: list[str],
                     parent_step_of: dict[str, str] | str | None, keeps_ids: bool = False,
                     metrics: "pa.Table | None" = None, rows_file: str | None = None) -> int:
        """Write one chunk's rows, edges, decisions and quarantine plus its marker, atomically.

        parent_step_of: the parent step of every row (single input), or a map from the
        rows' `source` label to the step (several inputs), or None (a source step).
        keeps_ids: every row's parent_ids is [its own sample_id] (checked); no edges are
        written, the lineage walk follows the step's parent (see sql/lineage.sql).
        rows_file: write the rows to this Parquet part instead of the step's table (a step
        under the Ray executor, datamix.executors.parts); the marker records it.
        Returns the number of output rows written.
        """
        con = self.con
        n_out = 0
        has_parents = rows is not None and "parent_ids" in rows.schema.names
        single_parent = has_parents and _one_parent_each(rows.column("parent_ids"))
        if keeps_ids and has_parents:
            _check_keeps_ids(step, rows, single_parent)
        with self.transaction():
            if rows is not None:
                n_out = rows.num_rows
                con.register("_chunk_rows", _row_group_batches(rows))
                select = "SELECT * EXCLUDE (parent_ids) FROM _chunk_rows" if has_parents else "SELECT * FROM _chunk_rows"
                if rows_file is not None:
                    write_parquet(con, select, rows_file)
                    files = [*files, rows_file]
                elif not self.output_exists(step):
                    con.execute(f"CREATE TABLE {quote(step)} AS {select}")
                else:
                    con.execute(f"INSERT INTO {quote(step)} BY NAME {select}")
                if has_parents and parent_step_of is not None and not keeps_ids:
                    if isinstance(parent_step_of, str):
                        parent_expr, params = "?", [step, parent_step_of]
                    else:
                        # labels and steps are bound parameters: a label such as it's stays a value
                        parent_expr = "CASE " + "WHEN source = ? THEN ? " * len(parent_step_of) + "END"
                        params = [step, *(v for pair in parent_step_of.items() for v in pair)]
                    # one parent per row (mix, most steps): a list index, not an unnest (~20% cheaper)
                    parent_id = "parent_ids[1]" if single_parent else "unnest(parent_ids)"
                    con.execute(
                        f"INSERT INTO dm.edges SELECT ?, sample_id, {parent_expr}, {parent_id} FROM _chunk_rows",
                        params,
                    )
                con.unregister("_chunk_rows")
            if decisions is not None and decisions.num_rows:
                con.register("_chunk_decisions", decisions)
                con.execute(
                    "INSERT INTO dm.decisions SELECT ?, sample_id, kept, reason, score, related_id FROM _chunk_decisions",
                    [step],
                )
                con.unregister("_chunk_decisions")
            if metrics is not None and metrics.num_rows:  # an evaluate step's values (sql/metrics.sql)
                from datamix.eval import ROW_COLUMNS

                con.register("_chunk_metrics", metrics)
                con.execute(
                    f"INSERT INTO dm.metrics SELECT (SELECT run_id FROM dm.steps WHERE name = ?), ?, "
                    f"{', '.join(quote(c) for c in ROW_COLUMNS)}, now() FROM _chunk_metrics",
                    [step, step],
                )
                con.unregister("_chunk_metrics")
            if quarantine is not None and quarantine.num_rows:
                con.register("_chunk_quarantine", quarantine)
                con.execute("INSERT INTO dm.quarantine SELECT ?, file, line, reason, raw FROM _chunk_quarantine", [step])
                con.unregister("_chunk_quarantine")
            con.execute(
                "INSERT INTO dm.chunks VALUES (?, ?, ?, ?, ?, now())", [step, key, rows_in, n_out, json.dumps(files)]
            )
            con.execute(
                "UPDATE dm.steps SET rows_in = rows_in + ?, rows_out = rows_out + ? WHERE name = ?",
                [rows_in, n_out, step],
            )
        return n_out

    def set_rows_out(self, step: str, n: int) -> None:
        self.con.execute("UPDATE dm.steps SET rows_out = ? WHERE name = ?", [n, step])

    def record_calls(self, run_id: str, step: str, record: dict) -> None:
        """One row of dm.calls (see sql/calls.sql): written at once, outside any chunk's
        transaction, because a call is paid for whether or not its chunk commits."""
        cols = ("model", "cached", "prompts", "completions", "prompt_tokens", "completion_tokens", "latency_s",
                "retries", "failed", "price_input_per_m", "price_output_per_m")
        self.con.execute(
            f"INSERT INTO dm.calls (run_id, step, {', '.join(cols)}) VALUES (?, ?{', ?' * len(cols)})",
            [run_id, step, *(record.get(c) for c in cols)],
        )

    # ---- the response cache --------------------------------------------------

    def cache_get(self, keys: list[str]) -> dict[str, Any]:
        if not keys:
            return {}
        import pyarrow as pa

        self.con.register("_cache_keys", pa.table({"key": keys}))
        rows = self.con.execute("SELECT c.key, c.value, c.blob FROM dm.cache c JOIN _cache_keys USING (key)").fetchall()
        self.con.unregister("_cache_keys")
        return {k: (bytes(b) if b is not None else json.loads(v)) for k, v, b in rows}

    def cache_put(self, items: dict[str, Any]) -> None:
        if not items:
            return
        import pyarrow as pa

        binary = [isinstance(v, (bytes, bytearray)) for v in items.values()]
        table = pa.table({
            "key": list(items),
            "value": pa.array([None if b else json.dumps(v) for v, b in zip(items.values(), binary)], pa.string()),
            "blob": pa.array([bytes(v) if b else None for v, b in zip(items.values(), binary)], pa.binary()),
        })
        self.con.register("_cache_new", table)
        self.con.execute(
            "INSERT INTO dm.cache (key, value, blob) SELECT key, value, blob FROM _cache_new ON CONFLICT DO NOTHING"
        )
        self.con.unregister("_cache_new")

    # ---- reading -----------------------------------------------------------

    def read(self, step: str, columns: str | None = None) -> "pa.Table":
        return self.con.sql(f"SELECT {columns or '*'} FROM {quote(step)}").to_arrow_table()

    def count(self, step: str) -> int:
        return self.con.execute(f"SELECT count(*) FROM {quote(step)}").fetchall()[0][0]


# Writes given and not yet started, at most: a step that makes chunks faster than DuckDB commits
# them waits for the writer instead of holding every chunk not yet written in memory.
PENDING_WRITES = 4


class _WriteBehind:
    """One thread running the store's writes in the order given. After a failure the writes
    after it are dropped (each may depend on the ones before) and `wait` raises it, once."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue(maxsize=PENDING_WRITES)
        self._failure: WriteFailed | None = None
        self._thread = threading.Thread(target=self._work, name="datamix-store-writer", daemon=True)
        self._thread.start()

    def on_its_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def put(self, step: str, what: str, write: Callable[[], Any]) -> None:
        self._queue.put((step, what, write))

    def wait(self) -> None:
        self._queue.join()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._queue.put(None)
            self._thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            step, what, write = item
            try:
                if self._failure is None:
                    write()
            except BaseException as e:  # noqa: BLE001 - handed to the runner's thread by wait()
                self._failure = WriteFailed(step, what, e)
            finally:
                self._queue.task_done()
        self._queue.task_done()


def write_parquet(con: "duckdb.DuckDBPyConnection", select: str, path: str, params: list | None = None) -> str:
    """`select` to a zstd Parquet file at `path`, written by DuckDB (the types it reads back are
    those a CREATE TABLE from the same select gives) under a temporary name and renamed into
    place: a reader sees the whole file or none, and writing it again replaces it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # row groups of the store's size: a Ray task reading a range of a large part (a load's chunk)
    # reads only the row groups that hold it (parts.read_task)
    con.execute(f"COPY ({select}) TO ? (FORMAT PARQUET, COMPRESSION ZSTD, ROW_GROUP_SIZE {ROW_GROUP_SIZE})",
                [*(params or []), tmp])
    os.replace(tmp, path)
    return path


def _row_group_batches(rows: "pa.Table") -> "pa.Table":
    """`rows` in Arrow batches of exactly one row group each (the last one shorter).

    DuckDB's insert threads each take batches and write every row group they fill, compressed,
    in parallel; rows left over in partial row groups are merged and compressed by one thread
    at commit. Batches that are whole row groups leave nothing over: 100k texts (136 MB) in
    16,384-row batches inserted and compressed in 0.46 s, as one batch in 0.87 s. (Before, at
    DuckDB's row-group size, a 1M-chat load in 40k-row batches took 1.6 s plus 0.7 s of
    checkpoint against 0.9 s as one batch.) Batches from several chunks are combined first,
    a copy (~0.1 s per 1M chats) that the parallel compression repays."""
    if rows.num_rows <= ROW_GROUP_SIZE:
        return rows
    batches = rows.to_batches()
    if all(b.num_rows == ROW_GROUP_SIZE for b in batches[:-1]) and batches[-1].num_rows <= ROW_GROUP_SIZE:
        return rows
    import pyarrow as pa

    if len(batches) > 1:  # batches cut from one are slices (no copy); from several, a copy first
        rows = rows.combine_chunks()
    return pa.Table.from_batches(rows.to_batches(max_chunksize=ROW_GROUP_SIZE), rows.schema)


def _one_parent_each(parent_ids) -> bool:
    """True when every row lists exactly one parent (no null list, no empty list)."""
    import pyarrow.compute as pc

    if len(parent_ids) == 0:
        return True
    if parent_ids.null_count:
        return False
    lengths = pc.min_max(pc.list_value_length(parent_ids))
    return lengths["min"].as_py() == 1 and lengths["max"].as_py() == 1


def _check_keeps_ids(step: str, rows, single_parent: bool) -> None:
    """A keeps_ids step writes no edges, so its claim must hold for every row."""
    import pyarrow.compute as pc

    ok = single_parent and (rows.num_rows == 0 or pc.all(pc.equal(
        rows.column("sample_id"), pc.list_element(rows.column("parent_ids"), 0))).as_py())
    if not ok:
        from datamix.errors import StepError

        raise StepError(f"step {step} is registered with keeps_ids=True, but some of its rows do not have "
                         "parent_ids == [sample_id]; register it without keeps_ids so that edges are written")


def output_steps_holding(con: "duckdb.DuckDBPyConnection", sample_id: str) -> list[str]:
    """Names of the step outputs that hold `sample_id`, most downstream first."""
    steps = con.execute(
        "SELECT s.name FROM dm.steps s JOIN duckdb_columns() c ON c.table_name = s.name "
        "AND c.schema_name = 'main' AND c.column_name = 'sample_id' ORDER BY s.started_at DESC, s.name"
    ).fetchall()
    found = []
    for (name,) in steps:
        if first(con.execute(f"SELECT 1 FROM {quote(name)} WHERE sample_id = ? LIMIT 1", [sample_id])):
            found.append(name)
    return found
