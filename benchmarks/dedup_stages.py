"""Stage by stage: where MinHash dedup spends its time, in memory and out of core.

    flock /tmp/datamix-bench.lock python benchmarks/dedup_stages.py --docs 1000000
    flock /tmp/datamix-bench.lock python benchmarks/dedup_stages.py --docs 1000000 --paths ooc --profile

Reads the corpus benchmarks/dedup_memory.py wrote (run that first). The in-memory path is
timed around the calls minhash.find_duplicates makes, in its order (read, UTF-8 buffers,
signatures, LSH candidates, verification, removal records); the out-of-core path prints its
own stage lines (datamix.dedup.ooc). --profile adds cProfile's top functions. For where the
time goes, not for the ratio: benchmarks/dedup_memory.py alternates the whole paths.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time

import numpy as np


def in_memory(corpus: str) -> None:
    import polars as pl

    from datamix.dedup import clusters, lsh, minhash as mh

    cfg = mh.MinHashConfig(method="minhash", out_of_core=False)
    stats: dict = {}
    t = [time.perf_counter()]

    def lap(what: str) -> None:
        t.append(time.perf_counter())
        print(f"  {what} in {t[-1] - t[-2]:.2f} s", flush=True)

    texts = pl.read_parquet(corpus)["text"]
    lap(f"read {len(texts):,} texts")
    n = len(texts)
    utf8 = mh._Utf8(texts)
    lap("UTF-8 buffers")
    sig = mh._signatures_of_rows(utf8, 0, n, cfg, None, stats)
    lap("signed")
    left, right = lsh.candidate_pairs(sig, *cfg.band_rows())
    lap(f"{len(left):,} candidate pairs")
    similarity = mh._PairSimilarity(sig, texts, None, cfg, stats, utf8)
    none = np.zeros(0, np.int64)
    pairs = mh.verified_pairs(similarity, n, left, right, none, none, cfg, stats)
    lap(f"{stats['verified_pairs']:,} verified pairs ({stats['exact_pairs']:,} exact)")
    removed = clusters.removal_frame(n, np.arange(n, dtype=np.float64), *pairs,
                                     clusters.answering_verified_pairs(similarity, *pairs[:3]))
    lap(f"{len(removed):,} removed")
    print(f"  total {t[-1] - t[0]:.2f} s")


def out_of_core(corpus: str, memory_limit: str, workdir: str) -> None:
    from datamix.dedup import ooc
    from datamix.dedup.minhash import MinHashConfig

    t0 = time.perf_counter()
    source = ooc.ParquetSource(corpus)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="stages-") as folder:
        removed = ooc.find_duplicates_ooc(source, np.arange(len(source), dtype=np.float64),
                                          MinHashConfig(method="minhash", out_of_core=True), folder,
                                          budget=ooc.Budget(limit=ooc.parse_size(memory_limit)), log=print)
    print(f"  total {time.perf_counter() - t0:.2f} s, {len(removed):,} removed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--paths", nargs="+", choices=["memory", "ooc"], default=["memory", "ooc"])
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "datamix-dedup-memory"))
    ap.add_argument("--profile", action="store_true", help="cProfile's 25 functions with the most own time")
    args = ap.parse_args()
    corpus = os.path.join(args.workdir, f"corpus-{args.docs}.parquet")
    if not os.path.exists(corpus):
        sys.exit(f"{corpus} is not there: run benchmarks/dedup_memory.py --docs {args.docs} first")
    if len(args.paths) > 1:  # each path in its own process: what one leaves resident shrinks the other's budget
        for path in args.paths:
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--paths", path], check=True)
        return
    print(f"load average {os.getloadavg()[0]:.1f}")
    for path in args.paths:
        print(f"{path}:")
        prof = cProfile.Profile() if args.profile else None
        if prof:
            prof.enable()
        in_memory(corpus) if path == "memory" else out_of_core(corpus, args.memory_limit, args.workdir)
        if prof:
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())


if __name__ == "__main__":
    main()
