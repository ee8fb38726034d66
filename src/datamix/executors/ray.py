"""The Ray executor: a `batch` step as Ray Data `map_batches` over its input's slices.

The step's input is cut in the slices the local loop makes (`chunk_size` rows, keys
rows-<start>-<end>); the slices already committed are left out, and the rest go to Ray Data,
several consecutive slices a task. An input that is Parquet parts (an earlier `source` or
`batch` step under this executor, whether its tasks or the driver wrote its rows, or a
pass-through chain over one) is read by the tasks themselves: the driver hands each only the
files, file row ranges and slices it runs (parts.plan_tasks). An input in a stored table (a
local run's, a `whole` step's) is read by the driver (the `datamix run` process, which alone
opens the store) and put into Ray's object store a task's block at a time. Each task calls
datamix.loop.run_batch on its slice (the very call the local loop makes) and writes the result
as Parquet beside the store (datamix.executors.parts); the driver registers a task's parts as
it finishes, in one transaction. So:

- a worker that dies is replaced and its slice run again by Ray (max_retries), writing the
  same files under the same names;
- a driver that dies loses only the parts not yet registered: the rerun's done keys skip the
  others, exactly as for the local loop;
- the ids, rows, edges and decisions are the local loop's (a slice is a pure function of its
  rows, config and context).

What moves: input in Parquet parts goes from the file system the store sits on to the
workers; input in a stored table goes from the driver into Ray's object store once; the
outputs go from the workers to Parquet files beside the store (the driver never holds them);
only a small row per slice comes back to the driver.

Steps that call models (generate, judge) keep their loop in the driver (the response cache
and call records are the store's) and reach the cluster through their models' `ray:`
replicas, which `connect` first attaches to the executor's cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator

from datamix.errors import BadInput, StepError
from datamix.executors import RayExecutor, calls_models
from datamix.executors.parts import (END, OFFSET, SliceJob, committed_parts, parts_input, plan_tasks, register,
                                     run_planned, run_slices, slice_key)
from datamix.outputs import StoreInput
from datamix.steps.base import Chunk, Context, exact_slices


def connect(spec: RayExecutor) -> None:
    """Join (or, for address local, start) the executor's Ray cluster, once per process. Model
    replicas (datamix.models.ray) started afterwards land on the same cluster."""
    try:
        import ray
    except ImportError:
        raise BadInput("executor: {type: ray} but ray is not installed here: pip install 'datamix[ray]', or use "
                       "executor: local") from None
    if not ray.is_initialized():
        _start(ray, spec)
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices would interleave with the run's
    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False  # the run's own progress bar counts the slices instead
    data.print_on_execution_start = False
    # Ray Data reserves part of the cluster for each operator so that one stage of a multi-stage
    # dataset cannot starve the next. Every dataset here is one map over blocks already made, so
    # the reservation only idles CPUs: on a 2-CPU cluster, two tasks of 0.3 s each ran one after
    # the other (span 2.2 s for 8 tasks; 1.4 s without it, 1.2 s as plain Ray tasks).
    data.op_resource_reservation_enabled = False


def _start(ray, spec: RayExecutor) -> None:
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=worker_env(spec))
    if spec.address == "local":
        ray.init(address="local", num_cpus=spec.num_cpus, **options)
    else:
        try:
            ray.init(address=spec.address, **options)
        except ConnectionError as e:
            raise BadInput(f"executor.address: cannot reach the Ray cluster at {spec.address} ({e}); start it, fix "
                           "the address, or use address: local") from None


def on_ray(spec: RayExecutor, store, step, entry, inputs, ctx: Context, chunks: Iterator[Chunk],
           log_chunk=None) -> Iterator[Chunk]:
    """The chunks the runner commits for `step` under this executor: the local loop's `chunks`
    for steps that stay in the driver, nothing for a step whose parts this registers itself."""
    if entry.shape == "batch" and not calls_models(step):
        connect(spec)
        return _map_slices(spec, store, step, entry, inputs, ctx, log_chunk)
    ctx.executor = spec  # `chunks` has not run yet: a whole step that uses the cluster itself (dedup) sees it
    # the rest runs in the driver; a model it runs as `ray:` replicas joins this cluster (Ray is
    # started once per process: the replicas' own address would otherwise pick it)
    if any(getattr(ctx.models.get(name), "ray", None) is not None for _, name in step.model_refs()):
        connect(spec)
    return chunks


def _map_slices(spec: RayExecutor, store, step, entry, inputs, ctx: Context, log_chunk) -> Iterator[Chunk]:
    import ray.data

    if "input" not in inputs:
        raise BadInput(f"step {step.name!r}: a {step.kind} step needs `input: <step>`")
    parts_dir = os.path.join(ctx.output_dir, "parts")
    os.makedirs(parts_dir, exist_ok=True)
    columns = entry.columns(step) if entry.columns else None

    total = len(inputs["input"])
    expected = -(-total // step.chunk_size) - sum(k.startswith("rows-") for k in ctx.done_keys)
    # a task runs several consecutive slices (a task's own cost in Ray Data, ~30 ms here, was
    # most of a light step's slice of 10,000 rows), in as many tasks per worker (task_count)
    tasks = task_count(_workers(spec), expected, step.chunk_size)
    own = parts_input(store, inputs["input"].name, columns) if type(inputs["input"]) is StoreInput else None
    if own is not None:
        read, files = own
        blocks, function = _planned_blocks(files, total, step.chunk_size, ctx.done_keys, tasks, expected), run_planned
    else:
        read = None
        blocks = _table_blocks(inputs["input"], columns, step.chunk_size, ctx.done_keys, tasks, expected)
        function = run_slices
    if not blocks:  # every slice committed (the runner defines the view over them as the step ends)
        return
    parts = committed_parts(store, step.name)
    # only plain fields travel: the store's callables (cache, calls, query) stay in the driver
    job = SliceJob(entry, step, Context(step=ctx.step, pipeline_dir=ctx.pipeline_dir, output_dir=ctx.output_dir,
                                        seed=ctx.seed, models=ctx.models), parts_dir, read, task_threads(spec))
    with warnings.catch_warnings(), _backpressure(spec):
        data = ray.data.from_arrow_refs(blocks)  # the dataset keeps the DataContext it was made under
        del blocks
        # max_retries bounds the reruns of a slice whose worker died (Ray Data's default is
        # without end: a slice that kills its worker every time would hang the run); Ray 2.60
        # takes it only as a remote arg, which it says it will drop in 2.64
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        results = data.map_batches(function, fn_kwargs={"job": job}, batch_size=None, batch_format="pyarrow",
                                   zero_copy_batch=True, num_cpus=spec.num_cpus_per_task,
                                   compute=ray.data.TaskPoolStrategy(size=spec.concurrency),
                                   max_retries=spec.max_retries)
    parent = step.parent_steps()["input"]
    registered = 0
    try:
        for out in results.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            new = out.to_pylist()  # a task's slices, registered together as the task finishes
            before, registered = registered, registered + len(new)
            # the view is redefined when the count passes the 1st, 2nd, 4th, 8th ... part and
            # at the end: defining it reads every part's footer, so once per part would cost
            # parts^2 footer reads (100 parts: ~1 s, 10,000: hours). A run killed midway
            # leaves the view behind its committed parts until the resumed step ends.
            register(store, step.name, new, parent, parts, view=registered.bit_length() > before.bit_length())
            for part in new:
                ctx.progress(part["rows_in"])
                if log_chunk:
                    log_chunk(f"  committed {step.name} part {part['key']}: {part['rows_in']} rows in, "
                              f"{part['rows_out']} out (ray)")
    except Exception as e:
        raise _user_error(e) or e
    yield from ()  # the runner defines the step's view over all its parts as it ends


def _planned_blocks(files: list, total: int, size: int, done: set, tasks: int, expected: int) -> list:
    """The input is Parquet parts (an earlier step on Ray): each task reads its own rows from
    them, and the driver hands out only which files and slices (a small block per task)."""
    import ray

    pending = [(offset, min(offset + size, total)) for offset in range(0, total, size)
               if slice_key(offset, min(offset + size, total)) not in done]
    return [ray.put(task) for task in plan_tasks(files, _groups(pending, tasks, expected))]


def _table_blocks(input, columns: str | None, size: int, done: set, tasks: int, expected: int) -> list:
    """The input is a stored table, which only the driver can read (DuckDB's file has one
    writer): it reads a task's worth at a time (slices of reads of one slice each came in two
    or three chunks where the reads' batches split them, and Ray serialises a table chunk by
    chunk) and puts each task's block into Ray's object store as soon as it is read, holding
    one block, not the step's whole input. Its chunks are left as they are: Ray copies each
    chunk's own rows (not the buffers it is a slice of), so a worker's slices come compact (one
    combined chunk per column was an extra copy here, and the filter ran 1.7x slower on slices
    of it, which point into the whole block's buffers)."""
    import numpy as np
    import pyarrow as pa
    import ray

    chunk_rows = size * max(1, -(-expected // tasks))

    def pending():  # the input's slices not committed yet, read as they are used
        for offset, batch in exact_slices(input.stream(chunk_rows, columns), size):
            end = offset + batch.num_rows
            if slice_key(offset, end) not in done:
                yield (batch.append_column(OFFSET, pa.array(np.full(batch.num_rows, offset, np.int64)))
                       .append_column(END, pa.array(np.full(batch.num_rows, end, np.int64))))

    return [ray.put(pa.concat_tables(group)) for group in _groups(pending(), tasks, expected)]


# The rows a task runs, about: a light step's second of work (filter, map: 3-4 us a row), so
# that Ray's and the driver's cost per task (submitting, registering, each ~10-50 ms) stays
# small beside it, and the memory a task holds stays bounded whatever the input's size.
ROWS_PER_TASK = 250_000


def task_count(workers: int, expected: int, size: int) -> int:
    """How many tasks a step's `expected` slices of `size` rows go in: as many for every worker
    (a worker left with one more task than the rest runs it while they idle), each of about
    ROWS_PER_TASK rows, or one slice where slices are larger. 1M rows in slices of 10,000: 4
    tasks on 1 or 2 workers, 8 on 8; 10M rows on 2 workers: 40. (A fixed four tasks a worker
    ran 8 on 2 workers, and these steps took 10-20% longer there: each task cost its worker
    ~50 ms more while the other worker ran, and the tasks grew with the input.)"""
    per_task = max(1, ROWS_PER_TASK // max(1, size))
    rounds = max(1, -(-expected // (workers * per_task)))
    return max(1, min(expected, workers * rounds))


def task_threads(spec: RayExecutor) -> int:
    """Threads a task's libraries may use: the CPUs Ray reserved for it. Polars, DuckDB and Arrow
    otherwise each start a thread per core of the node, so tasks placed by their reserved CPUs
    would crowd its cores (and one task at a time would quietly use them all)."""
    return max(1, int(spec.num_cpus_per_task))


def worker_env(spec: RayExecutor) -> dict:
    """The runtime environment of the workers this driver starts (ray.init's `runtime_env`):
    Polars sizes its thread pool from it when imported, once per worker, so it is set for the
    whole run, not per step (a runtime environment per step made Ray start fresh workers for
    every step: ~1.6 s of imports each, and seconds before the first task). DuckDB's threads are
    set per task (parts.run_slices); Ray sets OMP_NUM_THREADS per task itself."""
    return {"env_vars": {"POLARS_MAX_THREADS": str(task_threads(spec))}}


@contextlib.contextmanager
def _backpressure(spec: RayExecutor):
    """Ray Data's backpressure for the datasets made inside: the concurrency cap alone when the
    step sets `concurrency`, else none. A step's dataset is one map over blocks already in the
    object store, returning a small row per slice, so there is no memory to guard; the
    policies only held tasks back: 16 tasks of 0.2 s on 2 CPUs took 2.8-3.1 s under the default
    policies or the cap alone, 2.0 s under none (the cap admits a task only once the last one's
    end has been processed, tenths of a second later on a busy machine)."""
    import ray.data

    try:
        from ray.data._internal.execution.backpressure_policy import (ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
                                                                      ConcurrencyCapBackpressurePolicy)
    except ImportError:  # a Ray that names them otherwise: its defaults
        yield
        return
    data = ray.data.DataContext.get_current()
    before = data.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)
    data.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [ConcurrencyCapBackpressurePolicy] if spec.concurrency
                    else [])
    try:
        yield
    finally:
        if before is None:
            data.remove_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)
        else:
            data.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, before)


def _workers(spec: RayExecutor) -> int:
    """How many of a step's tasks run at once: `concurrency`, or as the cluster's CPUs allow."""
    if spec.concurrency:
        return spec.concurrency
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1) // spec.num_cpus_per_task))


def _groups(blocks: Iterable, tasks: int, expected: int) -> Iterator[list]:
    """`blocks` (one per slice, in order, read as they come) as consecutive groups, each given
    as soon as it is full: for `expected` blocks, `tasks` groups of even sizes; blocks beyond
    `expected` make more groups of the last size."""
    n = max(1, min(expected, tasks))
    bounds = [round(i * expected / n) for i in range(n + 1)]
    sizes = [max(1, b - a) for a, b in zip(bounds, bounds[1:])]
    group: list = []
    for block in blocks:
        group.append(block)
        if len(group) == sizes[0]:
            yield group
            group = []
            sizes = sizes[1:] or sizes
    if group:
        yield group


def _user_error(error: BaseException) -> BaseException | None:
    """The step's own StepError or BadInput inside the error Ray raised for a failed task, so the
    run fails as it would locally (exit 1 or 2, the step's message)."""
    seen = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (StepError, BadInput)):
            return type(e)(str(e))
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        as_instance = getattr(e, "as_instanceof_cause", None)
        if callable(as_instance) and not isinstance(e, (StepError, BadInput)):
            try:
                inner = as_instance()
            except Exception:
                inner = None
            if inner is not e:
                stack.append(inner)
    return None
