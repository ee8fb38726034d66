"""The evaluate step in a pipeline: metrics in the step's table and dm.metrics, dm.forgetting over them,
skipped when nothing changed, rerun when a model or a set changes; bad input refused by validate."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli, domain_records, general_records, query, store_of, write_jsonl, write_pipeline

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
    # every GSM8K answer is kept beside the store, with what was extracted and the reference
    (path,) = query(store, "SELECT samples_file FROM eval WHERE model = 'base' AND metric = 'exact_match'")[0]
    samples = [json.loads(line) for line in open(path)]
    assert [(s["reference"], s["correct"]) for s in samples] == [("2", False), ("4", False), ("6", False), ("8", False)]
    assert all(isinstance(s["answer"], str) for s in samples)
    assert query(store, "SELECT count(*) FROM eval WHERE metric IN ('nll', 'bpb') AND samples_file IS NULL") == [(12,)]
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
    records = json.loads(out.stdout)
    assert [(r["step"], r["depth"]) for r in records[:2]] == [("eval", 0), ("train_m", 1)]
    # ... and on, step by step, to the mix the model was trained on
    whole = {r["step"]: r for r in records if r.get("whole_step")}
    assert set(whole) == {"shards_m", "mix_m", "general", "domain"}
    assert whole["mix_m"]["summary"] == "all 8 rows of mix_m (the input as a whole)"

    status = cli("status", pipeline, cwd=tmp_path)
    assert status.exit_code == 0, status.output
    table = status.output[status.output.index("forgetting vs the baseline"):]
    assert "train_d" in table and "train_m" in table and "100%" in table  # train_d keeps 100% of its own gain

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


class ScriptedJudge:
    """A judge backend whose verdict is the response holding 'REFERENCE' (the set's answers do)."""

    name = "judge"

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, params):
        from datamix.models import Completion

        self.calls += 1
        out = []
        for p in prompts:
            text = p.messages[0]["content"]
            a = text.split("[Response A]")[1].split("[Response B]")[0]
            out.append([Completion("Winner: A" if "REFERENCE" in a else "Winner: B", "stop", 1, 1)] * params.n)
        return out

    def tokenizer(self):
        return None


def test_judge_winrate_in_a_pipeline_calls_the_judge_through_the_response_cache(tmp_path, monkeypatch):
    import datamix.models as models_mod

    judge = ScriptedJudge()
    real = models_mod.load_backend
    monkeypatch.setattr(models_mod, "load_backend",
                        lambda name, spec, base_dir=".": judge if name == "judge" else real(name, spec, base_dir))
    write_jsonl(tmp_path / "data" / "chats.jsonl",
                [{"prompt": f"Say something about {w}.", "response": f"REFERENCE answer about {w}"}
                 for w in ("rain", "cats", "tea")])
    models = {**BASE, "judge": {"backend": "transformers", "path": "models/judge",
                                "tiny": {"arch": "llama", "chat_template": "chatml"}}}
    evaluate = {"name": "eval", "kind": "evaluate", "models": ["base"], "batch_size": 4,
                "sets": {"chat": {"path": "data/chats.jsonl", "role": "general",
                                  "metrics": [{"metric": "judge_winrate", "judges": ["judge"], "max_tokens": 4}]}}}
    pipeline = write_pipeline(tmp_path, [evaluate], name="jw", models=models)
    first = cli("run", pipeline, cwd=tmp_path)
    assert first.exit_code == 0, first.output
    values = dict(query(store_of(pipeline), "SELECT metric, value FROM eval"))
    assert values == {"judge_winrate": 0.0, "judge_ties": 0.0, "judge_unparsed": 0.0}  # the reference always wins
    (path,) = query(store_of(pipeline), "SELECT samples_file FROM eval WHERE metric = 'judge_winrate'")[0]
    samples = [json.loads(line) for line in open(path)]
    assert [s["reference"] for s in samples] == [f"REFERENCE answer about {w}" for w in ("rain", "cats", "tea")]
    assert [[(v["model_is"], v["verdict"], v["score"]) for v in s["verdicts"]] for s in samples] == \
        [[("A", "B", 0.0), ("B", "A", 0.0)]] * 3
    assert query(store_of(pipeline), "SELECT n FROM eval WHERE metric = 'judge_winrate'") == [(3,)]
    calls = judge.calls
    assert calls >= 1
    # a rerun forced by a changed option asks the judge nothing new: its verdicts come from the cache
    again = cli("run", pipeline, "steps.eval.batch_size=2", cwd=tmp_path)
    assert again.exit_code == 0, again.output
    assert "run    eval (evaluate)" in again.output
    assert judge.calls == calls


