"""The memory budget of out-of-core MinHash (datamix.dedup.budget): the whole process's share
of `memory_limit` is planned from the input's size before any work, DuckDB gets what the plan
says, and a limit that the process cannot keep is refused with the limit that would do."""

import os
import re

import numpy as np
import pytest

from datamix.dedup import budget as bm, ooc
from datamix.dedup.minhash import MinHashConfig
from datamix.errors import BadInput
from tests.dedup.test_ooc import _planted

_UNIT = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def _duckdb_limits(monkeypatch):
    """The memory_limit each out-of-core DuckDB connection really has (as DuckDB reports it)."""
    seen = []
    real = ooc._connect

    def connect(budget, folder):
        con = real(budget, folder)
        (value,), = con.execute("SELECT current_setting('memory_limit')").fetchall()
        number, unit = re.fullmatch(r"([\d.]+) (\w+)", value).groups()
        # the plan's figure now: candidate pairs past one per document shrink it afterwards
        seen.append((float(number) * _UNIT[unit], budget, budget.duckdb_bytes))
        return con

    monkeypatch.setattr(ooc, "_connect", connect)
    return seen


def test_duckdb_gets_the_planned_share_of_the_whole_process_limit(tmp_path, monkeypatch):
    texts = _planted(n_base=300)
    n = len(texts)
    # what the process holds, its libraries and the arrays of n documents, plus 1.2 GB for the stages
    limit = bm.rss() + bm.LIBRARIES + bm.PER_DOC_BYTES * n + 1_200_000_000
    seen = _duckdb_limits(monkeypatch)
    logs = []
    ooc.find_duplicates_ooc(ooc.SeriesSource(texts), np.zeros(n), MinHashConfig(method="minhash"), str(tmp_path),
                            budget=ooc.Budget(limit=limit), log=logs.append)
    (duckdb_limit, planned, planned_duckdb), = seen
    assert duckdb_limit == pytest.approx(planned_duckdb, abs=2**20)  # what DuckDB was given
    # the stages' 1.2 GB (less what the process grew by meanwhile): DuckDB half of it, less its overshoot
    assert 0.35 * 1.2e9 < duckdb_limit < 0.5 * 1.2e9 / bm.DUCKDB_OVERSHOOT + 2**20
    assert planned.held > 0 and planned.n_docs == n
    said = logs[0]
    assert f"memory limit {bm.size_text(limit)} for the whole process" in said
    assert "per-document arrays" in said and f"DuckDB {bm.size_text(planned_duckdb)}" in said
    # each stage's line says the process's resident size and its peak
    assert all(re.search(r"\(RSS [\d.]+ [KMG]?B, peak [\d.]+ [KMG]?B\)", m) for m in logs[1:])


def test_the_plan_shrinks_duckdb_and_the_stages_as_documents_grow():
    small = bm.Budget(limit=8 * 10**9).plan(1_000_000)
    large = bm.Budget(limit=8 * 10**9).plan(10_000_000)
    grown = bm.PER_DOC_BYTES * 9_000_000
    assert small.fixed_bytes() + grown == pytest.approx(large.fixed_bytes(), abs=64 * 2**20)  # held: measured twice
    assert large.duckdb_bytes < small.duckdb_bytes and large.work_bytes() < small.work_bytes()
    # stages share what is left after the fixed part: DuckDB and the pair pile at once, then the work
    for b in (small, large):
        assert b.duckdb_bytes * bm.DUCKDB_OVERSHOOT + b.pair_bytes() <= b.rest()
        assert b.fixed_bytes() + b.work_bytes() <= b.limit
    # pairs past one per document come out of the stages' memory
    before = large.work_bytes()
    large.note_pairs(15_000_000)
    assert large.work_bytes() == pytest.approx(before - bm.WORK_SHARE * bm.PAIR_BYTES * 5_000_000, abs=2)


def test_a_limit_below_what_the_documents_need_is_refused_before_any_work(tmp_path):
    texts = _planted(n_base=200)
    with pytest.raises(BadInput) as err:
        ooc.find_duplicates_ooc(ooc.SeriesSource(texts), np.zeros(len(texts)), MinHashConfig(method="minhash"),
                                str(tmp_path / "work"), budget=ooc.Budget(limit=ooc.parse_size("300MB")))
    message = str(err.value)
    assert f"memory_limit 300 MB is too small for out-of-core MinHash over {len(texts):,} documents" in message
    need = re.search(r"to at least ([\d.]+ [MG]B)", message).group(1)
    assert ooc.parse_size(need.replace(" ", "")) > 300 * 10**6
    assert not os.path.exists(tmp_path / "work")  # refused before signing anything
    # 10M documents need their arrays on top: refused at 2 GB, with a larger figure
    with pytest.raises(BadInput, match=r"over 10,000,000 documents.*to at least [\d.]+ GB"):
        bm.Budget(limit=2 * 10**9).plan(10_000_000)


def test_no_limit_is_never_refused():
    assert bm.Budget().plan(10**9).work_bytes() >= 64 * 2**20
