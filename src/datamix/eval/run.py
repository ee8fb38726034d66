"""One model over its evaluation sets: the rows that go to dm.metrics.

Used by the `evaluate` step and by `datamix eval`. A metric module gets the model
and the set's records and returns `Value`s; this adds the model, set and role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datamix.eval import Value
from datamix.eval.lm import EvalModel
from datamix.eval.sets import EvalSet


@dataclasses.dataclass
class Resources:
    """What metrics beyond the model need: other models (judges, references) and the response cache."""

    # judge_texts(judge, prompts, max_tokens): a judge model's greedy replies to user messages
    judge_texts: Callable[[str, list[str], int], list[str]] | None = None
    # answers_of(model, set, chats, max_tokens): another model's greedy answers (judge_winrate's reference)
    answers_of: Callable[[str, str, list[list[dict]], int], list[str]] | None = None
    # greedy answers already made in this run, by (model, set, max_tokens): a reference model's
    # answers are made once for all the models compared with it
    answers: dict = dataclasses.field(default_factory=dict)
    base_dir: str = "."
    seed: int = 0
    log: Callable[[str], None] = lambda msg: None


def metric_values(model: EvalModel, set_name: str, s: EvalSet, records: list[dict], res: Resources) -> list[Value]:
    values: list[Value] = []
    for m in s.metrics:
        if m.metric == "nll":
            from datamix.eval import nll

            values += nll.evaluate(model, [r["messages"] for r in records])
        elif m.metric == "exact_match":
            from datamix.eval import exact_match

            values += exact_match.evaluate(model.backend(), records, m)
        elif m.metric == "choice":
            from datamix.eval import choice

            values += choice.evaluate(model, records, m)
        elif m.metric == "judge_winrate":
            from datamix.eval import judge_winrate

            values += judge_winrate.evaluate(model, set_name, records, m, res)
        elif m.metric == "lm_eval":
            from datamix.eval import lm_eval

            values += lm_eval.evaluate(model, m, res.base_dir)
    return values


def rows_for(model: EvalModel, set_name: str, s: EvalSet, records: list[dict], res: Resources) -> list[dict]:
    """One dict per metric value: model, model_path, set, role, metric, value, n, stderr, ci_low, ci_high,
    higher_is_better."""
    out = []
    for v in metric_values(model, set_name, s, records, res):
        out.append({"model": model.name, "model_path": model.path, "set": set_name, "role": s.role,
                    "metric": v.metric, "value": v.value, "n": v.n, "stderr": v.stderr, "ci_low": v.ci_low,
                    "ci_high": v.ci_high, "higher_is_better": v.higher_is_better, "samples": v.samples})
    return out
