"""Peak memory and time of MinHash dedup, in memory and out of core, at 1M, 3M and 10M documents.

    flock /tmp/datamix-bench.lock python benchmarks/dedup_memory.py                 # 1M and 3M, both paths
    flock /tmp/datamix-bench.lock python benchmarks/dedup_memory.py --docs 1000000 --repeat 3  # alternating
    flock /tmp/datamix-bench.lock python benchmarks/dedup_memory.py --docs 10000000 --paths ooc
    python benchmarks/dedup_memory.py --docs 200000 --memory-limit 2GB

The corpus (documents of 100 words from a 5,000-word vocabulary: half distinct, a third
of the rest exact copies of one of them, two thirds copies with 1 to 3 words replaced)
is first written to a Parquet file (the realistic starting point), generated
document by document from a counter-based hash, so no size holds it in memory. Each
(size, path) runs in its own child process, so sizes do not contaminate each other's
peak; the peak RSS reported is that child's (os.wait4), interpreter and libraries
included. The in-memory path reads the whole text column, as the dedup step does
today; the out-of-core path reads the file in batches (datamix.dedup.ooc.ParquetSource).
At every size where both paths run, their removal frames (removed index, dup_of,
similarity) are compared and must be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = 100
VOCAB = 5000
BATCH = 250_000  # documents generated per write


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a counter-based hash, so any document can be regenerated alone."""
    x = x.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _words(docs: np.ndarray) -> np.ndarray:
    """(len(docs), WORDS) word ids of distinct documents `docs`."""
    cells = docs[:, None].astype(np.uint64) * np.uint64(WORDS) + np.arange(WORDS, dtype=np.uint64)
    return (_mix(cells) % np.uint64(VOCAB)).astype(np.int64)


def _batch_words(first: int, count: int, n: int) -> np.ndarray:
    half = n // 2
    docs = np.arange(first, first + count, dtype=np.int64)
    source = docs.copy()
    copy = docs >= half
    source[copy] = (_mix(docs[copy] + np.int64(n) * 7) % np.uint64(half)).astype(np.int64)
    words = _words(source)
    # two thirds of the copies get 1-3 words replaced (J ~ 0.90, 0.81, 0.73): near-duplicates that
    # hybrid verification checks against the exact Jaccard when they fall near the threshold
    h = _mix(docs + np.int64(n) * 13)
    edits = np.where(copy & (h % np.uint64(3) != 0), (h >> np.uint64(8)) % np.uint64(3) + np.uint64(1), 0)
    for e in range(3):
        rows = np.flatnonzero(edits > e)
        pos = ((h[rows] >> np.uint64(16 + 8 * e)) % np.uint64(WORDS)).astype(np.int64)
        words[rows, pos] = VOCAB  # a word outside the vocabulary
    return words


def write_corpus(path: str, n: int) -> None:
    """n documents of WORDS words to a Parquet file, BATCH at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    vocab = pa.array([f"w{i}" for i in range(VOCAB)] + ["planted"])
    writer = None
    tmp = path + ".part"
    for first in range(0, n, BATCH):
        words = _batch_words(first, min(BATCH, n - first), n)
        offsets = pa.array(np.arange(0, words.size + 1, WORDS, dtype=np.int32))
        docs = pc.binary_join(pa.ListArray.from_arrays(offsets, vocab.take(pa.array(words.reshape(-1)))), " ")
        batch = pa.table({"text": docs})
        if writer is None:
            writer = pq.ParquetWriter(tmp, batch.schema, compression="snappy")
        writer.write_table(batch, row_group_size=65_536)
    writer.close()
    os.replace(tmp, path)


def child(args) -> None:
    """One (size, path) run: dedup the corpus, write the removal frame, print a JSON line."""
    import polars as pl

    from datamix.dedup import ooc
    from datamix.dedup.minhash import MinHashConfig, find_duplicates

    t0 = time.perf_counter()
    cfg = MinHashConfig(method="minhash", out_of_core=args.path == "ooc")
    stats: dict = {}
    if args.path == "memory":
        texts = pl.read_parquet(args.corpus)["text"]
        read = time.perf_counter() - t0
        removed = find_duplicates(texts, np.arange(len(texts), dtype=np.float64), cfg, stats=stats)
    else:
        source = ooc.ParquetSource(args.corpus)
        read = 0.0
        budget = ooc.Budget(limit=ooc.parse_size(args.memory_limit), temp_directory=None)
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="minhash-") as folder:
            removed = ooc.find_duplicates_ooc(source, np.arange(len(source), dtype=np.float64), cfg, folder,
                                              stats=stats, budget=budget, log=lambda m: print(m, file=sys.stderr))
    seconds = time.perf_counter() - t0
    removed.write_parquet(args.out)
    print(json.dumps({"seconds": seconds, "read": read, "removed": len(removed), **stats}))


def run_child(corpus: str, path: str, memory_limit: str, workdir: str, out: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--corpus", corpus, "--path", path, "--memory-limit", memory_limit,
           "--workdir", workdir, "--out", out]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{path} run failed (status {status}): {output}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_gb"] = usage.ru_maxrss * 1024 / 1e9
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[1_000_000, 3_000_000])
    ap.add_argument("--paths", nargs="+", choices=["memory", "ooc"], default=["memory", "ooc"])
    ap.add_argument("--memory-limit", default="4GB", help="the out-of-core path's budget (pipeline memory_limit)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every path, alternating (the medians are compared)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "datamix-dedup-memory"),
                    help="corpora (kept between runs) and work files")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    os.makedirs(args.workdir, exist_ok=True)
    print(f"memory limit of the out-of-core path: {args.memory_limit}; work files in {args.workdir}")
    for n in args.docs:
        corpus = os.path.join(args.workdir, f"corpus-{n}.parquet")
        if not os.path.exists(corpus):
            t0 = time.perf_counter()
            write_corpus(corpus, n)
            print(f"wrote {corpus} ({os.path.getsize(corpus) / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s")
        times: dict[str, list[float]] = {path: [] for path in args.paths}
        for rep in range(args.repeat):  # the paths alternate, so a busy spell hits both
            for path in args.paths:
                out = os.path.join(args.workdir, f"removed-{n}-{path}.parquet")
                load = os.getloadavg()[0]
                r = run_child(corpus, path, args.memory_limit, args.workdir, out)
                times[path].append(r["seconds"])
                print(f"{n:>11,} docs  {path:<6}  {r['seconds']:7.1f} s ({r['seconds'] / n * 1e6:5.1f} us/doc)  "
                      f"peak RSS {r['peak_rss_gb']:5.2f} GB  removed {r['removed']:,}  "
                      f"candidates {r.get('candidate_pairs', 0):,}  exact {r.get('exact_pairs', 0):,}  "
                      f"load {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
        if len(times) == 2:
            import polars as pl

            same = pl.read_parquet(os.path.join(args.workdir, f"removed-{n}-memory.parquet")).equals(
                pl.read_parquet(os.path.join(args.workdir, f"removed-{n}-ooc.parquet")))
            pairs = [o / m for m, o in zip(times["memory"], times["ooc"])]
            print(f"{n:>11,} docs  out-of-core / in-memory time {float(np.median(times['ooc'])):.1f} / "
                  f"{float(np.median(times['memory'])):.1f} s = {np.median(times['ooc']) / np.median(times['memory']):.2f}x"
                  f" (medians of {args.repeat}; each round: {', '.join(f'{p:.2f}x' for p in pairs)}); "
                  f"removal frames identical: {same}", flush=True)
            if not same:
                raise SystemExit("the two paths removed different documents")


if __name__ == "__main__":
    main()
