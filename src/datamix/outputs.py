"""Step outputs: the read path of a step's rows in the store, and the files it writes beside it.

A stored step's rows are its table, in the order it was written. A pass-through step
(filter, dedup) stores no rows: its output is the rows of the first step up its chain
whose rows are stored, minus those it or any pass-through step between them dropped
(`stored_ancestor`). That one definition serves the SQL view the runner creates for the
step (`Store.create_passthrough_view`), the scans here, and DuckDB's COPY of an export.
"""

from __future__ import annotations

import json
import os

from typing import TYPE_CHECKING

from datamix.errors import BadInput
from datamix.steps.base import InputTable, copy_sql, exact_slices
from datamix.store import Store, quote

if TYPE_CHECKING:
    import pyarrow as pa


def read_output(store: Store, name: str, columns: str | None = None):
    """A step's output rows in a stable order (the order its stored table was written in).

    A pass-through step's rows are its first stored ancestor's rows minus those it
    or any pass-through step between them dropped (see _output_scan).
    """
    scan = _output_scan(store, name)
    if scan is None:
        stored, deciders = stored_ancestor(store, name)
        return _filter_in_arrow(store, stored, deciders, columns)
    sql, params = scan
    return store.con.sql(f"SELECT {columns or '*'} {sql}", params=params).to_arrow_table()


def _output_scan(store: Store, name: str) -> tuple[str, list] | None:
    """(`FROM ... WHERE ...` SQL, its parameters) that scans a step's output in its stable order.

    Rows a pass-through chain dropped are skipped during the scan with a bitmap of the
    kept row ids: a filter keeps the scan's order (an anti join would not), and only the
    kept rows reach Arrow (filtering 1M chats in Arrow afterwards copied them all: 0.75 s
    against 0.25 s). None when the stored table has a column named rowid, which hides
    DuckDB's row id."""
    stored, deciders = stored_ancestor(store, name)
    if not deciders:
        return f"FROM {quote(stored)}", []
    if "rowid" in store.con.sql(f"SELECT * FROM {quote(stored)} LIMIT 0").columns or _in_parquet(store, stored):
        return None
    kept = _kept_bitmap(store, stored, deciders)
    if kept is None:
        return f"FROM {quote(stored)}", []
    return f"FROM {quote(stored)} WHERE get_bit(?::BIT, rowid::INTEGER) = 1", [kept]


def _in_parquet(store: Store, stored: str) -> bool:
    """True when a stored step's rows are Parquet parts read through a view (the Ray executor,
    datamix.executors.parts): a view has no row ids to filter the scan by."""
    return bool(store.con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'main' AND view_name = ?",
                                  [stored]).fetchall()[0][0])


def _dropped(deciders: list[str]) -> tuple[str, list[str]]:
    """(SQL selecting the sample ids any of `deciders` dropped, its parameters)."""
    marks = ", ".join("?" * len(deciders))
    return f"SELECT sample_id FROM dm.decisions WHERE step IN ({marks}) AND NOT kept", list(deciders)


def _kept_bitmap(store: Store, stored: str, deciders: list[str]) -> str | None:
    """A bit string over `stored`'s row ids, '1' for a kept row; None when none was dropped."""
    import numpy as np

    dropped_sql, params = _dropped(deciders)
    # fetchnumpy, not Arrow's to_numpy: that imports pandas (~0.5 s of a small run)
    dropped = store.con.sql(f"SELECT rowid FROM {quote(stored)} WHERE sample_id IN ({dropped_sql})",
                            params=params).fetchnumpy()["rowid"]
    if not len(dropped):
        return None
    size = store.con.sql(f"SELECT max(rowid) + 1 FROM {quote(stored)}").fetchall()[0][0]
    bits = np.full(size, ord("1"), dtype=np.uint8)
    bits[dropped] = ord("0")
    return bits.tobytes().decode("ascii")


def _filter_in_arrow(store: Store, stored: str, deciders: list[str], columns: str | None):
    """read_output's filter for a table with a column named rowid: by sample id, in Arrow."""
    import pyarrow.compute as pc

    cols = columns
    if columns and "sample_id" not in [c.strip().strip('"') for c in columns.split(",")]:
        cols = "sample_id, " + columns
    table = store.read(stored, cols)
    dropped_sql, params = _dropped(deciders)
    dropped = store.con.sql(dropped_sql, params=params).to_arrow_table().column(0)
    if len(dropped):
        table = table.filter(pc.invert(pc.is_in(table.column("sample_id"), value_set=dropped)))
    return table if cols is columns else table.drop_columns(["sample_id"])