def bad_pipeline(tmp_path, sets=None, models=("base",), extra_steps=()):
    write_jsonl(tmp_path / "data" / "gsm.jsonl", gsm_records(3))
    evaluate = {"name": "eval", "kind": "evaluate", "models": list(models),
                "sets": sets or {"domain": {"path": "data/gsm.jsonl", "prompt_field": "question",
                                            "response_field": "answer", "metrics": ["nll"], "role": "domain"}}}
    return write_pipeline(tmp_path, [*extra_steps, evaluate], name="bad", models=BASE)


def validate_problems(tmp_path, pipeline) -> str:
    result = cli("validate", pipeline, cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_validate_names_a_missing_or_malformed_set_file(tmp_path):
    missing = bad_pipeline(tmp_path, sets={"domain": {"path": "data/nope.jsonl", "metrics": ["nll"]}})
    out = validate_problems(tmp_path, missing)
    assert "steps[0] (name: eval).sets.domain.path: data/nope.jsonl does not exist" in out
    assert out.count("nope.jsonl does not exist") == 1

    (tmp_path / "data" / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "oops"\n')
    broken = bad_pipeline(tmp_path, sets={"general": {"path": "data/broken.jsonl", "metrics": ["nll"]}})
    out = validate_problems(tmp_path, broken)
    assert "sets.general.path" in out and "broken.jsonl:2: invalid JSON" in out


def test_validate_refuses_metrics_that_do_not_fit_the_set(tmp_path):
    write_jsonl(tmp_path / "data" / "mc.jsonl", [{"question": "2+2?", "answer": "1"}])  # no options
    write_jsonl(tmp_path / "data" / "prompts.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    pipeline = bad_pipeline(tmp_path, sets={
        "mc": {"path": "data/mc.jsonl", "prompt_field": "question", "response_field": "answer",
               "metrics": ["choice"]},
        "open": {"path": "data/prompts.jsonl", "metrics": [{"metric": "exact_match", "preset": "gsm8k"}]}})
    out = validate_problems(tmp_path, pipeline)
    assert "(name: eval).sets.mc.metrics[0]: choice: data/mc.jsonl:1: field 'options' is missing" in out
    assert "(name: eval).sets.open.metrics[0]: exact_match: data/prompts.jsonl:1 has no reference answer" in out


def test_validate_refuses_an_unknown_model_or_a_step_that_is_not_a_train_step(tmp_path):
    load = {"name": "rows", "kind": "load", "path": "data/gsm.jsonl", "prompt_field": "question",
            "response_field": "answer"}
    pipeline = bad_pipeline(tmp_path, models=("base", "train_x", "rows"), extra_steps=[load])
    out = validate_problems(tmp_path, pipeline)
    assert "steps[1] (name: eval).models[1]: no model or train step named 'train_x' (models: base; train steps: none)" in out
    assert out.count("train_x") == 1  # said once, not again as a missing input step
    assert "steps[1] (name: eval).models[2]: 'rows' is a load step; evaluate takes models under `models:` or train steps" in out


def test_validate_refuses_an_unknown_judge_and_baseline(tmp_path):
    pipeline = bad_pipeline(tmp_path, sets={"domain": {"path": "data/gsm.jsonl", "prompt_field": "question",
                                                       "response_field": "answer",
                                                       "metrics": [{"metric": "judge_winrate", "judges": ["gpt"]}]}})
    out = validate_problems(tmp_path, pipeline)
    assert "(name: eval).sets.domain.metrics[0].judges: no model named 'gpt' under `models:`" in out
    text = pipeline.read_text().replace("models:\n  - base\n", "models:\n  - base\n  baseline: other\n")
    pipeline.write_text(text)
    out = validate_problems(tmp_path, pipeline)
    assert "baseline: 'other' is not one of the evaluated models ['base']" in out


def test_validate_says_what_to_install_for_lm_eval(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    pipeline = bad_pipeline(tmp_path, sets={"harness": {"metrics": [{"metric": "lm_eval", "tasks": ["gsm8k"]}]}})
    out = validate_problems(tmp_path, pipeline)
    assert "sets.harness.metrics[0]: metric lm_eval needs lm-evaluation-harness, which is not installed: " \
           "pip install 'datamix[eval]'" in out


def test_validate_checks_the_columns_a_step_sourced_set_needs(tmp_path):
    write_jsonl(tmp_path / "data" / "mc.jsonl", [{"question": "Pick", "answer": "kiwi"}])
    load = {"name": "mc_rows", "kind": "load", "path": "data/mc.jsonl", "prompt_field": "question",
            "response_field": "answer"}  # no options kept
    pipeline = bad_pipeline(tmp_path, sets={"mc": {"input": "mc_rows", "metrics": [{"metric": "choice"}]}},
                            extra_steps=[load])
    out = validate_problems(tmp_path, pipeline)
    assert "(name: eval).sets.mc.metrics[0].options_field: input 'mc_rows' has no column 'options'" in out


def test_sets_from_steps_with_choice_and_exact_match(tmp_path):
    write_jsonl(tmp_path / "data" / "mc.jsonl", [{"question": "Pick one", "answer": str(i % 2),
                                                  "options": ["kiwi", "stone"]} for i in range(4)])
    write_jsonl(tmp_path / "data" / "gsm.jsonl", gsm_records(3))
    steps_ = [{"name": "mc_rows", "kind": "load", "path": "data/mc.jsonl", "prompt_field": "question",
               "response_field": "answer", "keep_fields": ["options"]},
              {"name": "gsm_rows", "kind": "load", "path": "data/gsm.jsonl", "prompt_field": "question",
               "response_field": "answer"},
              {"name": "eval", "kind": "evaluate", "models": ["base"],
               "sets": {"mc": {"input": "mc_rows", "metrics": ["choice"], "role": "general"},
                        "gsm": {"input": "gsm_rows", "limit": 2, "role": "domain",
                                "metrics": [{"metric": "exact_match", "preset": "gsm8k", "max_tokens": 4}]}}}]
    pipeline = write_pipeline(tmp_path, steps_, name="fromsteps", models=BASE)
    result = cli("run", pipeline, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    rows = query(store_of(pipeline), "SELECT \"set\", metric, n, value FROM eval ORDER BY ALL")
    # the same question offered with both answers: whichever option the model prefers, half are right
    assert rows[:2] == [("gsm", "exact_match", 2, 0.0), ("mc", "acc", 4, 0.5)]
    assert rows[2][:3] == ("mc", "acc_norm", 4) and rows[2][3] == 0.5


def test_a_record_a_metric_cannot_use_fails_the_run_as_bad_input(tmp_path):
    write_jsonl(tmp_path / "data" / "mc.jsonl", [{"question": "Pick", "answer": "Z?", "options": ["kiwi", "stone"]}])
    pipeline = bad_pipeline(tmp_path, sets={"mc": {"path": "data/mc.jsonl", "prompt_field": "question",
                                                   "response_field": "answer", "metrics": [{"metric": "choice"}]}})
    result = cli("run", pipeline, cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert "step eval failed: step 'eval'.sets.mc (base): data/mc.jsonl:1: answer 'Z?' is not an option index, " \
           "a letter or one of the options" in result.output


def test_a_crashed_evaluation_resumes_after_the_models_it_finished(tmp_path, monkeypatch):
    import datamix.eval.run as eval_run

    write_jsonl(tmp_path / "data" / "chats.jsonl", general_records(3))
    models = {**BASE, "other": {"backend": "transformers", "path": "models/other",
                                "tiny": {"arch": "llama", "chat_template": "chatml", "seed": 1}}}
    evaluate = {"name": "eval", "kind": "evaluate", "models": ["base", "other"],
                "sets": {"chat": {"path": "data/chats.jsonl", "metrics": ["nll"], "role": "general"}}}
    pipeline = write_pipeline(tmp_path, [evaluate], name="resume", models=models)
    real = eval_run.rows_for
    evaluated = []

    def crash_on_other(model, *args):
        evaluated.append(model.name)
        if model.name == "other":
            raise RuntimeError("the machine went away")
        return real(model, *args)

    monkeypatch.setattr(eval_run, "rows_for", crash_on_other)
    assert cli("run", pipeline, cwd=tmp_path).exit_code == 1
    store = store_of(pipeline)
    assert query(store, "SELECT model, metric FROM dm.metrics ORDER BY ALL") == [("base", "bpb"), ("base", "nll")]

    monkeypatch.setattr(eval_run, "rows_for", lambda model, *args: (evaluated.append(model.name), real(model, *args))[1])
    evaluated.clear()
    resumed = cli("run", pipeline, cwd=tmp_path)
    assert resumed.exit_code == 0, resumed.output
    assert "resume eval (evaluate)" in resumed.output
    assert evaluated == ["other"]  # base was committed: not evaluated again
    assert query(store, "SELECT model, count(*) FROM dm.metrics GROUP BY model ORDER BY model") == [("base", 2), ("other", 2)]
    assert query(store, "SELECT model, set, metric FROM eval ORDER BY ALL") == [
        (m, "chat", metric) for m in ("base", "other") for metric in ("bpb", "nll")]


def test_a_reference_model_answers_once_for_every_model_compared_with_it(tmp_path, monkeypatch):
    import datamix.eval.judge_winrate as jw
    import datamix.models as models_mod

    judge = ScriptedJudge()
    real_load = models_mod.load_backend
    monkeypatch.setattr(models_mod, "load_backend",
                        lambda name, spec, base_dir=".": judge if name == "judge" else real_load(name, spec, base_dir))
    answered = []
    real_greedy = jw.greedy_answers

    def counting(backend, chats, max_tokens):
        answered.append(backend.name)
        return real_greedy(backend, chats, max_tokens)

    monkeypatch.setattr(jw, "greedy_answers", counting)
    write_jsonl(tmp_path / "data" / "chats.jsonl", general_records(2))
    models = {**BASE, "other": {"backend": "transformers", "path": "models/other",
                                "tiny": {"arch": "llama", "chat_template": "chatml", "seed": 1}},
              "judge": {"backend": "transformers", "path": "models/judge", "tiny": {"chat_template": "chatml"}}}
    evaluate = {"name": "eval", "kind": "evaluate", "models": ["base", "other"],
                "sets": {"chat": {"path": "data/chats.jsonl", "role": "general", "metrics": [
                    {"metric": "judge_winrate", "judges": ["judge"], "reference": "base", "max_tokens": 4}]}}}
    pipeline = write_pipeline(tmp_path, [evaluate], name="ref", models=models)
    result = cli("run", pipeline, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(answered) == ["base", "other"]  # base's answers serve as its own and as the reference
    # against itself a model ties on every prompt, whatever the judge says in each order
    assert query(store_of(pipeline), "SELECT model, value FROM eval WHERE metric = 'judge_winrate' ORDER BY model"
                 )[0] == ("base", 0.5)
