"""The Ray executor against the local one, and 1 against 2 Ray workers, on the same batch steps.

N synthetic chats (default 1M, benchmarks/pipeline.py's generator) are loaded once per arm,
under the arm's executor, into the arm's base store (not timed); each round starts from a copy
of it and runs the same three `batch` steps:

    clean: filter (>= 3 words, no listed phrase)          decisions only
    sized: map (two DuckDB expressions per row)           rows: a table locally, Parquet parts on Ray
    long:  filter (>= 5 words, no listed phrase) of sized decisions only

On Ray the load's rows are Parquet parts too, so every step's tasks read their own input
(`clean` and `sized` the load's parts, less clean's drops; `long` sized's parts). With
--table-input the ray arms' loads run under the local executor, as a store built by a local
run would be: then `clean` and `sized` read a stored table, which the driver reads and puts
into Ray's object store before their tasks start.

Arms: `local` (the runner's loop), `ray-1` and `ray-2` (the Ray executor on a local Ray of 1
and of 2 CPUs, started here as datamix starts one, with its workers' imports done before the
arm is timed; the start is printed on its own: a run pays it once). Arms alternate within
each round, in a rotating order, so load from other processes falls on all of them. Reported: each step's seconds from dm.steps (the
runner's own timing of the step), per arm the median over rounds, and the ratios
ray-2 / local (the executor's overhead on one machine; target <= 1.5x) and ray-1 / ray-2
(the speed-up of a second worker: ~2x on 2 free cores; a step past 2x means one worker
spent more CPU on the same rows than two did). Beside the times, the CPU
seconds of the whole machine over each run (/proc/stat) and the driver's own: how near the
cores are to full, and how much of the work is the driver's, which a second worker does not
share. Every arm's outputs are checked to be the same (count and id hash of `sized`, dropped
count of `clean`, id hash of what `long` dropped).

    flock /tmp/datamix-bench.lock python benchmarks/ray_executor.py                # 1M rows, 2 rounds
    flock /tmp/datamix-bench.lock python benchmarks/ray_executor.py --rows 200000 --repeat 3
    flock /tmp/datamix-bench.lock python benchmarks/ray_executor.py --table-input      # a stored table's steps
    flock /tmp/datamix-bench.lock python benchmarks/ray_executor.py --signatures 200000   # MinHash signing only
    flock /tmp/datamix-bench.lock python benchmarks/ray_executor.py --dedup 200000        # the whole dedup step

--signatures N: MinHash signatures of N random 100-word documents in a Parquet file (row groups
of 10,000) by Ray tasks that read their own row groups (100,000 documents a task, the step's
default chunk_size) and write band-key Parquet and
signatures (datamix.executors.ray_minhash.sign_parquet, what the dedup step runs under ray),
one task at a time and two, interleaved; each task's kernels use one thread (the CPU it
reserved). For reference, one process signing the same file with one kernel thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.pipeline import make_data  # noqa: E402

STEPS = """
name: bench
store: {store}
executor: {executor}
steps:
  - {{name: general, kind: load, path: ../general.jsonl}}
  - name: clean
    kind: filter
    input: general
    rules:
      - {{rule: length, field: response, min: 3, unit: words}}
      - {{rule: phrases, field: response, phrases: ["as an ai language model", "i cannot assist"]}}
  - name: sized
    kind: map
    input: clean
    columns: {{response_chars: "length(messages[-1].content)", turns: "len(messages)"}}
  - name: long
    kind: filter
    input: sized
    rules:
      - {{rule: length, field: response, min: 5, unit: words}}
      - {{rule: phrases, field: response, phrases: ["as an ai language model", "i cannot assist"]}}
