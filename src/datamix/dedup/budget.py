"""How a run's `memory_limit` is shared by out-of-core MinHash (datamix.dedup.ooc), so that
the whole process, not only DuckDB, stays under it.

Besides the memory its stages work in, the process holds:
- what it held when the dedup began (interpreter, imported libraries, the step's sample
  ids and priorities, the store's idle DuckDB connection): measured, its resident size then;
- what the dedup loads on top (numba's compiled kernels, DuckDB, pyarrow's pools): LIBRARIES;
- arrays with one entry per document or candidate pair that live until the removal records
  are made (priority, union-find labels and the keep policy's sort, the shingle file's
  index, the candidate pairs, their similarities and the verified ones): PER_DOC_BYTES per document, which assumes about
  one candidate pair per document; PAIR_BYTES for each pair beyond that.
Where the rest has room, the texts are kept from signing to the removal records (`hold`,
ooc.HOLD_SHARE), and what they take is charged like the above.
What is left (`rest`) goes to the stages, which run one after another: the candidate stage
(DuckDB's sort under its memory_limit, plus the pairs being merged), then verification
(signature blocks, then texts and their shingles). A budget whose rest would fall below
MIN_REST is refused before any work, with the limit that would do.
"""

from __future__ import annotations

import dataclasses
import os
import re

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

# Measured on 1M-3M 100-word documents (docs/benchmarks.md, "MinHash out of core"):
# resident growth past the start of the dedup that is not the stages' arrays.
LIBRARIES = 350 * 2**20
# priority (8 B), the removal records' per-document arrays (reference flags, labels, the keep
# policy's lexsort and its index arrays: ~11 arrays of 1-8 B), the index of the shingles on
# disk (bags.py: 24 B per document checked exactly), and ~1 candidate pair per document
PER_DOC_BYTES = 96 + 24 + 96
# a candidate pair: (left, right) decoded, its similarity, the exact value kept for the
# removal records, and the verified copies the clustering filters and widens
PAIR_BYTES = 96
MIN_REST = 256 * 2**20
DUCKDB_SHARE = 0.5  # of the rest: the candidate stage's sort (the pairs being merged get PAIRS_SHARE)
DUCKDB_OVERSHOOT = 1.2  # DuckDB's resident size past its memory_limit (its allocator, the Arrow batches it hands out)
PAIRS_SHARE = 0.25
WORK_SHARE = 0.8  # of the rest: signing chunks, verification's blocks and text fetches


def parse_size(value: str | int | None, where: str = "memory_limit") -> int | None:
    """Bytes of a size such as '4GB', '512MB', '2GiB' or a plain number of bytes."""
    if value is None or isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(value).upper())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"{where}: {value!r} is not a size; write e.g. 4GB, 512MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def size_text(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GB" else f"{n // scale} {unit}"
    return f"{n} B"


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def rss() -> int:
    """Resident bytes of this process now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_rss() -> int:
    """The process's peak resident bytes so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclasses.dataclass
class Budget:
    """A run's memory limit and spill folder, and (once `plan` has seen the input) its split."""

    limit: int | None = None  # bytes; None: no limit given (half the machine's memory is assumed)
    temp_directory: str | None = None
    held: int | None = None  # resident bytes when the dedup began (plan); None: measured when asked
    n_docs: int = 0
    extra_pairs: int = 0  # candidate pairs beyond one per document (note_pairs)
    holding: int = 0  # bytes kept from stage to stage when the budget has room (hold): the texts

    @property
    def effective(self) -> int:
        return self.limit if self.limit else physical_memory() // 2

    def fixed_bytes(self, n_docs: int | None = None) -> int:
        """What the process holds besides the stages' work memory (see the module's notes)."""
        n = self.n_docs if n_docs is None else n_docs
        held = rss() if self.held is None else self.held
        return held + LIBRARIES + PER_DOC_BYTES * n + PAIR_BYTES * self.extra_pairs + self.holding

    def rest(self, n_docs: int | None = None) -> int:
        return self.effective - self.fixed_bytes(n_docs)

    def plan(self, n_docs: int, what: str = "documents") -> Budget:
        """Measure what the process holds now and check that the limit leaves the stages
        MIN_REST beside it and the per-document arrays; raises BadInput (exit 2) if not."""
        from datamix.errors import BadInput

        self.held, self.n_docs, self.extra_pairs, self.holding = rss(), n_docs, 0, 0
        if self.limit and self.rest() < MIN_REST:
            need = self.fixed_bytes() + MIN_REST
            raise BadInput(
                f"memory_limit {size_text(self.limit)} is too small for out-of-core MinHash over "
                f"{n_docs:,} {what}: the process holds {size_text(self.held)} already, its libraries "
                f"~{size_text(LIBRARIES)}, the per-document arrays ~{size_text(PER_DOC_BYTES * n_docs)}, and "
                f"its stages need at least {size_text(MIN_REST)}. Raise memory_limit (the pipeline's "
                f"`memory_limit:` or DATAMIX_MEMORY_LIMIT) to at least {size_text(need)}, or dedup the "
                "input in parts.")
        return self

    def hold(self, nbytes: int) -> None:
        """Charge `nbytes` kept in memory across the stages (the stages' rest shrinks by them)."""
        self.holding += nbytes

    def release(self, nbytes: int) -> None:
        self.holding = max(0, self.holding - nbytes)

    def note_pairs(self, pairs: int) -> None:
        """After the candidate stage: pairs beyond one per document come out of the work memory."""
        self.extra_pairs = max(0, pairs - self.n_docs)

    @property
    def duckdb_bytes(self) -> int:
        """DuckDB's memory_limit during the candidate stage."""
        return max(128 * 2**20, int(self.rest() * DUCKDB_SHARE / DUCKDB_OVERSHOOT))

    def pair_bytes(self) -> int:
        """Bytes of encoded pairs the candidate stage may pile up beside DuckDB before merging."""
        return max(32 * 2**20, int(self.rest() * PAIRS_SHARE))

    def work_bytes(self, n_docs: int | None = None) -> int:
        """Memory for one stage's blocks (signing chunks, verification)."""
        return max(64 * 2**20, int(self.rest(n_docs) * WORK_SHARE))

    def describe(self) -> str:
        if not self.limit:
            return "no memory limit"
        if self.held is None:
            return f"memory limit {size_text(self.limit)}"
        return (f"memory limit {size_text(self.limit)} for the whole process: {size_text(self.held)} held at the "
                f"start, ~{size_text(LIBRARIES)} libraries, ~{size_text(PER_DOC_BYTES * self.n_docs)} per-document "
                f"arrays, {f'up to {size_text(self.holding)} held from signing (texts, signatures), ' if self.holding else ''}"
                f"DuckDB {size_text(self.duckdb_bytes)}, stages {size_text(self.work_bytes())}")
