"""Compile the MinHash kernels ahead of the first run: `python -m datamix.dedup.warm`.

numba compiles a kernel on its first call and caches the machine code beside the
module (`cache=True`). Left to the first `datamix run`, that is 20-80 s of a quickstart
on 2 cores; `make setup` runs this once at install, so the first run loads cached code.
The calls cover the kernel variants a pipeline reaches: ASCII and other text, word and
character shingles, every verification mode, and a reference set (decontamination).
"""

from __future__ import annotations

import time


def warm_kernels() -> float:
    """Run MinHash dedup on a few texts in each configuration; returns the seconds it took."""
    import numpy as np

    from datamix.dedup.minhash import MinHashConfig, find_duplicates

    t0 = time.perf_counter()
    texts = ["the cat sat on the mat today", "the cat sat on the mat today!", "un café très chaud, s'il vous plaît",
             "un café très chaud s'il vous plaît", "completely different words here", ""]
    priority = np.arange(len(texts), dtype=np.float64)
    for unit in ("word", "char"):
        for verify in ("hybrid", "jaccard", "signature", "none"):
            cfg = MinHashConfig(method="minhash", unit=unit, ngram=2 if unit == "word" else 5, verify=verify)
            find_duplicates(texts, priority, cfg)
            find_duplicates(texts, priority, cfg, reference=texts[:2])
    return time.perf_counter() - t0


if __name__ == "__main__":
    print(f"MinHash kernels compiled and cached in {warm_kernels():.1f} s")
