"""The Ray executor on a real local Ray (two worker CPUs): the same pipeline under `executor: ray`
and `executor: local` gives the same tables, ids, decisions and chunk keys; a worker killed
mid-slice and a driver killed mid-step lose and duplicate nothing; a run under one executor is
up to date under the other."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from datamix.outputs import read_output  # noqa: E402
from datamix.store import Store  # noqa: E402
from tests.helpers import chat, cli, query, run_pipeline, write_jsonl, write_pipeline  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # a Ray start costs seconds

ROWS = 160


# A map function beside the YAML. With a `kill_once` file present, the first worker to claim it
# dies in the middle of its slice (os._exit: no exception, no cleanup), as a worker lost to an
# out-of-memory kill or a failed node would.
FUNCTION = textwrap.dedent("""
    import os

    import pyarrow.compute as pc


    def tag(batch):
        switch = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_once")
        try:
            os.rename(switch, switch + ".used")  # atomic: one worker claims it
        except OSError:
            pass
        else:
            os._exit(1)
        return batch.append_column("turns", pc.list_value_length(batch.column("messages")))
""")


def make(folder: Path, module: str, executor, load_executor=None) -> Path:
    """load -> filter -> map (a Python function in `module`) -> exact dedup -> filter, in slices of
    20-30 rows. The last filter reads a pass-through over the map's Parquet parts. load_executor:
    the load's own `executor:` (local: its rows in a table, which a step on Ray reads through the
    driver)."""
    records = [chat(f"Question {i % 120} about topic {i % 3}?",  # i and i + 120 the same: dd drops them
                    "ok" if i % 7 == 0 else f"An answer of several words to question {i}, number {i % 5}.")
               for i in range(ROWS)]
    if not (folder / "data.jsonl").exists():  # written once: its mtime is part of the fingerprints
        write_jsonl(folder / "data.jsonl", records)
        (folder / f"{module}.py").write_text(FUNCTION)
    steps = [
        {"name": "src", "kind": "load", "path": "data.jsonl", "chunk_size": 50,
         **({"executor": load_executor} if load_executor else {})},
        {"name": "clean", "kind": "filter", "input": "src", "chunk_size": 30,
         "rules": [{"rule": "length", "field": "response", "min": 3, "unit": "words"}]},
        {"name": "tagged", "kind": "map", "input": "clean", "chunk_size": 20, "function": f"{module}:tag"},
        {"name": "dd", "kind": "dedup", "input": "tagged", "method": "exact", "fields": ["instruction"]},
        {"name": "short", "kind": "filter", "input": "dd", "chunk_size": 25,
         "rules": [{"rule": "length", "field": "response", "max": 10, "unit": "words"}]},
    ]
    name = "ray" if executor != "local" else "local"
    # one folder, two YAMLs, two stores: the same data and function files, so the same fingerprints
    return write_pipeline(folder, steps, name=name, store=f"{name}.duckdb", executor=executor)


def ray_executor(address: str = "local") -> dict:
    return {"type": "ray", "address": address, "num_cpus_per_task": 1}


def snapshot(store: Path) -> dict:
    """Every step's rows in the order the next step reads them, with their types; the bookkeeping."""
    s = Store(str(store), read_only=True)
    try:
        out = {}
        for (name,) in s.con.execute("SELECT name FROM dm.steps ORDER BY name").fetchall():
            table = read_output(s, name)
            if name == "src":
                table = table.drop_columns(["origin_file"])  # absolute path of the data file
            out[name] = (table.schema, table.to_pylist())
        for table in ("edges", "decisions", "quarantine"):
            out[table] = s.con.execute(f"SELECT * FROM dm.{table} ORDER BY ALL").fetchall()
        out["chunks"] = s.con.execute("SELECT step, key, rows_in, rows_out FROM dm.chunks ORDER BY ALL").fetchall()
        out["steps"] = s.con.execute("SELECT name, fingerprint, state, rows_in, rows_out FROM dm.steps "
                                     "ORDER BY name").fetchall()
        return out
    finally:
        s.close()


