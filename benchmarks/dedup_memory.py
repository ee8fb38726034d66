"""Peak memory of MinHash dedup on 1M documents (issue 4: "1M documents fit in a few GB").

    python benchmarks/dedup_memory.py               # 1M docs of 100 words, half exact copies
    python benchmarks/dedup_memory.py --docs 200000
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import polars as pl

from datamix.dedup.minhash import MinHashConfig, find_duplicates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--words", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(5000)])
    half = args.docs // 2
    distinct = pl.Series([" ".join(row) for row in vocab[rng.integers(0, 5000, size=(half, args.words))]])
    texts = pl.concat([distinct, distinct.gather(rng.integers(0, half, args.docs - half))])
    corpus_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    removed = find_duplicates(texts, np.arange(len(texts), dtype=np.float64), MinHashConfig(method="minhash"))
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(texts):,} docs ({texts.str.len_bytes().sum() / 1e9:.2f} GB of text): removed {len(removed):,} "
          f"in {seconds:.1f} s; peak RSS {peak_mb:,.0f} MB, of which building the corpus {corpus_mb:,.0f} MB")


if __name__ == "__main__":
    main()
