"""Parquet parts (what a Ray worker writes for a slice) registered in a real store give what the
local loop's commit_chunk gives for the same Output: rows in slice order, edges, decisions,
markers and counts; a part whose registration fails leaves no trace. No Ray needed: the
worker's function runs here."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from datamix.executors.parts import END, OFFSET, SliceJob, register, run_slices, slice_key
from datamix.ids import mint
from datamix.steps.base import Context, Output, StepConfig, StepKind
from datamix.store import Store


def split(cfg, batch, ctx) -> Output:
    """Two children per input row (the second with both the row and its neighbour as parents),
    and a decision per row: as a generate step with a judge's verdicts would."""
    ids = batch.column("sample_id").to_pylist()
    kids, parents, texts = [], [], []
    for i, sid in enumerate(ids):
        for j in range(2):
            kids.append([sid, j])
            parents.append([sid] if j == 0 else [sid, ids[(i + 1) % len(ids)]])
            texts.append(f"{sid}/{j}")
    new_ids = mint(cfg.name, [k[0] for k in kids], [k[1] for k in kids]).to_arrow()
    import polars as pl

    decisions = pl.DataFrame({"sample_id": ids, "kept": [i % 3 != 0 for i in range(len(ids))],
                              "reason": [None if i % 3 else "third" for i in range(len(ids))],
                              "score": [float(i) for i in range(len(ids))], "related_id": [None] * len(ids)})
    rows = pa.table({"sample_id": new_ids, "text": texts, "n": pa.array(range(len(texts)), pa.int32()),
                     "parent_ids": pa.array(parents, pa.list_(pa.string()))})
    return Output(rows=rows, decisions=decisions)


ENTRY = StepKind(kind="split", config=StepConfig, run=split, shape="batch")
STEP = StepConfig(name="kids", kind="split", input="src")
INPUT = pa.table({"sample_id": [f"s{i:02d}" for i in range(10)], "x": list(range(10))})
SLICES = [(0, 4), (4, 8), (8, 10)]


def stores(tmp_path):
    out = []
    for name in ("local", "parts"):
        store = Store(str(tmp_path / f"{name}.duckdb"))
        store.begin_step("kids", "split", "fp", {}, {"input": "src"}, False, "run")
        out.append(store)
    return out


def with_slice(offset: int, end: int) -> pa.Table:
    batch = INPUT.slice(offset, end - offset)
    n = batch.num_rows
    return batch.append_column(OFFSET, pa.array(np.full(n, offset, np.int64))).append_column(
        END, pa.array(np.full(n, end, np.int64)))


def contents(store: Store) -> dict:
    q = store.con.execute
    return {"rows": q("SELECT * FROM kids").fetchall(),  # in stored order
            "edges": q("SELECT * FROM dm.edges ORDER BY ALL").fetchall(),
            "decisions": q("SELECT * FROM dm.decisions ORDER BY ALL").fetchall(),
            "chunks": q("SELECT step, key, rows_in, rows_out FROM dm.chunks ORDER BY ALL").fetchall(),
            "counts": q("SELECT rows_in, rows_out FROM dm.steps WHERE name = 'kids'").fetchall(),
            "types": q("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'kids' "
                       "ORDER BY column_index").fetchall()}


def parts_store_and_job(tmp_path) -> tuple[Store, SliceJob]:
    """A store to register parts in, and a job writing them to tmp_path/parts."""
    _, store = stores(tmp_path)
    folder = tmp_path / "parts"
    folder.mkdir()
    ctx = Context(step="kids", pipeline_dir=str(tmp_path), output_dir=str(tmp_path), seed=0)
    return store, SliceJob(ENTRY, STEP, ctx, str(folder))


def commit_locally(store: Store, ctx: Context) -> None:
    """Every slice through the local loop's commit: what registered parts must equal."""
    for offset, end in SLICES:
        out = split(STEP, INPUT.slice(offset, end - offset), ctx)
        store.commit_chunk("kids", slice_key(offset, end), out.rows, out.decisions.to_arrow(), None, end - offset,
                           [], "src")


def test_registered_parts_equal_committed_chunks_whatever_order_the_slices_finish_in(tmp_path):
    local, parts_store = stores(tmp_path)
    ctx = Context(step="kids", pipeline_dir=str(tmp_path), output_dir=str(tmp_path / "out"), seed=0)
    commit_locally(local, ctx)
    folder = tmp_path / "parts"
    folder.mkdir()
    job = SliceJob(ENTRY, STEP, ctx, str(folder))
    parts: dict = {}
    for offset, end in reversed(SLICES):  # the last slice finishes first
        record = run_slices(with_slice(offset, end), job).to_pylist()[0]
        assert record["key"] == slice_key(offset, end) and record["rows_out"] == 2 * (end - offset)
        register(parts_store, "kids", [record], "src", parts)
    assert contents(parts_store) == contents(local)
    # the rows stay as Parquet; edges and decisions were copied into the store and their files removed
    assert sorted(os.listdir(folder)) == sorted(f"part-{slice_key(o, e)}.parquet" for o, e in SLICES)


