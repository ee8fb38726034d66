"""lm_eval: results of lm-evaluation-harness ingested as metric values; a real run of a local task YAML
over a local data file on a tiny model (skipped when the optional extra datamix[eval] is not installed)."""

from __future__ import annotations

import json

import pytest

from datamix.eval.lm_eval import ingest


def test_ingest_reads_metrics_with_their_stderr_and_sample_counts():
    results = {
        "results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                              "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A"},
                    "wiki": {"word_perplexity,none": 12.5, "word_perplexity_stderr,none": 0.5, "sample_len": 7}},
        "n-samples": {"gsm8k": {"original": 1319, "effective": 40}, "wiki": {"original": 7, "effective": 7}},
        "higher_is_better": {"gsm8k": {"exact_match": True}, "wiki": {"word_perplexity": False}},
    }
    rows = [(v.metric, v.value, v.n, v.stderr, v.higher_is_better) for v in ingest(results)]
    assert rows == [
        ("gsm8k/exact_match,flexible-extract", 0.5, 40, None, True),
        ("gsm8k/exact_match,strict-match", 0.25, 40, 0.1, True),
        ("wiki/word_perplexity", 12.5, 7, 0.5, False),
    ]
    ci = next(v for v in ingest(results) if v.stderr == 0.1)
    assert (ci.ci_low, ci.ci_high) == (pytest.approx(0.25 - 1.96 * 0.1, abs=1e-3), pytest.approx(0.25 + 1.96 * 0.1, abs=1e-3))


def test_a_local_task_yaml_runs_offline_on_a_tiny_model(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval", reason="the optional extra datamix[eval] is not installed")
    pytest.importorskip("accelerate", reason="the optional extra datamix[eval] is not installed")
    from datamix.eval.lm import EvalModel
    from datamix.eval.lm_eval import evaluate
    from datamix.eval.sets import LmEvalMetric
    from datamix.models.tiny import build_tiny_model

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # nothing may come from the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_tiny_model(str(tmp_path / "m"), chat_template="chatml")
    rows = [{"question": "Which is a fruit?", "choices": ["kiwi", "stone"], "answer": 0},
            {"question": "Which is a colour?", "choices": ["table", "blue"], "answer": 1},
            {"question": "Which is an animal?", "choices": ["cat", "rock", "rain"], "answer": 0},
            {"question": "Which is hot?", "choices": ["ice", "fire"], "answer": 1}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_mc.yaml").write_text(f"""task: dm_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / "data.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    values = {v.metric: v for v in evaluate(EvalModel("tiny", model, batch_size=4),
                                            LmEvalMetric(metric="lm_eval", tasks=["dm_tiny_mc"], include_path="tasks"),
                                            str(tmp_path))}
    assert set(values) == {"dm_tiny_mc/acc"}
    acc = values["dm_tiny_mc/acc"]
    assert acc.n == 4 and acc.value in (0.0, 0.25, 0.5, 0.75, 1.0) and acc.higher_is_better
    assert acc.stderr is not None
