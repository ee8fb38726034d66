"""--sweep: one arm per value, shared steps once (counted in the store), the trade-off report and the pick."""

from __future__ import annotations

import duckdb
import pytest

from datamix.spec import SpecError
from datamix.sweep import arm_name, expand, parse_pick, parse_sweep, pick, report, value_tag

from tests.helpers import chat, cli, query, store_of, write_jsonl, write_pipeline


def sweep_pipeline(tmp_path):
    write_jsonl(tmp_path / "general.jsonl", [chat(f"general question {i}?", f"general answer {i}") for i in range(40)])
    write_jsonl(tmp_path / "domain.jsonl", [chat(f"domain question {i}?", f"domain answer {i}") for i in range(5)])
    return write_pipeline(tmp_path, [
        {"name": "general", "kind": "load", "path": "general.jsonl"},
        {"name": "domain", "kind": "load", "path": "domain.jsonl"},
        {"name": "general_clean", "kind": "filter", "input": "general",
         "rules": [{"rule": "length", "field": "response", "min": 1, "unit": "chars"}]},
        {"name": "mix", "kind": "mix", "inputs": {"general": "general_clean", "domain": "domain"},
         "ratio": {"general": "${general_share}", "domain": "${domain_share}"}, "size_by": "domain"},
        {"name": "export", "kind": "export", "input": "mix", "format": "jsonl"},
    ], vars={"general_share": 0.5, "domain_share": 0.5})


def steps_of(store):
    return dict(query(store, "SELECT name, run_id FROM dm.steps WHERE state = 'done'"))


def test_names_and_values():
    assert parse_sweep("general_share=0, 0.5,0.83") == ("general_share", [0, 0.5, 0.83])
    assert [value_tag(v) for v in (0, 0.5, 0.83, -1, "a b")] == ["0", "0p5", "0p83", "m1", "a_b"]
    assert arm_name("mix", "general_share", 0.83) == "mix__general_share_0p83"
    for bad in ("general_share", "x=1,,2", "x=1,1", "2x=1"):
        with pytest.raises(SpecError):
            parse_sweep(bad)


def test_one_arm_per_value_and_shared_steps_run_once(tmp_path):
    pipeline = sweep_pipeline(tmp_path)
    result = cli("run", str(pipeline), "--sweep", "general_share=0,0.5,0.8", "-q")
    assert result.exit_code == 0, result.stderr
    store = store_of(pipeline)
    steps = steps_of(store)
    arms = {"0": 0, "0p5": 0.5, "0p8": 0.8}
    shared = {"general", "domain", "general_clean"}
    assert set(steps) == shared | {f"{s}__general_share_{t}" for s in ("mix", "export") for t in arms}
    assert len(set(steps.values())) == 1  # all in one run: the shared steps once, not once per arm
    assert query(store, "SELECT count(*) FROM dm.runs") == [(1,)]
    for tag, share in arms.items():  # each arm mixes at its value: 5 domain rows are (1 - share) of it
        counts = dict(query(store, f'SELECT source, count(*) FROM "mix__general_share_{tag}" GROUP BY ALL'))
        assert counts == ({"domain": 5} if share == 0 else {"domain": 5, "general": round(5 * share / 0.5)})
    assert "no evaluate step compares the arms" in result.stdout

    # one more value: only its arm runs; everything else is found in the store
    result = cli("run", str(pipeline), "--sweep", "general_share=0,0.5,0.8,0.9")
    assert result.exit_code == 0, result.stderr
    again = steps_of(store)
    new_run = {r for r in again.values()} - set(steps.values())
    assert sorted(n for n, r in again.items() if r in new_run) == ["export__general_share_0p9", "mix__general_share_0p9"]
    assert "skip   general_clean (filter): up to date" in result.stderr


def test_sweep_errors_exit_2(tmp_path):
    pipeline = sweep_pipeline(tmp_path)
    for args, message in [
        (["--sweep", "nope=1,2"], "no var 'nope'"),
        (["--sweep", "domain_share=0.5"], None),  # valid: a one-value sweep of another var
        (["--sweep", "general_share=0.5", "--pick", "biggest"], "start with max_gain or min_forgetting"),
        (["--pick", "max_gain"], "--pick goes with --sweep"),
    ]:
        result = cli("run", str(pipeline), *args, "-q")
        if message is None:
            assert result.exit_code == 0, result.stderr
        else:
            assert result.exit_code == 2 and message in result.stderr, result.stderr
    (tmp_path / "flat").mkdir()
    flat = write_pipeline(tmp_path / "flat", [{"name": "domain", "kind": "load", "path": "../domain.jsonl"}], vars={"x": 1})
    result = cli("run", str(flat), "--sweep", "x=1,2")
    assert result.exit_code == 2 and "no step's resolved config depends on ${x}" in result.stderr


def test_expand_keeps_shared_steps_once_and_renames_inputs(tmp_path):
    sweep = expand(str(sweep_pipeline(tmp_path)), [], "general_share", [0.5, 0.8])
    names = [s.name for s in sweep.pipeline.steps]
    assert names == ["general", "domain", "general_clean", "mix__general_share_0p5", "mix__general_share_0p8",
                     "export__general_share_0p5", "export__general_share_0p8"]
    assert sweep.pipeline.step("export__general_share_0p8").input == "mix__general_share_0p8"
    assert sweep.pipeline.step("mix__general_share_0p8").ratio == {"general": 0.8, "domain": 0.5}
    assert sweep.variants == ["export", "mix"]