def test_a_part_whose_registration_fails_leaves_no_marker_no_edges_and_no_rows(tmp_path):
    store, job = parts_store_and_job(tmp_path)
    parts: dict = {}
    register(store, "kids", run_slices(with_slice(0, 4), job).to_pylist(), "src", parts)
    record = run_slices(with_slice(4, 8), job).to_pylist()[0]
    os.remove(record["decisions"])  # read inside the transaction, after the edges went in
    with pytest.raises(Exception, match="decisions-rows-4-8"):
        register(store, "kids", [record], "src", parts)
    q = store.con.execute
    assert q("SELECT key FROM dm.chunks").fetchall() == [("rows-0-4",)]
    assert q("SELECT count(*) FROM dm.edges").fetchall() == [(12,)]  # slice 0-4's: 4 + 8 parent links
    assert q("SELECT count(*) FROM kids").fetchall() == [(8,)]
    assert list(parts) == ["rows-0-4"]


def test_a_task_of_several_slices_writes_and_registers_what_one_task_a_slice_does(tmp_path):
    """The Ray executor gives a task consecutive slices in one block (datamix.executors.ray._groups):
    one record per slice, the same files, the same store."""
    local, parts_store = stores(tmp_path)
    ctx = Context(step="kids", pipeline_dir=str(tmp_path), output_dir=str(tmp_path / "out"), seed=0)
    commit_locally(local, ctx)
    folder = tmp_path / "parts"
    folder.mkdir()
    block = pa.concat_tables([with_slice(o, e) for o, e in SLICES])
    records = run_slices(block, SliceJob(ENTRY, STEP, ctx, str(folder))).to_pylist()
    assert [r["key"] for r in records] == [slice_key(o, e) for o, e in SLICES]
    parts: dict = {}
    register(parts_store, "kids", records, "src", parts)  # the task's slices in one transaction
    assert contents(parts_store) == contents(local)
    assert sorted(os.listdir(folder)) == sorted(f"part-{slice_key(o, e)}.parquet" for o, e in SLICES)


def test_a_task_whose_registration_fails_leaves_none_of_its_slices(tmp_path):
    store, job = parts_store_and_job(tmp_path)
    records = run_slices(pa.concat_tables([with_slice(o, e) for o, e in SLICES]), job).to_pylist()
    os.remove(records[-1]["decisions"])  # the last slice's: read after the others' edges and decisions
    parts: dict = {}
    with pytest.raises(Exception, match="decisions-rows-8-10"):
        register(store, "kids", records, "src", parts)
    q = store.con.execute
    assert q("SELECT count(*) FROM dm.chunks").fetchall() == [(0,)]
    assert q("SELECT count(*) FROM dm.edges").fetchall() == [(0,)]
    assert q("SELECT count(*) FROM dm.decisions").fetchall() == [(0,)]
    assert q("SELECT rows_in, rows_out FROM dm.steps WHERE name = 'kids'").fetchall() == [(0, 0)]
    assert parts == {}
    # the files stay for the rerun, which runs the slices again and writes the same ones
    assert os.path.exists(records[0]["decisions"]) and os.path.exists(records[0]["edges"])


def test_a_block_holding_part_of_a_slice_is_refused(tmp_path):
    from datamix.errors import StepError

    job = SliceJob(ENTRY, STEP, Context(step="kids", pipeline_dir=str(tmp_path), output_dir=str(tmp_path), seed=0),
                   str(tmp_path))
    block = pa.concat_tables([with_slice(0, 4), with_slice(4, 8).slice(0, 3)])
    with pytest.raises(StepError, match="part of a slice"):
        run_slices(block, job)


@pytest.mark.parametrize("slices, workers, size, tasks", [
    (1, 2, 10_000, 1), (7, 1, 10_000, 1), (7, 2, 10_000, 2), (100, 1, 10_000, 4), (100, 2, 10_000, 4),
    (100, 3, 10_000, 6), (1000, 2, 10_000, 40), (100, 8, 10_000, 8), (100, 2, 300_000, 100)])
def test_slices_are_grouped_in_order_as_many_tasks_a_worker_of_about_rows_per_task(slices, workers, size, tasks):
    from datamix.executors.ray import _groups, task_count

    assert task_count(workers, slices, size) == tasks
    assert tasks % workers == 0 or tasks == slices  # no worker left running one more task than the rest
    given = []

    def blocks():  # read as they are used: a group is handed on before the next block is read
        for b in range(slices):
            given.append(b)
            yield b

    groups = []
    for group in _groups(blocks(), tasks, slices):
        assert given[-1] == group[-1]
        groups.append(group)
    assert [b for g in groups for b in g] == list(range(slices))  # every slice once, in order
    assert len(groups) == tasks and all(groups)
    assert max(map(len, groups)) - min(map(len, groups)) <= 1