def run_ok(pipeline: Path, log: list | None = None):
    from datamix import runner, spec

    p = spec.load(str(pipeline))
    result = runner.run(p, p.store_path(), log=(log.append if log is not None else lambda m: None))
    assert result.ok, result.error
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One folder for the module's runs (the same data and function files, so the same
    fingerprints), and the snapshot of its run under the local executor."""
    folder = tmp_path_factory.mktemp("ray_vs_local")
    local = make(folder, "tag", "local")
    run_ok(local)
    return folder, snapshot(folder / "local.duckdb")


def test_ray_with_a_worker_killed_mid_slice_gives_the_local_store_and_each_is_up_to_date_for_the_other(
        cluster, reference):
    folder, expected = reference
    on_ray = make(folder, "tag", ray_executor())
    (folder / "kill_once").write_text("")
    run_ok(on_ray)
    assert (folder / "kill_once.used").exists()  # a worker did die in the middle of a slice, and was replaced
    got = snapshot(folder / "ray.duckdb")
    assert got == expected  # nothing lost, nothing doubled, the same ids, types and order
    assert expected["decisions"] and len(expected["chunks"]) > 20  # the comparison covers real work
    # the map's rows are Parquet parts read in place through a view, one per committed slice
    views = query(folder / "ray.duckdb", "SELECT sql FROM duckdb_views() WHERE view_name = 'tagged'")
    assert "read_parquet" in views[0][0]
    parts = sorted(p.name for p in (folder / "outputs" / "tagged" / "parts").iterdir())
    keys = [k for s, k, *_ in got["chunks"] if s == "tagged"]
    assert parts == sorted(f"part-{k}.parquet" for k in keys)
    # the read-only CLI reads the parts as part of the store
    for store in ("ray.duckdb", "local.duckdb"):
        out = cli("sql", "SELECT count(*), sum(turns) FROM tagged", "--store", folder / store, "--format", "csv")
        assert out.exit_code == 0, out.output
        assert out.output.splitlines()[-1] == ",".join(map(str, query(
            folder / "local.duckdb", "SELECT count(*), sum(turns) FROM tagged")[0]))
    shown = cli("show", "tagged", "--store", folder / "ray.duckdb", "--limit", "1")
    assert shown.exit_code == 0 and "turns=2" in shown.output, shown.output
    # the executor is no part of a fingerprint: either store is up to date under the other executor
    from datamix import runner, spec

    for pipeline, store in ((folder / "local.yaml", "ray.duckdb"), (on_ray, "local.duckdb")):
        log: list = []
        result = runner.run(spec.load(str(pipeline)), str(folder / store), log=log.append)
        assert result.ok and [m.split()[0] for m in log] == ["skip"] * 5, log


@pytest.mark.parametrize("load_executor", [None, "local"])
def test_a_step_over_parquet_parts_is_read_by_the_workers_not_the_driver(cluster, reference, monkeypatch,
                                                                         load_executor):
    """Under ray the load's rows are Parquet parts too, so every step reads its input in its tasks;
    `short` reads `dd`, a pass-through (dedup) over the map's parts, leaving out what dd dropped.
    A load run locally (its rows in a table) is read by the driver for the steps over it. Either
    way the store is the local one's."""
    from datamix import scratch
    from datamix.executors.parts import parts_input, plan_tasks, read_task
    from datamix.outputs import StoreInput

    folder, expected = reference
    read_by_driver = []
    stream = StoreInput.stream

    def spy(self, *args, **kwargs):
        read_by_driver.append(self.name)
        return stream(self, *args, **kwargs)

    monkeypatch.setattr(StoreInput, "stream", spy)
    store = folder / f"workers_read_{load_executor}.duckdb"
    from datamix import runner, spec

    pipeline = spec.load(str(make(folder, "tag", ray_executor(), load_executor)))
    assert runner.run(pipeline, str(store), log=lambda m: None).ok
    # the readers of a stored table (the load's, less clean's drops); never dd's
    assert read_by_driver == (["src", "clean"] if load_executor else [])
    views = {v for (v,) in query(store, "SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    assert {"src", "tagged"} & views == ({"tagged"} if load_executor else {"src", "tagged"})
    assert snapshot(store) == expected
    # what the workers read of the parts is the driver's read: with and without a chain's drops
    s = Store(str(store), read_only=True)
    try:
        for name, columns in (("dd", None), ("tagged", "sample_id, turns"), ("dd", "turns, messages"),
                              *([] if load_executor else [("clean", None), ("src", "sample_id, messages")])):
            read, files = parts_input(s, name, columns)
            assert any(f.dropped for f in files) == (name in ("dd", "clean"))
            rows = sum(f.rows for f in files)
            with scratch.cursor() as con:
                whole = plan_tasks(files, [[(0, rows)]])[0].to_pylist()[0]
                assert read_task(con, whole, read).equals(read_output(s, name, columns)), name
                # any range of the input, across files and their drops, is the driver's read of it
                for low, high in ((7, 61), (rows - 30, rows)):
                    task = plan_tasks(files, [[(low, high)]])[0].to_pylist()[0]
                    assert read_task(con, task, read).equals(read_output(s, name, columns).slice(low, high - low))
        if load_executor:  # a pass-through over the stored load: the driver reads it
            assert parts_input(s, "clean", None) is None
    finally:
        s.close()


# The driver announces each registered part and dawdles after it, so the test can SIGKILL it
# mid-step from outside; it runs on the test's cluster, which outlives it.
SLOW_DRIVER = textwrap.dedent("""
    import sys, time
    from datamix import runner, spec
    from datamix.executors import ray as executor

    real = executor.register

    def register(store, step, new, *a, **k):
        real(store, step, new, *a, **k)
        for part in new:
            print("registered", step, part["key"], flush=True)
        time.sleep(0.5)

    executor.register = register
    executor.ROWS_PER_TASK = 1  # a slice a task: its parts are registered one by one
    p = spec.load(sys.argv[1])
    runner.run(p, p.store_path(), log=lambda m: None)
""")


def test_a_killed_driver_resumes_from_its_committed_parts(cluster, reference):
    folder, expected = reference
    on_ray = make(folder, "tag", ray_executor(cluster))  # a second driver on the test's cluster
    (folder / "ray.duckdb").unlink(missing_ok=True)
    script = folder / "slow.py"
    script.write_text(SLOW_DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), str(on_ray)], stdout=subprocess.PIPE, text=True)
    try:  # killed after the map's third part: the filter before it is done
        seen = []
        while sum(line.startswith("registered tagged") for line in seen) < 3:
            seen.append(proc.stdout.readline())
            assert seen[-1], seen  # the driver ended before it got there
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    store = folder / "ray.duckdb"
    before = query(store, "SELECT key, rows_out FROM dm.chunks WHERE step = 'tagged' ORDER BY key")
    assert 3 <= len(before) < -(-ROWS // 20)
    assert query(store, "SELECT name, state FROM dm.steps WHERE name IN ('clean', 'tagged') ORDER BY name") == [
        ("clean", "done"), ("tagged", "partial")]
    # the view is redefined after the 1st, 2nd, 4th ... part: here it shows the first two of three
    assert 0 < query(store, "SELECT count(*) FROM tagged")[0][0] < sum(n for _, n in before)
    log: list = []
    run_ok(on_ray, log)
    assert "skip   clean (filter): up to date" in log and "resume tagged (map)" in log, log
    after = query(store, "SELECT key, rows_out FROM dm.chunks WHERE step = 'tagged' ORDER BY key")
    assert set(before) <= set(after)  # the committed parts were kept, not redone
    assert snapshot(store) == expected


def test_an_error_in_a_worker_fails_the_step_with_its_own_message(cluster, tmp_path):
    # its own module name: Ray's workers keep the modules they imported for the module's tests
    on_ray = make(tmp_path, "tag_bad", ray_executor())
    (tmp_path / "tag_bad.py").write_text("def tag(batch):\n    return batch.slice(1)\n")
    result = run_pipeline(on_ray)
    assert not result.ok and result.failed_step == "tagged" and not result.bad_input
    assert "must return the same rows in the same order" in result.error
    assert query(tmp_path / "ray.duckdb", "SELECT state FROM dm.steps WHERE name = 'tagged'") == [("failed",)]



PROBE = textwrap.dedent("""
    import polars as pl
    import pyarrow as pa

    from datamix import scratch


    def probe(batch):
        with scratch.cursor() as con:
            duckdb_threads = con.sql("SELECT current_setting('threads')").fetchall()[0][0]
        n = batch.num_rows
        return (batch.append_column("polars_threads", pa.array([pl.thread_pool_size()] * n))
                .append_column("duckdb_threads", pa.array([duckdb_threads] * n)))
""")


def test_a_tasks_libraries_use_the_one_cpu_it_holds(cluster, tmp_path, monkeypatch):
    """Polars and DuckDB in a task use as many threads as the task holds CPUs (here 1), not a
    thread per core of the node, which tasks placed by their CPUs would fight over."""
    write_jsonl(tmp_path / "data.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(30)])
    (tmp_path / "probe_threads.py").write_text(PROBE)
    steps = [{"name": "src", "kind": "load", "path": "data.jsonl"},
             {"name": "probed", "kind": "map", "input": "src", "chunk_size": 10, "function": "probe_threads:probe"}]
    run_ok(write_pipeline(tmp_path, steps, name="ray", store="ray.duckdb", executor=ray_executor()))
    assert query(tmp_path / "ray.duckdb", "SELECT DISTINCT polars_threads, duckdb_threads FROM probed") == [(1, 1)]


SPAN = textwrap.dedent("""
    import time

    import pyarrow as pa


    def mark(batch):
        start = time.time()
        time.sleep(0.4)
        n = batch.num_rows
        return batch.append_column("start", pa.array([start] * n)).append_column("end", pa.array([time.time()] * n))
""")


@pytest.mark.parametrize("concurrency, most_at_once", [(None, 2), (1, 1)])
def test_a_steps_tasks_run_as_the_cpus_allow_or_as_its_concurrency_caps_them(cluster, tmp_path, concurrency,
                                                                             most_at_once):
    """Without `concurrency` (no backpressure policy of Ray Data's) both CPUs work at once; with
    concurrency: 1 the cap is kept."""
    write_jsonl(tmp_path / "data.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(40)])
    (tmp_path / f"span_{concurrency}.py").write_text(SPAN)
    steps = [{"name": "src", "kind": "load", "path": "data.jsonl"},
             {"name": "marked", "kind": "map", "input": "src", "chunk_size": 10,
              "function": f"span_{concurrency}:mark"}]
    executor = {**ray_executor(), **({"concurrency": concurrency} if concurrency else {})}
    run_ok(write_pipeline(tmp_path, steps, name="ray", store="ray.duckdb", executor=executor))
    spans = query(tmp_path / "ray.duckdb", "SELECT DISTINCT start, \"end\" FROM marked")
    assert len(spans) == 4  # a task a slice of 10 rows
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) == most_at_once


def test_a_ray_started_for_the_run_gives_its_workers_the_tasks_thread_limits(monkeypatch):
    from datamix.executors import RayExecutor
    from datamix.executors.ray import _start

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    _start(ray, RayExecutor(type="ray", address="local", num_cpus_per_task=2))
    assert calls[0]["runtime_env"]["env_vars"]["POLARS_MAX_THREADS"] == "2"


BLOCK_BYTES = 16 * 2**20  # blocks of some size: the reservation splits the object store between operators


def test_two_slices_run_at_once_on_two_cpus(cluster):
    """The second worker is used: on a 2-CPU cluster two slices of one step run at the same time
    (what the 1-vs-2-worker benchmark relies on; overlap, not durations, is checked)."""
    import pyarrow as pa
    import ray.data

    from datamix.executors import RayExecutor
    from datamix.executors.ray import connect

    def _hold(batch):  # defined here: workers get it by value (this module is not importable there)
        """A slice of work that takes a while: when it began and ended."""
        import time

        start = time.time()
        time.sleep(0.5)
        return pa.table({"start": [start], "end": [time.time()]})

    spec = RayExecutor(type="ray", address=cluster, concurrency=2)
    connect(spec)
    blocks = [pa.table({"x": [bytes(BLOCK_BYTES)]}) for i in range(6)]
    out = ray.data.from_arrow(blocks).map_batches(_hold, batch_size=None, batch_format="pyarrow", num_cpus=1,
                                                  compute=ray.data.TaskPoolStrategy(size=spec.concurrency))
    spans = sorted((r["start"], r["end"]) for b in out.iter_batches(batch_size=None, batch_format="pyarrow")
                   for r in b.to_pylist())
    assert len(spans) == 6
    # the most slices running at one moment (at some slice's start)
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap == 2
