"""numba for the dedup kernels (kernels, lsh, shingle, text, hashing): each imports `njit` and
`prange` from here, first, so that numba's package import runs here.

numba's package import imports scipy only to check its version (~10 ms of every run with a
MinHash step); the kernels use no scipy, so it is refused to that import (this thread only:
warm._RefusedInThread; where scipy is already imported nothing changes).

The kernels' `inline="always"` helpers are compiled into the kernels that call them, and are
cached with those: they are declared without `cache=True`, whose check that the cache folder
is writable (a temporary file in __pycache__ per function) cost ~0.5 ms each at import. Called
from Python directly (some tests do), such a helper compiles on first use.
"""

from __future__ import annotations

import sys

from datamix.dedup.warm import _RefusedInThread

if "numba" not in sys.modules and "scipy" not in sys.modules:
    _refuse = _RefusedInThread("scipy")
    sys.meta_path = [_refuse, *sys.meta_path]  # new lists: see warm._arraymath_without_scipy
    try:
        import numba  # noqa: F401
    finally:
        sys.meta_path = [finder for finder in sys.meta_path if finder is not _refuse]

from numba import njit, prange  # noqa: E402

__all__ = ["njit", "prange"]
