"""Sweeps: one arm of a pipeline per value of a var, the rest shared.

    datamix run exp.yaml --sweep general_share=0,0.5,0.7,0.83,0.9 [--pick "max_gain, forgetting<=50%"]

The pipeline is resolved once per value. A step whose resolved config differs between
values, or that reads a step that does, is a *variant*: it is copied once per value under
`NAME__VAR_VALUE` (`mix__general_share_0p83`: letters, digits and _ only, so the copy's
table is a plain SQL name; `.` is written `p` and a minus sign `m`), its inputs pointing
at the same value's copies. Every other step is shared: it is in the combined pipeline
once, so it runs once, and a later sweep (or a plain run) finds it in the store and skips
it. An `evaluate` step downstream of the variants is not copied: it evaluates every arm's
models together (its `models:` list gets each copy of a variant train step), so one
dm.forgetting table holds the whole trade-off. After the run, `report` reads that table
per arm, and `pick` applies the stated rule (default: the most domain gain with at most
50% of the no-replay arm's forgetting).

When the evaluate step's baseline or no-replay arm itself varies (a sweep of seeds, where
every value is a replicate with its own domain-only arm), the evaluate step is copied per
value like any variant, and `replicates` gives each arm's mean, spread and range.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from datamix.spec import Pipeline, SpecError, load

SEPARATOR = "__"


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """`var=v1,v2,...` -> (var, [values]); the values are YAML scalars like KEY=VALUE overrides."""
    import yaml

    if "=" not in text:
        raise SpecError([f"--sweep {text!r}: write VAR=V1,V2,..., e.g. general_share=0,0.5,0.83"])
    var, values = (part.strip() for part in text.split("=", 1))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
        raise SpecError([f"--sweep {text!r}: {var!r} is not a var name (letters, digits, _)"])
    parsed = []
    for v in values.split(","):
        v = v.strip()
        if not v:
            raise SpecError([f"--sweep {text!r}: an empty value; give VAR=V1,V2,... without empty entries"])
        try:
            parsed.append(yaml.safe_load(v))
        except yaml.YAMLError:
            parsed.append(v)
    if len({json.dumps(v, sort_keys=True, default=str) for v in parsed}) != len(parsed):
        raise SpecError([f"--sweep {text!r}: a value is given twice"])
    return var, parsed


def value_tag(value: Any) -> str:
    """A value as a name part: 0.83 -> 0p83, -1 -> m1, 'a b' -> a_b."""
    text = str(value).replace("-", "m").replace(".", "p")
    return re.sub(r"[^A-Za-z0-9]", "_", text)


def arm_name(step: str, var: str, value: Any) -> str:
    return f"{step}{SEPARATOR}{var}_{value_tag(value)}"


@dataclasses.dataclass
class Sweep:
    pipeline: Pipeline  # the combined pipeline: shared steps once, variants once per value
    var: str
    values: list[Any]
    variants: list[str]  # the original names of the steps copied per value
    arms: dict[str, dict[str, str]]  # value tag -> {original step name: its copy}
    evaluates: list[str]  # the evaluate steps: shared ones compare every arm, copies one value's arms
    evaluate_value: dict[str, Any] = dataclasses.field(default_factory=dict)  # evaluate copy -> its value

    def train_arms(self) -> dict[str, tuple[Any, str]]:
        """copy name of every variant train step -> (its value, the original step name)."""
        out = {}
        for value in self.values:
            for original, copy in self.arms[value_tag(value)].items():
                if self.pipeline.step(copy).kind == "train":
                    out[copy] = (value, original)
        return out


def expand(path: str, overrides: list[str], var: str, values: list[Any], check_files: bool = True,
           store: str | None = None) -> Sweep:
    """The combined pipeline of a sweep (see the module docstring). Raises SpecError."""
    from datamix.steps.base import REGISTRY

    tags = [value_tag(v) for v in values]
    if len(set(tags)) != len(tags):
        raise SpecError([f"--sweep {var}: values {values} give the same name twice ({tags}); use distinct values"])
    base = load(path, list(overrides), check_files=check_files, store=store)
    if var not in base.vars:
        raise SpecError([f"--sweep {var}: the pipeline has no var {var!r} (vars: {', '.join(base.vars) or 'none'}); "
                         "define it under `vars:` and use it as ${" + var + "}"])
    per_value = [load(path, [*overrides, f"{var}={json.dumps(v) if isinstance(v, str) else v}"],
                      check_files=check_files, store=store) for v in values]
    models = [json.dumps({k: m.model_dump(mode="json") for k, m in p.models.items()}, sort_keys=True) for p in per_value]
    if len(set(models)) > 1:
        raise SpecError([f"--sweep {var}: the var changes `models:`; a sweep varies steps only "
                         "(declare one model per setting and list them in the steps instead)"])

    uses = _steps_using(path, var)
    variant: set[str] = set()
    for step in base.order():
        dumps = {json.dumps(p.step(step.name).model_dump(mode="json"), sort_keys=True, default=str) for p in per_value}
        parents = set(step.parent_steps().values())
        if step.kind == "evaluate":
            # an evaluate step measured against a per-value arm (a sweep of seeds: each replicate's own
            # no-replay arm) is copied per value; otherwise it compares every arm at once
            if len(dumps) > 1 or step.name in uses or {step.baseline_model, step.no_replay} & variant:
                variant.add(step.name)
        elif len(dumps) > 1 or step.name in uses or parents & variant:
            variant.add(step.name)
    if not variant:
        raise SpecError([f"--sweep {var}: no step's resolved config depends on ${{{var}}}; nothing to sweep"])

    context = {"models": set(base.models)}
    arms: dict[str, dict[str, str]] = {t: {} for t in tags}
    steps = []
    evaluates = []
    evaluate_value: dict[str, Any] = {}
    for step in base.steps:  # YAML order, so the combined pipeline reads like the original
        if step.name in variant:
            for value, tag, p in zip(values, tags, per_value):
                copy = arm_name(step.name, var, value)
                arms[tag][step.name] = copy
                raw = p.step(step.name).model_dump(mode="json", exclude_unset=True)  # keeps which keys the YAML set
                rename = {parent: arms[tag][parent] for parent in p.step(step.name).parent_steps().values()
                          if parent in variant}
                raw = _rename(raw, rename)
                raw["name"] = copy
                steps.append(REGISTRY[step.kind].config.model_validate(raw, context=context))
                if step.kind == "evaluate":
                    evaluates.append(copy)
                    evaluate_value[copy] = value
        elif step.kind == "evaluate" and set(step.parent_steps().values()) & variant:
            steps.append(_evaluate_over_arms(step, per_value, variant, values, var, context))
            evaluates.append(step.name)
        else:
            steps.append(step)
            if step.kind == "evaluate":
                evaluates.append(step.name)
    combined = base.model_copy(update={"steps": steps})
    return Sweep(combined, var, list(values), sorted(variant), arms, evaluates, evaluate_value)


def _steps_using(path: str, var: str) -> set[str]:
    """Names of the steps whose YAML mentions ${var} (a one-value sweep has no second value to compare)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    needle = "${" + var + "}"
    return {s.get("name") for s in raw.get("steps") or [] if isinstance(s, dict) and needle in json.dumps(s)}


