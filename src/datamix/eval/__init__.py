"""Evaluation: metrics of a model on named evaluation sets, one module per concern.

    sets.py          what a set is (a step's rows or a file `load` can read) and its metric options
    stats.py         a metric value's standard error and interval (mean, ratio of sums, bootstrap)
    lm.py            a model loaded once per process for scoring (transformers, CPU or GPU)
    nll.py           nll / bpb of the assistant tokens, labelled exactly as the training shards are
    exact_match.py   greedy answers, an answer extracted by a regex (GSM8K preset), normalised
    choice.py        multiple choice by option log-likelihood (acc, acc_norm)
    judge_winrate.py pairwise judging against reference answers, both orders, ties counted
    lm_eval.py       lm-evaluation-harness tasks (optional extra datamix[eval])
    run.py           one model over its sets: the rows of dm.metrics (used by the step and `datamix eval`)

A metric returns `Value`s; run.py adds the model, set and role. Heavy imports
(torch, transformers, lm_eval) happen inside the functions that need them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Value:
    """One metric value with its sampling uncertainty."""

    metric: str
    value: float | None
    n: int
    stderr: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    higher_is_better: bool = True
    # per-example detail (the model's answer, what was extracted, the verdicts, ...) for the
    # metrics that generate or choose, written beside the store so a score can be checked by eye
    samples: list[dict] | None = dataclasses.field(default=None, repr=False)


# The columns a metric row has, in dm.metrics order (run_id, step and created_at come from the store).
ROW_COLUMNS = ("model", "model_path", "set", "role", "metric", "value", "n", "stderr", "ci_low", "ci_high",
               "higher_is_better")
