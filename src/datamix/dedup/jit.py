"""numba for the dedup kernels (kernels, lsh, shingle, text, hashing): each imports `njit` and
`prange` from here, first, so that numba's package import runs here.

numba's package import imports scipy only to check its version (~10 ms of every run with a
MinHash step); the kernels use no scipy, so it is refused to that import (this thread only:
warm.refused_in_this_thread; where scipy is already imported nothing changes).

The kernels' `inline="always"` helpers are compiled into the kernels that call them, and are
cached with those: they are declared without `cache=True`, whose check that the cache folder
is writable (a temporary file in __pycache__ per function) cost ~0.5 ms each at import. Called
from Python directly (some tests do), such a helper compiles on first use.
"""

from __future__ import annotations

import sys

from datamix.dedup.warm import refused_in_this_thread

if "numba" not in sys.modules and "scipy" not in sys.modules:
    with refused_in_this_thread("scipy"):
        import numba  # noqa: F401

from numba import njit, prange  # noqa: E402

__all__ = ["njit", "prange"]
