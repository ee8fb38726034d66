"""The forgetting miniature (pipelines/forgetting-miniature.yaml): its full-size YAML validates, and the
same file at tiny sizes runs end to end (V trained from scratch, the pool rebuilt from it, four arms,
two replicates through --sweep) and fills every row of dm.forgetting. The store is not the YAML's
(--store elsewhere): V, a model declared `from_step: train_vendor`, is found beside it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from datamix.cli import main

# About a minute on 2 free cores; a machine shared with other jobs can take several times that.
pytestmark = pytest.mark.timeout(1800)

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
ARMS = ["train_d", "train_m", "train_p", "train_r"]

# A one-minute version: tiny V, a few rows of each shipped file, two optimiser steps per arm.
TINY = ["vendor_hidden=32", "vendor_layers=1", "vendor_heads=2", "vendor_vocab=400", "vendor_max_epochs=1",
        "vendor_batch_tokens=256", "seq_len=128", "vendor_rows=48", "public_rows=24", "domain_rows=8",
        "eval_rows=6", "num_instructions=24", "instruction_tokens=16", "answer_tokens=16", "extra_stop=[e]",
        "min_chars=1", "min_words=1", "arm_steps=2", "domain_batch_tokens=128", "mixed_batch_tokens=768",
        "max_upsample=100"]


def test_the_full_miniature_validates():
    out = CliRunner().invoke(main, ["validate", str(PIPELINES / "forgetting-miniature.yaml")])
    assert out.exit_code == 0, out.output
    assert "26 steps" in out.output


@pytest.fixture(scope="module")
def replicates(tmp_path_factory):
    """The scaled-down miniature, two replicates: (folder, the run's CLI result)."""
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("miniature")
    shutil.copy(PIPELINES / "forgetting-miniature.yaml", folder)
    result = run(folder, "--sweep", "rep=0,1")
    return folder, result


def store_of(folder: Path) -> Path:
    return folder / "elsewhere" / "mini.duckdb"  # not the YAML's .datamix/: --store


def run(folder, *args):
    data = f"data={PIPELINES / 'data' / 'miniature'}"
    return CliRunner().invoke(main, ["run", str(folder / "forgetting-miniature.yaml"), data, *TINY, *args, "-q",
                                     "--store", str(store_of(folder))])


def test_scaled_down_miniature_fills_every_row_of_dm_forgetting(replicates):
    tmp_path, result = replicates
    assert result.exit_code == 0, result.output
    store = store_of(tmp_path)
    assert (store.parent / "outputs" / "train_vendor" / "model" / "config.json").exists()  # V beside that store
    assert not (tmp_path / ".datamix" / "outputs").exists()  # (.datamix/models holds the untrained V, as declared)
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


def test_a_ratio_sweep_on_the_same_store_reuses_v_and_picks_a_ratio(replicates):
    """--sweep general_share: one M/P/R arm per ratio, V and everything upstream of the ratio shared
    through the store (run once), every arm evaluated together, and a pick under the default rule."""
    folder, first = replicates
    assert first.exit_code == 0, first.output
    store = store_of(folder)

    def steps():
        con = duckdb.connect(str(store), read_only=True)
        try:
            return dict(con.execute("SELECT name, run_id FROM dm.steps").fetchall())
        finally:
            con.close()

    before = steps()
    result = run(folder, "--sweep", "general_share=0.5,0.83")
    assert result.exit_code == 0, result.output
    after = steps()
    for shared in ("vendor_data", "vendor_shards", "train_vendor", "domain", "public"):
        assert after[shared] == before[shared]  # found in the store, not run again
    new_run = set(after.values()) - set(before.values())
    assert len(new_run) == 1
    ran = {n for n, r in after.items() if r in new_run}
    assert {f"train_{a}__general_share_{t}" for a in "mpr" for t in ("0p5", "0p83")} <= ran
    assert "train_d" in ran and not any(n.startswith("train_d__general_share") for n in after)  # D does not mix
    assert "instructions" in ran and "instructions__general_share_0p5" not in after  # the pool is shared by the ratios
    con = duckdb.connect(str(store), read_only=True)
    try:
        models = {m for (m,) in con.execute("SELECT model FROM dm.forgetting WHERE step = 'eval' AND metric = 'nll'").fetchall()}
    finally:
        con.close()
    assert models == {"train_d"} | {f"train_{a}__general_share_{t}" for a in "mpr" for t in ("0p5", "0p83")}
    for arm in ("train_m", "train_p", "train_r"):  # a pick per swept arm
        assert f"best general_share for {arm}: " in result.output
