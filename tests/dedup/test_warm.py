"""Loading the MinHash kernels in the background (datamix.dedup.warm.start_for): started only for
a MinHash dedup step that will run, done before that step, and harmless when it fails."""

from __future__ import annotations

import subprocess
import sys

import pytest

from datamix.dedup.warm import Warming, start_for
from datamix.steps.dedup import DedupConfig

from tests.helpers import chat, query, run_pipeline, store_of, write_jsonl, write_pipeline


def dedup_step(name: str, method: str, **opts) -> DedupConfig:
    return DedupConfig.model_validate({"name": name, "kind": "dedup", "input": "src", "method": method, **opts})


def test_started_only_for_a_minhash_step_that_will_run():
    minhash, exact = dedup_step("near", "minhash"), dedup_step("same", "exact")
    asked = []

    def will_run(step):
        asked.append(step.name)
        return step.name != "near"

    assert start_for([exact, minhash], will_run).thread is None  # minhash up to date, exact needs no numba
    assert asked == ["near"]  # only MinHash steps are looked up in the store
    warming = start_for([exact, minhash], lambda s: True)
    assert warming.thread is not None
    warming.wait()
    assert warming.thread is None
    warming.wait()  # waiting twice (the step, then the run's end) is fine


def test_the_kernels_the_step_runs_are_loaded_when_it_is_done():
    """In a fresh process: after the wait, the fused kernel has its compiled variant, so the
    step's first call loads nothing."""
    probe = (
        "from datamix.dedup import kernels\n"
        "from tests.dedup.test_warm import dedup_step\n"
        "from datamix.dedup.warm import start_for\n"
        "assert not kernels.FUSED_WORD_KERNEL.signatures\n"
        "start_for([dedup_step('near', 'minhash', threshold=0.7)], lambda s: True).wait()\n"
        "print(len(kernels.FUSED_WORD_KERNEL.signatures))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 1


def test_a_failing_warm_up_leaves_the_error_to_the_step():
    class Broken:
        def model_copy(self, update):
            raise RuntimeError("broken options")

    warming = Warming([(Broken(), False)])
    warming.wait()  # no exception here: the step meets and reports the problem itself


def test_a_run_with_a_minhash_step_removes_the_same_rows_as_before(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog again and again",
             "the quick brown fox jumps over the lazy dog again and again!",
             "a completely different sentence about something else entirely here"]
    write_jsonl(tmp_path / "in.jsonl", [chat("q", t) for t in texts])
    pipeline = write_pipeline(tmp_path, [
        {"name": "src", "kind": "load", "path": "in.jsonl"},
        {"name": "near", "kind": "dedup", "input": "src", "method": "minhash", "fields": ["response"]}])
    result = run_pipeline(pipeline)
    assert result.ok, result.error
    removed = query(store_of(pipeline), "SELECT s.origin_line, d.reason FROM dm.decisions d "
                    "JOIN src s USING (sample_id) WHERE d.step = 'near' AND NOT d.kept")
    assert removed == [(2, "near_duplicate")]


NO_SCIPY_LINALG = """
import sys
from tests.dedup.test_warm import dedup_step
from datamix.dedup.warm import start_for
start_for([dedup_step('near', 'minhash', **OPTIONS)], lambda s: True).wait()
arraymath = sys.modules.get("numba.np.arraymath")
print(arraymath and arraymath._HAVE_BLAS, "scipy.linalg" in sys.modules, len(sys.meta_path))
"""


@pytest.mark.parametrize("options", [{}, {"unit": "char", "ngram": 3, "verify": "jaccard"}])
def test_the_warm_up_does_not_import_scipy_linalg(options):
    """numba's BLAS question at its registries' import imported scipy.linalg (~0.15 s of every run
    with a MinHash step): the kernels load without numba.np.arraymath, or where cached code names
    it, import it without scipy.linalg; no finder is left behind."""
    base = subprocess.run([sys.executable, "-c", "import sys; print(len(sys.meta_path))"], capture_output=True,
                          text=True, check=True)
    probe = NO_SCIPY_LINALG.replace("**OPTIONS", "**" + repr(options))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    have_blas, scipy_linalg, finders = out.stdout.split()
    assert have_blas in ("None", "False") and scipy_linalg == "False" and finders == base.stdout.strip()


REFUSED_IN_ONE_THREAD = """
import sys, threading
from datamix.dedup.warm import _RefusedInThread
refuse = _RefusedInThread("json")
sys.modules.pop("json", None)
sys.meta_path.insert(0, refuse)
try:
    import json
    print("imported")
except ModuleNotFoundError as e:
    print("refused", e.name)
other = []
thread = threading.Thread(target=lambda: other.append(__import__("json").dumps([1])))
thread.start(); thread.join()
print("other thread", other)
sys.meta_path.remove(refuse)
sys.modules.pop("json", None)
import json
print("after", json.dumps([2]))
"""


def test_the_module_is_refused_to_the_warming_thread_only():
    """While the warm-up hides scipy.linalg from numba, a step running in the main thread (one
    that imports scikit-learn, say) still imports it; and once the finder is gone, so does the
    warming thread."""
    out = subprocess.run([sys.executable, "-c", REFUSED_IN_ONE_THREAD], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["refused json", "other thread ['[1]']", "after [2]"]


BLAS_STILL_THERE = """
import numpy as np
from numba import njit
from datamix.dedup.warm import import_numba_registries
import_numba_registries()

@njit
def dot(a, b):
    return np.dot(a, b)

print(dot(np.arange(3.0), np.arange(3.0)))
"""


def test_numba_linear_algebra_still_finds_scipy_after_the_warm_up():
    """np.dot in numba asks for scipy's BLAS again when it compiles, and gets it."""
    out = subprocess.run([sys.executable, "-c", BLAS_STILL_THERE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5.0"


def test_nothing_is_refused_where_scipy_linalg_is_already_imported():
    probe = ("import sys, scipy.linalg\nfrom datamix.dedup.warm import import_numba_registries\n"
             "import_numba_registries()\nimport numba.np.arraymath\nprint(numba.np.arraymath._HAVE_BLAS)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


LIGHT_KERNEL = """
import sys
import numpy as np
from numba import njit
from datamix.dedup.warm import load_cached_lightly

@njit(cache=True)
def running_sum(values):
    out = np.empty_like(values)  # an array allocated in the kernel: the runtime (NRT) is needed
    total = 0
    for i in range(values.shape[0]):
        total += values[i]
        out[i] = total
    return out

load_cached_lightly(globals())
print(running_sum(np.arange(5)).tolist(), running_sum._cache_hits[running_sum.signatures[0]],
      "numba.np.random" in sys.modules)
"""


def test_a_cached_kernel_loads_without_numba_s_full_start(tmp_path):
    """The first process compiles (the cache is empty: numba's full start, registries and all);
    the second loads the cached code without importing numba's other registries, and both
    compute the same."""
    module = tmp_path / "light_kernel.py"
    module.write_text(LIGHT_KERNEL)
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run([sys.executable, str(module)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["[0,", "1,", "3,", "6,", "10]", "0", "True"]  # compiled: a full start
    second = subprocess.run([sys.executable, str(module)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["[0,", "1,", "3,", "6,", "10]", "1", "False"]  # loaded from the cache


def test_the_dedup_kernels_are_treated():
    """Every numba kernel of the dedup modules loads its cached code the light way."""
    from numba.core.registry import CPUDispatcher

    from datamix.dedup import hashing, kernels, lsh, shingle, text

    found = {id(v): v for m in (hashing, kernels, lsh, shingle, text) for v in vars(m).values()
             if isinstance(v, CPUDispatcher)}.values()
    cached = [d for d in found if d.targetoptions.get("inline") != "always"]
    assert len(cached) > 10
    assert all(isinstance(d._cache.load_overload, __import__("functools").partial) for d in cached)
    # helpers inlined into the kernels are cached with them, not on their own (see datamix.dedup.jit)
    assert all(not hasattr(d._cache, "_load_overload") for d in found if d not in cached)


def test_numba_is_imported_without_scipy_and_scipy_stays_importable():
    """numba's package import asks scipy for its version; datamix.dedup.jit refuses it that import
    only (the kernels use no scipy)."""
    probe = ("import sys\nfrom datamix.dedup import kernels\nprint('scipy' in sys.modules, len(sys.meta_path))\n"
             "import scipy\nprint(scipy.__name__)")
    base = subprocess.run([sys.executable, "-c", "import sys; print(len(sys.meta_path))"], capture_output=True,
                          text=True, check=True)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", base.stdout.strip(), "scipy"]