def _rename(value: Any, names: dict[str, str]) -> Any:
    """Every string equal to a renamed step's name, anywhere in a step's config, renamed."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, dict):
        return {k: _rename(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, names) for v in value]
    return value


def _evaluate_over_arms(step, per_value, variant: set[str], values, var: str, context):
    from datamix.steps.base import REGISTRY

    for label, parent in step.parent_steps().items():
        if parent in variant and label.startswith("set-"):
            raise SpecError([f"step {step.name!r}: set {label[4:]!r} reads {parent!r}, which changes with ${{{var}}}; "
                             "evaluation sets must be the same for every arm"])
    raw = step.model_dump(mode="json", exclude_unset=True)
    models = []
    for m in step.models:
        models += [arm_name(m, var, v) for v in values] if m in variant else [m]
    raw["models"] = models
    return REGISTRY[step.kind].config.model_validate(raw, context=context)


# ---------------------------------------------------------------- the report and the pick


_CONSTRAINT = re.compile(r"^(forgetting|gain|removed|kept)\s*(<=|>=|<|>)\s*(-?[0-9.]+(?:e-?[0-9]+)?)\s*(%?)$")
DEFAULT_PICK = "max_gain, forgetting<=50%"


@dataclasses.dataclass
class PickRule:
    objective: str  # max_gain | min_forgetting
    constraints: list[tuple[str, str, float, bool]]  # (quantity, op, bound, relative to the no-replay arm)
    text: str

    def describe(self) -> str:
        parts = {"max_gain": "the most domain gain", "min_forgetting": "the least forgetting"}[self.objective]
        words = {"forgetting": "forgetting", "gain": "domain gain", "removed": "forgetting removed",
                 "kept": "domain gain kept"}
        cons = []
        for q, op, bound, rel in self.constraints:
            if rel and q in ("forgetting", "gain"):
                cons.append(f"{words[q]} {op} {bound:g}% of the no-replay arm's")
            else:
                cons.append(f"{words[q]} {op} {bound:g}{'%' if rel else ''}")
        return parts + (" with " + " and ".join(cons) if cons else "")


def parse_pick(text: str | None) -> PickRule:
    """`max_gain|min_forgetting[, QUANTITY OP BOUND[%]]...`; QUANTITY: forgetting, gain (metric units, or % of the
    no-replay arm's), removed, kept (fractions of the no-replay arm's forgetting removed / gain kept, or %)."""
    text = text or DEFAULT_PICK
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or parts[0] not in ("max_gain", "min_forgetting"):
        raise SpecError([f"--pick {text!r}: start with max_gain or min_forgetting, then constraints such as "
                         "forgetting<=50% (of the no-replay arm's), forgetting<=0.1 (nll), kept>=90%"])
    constraints = []
    for part in parts[1:]:
        m = _CONSTRAINT.match(part)
        if not m:
            raise SpecError([f"--pick {text!r}: cannot read {part!r}; write e.g. forgetting<=50%, gain>=0.2, kept>=0.9"])
        constraints.append((m.group(1), m.group(2), float(m.group(3)), bool(m.group(4))))
    return PickRule(parts[0], constraints, text)


def report(con, sweep: Sweep, metric: str | None = None) -> tuple[list[dict], str | None]:
    """Rows of dm.forgetting for the sweep's evaluate steps, each with its arm's value (None for a
    shared model, e.g. the no-replay arm), and the metric used (nll when evaluated)."""
    if not sweep.evaluates:
        return [], None
    marks = ", ".join("?" * len(sweep.evaluates))
    cur = con.execute(f"SELECT * FROM dm.forgetting WHERE step IN ({marks})", sweep.evaluates)
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    metrics = sorted({r["metric"] for r in rows})
    if metric is None:
        metric = "nll" if "nll" in metrics else (metrics[0] if metrics else None)
    arms = sweep.train_arms()
    out = []
    for r in rows:
        if r["metric"] != metric:
            continue
        value, original = arms.get(r["model"], (None, r["model"]))
        if value is None and r["step"] in sweep.evaluate_value:  # an evaluate copy: its value's arms
            value = sweep.evaluate_value[r["step"]]
        out.append({**r, "value": value, "arm_of": original})
    order = {json.dumps(v): i for i, v in enumerate(sweep.values)}
    out.sort(key=lambda r: (r["step"], r["value"] is not None, order.get(json.dumps(r["value"]), -1), r["model"]))
    return out, metric


def replicates(rows: list[dict]) -> list[dict]:
    """Per arm (the original step name), over the sweep's values: mean, min and max of forgetting,
    domain gain and the two fractions. For a sweep of seeds, where every value is a replicate."""
    import statistics

    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["value"] is not None:
            groups.setdefault(r["arm_of"], []).append(r)
    out = []
    for arm, rs in groups.items():
        entry = {"arm": arm, "n": len(rs)}
        for key in ("forgetting", "domain_gain", "forgetting_removed", "domain_gain_kept"):
            vals = [r[key] for r in rs if r[key] is not None]
            entry[key] = (statistics.fmean(vals), min(vals), max(vals),
                          statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else None
        out.append(entry)
    return out


def pick(rows: list[dict], rule: PickRule) -> tuple[dict | None, str]:
    """The arm the rule picks among the sweep's rows (value not None), and why (or why none)."""
    candidates = [r for r in rows if r["value"] is not None]
    no_replay = {r["step"]: r for r in rows if r["model"] == r.get("no_replay")}
    ok = []
    for r in candidates:
        nr = no_replay.get(r["step"])
        passed = True
        for q, op, bound, rel in rule.constraints:
            if q in ("forgetting", "gain"):
                have = r["forgetting"] if q == "forgetting" else r["domain_gain"]
                if rel:
                    if nr is None:
                        return None, (f"the rule {rule.text!r} measures {q} against the no-replay arm; "
                                      "name it with `no_replay:` in the evaluate step")
                    ref = nr["forgetting"] if q == "forgetting" else nr["domain_gain"]
                    limit = bound / 100 * ref if ref is not None else None
                else:
                    limit = bound
            else:
                have = r["forgetting_removed"] if q == "removed" else r["domain_gain_kept"]
                limit = bound / 100 if rel else bound
            if have is None or limit is None or not _compare(have, op, limit):
                passed = False
                break
        if passed:
            ok.append(r)
    if not ok:
        return None, f"no arm meets the rule ({rule.describe()})"
    key = (lambda r: r["domain_gain"]) if rule.objective == "max_gain" else (lambda r: -r["forgetting"])
    best = max(ok, key=key)
    return best, f"{rule.describe()}: {len(ok)} of {len(candidates)} arms qualify"


def _compare(a: float, op: str, b: float) -> bool:
    return {"<=": a <= b + 1e-12, ">=": a >= b - 1e-12, "<": a < b, ">": a > b}[op]
