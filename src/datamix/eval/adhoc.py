"""`datamix eval MODEL_DIR --set name=FILE[:metric[,metric]] ...`: the evaluate step outside a pipeline.

    datamix eval out/model --set general=data/chats.jsonl --set gsm=data/gsm8k.jsonl:nll,exact_match \\
        --option gsm.prompt_field=question --option gsm.response_field=answer --option gsm.preset=gsm8k \\
        --role general=general --role gsm=domain

A set is a file `load` can read; its metrics default to nll. `--option NAME.KEY=VALUE`
sets a set option (prompt_field, response_field, shape, limit, ...) or, when the set has
no such option, that option of each of its metrics that has it (preset, max_tokens,
options_field, answer_field, regex). Everything is validated before the model loads.
"""

from __future__ import annotations

import os

from datamix.eval.sets import METRICS, EvalSet

# metrics that need a pipeline's declared models (judges) or bring no file (harness tasks)
NOT_HERE = {"judge_winrate": "needs judge models: use an evaluate step in a pipeline",
            "lm_eval": "runs harness tasks, not a file: use an evaluate step in a pipeline"}


class AdhocError(ValueError):
    """A command-line problem, said with the option it came from."""


def _yaml_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build_sets(set_args: list[str], role_args: list[str], option_args: list[str], base_dir: str = ".") -> dict[str, EvalSet]:
    """The EvalSets the command line describes; raises AdhocError naming the bad option."""
    from pydantic import ValidationError

    raw: dict[str, dict] = {}
    for arg in set_args:
        name, eq, rest = arg.partition("=")
        if not eq or not name or not rest:
            raise AdhocError(f"--set {arg!r}: write NAME=FILE or NAME=FILE:metric[,metric]")
        path, metrics = rest, ""
        head, sep, tail = rest.rpartition(":")
        if sep and tail and all(m.strip() in METRICS for m in tail.split(",")):
            path, metrics = head, tail
        names = [m.strip() for m in metrics.split(",") if m.strip()] or ["nll"]
        for m in names:
            if m in NOT_HERE:
                raise AdhocError(f"--set {arg!r}: metric {m} {NOT_HERE[m]}")
        if name in raw:
            raise AdhocError(f"--set {arg!r}: the set {name!r} is given twice")
        raw[name] = {"path": path, "metrics": [{"metric": m} for m in names]}
    if not raw:
        raise AdhocError("give at least one --set NAME=FILE[:metric[,metric]]")
    for arg in role_args:
        name, _, role = arg.partition("=")
        if name not in raw:
            raise AdhocError(f"--role {arg!r}: no --set named {name!r} (sets: {', '.join(raw)})")
        raw[name]["role"] = role
    for arg in option_args:
        key, eq, value = arg.partition("=")
        name, dot, option = key.partition(".")
        if not eq or not dot:
            raise AdhocError(f"--option {arg!r}: write SET.OPTION=VALUE, e.g. gsm.prompt_field=question")
        if name not in raw:
            raise AdhocError(f"--option {arg!r}: no --set named {name!r} (sets: {', '.join(raw)})")
        value = _yaml_value(value)
        if option in EvalSet.model_fields and option not in ("metrics", "input", "path"):
            raw[name][option] = value
            continue
        from datamix.eval import sets as sets_mod

        classes = {"nll": sets_mod.NllMetric, "exact_match": sets_mod.ExactMatchMetric,
                   "choice": sets_mod.ChoiceMetric}
        took = [m for m in raw[name]["metrics"] if option in classes[m["metric"]].model_fields]
        if not took:
            raise AdhocError(f"--option {arg!r}: neither the set nor its metrics have an option {option!r}")
        for m in took:
            m[option] = value
    out = {}
    for name, spec in raw.items():
        try:
            out[name] = EvalSet.model_validate(spec)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise AdhocError(f"set {name!r}{'.' + where if where else ''}: {err['msg']}") from None
    return out


def evaluate_folder(model_dir: str, sets: dict[str, EvalSet], batch_size: int = 8, chat_template: str | None = None,
                    device: str = "auto", base_dir: str = ".", dtype: str = "auto") -> list[dict]:
    """Every set's metrics on the model folder: dicts with datamix.eval.ROW_COLUMNS. Sets are read and
    checked against their metrics before the model loads (AdhocError)."""
    from datamix.eval.lm import EvalModel
    from datamix.eval.run import Resources, rows_for
    from datamix.eval.sets import SetError, check_fit, read_file_set

    records = {}
    for name, s in sets.items():
        try:
            records[name] = read_file_set(name, s, base_dir)
        except SetError as e:
            raise AdhocError(f"--set {name}: {e}") from None
        problems = check_fit(s, records[name])
        if problems:
            raise AdhocError("; ".join(f"--set {name}: {p}" for _, p in problems))
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise AdhocError(f"{model_dir}: no config.json; give a Hugging Face model folder")
    model = EvalModel(os.path.basename(os.path.normpath(model_dir)), model_dir, chat_template, device, batch_size, dtype)
    rows = []
    for name, s in sets.items():
        rows += rows_for(model, name, s, records[name], Resources(base_dir=base_dir))
    return rows