@pytest.mark.parametrize("slices, expected", [(0, 5), (3, 10), (10, 3), (5, 0)])
def test_more_or_fewer_slices_than_expected_are_each_grouped_once_in_order(slices, expected):
    from datamix.executors.ray import _groups

    groups = list(_groups(iter(range(slices)), 2, expected))
    assert [b for g in groups for b in g] == list(range(slices)) and all(groups)


def test_tasks_reading_their_slices_from_parquet_parts_give_what_blocks_of_the_rows_give(tmp_path):
    """An input that is Parquet parts (with rows a pass-through chain dropped, and an empty part)
    is read by each task itself (plan_tasks, run_planned): each reads only the file rows of its
    slices, and the records, files and store are those of the driver's blocks of the same rows."""
    import pyarrow.parquet as pq

    from datamix import scratch
    from datamix.executors.parts import PartFile, PartsRead, plan_tasks, read_task, run_planned

    dropped = pa.table({"sample_id": ["x1", "x2"], "x": [-1, -2]})
    pieces = [pa.concat_tables([INPUT.slice(0, 2), dropped.slice(0, 1), INPUT.slice(2, 1)]), INPUT.slice(0, 0),
              pa.concat_tables([INPUT.slice(3, 4), dropped.slice(1, 1)]), INPUT.slice(7, 3)]
    files = []
    for i, piece in enumerate(pieces):
        pq.write_table(piece, tmp_path / f"in-{i}.parquet")
        drops = {0: [2], 2: [4]}.get(i, [])  # the file rows of x1 and x2
        files.append(PartFile(str(tmp_path / f"in-{i}.parquet"), piece.num_rows - len(drops), drops))
    paths = [f.path for f in files]
    tasks = plan_tasks(files, [[SLICES[0]], SLICES[1:]])
    # rows 0-4: all of file 0 (its row 2 dropped) and the first row of file 2; rows 4-10: the
    # rest of file 2 (less its dropped last row, which is past the range) and all of file 3
    assert [t.to_pylist() for t in tasks] == [
        [{"files": [paths[0], paths[2]], "lo": [0, 0], "hi": [4, 1], "skip": [[2], []], "offsets": [0], "ends": [4]}],
        [{"files": [paths[2], paths[3]], "lo": [1, 0], "hi": [4, 3], "skip": [[], []], "offsets": [4, 8],
          "ends": [8, 10]}]]
    read = PartsRead(None, INPUT.schema)
    whole = plan_tasks(files, [[(0, 10)]])[0].to_pylist()[0]
    with scratch.cursor() as con:
        assert read_task(con, whole, read).equals(INPUT)
        assert read_task(con, whole, PartsRead("x", INPUT.select(["x"]).schema)).equals(INPUT.select(["x"]))
        for task, (low, high) in zip(tasks, [(0, 4), (4, 10)]):
            assert read_task(con, task.to_pylist()[0], read).equals(INPUT.slice(low, high - low))

    local, parts_store = stores(tmp_path)
    ctx = Context(step="kids", pipeline_dir=str(tmp_path), output_dir=str(tmp_path / "out"), seed=0)
    for store, name in ((local, "blocks"), (parts_store, "planned")):
        (tmp_path / name).mkdir()
        job = SliceJob(ENTRY, STEP, ctx, str(tmp_path / name), read if name == "planned" else None)
        if name == "planned":
            records = run_planned(pa.concat_tables(tasks), job).to_pylist()
        else:
            records = run_slices(pa.concat_tables([with_slice(o, e) for o, e in SLICES]), job).to_pylist()
        assert [r["key"] for r in records] == [slice_key(o, e) for o, e in SLICES]
        register(store, "kids", records, "src", {})
    assert contents(parts_store) == contents(local)
    assert sorted(os.listdir(tmp_path / "planned")) == sorted(os.listdir(tmp_path / "blocks"))


def test_a_slice_handed_to_a_step_holds_only_its_own_rows():
    """run_planned cuts slices out of a task's whole read: each is compacted first (Polars
    would copy the whole read's buffers for every slice otherwise)."""
    from datamix.executors.parts import _compact

    whole = pa.table({"text": [f"row {i} " * 20 for i in range(1000)],
                      "turns": pa.array([[{"role": "user", "content": str(i)}] for i in range(1000)])})
    piece = whole.slice(500, 10)
    compact = _compact(piece)
    assert compact.equals(piece) and compact.schema == whole.schema
    assert all(c.num_chunks == 1 and c.chunk(0).offset == 0 for c in compact.columns)
    assert compact.get_total_buffer_size() * 20 < piece.get_total_buffer_size()
