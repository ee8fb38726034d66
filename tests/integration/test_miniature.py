"""The forgetting miniature (pipelines/forgetting-miniature.yaml): its full-size YAML validates, and the
same file at tiny sizes runs end to end (V trained from scratch, the pool rebuilt from it, four arms,
two replicates through --sweep) and fills every row of dm.forgetting."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from datamix.cli import main

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
ARMS = ["train_d", "train_m", "train_p", "train_r"]

# A one-minute version: tiny V, a few rows of each shipped file, two optimiser steps per arm.
TINY = ["vendor_hidden=32", "vendor_layers=1", "vendor_heads=2", "vendor_vocab=400", "vendor_epochs=1",
        "vendor_batch_tokens=256", "seq_len=128", "vendor_rows=48", "public_rows=24", "domain_rows=8",
        "eval_rows=6", "num_instructions=24", "instruction_tokens=16", "answer_tokens=16", "extra_stop=[e]",
        "min_chars=1", "min_words=1", "arm_steps=2", "domain_batch_tokens=128", "mixed_batch_tokens=768",
        "max_upsample=100"]


def test_the_full_miniature_validates():
    out = CliRunner().invoke(main, ["validate", str(PIPELINES / "forgetting-miniature.yaml")])
    assert out.exit_code == 0, out.output
    assert "24 steps" in out.output


def test_scaled_down_miniature_fills_every_row_of_dm_forgetting(tmp_path):
    pytest.importorskip("torch")
    shutil.copy(PIPELINES / "forgetting-miniature.yaml", tmp_path)
    data = f"data={PIPELINES / 'data' / 'miniature'}"
    result = CliRunner().invoke(main, ["run", str(tmp_path / "forgetting-miniature.yaml"), data, *TINY,
                                       "--sweep", "rep=0,1", "-q"])
    assert result.exit_code == 0, result.output
    store = tmp_path / ".datamix" / "forgetting-miniature.duckdb"
    con = duckdb.connect(str(store), read_only=True)
    try:
        # V is trained once for both replicates, from scratch on all tokens; each replicate has its own pool
        runs = dict(con.execute("SELECT name, state FROM dm.steps").fetchall())
        assert runs["train_vendor"] == "done" and "train_vendor__rep_0" not in runs
        assert {"instructions__rep_0", "instructions__rep_1", "eval__rep_0", "eval__rep_1"} <= set(runs)
        pools = [{m for (m,) in con.execute(f"SELECT messages[-1].content FROM instructions__rep_{r}").fetchall()}
                 for r in (0, 1)]
        assert pools[0] and pools[0] != pools[1]
        rows = con.execute("SELECT step, model, baseline, no_replay, forgetting, domain_gain, forgetting_removed, "
                           "domain_gain_kept FROM dm.forgetting WHERE metric = 'nll' ORDER BY step, model").fetchall()
    finally:
        con.close()
    expected = [(f"eval__rep_{r}", f"{arm}__rep_{r}") for r in (0, 1) for arm in ARMS]
    assert [(s, m) for s, m, *_ in rows] == expected
    for step, model, baseline, no_replay, f, g, removed, kept in rows:
        assert baseline == "vendor" and no_replay == f"train_d__{step.split('__')[1]}"
        assert None not in (f, g, removed, kept), (step, model)
        if model.startswith("train_d"):  # the no-replay arm against itself
            assert removed == pytest.approx(0.0) and kept == pytest.approx(1.0)
    # the run ends with the replicates' table: mean, spread and range per arm
    assert "per arm over the 2 values of rep" in result.output
    for arm in ARMS:
        assert f"\n{arm} " in result.output
