"""The evaluate step in a pipeline: metrics in the step's table and dm.metrics, dm.forgetting over them,
skipped when nothing changed, rerun when a model or a set changes; bad input refused by validate."""

from __future__ import annotations

import json

import pytest

from tests.core.helpers import cli, domain_records, general_records, query, store_of, write_jsonl, write_pipeline

BASE = {"base": {"backend": "transformers", "path": "models/base",
                 "tiny": {"arch": "qwen2", "chat_template": "qwen2.5-instruct"}}}
TRAIN = {"max_steps": 2, "batch_tokens": 256, "lr": 1.0e-3, "warmup_steps": 1}


def gsm_records(n: int) -> list[dict]:
    return [{"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
             "answer": f"He has {i} + {i + 2} = {2 * i + 2} apples.\n#### {2 * i + 2}"} for i in range(n)]


def steps(train_arms: dict[str, float], evaluate: dict) -> list[dict]:
    out = [
        {"name": "general", "kind": "load", "path": "data/general.jsonl"},
        {"name": "general_eval", "kind": "load", "path": "data/general_eval.jsonl"},
        {"name": "domain", "kind": "load", "path": "data/domain.jsonl", "prompt_field": "question",
         "response_field": "answer"},
    ]
    for arm, share in train_arms.items():
        out += [
            {"name": f"mix_{arm}", "kind": "mix", "inputs": {"general": "general", "domain": "domain"},
             "ratio": {"general": share, "domain": 1 - share}, "total": 8, "seed": 0},
            {"name": f"shards_{arm}", "kind": "export", "input": f"mix_{arm}", "format": "shards",
             "shards": {"tokenizer": "models/base", "seq_len": 128}},
            {"name": f"train_{arm}", "kind": "train", "input": f"shards_{arm}", "model": "base", "options": TRAIN},
        ]
    return out + [evaluate]


def make(tmp_path, train_arms=None, evaluate=None, name="ev"):
    write_jsonl(tmp_path / "data" / "general.jsonl", general_records(12))
    write_jsonl(tmp_path / "data" / "general_eval.jsonl", general_records(6))
    write_jsonl(tmp_path / "data" / "domain.jsonl", domain_records(8))
    write_jsonl(tmp_path / "data" / "gsm.jsonl", gsm_records(4))
    arms = {"d": 0.0, "m": 0.5} if train_arms is None else train_arms
    evaluate = evaluate or {
        "name": "eval", "kind": "evaluate", "models": ["base", *(f"train_{a}" for a in arms)],
        "baseline": "base", "no_replay": "train_d" if "d" in arms else None, "batch_size": 4,
        "sets": {"general": {"input": "general_eval", "metrics": ["nll"], "role": "general"},
                 "domain": {"path": "data/gsm.jsonl", "prompt_field": "question", "response_field": "answer",
                            "metrics": ["nll", {"metric": "exact_match", "preset": "gsm8k", "max_tokens": 8}],
                            "role": "domain"}}}
    if evaluate.get("no_replay") is None:
        evaluate.pop("no_replay", None)
    return write_pipeline(tmp_path, steps(arms, evaluate), name=name, models=BASE)


def test_evaluate_writes_metrics_forgetting_and_lineage_and_is_cached(tmp_path):
    pipeline = make(tmp_path)
    first = cli("run", pipeline, cwd=tmp_path)
    assert first.exit_code == 0, first.output
    store = store_of(pipeline)
    rows = query(store, "SELECT model, \"set\", role, metric, n, value, stderr FROM eval ORDER BY model, \"set\", metric")
    # a random tiny model: positive losses with standard errors; it answers no GSM8K question right
    assert all(r[5] > 0 and r[6] > 0 for r in rows if r[3] in ("nll", "bpb"))
    assert [r[5] for r in rows if r[3] == "exact_match"] == [0.0, 0.0, 0.0]
    assert {r[2] for r in rows if r[1] == "general"} == {"general"} and {r[2] for r in rows if r[1] == "domain"} == {"domain"}
    models = sorted({r[0] for r in rows})
    assert models == ["base", "train_d", "train_m"]
    per_model = [(r[1], r[3], r[4]) for r in rows if r[0] == "base"]
    assert per_model == [("domain", "bpb", 4), ("domain", "exact_match", 4), ("domain", "nll", 4),
                         ("general", "bpb", 6), ("general", "nll", 6)]
    # the same values in dm.metrics, with the step and run
    assert query(store, "SELECT count(*), count(DISTINCT run_id), min(step) FROM dm.metrics") == [(15, 1, "eval")]
    assert query(store, "SELECT model, metric, value FROM eval ORDER BY ALL") == query(
        store, "SELECT model, metric, value FROM dm.metrics ORDER BY ALL")
    # dm.forgetting: one row per arm and metric; the no-replay arm keeps all of its own gain
    forgetting = query(store, "SELECT model, metric, general_sets, domain_sets, forgetting_removed, domain_gain_kept "
                              "FROM dm.forgetting WHERE metric = 'nll' ORDER BY model")
    assert [r[:4] for r in forgetting] == [("train_d", "nll", 1, 1), ("train_m", "nll", 1, 1)]
    assert forgetting[0][4] == pytest.approx(0.0) and forgetting[0][5] == pytest.approx(1.0)
    # lineage of a trained model's metric row reaches the train step's row
    sid = query(store, "SELECT sample_id FROM eval WHERE model = 'train_m' AND metric = 'nll' AND \"set\" = 'general'")
    out = cli("lineage", sid[0][0], "--store", str(store), "--format", "json", cwd=tmp_path)
    assert out.exit_code == 0, out.output
    steps_seen = {r["step"] for r in json.loads(out.output)}
    assert {"eval", "train_m"} <= steps_seen

    again = cli("run", pipeline, cwd=tmp_path)
    assert again.exit_code == 0, again.output
    assert "skip   eval (evaluate): up to date" in again.output

    # a changed model (train_m retrains on another mix) reruns the evaluation
    before = dict(query(store, "SELECT \"set\" || metric, value FROM eval WHERE model = 'train_m'"))
    changed = cli("run", pipeline, "steps.mix_m.ratio.general=0.8", "steps.mix_m.ratio.domain=0.2", cwd=tmp_path)
    assert changed.exit_code == 0, changed.output
    assert "run    eval (evaluate)" in changed.output
    after = dict(query(store, "SELECT \"set\" || metric, value FROM eval WHERE model = 'train_m'"))
    assert after["generalnll"] != before["generalnll"]
    assert query(store, "SELECT count(*) FROM dm.metrics") == [(15,)]  # the old values are gone


def test_a_changed_set_file_reruns_the_evaluation(tmp_path):
    pipeline = make(tmp_path, train_arms={})
    assert cli("run", pipeline, cwd=tmp_path).exit_code == 0
    again = cli("run", pipeline, cwd=tmp_path)
    assert "skip   eval (evaluate): up to date" in again.output
    write_jsonl(tmp_path / "data" / "gsm.jsonl", gsm_records(3))
    changed = cli("run", pipeline, cwd=tmp_path)
    assert changed.exit_code == 0, changed.output
    assert "run    eval (evaluate)" in changed.output
    assert query(store_of(pipeline), "SELECT DISTINCT n FROM eval WHERE \"set\" = 'domain'") == [(3,)]