FORGETTING = [  # step, model, no_replay, metric, forgetting, domain_gain, removed, kept
    ("eval", "train_d", "train_d", "nll", 1.0, 2.0, 0.0, 1.0),
    ("eval", "train_m__s_0", "train_d", "nll", 1.0, 2.0, 0.0, 1.0),
    ("eval", "train_m__s_0p5", "train_d", "nll", 0.6, 1.9, 0.4, 0.95),
    ("eval", "train_m__s_0p8", "train_d", "nll", 0.4, 1.7, 0.6, 0.85),
    ("eval", "train_m__s_0p9", "train_d", "nll", 0.2, 1.2, 0.8, 0.6),
    ("eval", "train_m__s_0p9", "train_d", "bpb", 0.1, 0.6, 0.8, 0.6),
]


def fake_store():
    con = duckdb.connect()
    con.execute("CREATE SCHEMA dm")
    con.execute("CREATE TABLE dm.forgetting (step VARCHAR, model VARCHAR, no_replay VARCHAR, metric VARCHAR, "
                "forgetting DOUBLE, domain_gain DOUBLE, forgetting_removed DOUBLE, domain_gain_kept DOUBLE)")
    con.executemany("INSERT INTO dm.forgetting VALUES (?, ?, ?, ?, ?, ?, ?, ?)", FORGETTING)
    return con


class FakeSweep:
    var, values, evaluates, evaluate_value = "s", [0, 0.5, 0.8, 0.9], ["eval"], {}

    def train_arms(self):
        return {f"train_m__s_{value_tag(v)}": (v, "train_m") for v in self.values}


def test_report_rows_per_value_and_the_pick():
    rows, metric = report(fake_store(), FakeSweep())
    assert metric == "nll"
    assert [(r["value"], r["model"]) for r in rows] == [(None, "train_d"), (0, "train_m__s_0"), (0.5, "train_m__s_0p5"),
                                                        (0.8, "train_m__s_0p8"), (0.9, "train_m__s_0p9")]
    best, why = pick(rows, parse_pick(None))  # default: most gain with forgetting <= 50% of the no-replay arm's
    assert best["value"] == 0.8 and "2 of 4 arms qualify" in why
    assert pick(rows, parse_pick("max_gain, forgetting<=0.7"))[0]["value"] == 0.5
    assert pick(rows, parse_pick("min_forgetting, kept>=90%"))[0]["value"] == 0.5
    assert pick(rows, parse_pick("max_gain, removed>=0.7"))[0]["value"] == 0.9
    none, why = pick(rows, parse_pick("max_gain, forgetting<=1%"))
    assert none is None and "no arm meets the rule" in why
    bpb, metric = report(fake_store(), FakeSweep(), metric="bpb")
    assert metric == "bpb" and [r["value"] for r in bpb] == [0.9]


def arms_pipeline(tmp_path, seed="0"):
    write_jsonl(tmp_path / "d.jsonl", [chat("q?", "a.")])
    shards = {"tokenizer": "base", "seq_len": 64}
    return write_pipeline(tmp_path, [
        {"name": "general", "kind": "load", "path": "d.jsonl"},
        {"name": "domain", "kind": "load", "path": "d.jsonl"},
        {"name": "mix", "kind": "mix", "inputs": {"general": "general", "domain": "domain"},
         "ratio": {"general": "${general_share}", "domain": 0.17}, "size_by": "domain"},
        {"name": "shards_m", "kind": "export", "input": "mix", "format": "shards", "shards": shards},
        {"name": "shards_d", "kind": "export", "input": "domain", "format": "shards", "shards": shards},
        {"name": "train_m", "kind": "train", "input": "shards_m", "model": "base", "options": {"seed": seed}},
        {"name": "train_d", "kind": "train", "input": "shards_d", "model": "base", "options": {"seed": seed}},
        {"name": "eval", "kind": "evaluate", "models": ["base", "train_d", "train_m"], "no_replay": "train_d",
         "sets": {"general": {"path": "d.jsonl", "metrics": ["nll"], "role": "general"}}},
    ], vars={"general_share": 0.83, "rep": 0}, models={"base": {"backend": "transformers", "path": "base"}})


def test_a_ratio_sweep_evaluates_every_arm_in_one_step(tmp_path):
    sweep = expand(str(arms_pipeline(tmp_path)), [], "general_share", [0, 0.83], check_files=False)
    ev = sweep.pipeline.step("eval")
    assert ev.models == ["base", "train_d", "train_m__general_share_0", "train_m__general_share_0p83"]
    assert ev.no_replay == "train_d" and sweep.evaluates == ["eval"] and sweep.evaluate_value == {}
    assert "train_d" in [s.name for s in sweep.pipeline.steps]  # the no-replay arm is shared
    assert sweep.train_arms() == {"train_m__general_share_0": (0, "train_m"), "train_m__general_share_0p83": (0.83, "train_m")}


def test_a_sweep_of_seeds_gives_every_replicate_its_own_evaluation(tmp_path):
    sweep = expand(str(arms_pipeline(tmp_path, seed="${rep}")), [], "rep", [0, 1], check_files=False)
    assert sweep.evaluates == ["eval__rep_0", "eval__rep_1"]
    ev = sweep.pipeline.step("eval__rep_1")
    assert ev.models == ["base", "train_d__rep_1", "train_m__rep_1"] and ev.no_replay == "train_d__rep_1"
    assert sweep.evaluate_value == {"eval__rep_0": 0, "eval__rep_1": 1}
    assert [s.name for s in sweep.pipeline.steps][:3] == ["general", "domain", "mix"]  # nothing seeded: shared