"""

# the timed steps, and what the report calls them
STEPS_TIMED = [("clean", "filter of load"), ("sized", "map of load"), ("long", "filter of map")]

# ray-1 and ray-2 run the same executor (tasks as the CPUs allow) on a Ray of 1 and of 2 CPUs:
# one worker against two, with no cap of Ray Data's on either (`concurrency` would add one)
ARMS = {"local": "local", "ray-1": "{type: ray, address: local}", "ray-2": "{type: ray, address: local}"}
RAY_CPUS = {"ray-1": 1, "ray-2": 2}


def write_yaml(folder: str, arm: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "bench.yaml")
    with open(path, "w") as f:
        f.write(STEPS.format(store="store.duckdb", executor=ARMS[arm]))
    return path


def load_base(root: str, arm: str, table_input: bool) -> float:
    """The arm's folder with the load done under the arm's executor (or, table_input, the local
    one), its store kept as base.duckdb. A Ray load's parts stay in the folder, where the view
    reads them (by absolute path): each round copies base.duckdb back to the same place."""
    from datamix import runner, spec

    folder = os.path.join(root, arm)
    shutil.rmtree(folder, ignore_errors=True)
    p = spec.load(write_yaml(folder, "local" if table_input else arm))
    p.steps = p.steps[:1]  # the load alone
    t0 = time.perf_counter()
    if not runner.run(p, p.store_path(), log=lambda m: None).ok:
        raise SystemExit(f"{arm}: the base load failed")
    seconds = time.perf_counter() - t0
    shutil.copy(os.path.join(folder, "store.duckdb"), os.path.join(folder, "base.duckdb"))
    return seconds


def run_arm(root: str, arm: str) -> dict:
    from datamix import runner, spec
    from tests.helpers import query

    folder = os.path.join(root, arm)
    base = os.path.join(folder, "base.duckdb")
    path = write_yaml(folder, arm)
    # the same starting point: the load done (the runner discards the other steps' old outputs)
    shutil.copy(base, os.path.join(folder, "store.duckdb"))
    p = spec.load(path)
    t0, busy0, driver0 = time.perf_counter(), machine_busy(), time.process_time()
    result = runner.run(p, p.store_path(), log=lambda m: None)
    wall = time.perf_counter() - t0
    busy, driver = machine_busy() - busy0, time.process_time() - driver0
    if not result.ok:
        raise SystemExit(f"{arm}: {result.error}")
    store = os.path.join(folder, "store.duckdb")
    seconds = dict(query(store, "SELECT name, seconds FROM dm.steps WHERE name IN ('clean', 'sized', 'long')"))
    load_run = "SELECT run_id FROM dm.steps WHERE name = 'general'"
    if query(store, load_run) != query(base, load_run):  # e.g. the base store made by other code
        raise SystemExit("the load step ran again: the arms would not start from the same point")
    digest = query(store, "SELECT (SELECT count(*) FROM sized), (SELECT sum(hash(sample_id)) FROM sized), "
                          "(SELECT count(*) FROM dm.decisions WHERE step = 'clean' AND NOT kept), "
                          "(SELECT sum(hash(sample_id)) FROM dm.decisions WHERE step = 'long' AND NOT kept)")[0]
    return {**seconds, "wall": wall, "busy": busy, "driver": driver, "digest": digest}


def settle(quiet: float = 0.1, most: float = 20.0) -> None:
    """Wait (at most `most` seconds) until the machine used under `quiet` CPU seconds in half a second."""
    end = time.perf_counter() + most
    while time.perf_counter() < end:
        before = machine_busy()
        time.sleep(0.5)
        if machine_busy() - before < quiet:
            return


def machine_busy() -> float:
    """CPU seconds every process on the machine has used so far (Linux /proc/stat: all but idle
    and iowait): over a run, the driver's, the workers', Ray's own and anyone else's."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def ray_of(cpus: int) -> None:
    """A local Ray of `cpus` CPUs, started as datamix.executors.ray starts one (a task's libraries
    use the CPU it holds), with its workers' imports done; the Ray running is kept if its size."""
    import ray
    import ray.data

    from datamix.executors import RayExecutor
    from datamix.executors import ray as executor

    if ray.is_initialized():
        if ray.cluster_resources().get("CPU") == cpus:
            return
        ray.shutdown()
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, object_store_memory=2 * 2**30, include_dashboard=False,
             log_to_driver=False, configure_logging=False,
             # (code from before datamix.executors.ray.worker_env, given by PYTHONPATH, starts it bare)
             runtime_env=getattr(executor, "worker_env", lambda spec: None)(RayExecutor(type="ray", address="local")))
    started = time.perf_counter() - t0
    executor.connect(RayExecutor(type="ray", address="local"))  # Ray Data's settings (its logs off), as a run has them
    # the shape of the executor's datasets (blocks put by the driver, Ray Data's metadata tasks
    # on them, one map), so the workers it keeps are those a step finds
    import pyarrow as pa

    blocks = [ray.put(pa.table({"x": [i]})) for i in range(8)]
    for _ in range(2):
        ray.data.from_arrow_refs(blocks).map_batches(_warm, batch_size=None, num_cpus=1).materialize()
    settle()  # Ray Data's own actors (stats, autoscaling requests) start behind its first dataset
    print(f"ray start ({cpus} CPU): {started:.1f}s, workers' imports (datamix, duckdb, polars) "
          f"{time.perf_counter() - t0 - started:.1f}s; not timed", flush=True)