def stored_ancestor(store: Store, name: str) -> tuple[str, list[str]]:
    """(the first step up the chain whose rows are stored, the pass-through steps between)."""
    # one query for every step, then a walk in Python: a query per level made reading the end
    # of a long chain of filters cost a query per filter, on every read
    chain = {n: json.loads(p)["input"] for n, p in store.con.execute(
        "SELECT name, parents FROM dm.steps WHERE passthrough").fetchall()}
    deciders = []
    while name in chain:
        deciders.append(name)
        name = chain[name]
    return name, deciders


# Rows a batch step's input is read in, cut into its slices. Reads of one slice each were ~10%
# slower over a 1M-row filter: a read costs a little, and DuckDB splits reads at its row groups,
# which left many slices in two pieces.
SLICE_READ_ROWS = 100_000


class StoreInput(InputTable):
    """An upstream step's output, read from the store."""

    def __init__(self, store: Store, name: str):
        super().__init__(name, lambda columns=None: read_output(store, name, columns), store.step_row(name)["rows_out"])
        self._store = store

    def column_names(self) -> list[str]:
        return self._store.con.sql(f"SELECT * FROM {quote(self.name)} LIMIT 0").columns

    def slices(self, size: int, columns: str | None = None):
        """InputTable.slices read from the store as they are used (`stream` cut to `size`): a
        `batch` step holds a read of SLICE_READ_ROWS or so, not all of its input."""
        scan = _output_scan(self._store, self.name)
        if scan is None:
            yield from InputTable.slices(self, size, columns)
            return
        read = size * max(1, SLICE_READ_ROWS // size)
        yield from exact_slices(self._scanned(scan, read, columns), size)

    def stream(self, size: int, columns: str | None = None):
        """InputTable.stream from the store, through a cursor of its own (the runner may
        commit on the store's connection while this is read)."""
        scan = _output_scan(self._store, self.name)
        if scan is None:
            yield from InputTable.stream(self, size, columns)
            return
        yield from self._scanned(scan, size, columns)

    def _scanned(self, scan: tuple[str, list], size: int, columns: str | None):
        import pyarrow as pa

        cursor = self._store.cursor()
        try:
            offset = 0
            for batch in cursor.sql(f"SELECT {columns or '*'} {scan[0]}", params=scan[1]).to_arrow_reader(size):
                yield offset, pa.Table.from_batches([batch])
                offset += batch.num_rows
        finally:
            cursor.close()

    def write(self, path: str, fmt: str, columns: list[str]) -> None:
        scan = _output_scan(self._store, self.name)
        if scan is None:
            return super().write(path, fmt, columns)
        # COPY scans the store in the order read_output returns, without the rows passing
        # through Python
        self._store.con.execute(copy_sql(columns, scan[0], fmt), [*scan[1], path])


class HeldInput(StoreInput):
    """An upstream step's output that this run has just written, read from the Arrow tables it
    committed (the runner holds them, see runner._Held) while their commit may still be running
    behind (Store.writing_behind). A select runs through DuckDB over those tables, as
    read_output's runs over the stored table made from them, so the rows, their order and their
    types are the same; what the step writes to a file (`write`) is copied from the store."""

    def __init__(self, store: Store, name: str, rows: "pa.Table"):
        InputTable.__init__(self, name, self._select, rows.num_rows)
        self._store, self._rows = store, rows

    def _select(self, columns: str | None = None):
        from datamix import scratch

        with scratch.cursor() as con:
            return con.from_arrow(self._rows).query("held", f"SELECT {columns or '*'} FROM held").to_arrow_table()

    def column_names(self) -> list[str]:
        return list(self._rows.column_names)

    def slices(self, size: int, columns: str | None = None):
        yield from InputTable.slices(self, size, columns)

    def stream(self, size: int, columns: str | None = None):
        yield from InputTable.stream(self, size, columns)


def output_folder(store: Store, step: str) -> str:
    """The folder beside the store where a step writes files (exports, shards, checkpoints, models)."""
    root = os.path.join(os.path.dirname(os.path.abspath(store.path)), "outputs")
    path = os.path.normpath(os.path.join(root, step))
    if os.path.dirname(path) != root:  # a step name is validated; this guards the file system regardless
        raise BadInput(f"step name {step!r} cannot name a folder under {root}; use letters, digits, _ and -")
    return path


def discard_outputs(recorded: list[str], output_dir: str) -> None:
    """Remove what a step wrote outside the store: the files it recorded (Store.recorded_files: an
    export's `path:` may be anywhere) and its own output folder (checkpoints, models, shards)."""
    import shutil

    for path in recorded:
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)
    if os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
