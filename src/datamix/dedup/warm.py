"""Compile the MinHash kernels ahead of the first run: `python -m datamix.dedup.warm`.

numba compiles a kernel on its first call and caches the machine code beside the
module (`cache=True`). Left to the first `datamix run`, that is 20-80 s of a quickstart
on 2 cores; `make setup` runs this once at install, so the first run loads cached code.
The calls cover the kernel variants a pipeline reaches: ASCII and other text, word and
character shingles, every verification mode, and a reference set (decontamination).
"""

from __future__ import annotations

import threading
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


class Warming:
    """numba's cached MinHash kernels loading in a background thread while a run's earlier
    steps work (`start_for`). Even cached, numba's first use costs ~1.7 s on a quiet core (it
    imports its lowering registries, then loads each kernel), a fixed cost of every run with a
    MinHash step. The runner calls `wait()` before a dedup step starts, so numba is never used
    from two threads at once, and at the end of the run, so no thread outlives it."""

    def __init__(self, configs: list) -> None:
        self.thread = None
        if configs:
            self.thread = threading.Thread(target=self._load, args=(configs,), name="datamix-warm", daemon=True)
            self.thread.start()

    @staticmethod
    def _load(configs: list) -> None:
        try:
            import numpy as np

            from datamix.dedup.minhash import find_duplicates

            texts = ["one two three four five six seven", "one two three four five six seven!"]
            for cfg, with_reference in configs:
                # two tiny texts through the step's own options load the kernel variants it runs
                find_duplicates(texts, np.zeros(2), cfg.model_copy(update={"out_of_core": False}),
                                reference=texts[:1] if with_reference else None)
        except Exception:  # noqa: BLE001 - the step itself meets (and reports) whatever failed here
            pass

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def start_for(steps, will_run) -> Warming:
    """Start loading the MinHash kernels when one of `steps` dedups with MinHash and
    `will_run(step)` says it is not up to date; a no-op otherwise."""
    configs = [(s.options, bool(getattr(s, "reference", None))) for s in steps
               if s.kind == "dedup" and getattr(getattr(s, "options", None), "method", None) == "minhash"
               and will_run(s)]
    return Warming(configs)


if __name__ == "__main__":
    print(f"MinHash kernels compiled and cached in {warm_kernels():.1f} s")
