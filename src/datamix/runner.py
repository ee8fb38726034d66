"""Runs a pipeline: DAG order, fingerprints, skip/resume, progress, stats.

The runner owns all I/O and bookkeeping. For each step it reads the inputs
from the store, hands them to the step's `run` function with its config, and
commits every chunk the step yields (rows, lineage edges, decisions,
quarantine, completion marker) in one transaction. A crash therefore loses
nothing committed, and a resumed run skips the committed chunk keys.

The store's writes run behind the loop, in order, on one thread (Store.writing_behind):
the next step starts while DuckDB compresses the last one's rows, and reads them from
memory when it is the step that reads them (_Held). Whatever reads the store waits for
the writes before it, and a write that fails fails the step that gave it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import time
import uuid
from typing import Any

from datamix.executors import stores_parts
from datamix.executors.parts import committed_parts, define_view, driver_part
from datamix.progress import Progress
from datamix.spec import Pipeline, models_used
from datamix.loop import step_chunks
from datamix.outputs import StoreInput, discard_outputs, output_folder, stored_ancestor
from datamix.steps.base import REGISTRY, BadInput, Context, InputTable, StepConfig, StepError
from datamix.store import Store, WriteFailed, quote


@dataclasses.dataclass
class PlanEntry:
    name: str
    kind: str
    fingerprint: str
    action: str  # run | resume | skip
    reason: str
    model_calls: int | None = None  # new calls: those the response cache would answer are not counted
    cached_calls: int | None = None  # None: not known (the step's inputs do not exist yet)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usd: float | None = None  # with a `price:` on the step's models
    calls_exact: bool = False  # probed against the store's cache, not the kind's formula


def step_code(pipeline: Pipeline, step: StepConfig) -> dict[str, str]:
    """{file: hash} of the code the step runs: its module and every datamix module and sql/ file
    that reaches (datamix.codehash), plus the backend of each model it calls."""
    from datamix.codehash import backend_files, code_files

    files = dict(code_files(REGISTRY[step.kind].run.__module__))
    for name in models_used(step):
        spec = pipeline.models.get(name)
        if spec is not None:
            files.update(backend_files(spec.backend, tiny=getattr(spec, "tiny", None) is not None))
            # where a model runs (ray replicas, batch files) changes no answer: not fingerprinted
    return files


# Run settings that do not change a step's output: a changed chunk size reruns nothing (a
# partial step whose chunk keys it changes starts over, see decide). A kind whose samples are
# seeded per chunk (reconstruct) says so with `chunk_size_changes_output`.
RUN_SETTINGS = {"chunk_size"}
# Where a step's model calls go (`batch:` files or live, datamix.llm.StepBatch) changes no
# answer's cache key, so switching reruns nothing, as with a model's own `batch:`.
PLACEMENT_SETTINGS = {"batch"}


def run_settings(step: StepConfig) -> set[str]:
    placement = PLACEMENT_SETTINGS & set(type(step).model_fields)
    return (set() if type(step).chunk_size_changes_output else RUN_SETTINGS) | placement


def _file_identity(pipeline: Pipeline, step: StepConfig) -> list:
    """Size and mtime of the files a step reads, so editing a data file reruns it."""
    import glob

    out = []
    values = [getattr(step, field, None) for field in type(step).path_fields]
    # a kind whose files sit in nested options (evaluate's sets) lists them itself
    values += list(getattr(step, "fingerprint_files", lambda: [])())
    for value in values:
        if not value or value in {s.name for s in pipeline.steps}:
            continue
        full = value if os.path.isabs(value) else os.path.join(pipeline.base_dir, value)
        paths = sorted(glob.glob(full)) if not os.path.isdir(full) else sorted(
            os.path.join(root, f) for root, _, files in os.walk(full) for f in files
        )
        for p in paths:
            st = os.stat(p)
            out.append([os.path.relpath(p, pipeline.base_dir), st.st_size, st.st_mtime_ns])
    return out


_NOT_FINGERPRINTED = {"ray", "price", "rpm", "tpm", "max_failures", "batch"}


def fingerprints(pipeline: Pipeline) -> dict[str, str]:
    """hash(kind, resolved config, parents' fingerprints, code version, models used, input files)."""
    fps: dict[str, str] = {}
    trained = _trained_models(pipeline)
    for step in pipeline.order():
        payload = {
            "kind": step.kind,
            "config": step.model_dump(mode="json", exclude=run_settings(step)),
            "parents": {label: fps[p] for label, p in sorted(step.parent_steps().items())},
            "code": [REGISTRY[step.kind].version, step_code(pipeline, step)],
            # where a model runs (ray replicas, batch files), what it costs and how fast it may be
            # called (rate budgets, failure bounds) do not change what it generates
            "models": {m: _model_identity(pipeline.models[m]) for m in models_used(step) if m in pipeline.models},
            "files": _file_identity(pipeline, step),
            "seed": pipeline.seed,
        }
        made_by = {m: fps.get(trained[m]) for m in models_used(step) if m in trained}
        if made_by:  # absent otherwise, so fingerprints of pipelines without such models do not change
            payload["trained_models"] = made_by
        blob = json.dumps(payload, sort_keys=True, default=str)
        fps[step.name] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return fps


def _model_identity(spec) -> dict:
    """What of a declared model enters the fingerprints of the steps using it. A model saved by a
    train step (`from_step:`) is that step's fingerprint (`trained_models`), not the folder its
    store happens to be in; `from_step` is left out where unset, so older fingerprints stand."""
    exclude = set(_NOT_FINGERPRINTED)
    exclude.add("path" if getattr(spec, "from_step", None) else "from_step")
    return spec.model_dump(mode="json", exclude=exclude)


def _trained_models(pipeline: Pipeline) -> dict[str, str]:
    """Declared model -> the step of this pipeline whose output folder holds it.

    A pipeline may train a model and then use it (the forgetting miniature trains a vendor model
    from scratch, then samples its instructions): that step's fingerprint enters the fingerprint
    of every step using the model, so retraining it reruns them. The step must come first in
    the YAML (steps without inputs run in YAML order)."""
    root = os.path.join(os.path.dirname(pipeline.store_path()), "outputs")
    names = {s.name for s in pipeline.steps}
    out = {}
    for name, spec in pipeline.models.items():
        path = spec.path if os.path.isabs(spec.path) else os.path.join(pipeline.base_dir, spec.path)
        rel = os.path.relpath(os.path.normpath(path), root)
        step = rel.split(os.sep)[0]
        if not rel.startswith("..") and step in names:
            out[name] = step
    return out


def decide(pipeline: Pipeline, store: Store | None, step: StepConfig, fp: str, row: dict | None) -> tuple[str, str]:
    """(action, why) for one step: "skip" (up to date), "resume" (after its committed chunks) or
    "run" (from scratch: whatever the step wrote before is discarded first). The one decision
    that `plan` shows, `run` carries out and the secrets check looks ahead with."""
    if row is None:
        return "run", "never run"
    if row["fingerprint"] != fp:
        return "run", f"changed: {_what_changed(row, step, pipeline)}"
    if row["state"] == "done":
        missing = store.missing_files(step.name)
        return ("run", _missing_reason(missing)) if missing else ("skip", "up to date")
    old_settings = {k: v for k, v in json.loads(row["config"] or "{}").items() if k in RUN_SETTINGS}
    new_settings = step.model_dump(mode="json", include=RUN_SETTINGS)
    if old_settings != new_settings:  # its committed chunk keys no longer line up with the new chunks
        changed = ", ".join(_changed_options(old_settings, new_settings))
        return "run", f"{row['state']}: {changed} changed, so it starts over"
    from datamix.executors import stored_form_change

    if switched := stored_form_change(pipeline, store, step):
        return "run", f"{row['state']}: {switched}, so it starts over"
    return "resume", f"{row['state']}: resumes after its committed chunks"


def plan(pipeline: Pipeline, store: Store | None) -> list[PlanEntry]:
    fps = fingerprints(pipeline)
    entries = []
    counts: dict[str, int | None] = {}
    for step in pipeline.order():
        row = store.step_row(step.name) if store else None
        fp = fps[step.name]
        action, reason = decide(pipeline, store, step, fp, row)
        rows_in = None
        parents = list(step.parent_steps().values())
        if parents and all(counts.get(p) is not None for p in parents):
            rows_in = sum(counts[p] for p in parents)
        calls = None if action == "skip" else step.model_calls(rows_in)  # a skipped step calls no model
        if action != "skip" and (batched := _batch_note(pipeline, step)):
            reason += f"; {batched}"
        counts[step.name] = row["rows_out"] if row and action == "skip" else _estimate_rows_out(step, rows_in)
        entry = PlanEntry(step.name, step.kind, fp, action, reason, calls)
        if calls is not None:  # what the calls cost, the cache taken into account where it can be
            from datamix.estimate import estimate

            done = {e.name for e in entries if e.action == "skip"}
            cost = estimate(pipeline, store, step, action, all(p in done for p in parents), calls)
            if cost is not None:
                entry.model_calls, entry.cached_calls, entry.calls_exact = cost.calls, cost.cached, cost.exact
                entry.prompt_tokens, entry.completion_tokens, entry.usd = (cost.prompt_tokens, cost.completion_tokens,
                                                                           cost.usd)
        entries.append(entry)
    return entries


def _batch_note(pipeline: Pipeline, step: StepConfig) -> str | None:
    """What `batch:` on the models a step calls means for its cost and time."""
    from datamix.llm import batch_for

    notes = []
    for m in models_used(step):
        batch = batch_for(pipeline.models.get(m), getattr(step, "batch", None))
        if batch is not None and batch.runner == "openai":
            notes.append(f"{m} as an OpenAI Batch: about half the price of live calls (USD here at "
                         f"{batch.price_factor:g}x its price), answers within {batch.completion_window}")
        elif batch is not None:
            notes.append(f"{m} through vllm run-batch on this machine")
    return "; ".join(notes) or None


def _missing_reason(missing: list[str]) -> str:
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return f"its output files are gone ({missing[0]}{more})"


def _estimate_rows_out(step: StepConfig, rows_in: int | None) -> int | None:
    for field in ("num_samples", "total"):
        value = getattr(step, field, None)
        if isinstance(value, int):
            return value
    n = getattr(step, "n", None)
    models = getattr(step, "models", None)
    if rows_in is not None and isinstance(n, int) and isinstance(models, list):
        return rows_in * n * len(models)
    return rows_in


def _what_changed(row: dict, step: StepConfig, pipeline: Pipeline) -> str:
    old = {k: v for k, v in json.loads(row["config"] or "{}").items() if k not in run_settings(step)}
    new = step.model_dump(mode="json", exclude=run_settings(step))
    changes = _changed_options(old, new)
    if changes:
        return "config (" + ", ".join(changes) + ")"
    if row.get("code"):  # stores written before the column existed have none
        from datamix.codehash import changed_files

        files = changed_files(json.loads(row["code"]), step_code(pipeline, step))
        if files:
            more = f" and {len(files) - 3} more" if len(files) > 3 else ""
            return "code (" + ", ".join(files[:3]) + more + ")"
    parents = list(step.parent_steps().values())
    return "an upstream step (" + ", ".join(parents) + ")" if parents else "model or input files"


def _changed_options(old, new, path: str = "") -> list[str]:
    """The changed options as dotted paths with old and new values ("options.lr: 0.001 -> 0.002")."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)
                for c in _changed_options(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))]
    if isinstance(old, list) and isinstance(new, list):
        out = [c for i, (a, b) in enumerate(zip(old, new)) if a != b for c in _changed_options(a, b, f"{path}.{i}")]
        out += [f"{path}.{i}: removed" for i in range(len(new), len(old))]
        out += [f"{path}.{i}: added" for i in range(len(old), len(new))]
        return out

    def short(v) -> str:
        text = json.dumps(v, default=str, sort_keys=True)
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{path}: {short(old)} -> {short(new)}"]


@dataclasses.dataclass
class RunResult:
    ok: bool
    steps: list[dict[str, Any]]
    failed_step: str | None = None
    error: str | None = None
    bad_input: bool = False


def run(pipeline: Pipeline, store_path: str, progress: bool = False, log=print, verbose: bool = False,
        quiet: bool = False) -> RunResult:
    """Run every step that is not up to date, in dependency order.

    verbose: also log every committed chunk (step, key, rows), as it commits.
    quiet: steps that print their own progress write it to their output folder (Context.quiet)."""
    _use_jemalloc_for_arrow()
    fps = fingerprints(pipeline)
    store = Store(store_path)
    store.limit_memory(*pipeline.memory_settings())
    # each step's row as the run starts: only the step itself changes it, so the loop reads its
    # own row here and a never-run step asks the store nothing before it runs
    rows = {s.name: store.step_row(s.name) for s in pipeline.order()}
    actions = {s.name: decide(pipeline, store, s, fps[s.name], rows[s.name])[0] for s in pipeline.order()}
    missing = _missing_secrets(pipeline, actions)
    if missing:  # before any step runs: an unset key would fail a step halfway through
        store.close()
        return RunResult(ok=False, steps=[], failed_step=missing[0], error=missing[1], bad_input=True)
    from datamix.dedup.warm import start_for  # numba's cached kernels load while earlier steps run

    warming = start_for(pipeline.order(), lambda s: actions[s.name] != "skip")
    run_id = uuid.uuid4().hex[:12]
    pool: dict = {}  # the models this run loads, shared by its steps (datamix.llm.get_model)
    store.start_run(run_id, pipeline.name, pipeline.spec_path)
    result = RunResult(ok=True, steps=[])
    held = _Held(pipeline, actions)
    try:
        with Progress(progress, store_path, {"run_id": run_id, "pipeline": pipeline.name}) as bars, \
                store.writing_behind():
            bars.plan([s.name for s in pipeline.order()])
            for step in pipeline.order():
                entry = REGISTRY[step.kind]
                row = rows[step.name]
                fp = fps[step.name]
                action, reason = decide(pipeline, store, step, fp, row)
                if action == "skip":
                    log(f"skip   {step.name} ({step.kind}): {reason}")
                    bars.mark(step.name, "skipped")
                    continue
                if row is not None and action == "run":
                    log(f"rerun  {step.name} ({step.kind}): {reason}")
                try:
                    if action == "run":
                        # never run here, or changed (config, code, inputs, upstream), or files gone:
                        # the step starts clean, so no output of an old fingerprint (a checkpoint, a
                        # shard, a folder left by another store) is reused
                        discard_outputs(store.recorded_files(step.name) if row else [],
                                        output_folder(store, step.name))
                        if row is not None:
                            store.reset_step(step.name)
                        row = None
                    log(f"{'resume' if row else 'run   '} {step.name} ({step.kind})")
                    if step.kind == "dedup":
                        warming.wait()  # numba from one thread at a time
                    _run_step(pipeline, store, step, entry, fp, run_id, bars, log if verbose else None, log=log, pool=pool,
                              quiet=quiet, fresh=row is None, held=held)
                    bars.mark(step.name, "done")
                except WriteFailed as e:  # an earlier write of this run, run behind the loop
                    bars.mark(e.step, "failed")
                    _write_failed(store, result, e)
                    break
                except (StepError, BadInput) as e:
                    bars.mark(step.name, "failed")
                    result.ok, result.failed_step, result.error = False, step.name, str(e)
                    result.bad_input = isinstance(e, BadInput)
                    break
                except Exception as e:  # a bug or an environment problem: keep the step's committed chunks
                    import traceback

                    bars.mark(step.name, "failed")
                    result.ok, result.failed_step = False, step.name
                    result.error = f"{type(e).__name__}: {e}"
                    # a model folder or data file that is not there is the user's input to fix
                    result.bad_input = isinstance(e, FileNotFoundError)
                    if os.environ.get("DATAMIX_DEBUG"):
                        traceback.print_exc()
                    trace = traceback.format_exc(limit=8)
                    store.later(step.name, "recording its failure",
                                lambda name=step.name: store.finish_step(name, "failed", 0.0, trace))
                    break
            try:  # the last writes: the run is done when they are
                store.flush()
            except WriteFailed as e:
                _write_failed(store, result, e)
    finally:
        warming.wait()
        store.finish_run(run_id, "done" if result.ok else "failed")
        result.steps = store.steps()
        store.close()
    return result


def _write_failed(store: Store, result: RunResult, e: WriteFailed) -> None:
    """A write run behind the loop failed (a commit on a full disk): the step that wrote it failed,
    with what it has committed kept. Reported first, or beside a later step's own failure."""
    if result.ok:
        result.ok, result.failed_step, result.error = False, e.step, f"{type(e.error).__name__}: {e.error}"
        result.bad_input = isinstance(e.error, FileNotFoundError)
    else:
        result.error = f"{result.error}; and before it, {e}"
    store.finish_step(e.step, "failed", 0.0, str(e))


def _use_jemalloc_for_arrow() -> None:
    """Steps gather and filter whole Arrow tables of messages. Arrow's default pool on Linux
    (mimalloc) returns freed pages to the OS eagerly, and the next large allocation pays to
    fault them in again: at 1M samples jemalloc made the core pipeline ~15% faster
    (benchmarks/pipeline.py). A pool the user chose (ARROW_DEFAULT_MEMORY_POOL) is kept."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pass


def _missing_secrets(pipeline: Pipeline, actions: dict[str, str]) -> tuple[str, str] | None:
    """(step, message) for the first step that will run with a model whose key variable is unset."""
    for step in pipeline.order():
        if actions[step.name] == "skip":
            continue
        for name in models_used(step):
            env = getattr(pipeline.models.get(name), "api_key_env", None)
            if env and not os.environ.get(env):
                return step.name, (f"model {name!r} reads its API key from the environment variable {env}, "
                                   f"which is not set; export {env}=... and run again")
    return None


def _run_step(pipeline: Pipeline, store: Store, step: StepConfig, entry, fp: str, run_id: str, bars,
              log_chunk=None, log=print, pool: dict | None = None, quiet: bool = False, fresh: bool = False,
              held: "_Held | None" = None) -> None:
    """Run one step and commit what it yields. The store's writes go through `store.later`: while
    the store writes behind (runner.run), they run in order on the writer's thread and the step
    goes on; a step that reads the store waits for them (Store.con).

    fresh: the step has nothing in the store (never run, or just reset), so it asks the store
    nothing before it runs. held: the rows of the step just before, kept for this one (_Held)."""
    parents = step.parent_steps()
    config, code = step.model_dump(mode="json"), step_code(pipeline, step)
    t0 = time.perf_counter()
    clock = {"writes from": t0}  # when the writer turned to this step's writes (after earlier steps')

    def start() -> None:
        clock["writes from"] = time.perf_counter()
        store.begin_step(step.name, step.kind, fp, config, parents, entry.passthrough, run_id, keeps_ids=entry.keeps_ids)
        store.set_step_code(step.name, code)  # so `plan` can name the file that changed

    store.later(step.name, "starting", start)
    if entry.passthrough:
        def create_view():
            stored, deciders = stored_ancestor(store, parents["input"])
            store.create_passthrough_view(step.name, stored, [step.name, *deciders])

        store.later(step.name, "creating its view", create_view)
    inputs = {label: (held.input(store, p) if held else None) or _input_table(store, p) for label, p in parents.items()}
    holding = held.start(step) if held else None
    output_dir = output_folder(store, step.name)
    total = sum(len(t) for t in inputs.values()) or getattr(step, "num_samples", None)
    ctx = Context(
        step=step.name,
        pipeline_dir=pipeline.base_dir,
        output_dir=output_dir,
        seed=pipeline.seed,
        done_keys=frozenset() if fresh else store.done_keys(step.name),
        models={m: pipeline.models[m] for m in models_used(step) if m in pipeline.models} or dict(pipeline.models),
        cache_get=store.cache_get,
        cache_put=store.cache_put,
        query=lambda sql, params=None: _records(store.con.execute(sql, params or [])),
        log=log,  # a step's warnings (a pre-query template full of whitespace) reach the user
        pool=pool,
        quiet=quiet,
    )
    ctx.memory_limit, ctx.temp_directory = pipeline.memory_settings()
    sp = bars.step(step.name, step.kind, *_progress_unit(step, total, output_dir))
    ctx.progress, ctx.calls_progress = sp.advance, sp.call_progress
    ctx.calls = lambda record: (store.record_calls(run_id, step.name, record), sp.record_call(record))
    if len(parents) == 1:
        parent_step_of: Any = next(iter(parents.values()))
    elif parents:
        parent_step_of = parents
    else:
        parent_step_of = None

    # under the Ray executor a step's rows are Parquet parts beside the store, those its tasks write
    # and those this loop commits (a load's, a generate's), so the steps after it on Ray read them
    # in their own tasks (datamix.executors.parts); the view over them is defined as parts are
    # committed (at the 1st, 2nd, 4th ... part: each definition reads every footer) and at the end
    in_parts = stores_parts(pipeline, step)
    parts_dir = os.path.join(output_dir, "parts")
    numbered = itertools.count(len(ctx.done_keys))  # a resumed step numbers its parts on

    def commit(chunk, rows, decisions, quarantine, metrics, rows_file=None, view=False) -> None:
        n_out = store.commit_chunk(step.name, chunk.key, rows, decisions, quarantine, chunk.rows_in, chunk.files,
                                   parent_step_of, keeps_ids=entry.keeps_ids, metrics=metrics, rows_file=rows_file)
        if view:
            define_view(store, step.name, committed_parts(store, step.name))
        if log_chunk:
            if entry.passthrough:  # it writes no rows: what it kept is its input minus what it dropped
                dropped = _dropped_in(chunk.decisions)
                log_chunk(f"  committed {step.name} chunk {chunk.key}: {chunk.rows_in} rows in, "
                          f"{chunk.rows_in - dropped} kept, {dropped} dropped")
            else:
                log_chunk(f"  committed {step.name} chunk {chunk.key}: {chunk.rows_in} rows in, {n_out} out")

    try:
        chunks = step_chunks(entry, step, inputs, ctx)
        executor = pipeline.executor_of(step.name)
        if executor.type == "ray":  # its batch steps' parts are registered by the executor (datamix.executors.ray)
            from datamix.executors.ray import on_ray

            chunks = on_ray(executor, store, step, entry, inputs, ctx, chunks, log_chunk)
        for chunk in chunks:
            if chunk.key in ctx.done_keys:
                continue  # a step that re-yields a committed key is tolerated, not duplicated
            rows = _arrow(chunk.rows)
            if holding is not None:
                holding.add(rows)
            rows_file, view = None, False
            if in_parts and rows is not None:
                n = next(numbered)
                rows_file, view = driver_part(parts_dir, n), (n + 1) & n == 0  # the view at part 1, 2, 4 ...
            store.later(step.name, f"committing chunk {chunk.key}", functools.partial(
                commit, chunk, rows, _arrow(chunk.decisions), _arrow(chunk.quarantine), _arrow(chunk.metrics),
                rows_file, view))
    except (StepError, BadInput) as e:
        seconds, error = time.perf_counter() - t0, str(e)
        store.later(step.name, "recording its failure", lambda: store.finish_step(step.name, "failed", seconds, error))
        raise
    computed = time.perf_counter()

    def finish() -> None:
        if in_parts and (parts := committed_parts(store, step.name)):
            define_view(store, step.name, parts)
        if entry.passthrough:
            store.set_rows_out(step.name, store.count(step.name))
        elif not store.output_exists(step.name):
            # a step that produced nothing still gets its (empty) table, so SQL on it works
            store.con.execute(f"CREATE TABLE {quote(step.name)} (sample_id VARCHAR)")
        # its time: its own work, then its writes that were left when that was done (which may
        # have run behind the next step's start), not the time they waited behind earlier steps'
        tail_from = max(computed, clock["writes from"])
        store.finish_step(step.name, "done", (computed - t0) + (time.perf_counter() - tail_from))

    store.later(step.name, "finishing", finish)


# The most a run holds of a step's rows for the next step to read (see _Held); under a memory
# budget, no more than a quarter of the budget either.
HOLD_BYTES = 512 * 2**20


class _Held:
    """The rows one step of this run committed, held for the next step that runs when that step
    reads them: it reads them from memory (outputs.HeldInput) instead of from the store, and
    meanwhile their commit, DuckDB compressing them, runs behind it (Store.writing_behind). For
    100k texts of 1.4 KB, the read back from the store cost 0.17-0.25 s and the commit 0.55 s.

    Held only what is the whole output of a step run from its start on this machine (a resumed
    step's earlier chunks are in the store alone), of one schema throughout (chunks of another
    are inserted by name), up to HOLD_BYTES; otherwise the next step reads the store."""

    def __init__(self, pipeline: Pipeline, actions: dict[str, str]):
        self.pipeline, self.actions = pipeline, actions
        limit, _ = pipeline.memory_settings()
        self.limit = min(HOLD_BYTES, limit // 4) if limit else HOLD_BYTES
        self.step: str | None = None
        self.tables: list | None = None

    def start(self, step: StepConfig) -> "_Held | None":
        """Forget what was held (its reader has run) and return self when `step`'s rows are to be held."""
        self.step, self.tables = None, None
        order = self.pipeline.order()
        entry = REGISTRY[step.kind]
        to_run = [s for s in order[order.index(step) + 1:] if self.actions[s.name] != "skip"]
        if (self.actions[step.name] != "run" or entry.passthrough or not to_run
                or step.name not in to_run[0].parent_steps().values()
                or "ray" in (self.pipeline.executor_of(step.name).type, self.pipeline.executor_of(to_run[0].name).type)):
            return None
        self.step, self.tables = step.name, []
        return self

    def add(self, rows) -> None:
        if self.tables is None or rows is None:
            return
        if "parent_ids" in rows.schema.names:  # the stored table has no such column (Store.commit_chunk)
            rows = rows.drop_columns(["parent_ids"])
        if (self.tables and not rows.schema.equals(self.tables[0].schema)) or \
                sum(t.nbytes for t in self.tables) + rows.nbytes > self.limit:
            self.step, self.tables = None, None
            return
        self.tables.append(rows)

    def input(self, store: Store, name: str) -> InputTable | None:
        """The held rows of step `name` as the next step's input, or None (read the store)."""
        if name != self.step or not self.tables:
            return None
        import pyarrow as pa

        from datamix.outputs import HeldInput

        return HeldInput(store, name, pa.concat_tables(self.tables) if len(self.tables) > 1 else self.tables[0])


def _progress_unit(step: StepConfig, total: int | None, output_dir: str) -> tuple:
    """(total, unit, model calls expected, poll) for a step's progress: rows, and model calls
    for the kinds that call models; a train step counts training steps from its metrics file."""
    if step.kind == "train":
        metrics = os.path.join(output_dir, "metrics.jsonl")

        def poll() -> int:
            if not os.path.exists(metrics):
                return 0
            with open(metrics, "rb") as f:
                return sum(1 for _ in f)

        return getattr(step, "options", {}).get("max_steps"), "training steps", None, poll
    return total, "rows", step.model_calls(total), None


def _dropped_in(decisions) -> int:
    """How many input samples a chunk's decisions dropped."""
    if decisions is None:
        return 0
    kept = decisions["kept"] if hasattr(decisions, "height") else decisions.column("kept").to_pylist()
    return sum(1 for k in kept if not k)


def _records(cursor) -> list[dict]:
    cols = [d[0] for d in cursor.description]
    return [dict(zip(cols, r)) for r in cursor.fetchall()]


def _arrow(frame):
    if frame is None:
        return None
    if hasattr(frame, "to_arrow"):  # polars
        return frame.to_arrow()
    return frame


def _input_table(store: Store, name: str) -> InputTable:
    return StoreInput(store, name)
