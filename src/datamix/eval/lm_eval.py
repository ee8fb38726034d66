"""lm_eval: lm-evaluation-harness tasks on a model folder (optional extra `datamix[eval]`).

    {metric: lm_eval, tasks: [gsm8k, my_local_task], include_path: tasks/, num_fewshot: 0, limit: 100}

Runs `lm_eval.simple_evaluate` with an HFLM over the local folder (no hub access:
a local task YAML whose dataset is a local data file works offline) and ingests
every numeric result as a metric named `<task>/<metric>[,<filter>]` with the
harness's own standard error and sample count.
"""

from __future__ import annotations

import os

from datamix.eval import Value
from datamix.eval.lm import EvalModel
from datamix.eval.sets import LmEvalMetric
from datamix.eval.stats import Z95

INSTALL = "pip install 'datamix[eval]' (or pip install lm-eval)"


def missing_extra() -> str | None:
    """What to install when lm-evaluation-harness is not there; None when it is."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        return f"metric lm_eval needs lm-evaluation-harness, which is not installed: {INSTALL}"
    return None


# Metrics where a lower value is better (the harness marks these in its task configs too).
_LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity", "ter")


def evaluate(model: EvalModel, m: LmEvalMetric, base_dir: str) -> list[Value]:
    if (msg := missing_extra()) is not None:
        raise RuntimeError(msg)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tok, lm, device = model.load()
    include = None
    if m.include_path:
        include = m.include_path if os.path.isabs(m.include_path) else os.path.join(base_dir, m.include_path)
    hflm = HFLM(pretrained=lm, tokenizer=tok, batch_size=model.batch_size, device=device)
    results = lm_eval.simple_evaluate(
        model=hflm, tasks=list(m.tasks), num_fewshot=m.num_fewshot, limit=m.limit,
        task_manager=TaskManager(include_path=include) if include else TaskManager(),
        apply_chat_template=m.apply_chat_template, log_samples=False,
        # means get the harness's analytic standard error; others a (small) bootstrap
        bootstrap_iters=200,
    )
    return ingest(results)


def ingest(results: dict) -> list[Value]:
    """Values from simple_evaluate's result dict: results[task]['acc,none'] with 'acc_stderr,none'."""
    out = []
    samples = results.get("n-samples", {})
    for task, metrics in sorted(results.get("results", {}).items()):
        n = samples.get(task, {}).get("effective") or samples.get(task, {}).get("original") or 0
        higher = results.get("higher_is_better", {}).get(task, {})
        for key, value in sorted(metrics.items()):
            # metric keys are "<metric>,<filter>"; others (alias, sample_len) are bookkeeping
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name, _, filt = key.partition(",")
            stderr = metrics.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and not isinstance(stderr, bool) else None
            label = f"{task}/{name}" + (f",{filt}" if filt and filt != "none" else "")
            hib = higher.get(name, not any(t in name for t in _LOWER_IS_BETTER))
            out.append(Value(label, float(value), int(n), stderr,
                             None if stderr is None else float(value) - Z95 * stderr,
                             None if stderr is None else float(value) + Z95 * stderr, bool(hib)))
    return out
