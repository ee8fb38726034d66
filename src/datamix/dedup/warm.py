"""Compile the MinHash kernels ahead of the first run: `python -m datamix.dedup.warm`.

numba compiles a kernel on its first call and caches the machine code beside the
module (`cache=True`). Left to the first `datamix run`, that is 20-80 s of a quickstart
on 2 cores; `make setup` runs this once at install, so the first run loads cached code.
The calls cover the kernel variants a pipeline reaches: ASCII and other text, word and
character shingles, every verification mode, and a reference set (decontamination).
"""

from __future__ import annotations

import contextlib
import functools
import sys
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
    steps work (`start_for`). Even cached, numba's first use costs ~0.25 s on a quiet core
    (importing numba ~0.13 s, its runtime ~0.04 s, the kernels' machine code ~0.04 s; with
    load_cached_lightly, without which it was ~0.5 s), a fixed cost of every run with a
    MinHash step. Both threads mostly hold the GIL, so the thread gains only where the other
    waits on DuckDB, files or LLVM: starting it at the CLI's start instead of here measured no
    faster. The runner calls `wait()` before a dedup step starts, so numba is never used
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


class _RefusedInThread:
    """A meta path finder that makes `name` (and its submodules) unimportable from one thread
    only: the others, and this one once the finder is removed, import it as usual."""

    def __init__(self, name: str) -> None:
        self.name, self.thread = name, threading.get_ident()

    def find_spec(self, fullname, path=None, target=None):
        if threading.get_ident() == self.thread and (fullname == self.name or fullname.startswith(self.name + ".")):
            raise ModuleNotFoundError(f"{fullname} is not imported while numba loads its registries", name=fullname)
        return None  # not ours: the next finder looks


def import_numba_registries() -> None:
    """Import numba's array-math lowering (which numba's first compile or cache load imports
    anyway) without importing scipy.linalg, ~0.15 s of every run's ~0.5 s numba start.

    numba.np.arraymath asks at import whether a BLAS is there (`_HAVE_BLAS`, by importing
    scipy.linalg.cython_blas), and scipy.linalg's package import is the cost (its array-API
    layer touches every numpy attribute, importing numpy.f2py, numpy.testing, numpy.polynomial, ...). The answer
    only picks how numba-compiled np.correlate / np.convolve take inner products of floats;
    no datamix kernel calls them. np.dot and numba's other linear algebra ask again when they
    compile (numba.np.linalg.ensure_blas), after this, and find scipy as usual. scipy.linalg is
    refused to this thread only, for this one import, so another thread importing it meanwhile
    (a step running before the dedup step) is not affected; where scipy.linalg is already
    imported the question costs nothing and nothing is refused."""
    with _arraymath_without_scipy():
        import numba.np.arraymath  # noqa: F401


@contextlib.contextmanager
def _arraymath_without_scipy():
    """Within: scipy.linalg refused to this thread while numba.np.arraymath is not imported yet
    and scipy.linalg is not either (see import_numba_registries)."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        yield
        return
    with refused_in_this_thread("scipy.linalg"):
        yield


@contextlib.contextmanager
def refused_in_this_thread(name: str):
    """Within: `name` (and its submodules) unimportable from this thread (_RefusedInThread)."""
    refuse = _RefusedInThread(name)
    # new lists, not an insert and a remove in place: an import in another thread walks the list
    # it started with (importlib's _find_spec), where a removal in place could shift the finder
    # after the one it is asking into that one's place, and so skip it
    sys.meta_path = [refuse, *sys.meta_path]
    try:
        yield
    finally:
        sys.meta_path = [finder for finder in sys.meta_path if finder is not refuse]


def load_cached_lightly(namespace: dict) -> None:
    """Make the numba kernels among `namespace`'s values (a kernel module's `globals()`) load their
    cached machine code without numba's full start, ~0.15 s of every run with a MinHash step.

    Before loading a cached kernel numba refreshes its whole compiler context: it imports and
    installs every typing and lowering registry it has (numpy's random, linear algebra,
    polynomials, typed containers, ...; ~0.1 s) and scans every installed package's entry points
    for numba extensions (~0.03 s). Machine code read from the cache needs neither; it needs the
    runtime that its arrays are allocated through (NRT), which is initialised here, and the modules
    its environment names (those of the numpy functions it inlined), which its unpickling imports,
    numba.np.arraymath without scipy.linalg (see import_numba_registries). When the cache has no
    code for a call (a fresh install, a changed kernel, new argument types) numba compiles as
    usual: its compiler refreshes the context itself, after the registries are imported here.
    Numba extensions of other packages are never loaded for these kernels, which use none; other
    numba functions in the process are unaffected."""
    from numba.core.registry import CPUDispatcher

    for value in namespace.values():
        cache = getattr(value, "_cache", None)
        if isinstance(value, CPUDispatcher) and hasattr(cache, "_load_overload"):
            value._cache.load_overload = functools.partial(_load_cached, cache)
            value._compilation_chain_init_hook = _no_extensions


def _load_cached(cache, sig, target_context):
    from numba.core.runtime import rtsys

    rtsys.initialize(target_context)
    with _arraymath_without_scipy(), cache._guard_against_spurious_io_errors():
        compiled = cache._load_overload(sig, target_context)
    if compiled is None:
        import_numba_registries()  # numba compiles next (its compiler refreshes the context)
    return compiled


def _no_extensions() -> None:
    """In place of numba's per-dispatcher hook that loads other packages' numba extensions."""


def start_for(steps, will_run) -> Warming:
    """Start loading the MinHash kernels when one of `steps` dedups with MinHash and
    `will_run(step)` says it is not up to date; a no-op otherwise."""
    configs = [(s.options, bool(getattr(s, "reference", None))) for s in steps
               if s.kind == "dedup" and getattr(getattr(s, "options", None), "method", None) == "minhash"
               and will_run(s)]
    return Warming(configs)


if __name__ == "__main__":
    print(f"MinHash kernels compiled and cached in {warm_kernels():.1f} s")