def _warm(batch):
    """Import in each worker what a slice needs, so the first timed arm does not pay it."""
    import datamix.executors.parts  # noqa: F401
    import datamix.steps.filter  # noqa: F401
    import datamix.steps.map  # noqa: F401

    return batch


def signatures_bench(n: int, repeat: int) -> None:
    """MinHash signing of a Parquet file of texts (what the dedup step spills its texts to) on 1
    and 2 Ray tasks at once (datamix.executors.ray_minhash.sign_parquet: each task reads its own
    row groups), and in one process on one thread reading the same file
    (datamix.dedup.ooc._sign, the local out-of-core stage). Every arm writes signatures.npy and
    band-key files; the signatures are checked equal."""
    import numba
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datamix.dedup import ooc
    from datamix.dedup.minhash import MinHashConfig
    from datamix.executors import RayExecutor
    from datamix.executors.ray_minhash import sign_parquet

    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    root = tempfile.mkdtemp(prefix="dm-ray-sig-")
    path = os.path.join(root, "texts.parquet")
    writer = None
    for first in range(0, n, 100_000):
        batch = pa.table({"text": [" ".join(vocab[rng.integers(0, len(vocab), 100)]) for _ in range(min(100_000, n - first))]})
        writer = writer or pq.ParquetWriter(path, batch.schema, compression="zstd")
        writer.write_table(batch, row_group_size=10_000)  # a task's share: a row group or more
    writer.close()
    cfg = MinHashConfig(method="minhash")
    chunk = cfg.chunk_size  # documents per task, as the dedup step signs them (100,000 by default)

    def run(arm: str, folder: str) -> None:
        os.makedirs(folder)
        with ooc._SignatureWriter(os.path.join(folder, "signatures.npy"), n, cfg.num_perm) as out:
            if arm.startswith("ray"):
                sign_parquet(path, "text", cfg, folder, chunk, RayExecutor(type="ray", concurrency=int(arm[-1])), out)
            else:
                ooc._sign(ooc.ParquetSource(path), "docs", cfg, folder, chunk, out, None, {})

    try:
        times: dict[str, list[float]] = {"ray-1": [], "ray-2": [], "one process, 1 thread": []}
        run("ray-2", os.path.join(root, "warm"))  # workers import and load the kernels once
        numba.set_num_threads(1)
        run("local", os.path.join(root, "warm-local"))  # and this process
        reference = None
        for r in range(repeat):
            for arm in (["ray-1", "ray-2"] if r % 2 == 0 else ["ray-2", "ray-1"]) + ["one process, 1 thread"]:
                folder = os.path.join(root, f"{arm.split(',')[0]}-{r}")
                t0 = time.perf_counter()
                run(arm, folder)
                times[arm].append(time.perf_counter() - t0)
                sig = np.load(os.path.join(folder, "signatures.npy"))
                reference = sig if reference is None else reference
                if not np.array_equal(sig, reference):
                    raise SystemExit(f"{arm}: signatures differ")
                shutil.rmtree(folder)
                print(f"round {r + 1} signatures {arm:22s} {times[arm][-1]:6.2f}s  "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        med = {arm: statistics.median(t) for arm, t in times.items()}
        print(f"signatures of {n:,} docs from Parquet, medians: " + ", ".join(f"{a} {t:.2f}s" for a, t in med.items()))
        print(f"ray-1 / ray-2 (speed-up of a 2nd worker, ~2x at best): {med['ray-1'] / med['ray-2']:.2f}x; "
              f"ray-2 / one process: {med['ray-2'] / med['one process, 1 thread']:.2f}x; signatures equal in every run")
    finally:
        shutil.rmtree(root, ignore_errors=True)


DEDUP = """
name: bench
store: store.duckdb
executor: {executor}
steps:
  - {{name: docs, kind: load, path: ../docs.jsonl}}
  - {{name: dd, kind: dedup, input: docs, method: minhash, fields: [instruction], out_of_core: {ooc}}}
"""
DEDUP_ARMS = {"local, in memory": ("local", "auto"), "local, out of core": ("local", "true"),
              "ray (2 tasks at once)": ("{type: ray, address: local, concurrency: 2}", "auto")}


def dedup_bench(n: int, repeat: int) -> None:
    """The whole MinHash dedup step (load done once, copied) under each arm, interleaved in a
    rotating order: dm.steps' seconds for the step, and its decisions compared across arms."""
    import json

    import numpy as np

    from datamix import runner, spec
    from tests.helpers import query

    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    root = tempfile.mkdtemp(prefix="dm-ray-dedup-")
    try:
        with open(os.path.join(root, "docs.jsonl"), "w") as f:
            prev = None
            for i in range(n):
                words = vocab[rng.integers(0, len(vocab), 100)]
                if i % 10 == 9:  # every tenth a near-copy of the one before (one word changed)
                    words = prev.copy()
                    words[rng.integers(0, 100)] = "changed"
                prev = words
                f.write(json.dumps({"messages": [{"role": "user", "content": " ".join(words)},
                                                 {"role": "assistant", "content": f"answer {i}"}]}) + "\n")

        def yaml_for(arm: str) -> str:
            folder = os.path.join(root, arm.split()[0] + "-" + str(abs(hash(arm)) % 1000))
            os.makedirs(folder, exist_ok=True)
            executor, ooc = DEDUP_ARMS[arm]
            with open(os.path.join(folder, "bench.yaml"), "w") as f:
                f.write(DEDUP.format(executor=executor, ooc=ooc))
            return os.path.join(folder, "bench.yaml")

        base = spec.load(yaml_for("local, in memory"))
        base.steps = base.steps[:1]
        if not runner.run(base, base.store_path(), log=lambda m: None).ok:
            raise SystemExit("the base load failed")
        base_store = base.store_path()
        shutil.move(base_store, os.path.join(root, "base.duckdb"))
        times: dict[str, list[float]] = {arm: [] for arm in DEDUP_ARMS}
        digests: dict[str, set] = {arm: set() for arm in DEDUP_ARMS}
        order = list(DEDUP_ARMS)
        t0 = time.perf_counter()  # workers start, import and load the kernels once per run: not timed
        shutil.copy(os.path.join(root, "base.duckdb"), os.path.join(root, "warm.duckdb"))
        p = spec.load(yaml_for("ray (2 tasks at once)"))
        if not runner.run(p, os.path.join(root, "warm.duckdb"), log=lambda m: None).ok:
            raise SystemExit("the warm-up run failed")
        print(f"ray warm-up run (worker start, imports, kernels), once per run: {time.perf_counter() - t0:.1f}s")
        for r in range(repeat):
            for arm in order:
                path = yaml_for(arm)
                store = os.path.join(os.path.dirname(path), "store.duckdb")
                shutil.copy(os.path.join(root, "base.duckdb"), store)
                p = spec.load(path)
                load = os.getloadavg()[0]
                result = runner.run(p, p.store_path(), log=lambda m: None)
                if not result.ok:
                    raise SystemExit(f"{arm}: {result.error}")
                times[arm].append(query(store, "SELECT seconds FROM dm.steps WHERE name = 'dd'")[0][0])
                digests[arm].add(query(store, "SELECT count(*), sum(hash(sample_id, related_id, score)) "
                                              "FROM dm.decisions WHERE step = 'dd'")[0])
                print(f"round {r + 1} dedup {arm:22s} {times[arm][-1]:6.2f}s  (load average {load:.1f})", flush=True)
            order = order[1:] + order[:1]
        same = len(set().union(*digests.values())) == 1
        print(f"decisions identical across arms and rounds: {same} {sorted(set().union(*digests.values()))}")
        med = {arm: statistics.median(t) for arm, t in times.items()}
        print(f"dedup step of {n:,} docs, medians: " + ", ".join(f"{a} {t:.2f}s" for a, t in med.items()))
        ray_arm = "ray (2 tasks at once)"
        print(f"ray / local in memory: {med[ray_arm] / med['local, in memory']:.2f}x; "
              f"ray / local out of core: {med[ray_arm] / med['local, out of core']:.2f}x")
        if not same:
            raise SystemExit("decisions differ across arms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2, help="rounds; every arm runs once per round")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--table-input", action="store_true", help="the ray arms' loads by the local executor: their "
                                                                "rows in a table, which the driver reads for clean "
                                                                "and sized")
    ap.add_argument("--signatures", type=int, default=0, help="instead: MinHash signing of this many documents")
    ap.add_argument("--dedup", type=int, default=0, help="instead: the whole MinHash dedup step on this many "
                                                          "documents, local (in memory, out of core) vs ray")
    args = ap.parse_args()
    import ray
    import ray.data

    if args.dedup:
        ray.init(address="local", num_cpus=2, object_store_memory=2 * 2**30, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        try:
            dedup_bench(args.dedup, args.repeat)
        finally:
            ray.shutdown()
        return
    if args.signatures:
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, object_store_memory=2 * 2**30, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        print(f"ray start (2 CPUs): {time.perf_counter() - t0:.1f}s; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        try:
            signatures_bench(args.signatures, args.repeat)
        finally:
            ray.shutdown()
        return

    root = tempfile.mkdtemp(prefix="dm-ray-bench-")
    try:
        make_data(root, args.rows, 1)
        loads = {arm: load_base(root, arm, args.table_input) for arm in ARMS}
        print(f"{args.rows:,} chats loaded into each arm's base store (not timed): "
              + ", ".join(f"{arm} {t:.1f}s" for arm, t in loads.items())
              + (" (all by the local executor: --table-input)" if args.table_input else "")
              + f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        order = list(ARMS)
        for r in range(args.repeat):
            for arm in order:
                if arm in RAY_CPUS:
                    ray_of(RAY_CPUS[arm])
                load = os.getloadavg()[0]
                out = run_arm(root, arm)
                results[arm].append(out)
                print(f"round {r + 1} {arm:6s} " + "  ".join(f"{name} {out[step]:6.2f}s" for step, name in STEPS_TIMED)
                      + f"  run {out['wall']:6.2f}s  CPU: machine {out['busy']:5.1f}s, driver {out['driver']:5.1f}s  "
                      f"(load average {load:.1f})", flush=True)
            order = order[1:] + order[:1]
        digests = {arm: {o["digest"] for o in outs} for arm, outs in results.items()}
        same = len({d for ds in digests.values() for d in ds}) == 1
        print(f"outputs identical across arms and rounds: {same}")
        keys = [step for step, _ in STEPS_TIMED] + ["wall", "busy", "driver"]
        med = {arm: {k: statistics.median(o[k] for o in outs) for k in keys} for arm, outs in results.items()}
        for arm in med:
            med[arm]["steps"] = sum(med[arm][step] for step, _ in STEPS_TIMED)
        columns = STEPS_TIMED + [("steps", "all steps")]
        print("\nmedian seconds " + "".join(f"{name:>16s}" for _, name in columns)
              + "      run  CPU: machine  driver  machine busy")
        for arm, m in med.items():
            print(f"  {arm:12s} " + "".join(f"{m[step]:16.2f}" for step, _ in columns)
                  + f" {m['wall']:8.2f} {m['busy']:11.1f} {m['driver']:7.1f} {m['busy'] / (m['wall'] * os.cpu_count()):9.0%}")
        for label, a, b in (("ray-2 / local (overhead on one machine, target <= 1.5x)", "ray-2", "local"),
                            ("ray-1 / ray-2 (speed-up of a 2nd worker, ~2x at best)", "ray-1", "ray-2")):
            print(f"\n{label}: " + ", ".join(f"{name} {med[a][step] / med[b][step]:.2f}x" for step, name in columns))
        if not same:
            raise SystemExit(f"outputs differ: {digests}")
    finally:
        ray.shutdown()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
