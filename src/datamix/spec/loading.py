"""spec.load: YAML -> vars and overrides -> pydantic models, every problem collected with its place."""

from __future__ import annotations

import os
import re

import yaml
from pydantic import ValidationError

from datamix.spec.checks import (_check_columns, _check_files, _check_graph, _check_in_pipeline, _check_model_files,
                                  _check_models, _check_trained_models, _check_values, _declared_models, _format_loc,
                                  _friendly, _graph_entries, _step_output_dirs, _without, _yaml_loc)
from datamix.spec.pipeline import Pipeline, SpecError
from datamix.spec.source import _VAR, _apply_override, _interpolate, _line_map, _parse_value, _read_yaml
from datamix.steps import kind_names, load_registry
from datamix.steps.base import REGISTRY, StepConfig


def store_path_of(path: str) -> str:
    """The store a pipeline writes, read from its YAML without validating the steps.

    For commands that only read the store (sql, status, show, lineage): they stay fast
    because no step module (and none of their imports) is loaded."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise SpecError([f"{path}: cannot read the pipeline ({getattr(e, 'strerror', None) or e})"]) from None
    if not isinstance(raw, dict) or not raw.get("name"):
        raise SpecError([f"{path}: a pipeline is a mapping with `name` and `steps`"])
    problems: list[str] = []
    variables = raw.get("vars") if isinstance(raw.get("vars"), dict) else {}
    store = _interpolate(raw.get("store"), variables, "store", problems)
    name = _interpolate(raw["name"], variables, "name", problems)
    if problems:
        raise SpecError(problems)
    rel = store or os.path.join(".datamix", f"{name}.duckdb")
    return rel if os.path.isabs(rel) else os.path.join(os.path.dirname(os.path.abspath(path)), rel)


def load(path: str, overrides: list[str] | None = None, check_files: bool = True,
         store: str | None = None) -> Pipeline:
    """Read, override, interpolate and validate a pipeline YAML. Raises SpecError.

    `store` (--store, from the current folder) replaces the YAML's `store:` before validation, so
    what lives beside the store (step outputs, models declared `from_step:`) is looked for there."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SpecError([f"{path}: cannot read the pipeline file ({e.strerror})"]) from None
    try:
        root, raw = _read_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise SpecError([f"{where}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    except RecursionError:  # MAX_DEPTH stops nesting first; kept as a guard
        raise SpecError([f"{path}: not valid YAML: nested too deeply"]) from None
    if not isinstance(raw, dict):
        raise SpecError([f"{path}: a pipeline is a mapping with `name` and `steps`"])
    try:
        lines, duplicates = _line_map(root)
    except SpecError as e:
        raise SpecError([f"{path}: {p}" for p in e.problems]) from None
    problems: list[str] = [
        f"{path}:{line}: {_format_loc(loc, raw.get('steps') if isinstance(raw.get('steps'), list) else [])}: duplicate key (first at line {first}); YAML would keep only "
        "the last one: remove or rename one" for loc, line, first in duplicates]

    def at(loc: tuple) -> str:
        for n in range(len(loc), -1, -1):  # nearest enclosing node with a line
            if loc[:n] in lines:
                return f"{path}:{lines[loc[:n]]}: "
        return f"{path}: "

    for item in overrides or []:
        if "=" not in item:
            problems.append(f"override {item!r}: write KEY=VALUE, e.g. n=100 or steps.mix.ratio.general=0.8")
            continue
        key, value = item.split("=", 1)
        _apply_override(raw, key.strip(), _parse_value(value), problems, set(_VAR.findall(text)))

    variables = raw.get("vars") or {}
    if not isinstance(variables, dict):
        problems.append(f"{at(('vars',))}vars: must be a mapping of names to values")
        variables = {}
    for key in ("store", "models", "steps", "name", "seed"):
        if key in raw:
            raw[key] = _interpolate(raw[key], variables, key, problems)
    if store:
        raw["store"] = os.path.abspath(store)

    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append(f"{at(('steps',))}steps: a pipeline needs a non-empty list of steps")
        raw_steps = []
    # only the kinds this pipeline names: every other kind's module is import time the run never uses
    load_registry(s.get("kind") for s in raw_steps if isinstance(s, dict))

    steps: list[StepConfig] = []
    parsed: list[tuple[int, StepConfig]] = []  # (YAML index, step) of the steps that parsed
    salvaged: list[tuple[int, StepConfig]] = []  # steps that parse once their bad options are left out
    for i, s in enumerate(raw_steps):
        label = f"steps[{i}]" + (f" (name: {s.get('name')})" if isinstance(s, dict) and s.get("name") else "")
        if not isinstance(s, dict):
            problems.append(f"{at(('steps', i))}{label}: a step is a mapping with name, kind and options")
            continue
        kind = s.get("kind")
        if kind not in REGISTRY:
            known = ", ".join(kind_names())
            problems.append(f"{at(('steps', i, 'kind'))}{label}.kind: unknown kind {kind!r}; known kinds: {known}")
            continue
        try:
            # the declared model and step names: a step whose options name models and steps alike
            # (evaluate) tells them apart by these
            context = {"models": set(raw.get("models") or {}) if isinstance(raw.get("models"), dict) else set(),
                       "steps": {r.get("name") for r in raw_steps if isinstance(r, dict)}}
            # a step's executor is a run setting kept beside its config (see _executors)
            steps.append(REGISTRY[kind].config.model_validate(_own_options(s), context=context))
            parsed.append((i, steps[-1]))
        except ValidationError as e:
            for err in e.errors():
                loc = _yaml_loc(tuple(err["loc"]))
                problems.append(f"{at(('steps', i) + loc)}{label}.{_format_loc(loc, [])}: "
                                f"{_friendly(err, REGISTRY[kind].config, loc)}")
            # the rest of the step, without the bad options, so its files are checked in the same report
            rest = _without(_own_options(s), [_yaml_loc(tuple(err["loc"])) for err in e.errors()])
            if rest is not None:
                try:
                    salvaged.append((i, REGISTRY[kind].config.model_validate(rest, context=context)))
                except ValidationError:
                    pass

    top = {k: v for k, v in raw.items() if k not in ("steps", "executor")}
    pipeline = None
    try:
        pipeline = Pipeline.model_validate({**top, "steps": [], "spec_path": path})
    except ValidationError as e:
        for err in e.errors():
            loc = _yaml_loc(tuple(err["loc"]))
            problems.append(f"{at(loc)}{_format_loc(loc, raw_steps)}: {_friendly(err, Pipeline, loc)}")

    # the graph of every step, parsed or not (a step's bad option does not hide a bad input)
    problems += _check_graph(_graph_entries(raw_steps, dict(parsed)), at)
    if pipeline is not None and len(steps) == len(raw_steps):
        pipeline.steps = steps
    problems += _executors(raw, raw_steps, pipeline, check_files, at)
    # files, models, columns and values of every step that parsed, even if others or the top did not
    models = _declared_models(raw, pipeline)
    if check_files:
        base_dir = os.path.dirname(os.path.abspath(path))
        problems += _check_files(base_dir, parsed, raw_steps, models, at)
        problems += _check_files(base_dir, salvaged, raw_steps, models, at, only_written=True)
        problems += _check_model_files(base_dir, models, at, _step_output_dirs(pipeline, raw_steps, base_dir))
    problems += _check_models(models, parsed, at)
    problems += _check_trained_models(models, raw_steps, at)
    problems += _check_columns(parsed, at)
    problems += _check_values(pipeline, raw, parsed, raw_steps, at)
    if pipeline is not None and len(steps) == len(raw_steps):
        problems += _check_in_pipeline(pipeline, parsed, check_files, at)
    if problems:
        raise SpecError(_in_yaml_order(problems, path))
    return pipeline


def _in_yaml_order(problems: list[str], path: str) -> list[str]:
    """Problems sorted by their line in the YAML (stable; those without a line, overrides, first)."""
    def line(p: str) -> int:
        m = re.match(re.escape(path) + r":(\d+): ", p)
        return int(m.group(1)) if m else 0

    return sorted(problems, key=line)


def _own_options(step: dict) -> dict:
    """A step's YAML options without `executor:` (a run setting, not part of its config)."""
    return {k: v for k, v in step.items() if k != "executor"} if "executor" in step else step


def _executors(raw: dict, raw_steps: list, pipeline: Pipeline | None, check_files: bool, at) -> list[str]:
    """Parse the pipeline's and each step's `executor:` onto `pipeline`, and, with the files
    (check_files), check each can run here: ray installed, its address answering."""
    from datamix import executors

    problems: list[str] = []
    places = [(("executor",), "executor", raw["executor"])] if "executor" in raw else []
    places += [(("steps", i, "executor"), f"steps[{i}] (name: {s.get('name')}).executor", s["executor"])
               for i, s in enumerate(raw_steps) if isinstance(s, dict) and "executor" in s]
    checked: dict[str, list] = {}
    for loc, label, value in places:
        spec, errors = executors.parse(value)
        if spec is not None and check_files:
            key = spec.model_dump_json()  # one check per distinct executor: a step repeating the pipeline's
            errors = checked[key] if key in checked else checked.setdefault(key, executors.check(spec))
        for where, message in errors:
            problems.append(f"{at(loc + where)}{label}{''.join('.' + str(p) for p in where)}: {message}")
        if spec is not None and pipeline is not None:
            if loc == ("executor",):
                pipeline.executor = spec
            else:
                pipeline._step_executors[raw_steps[loc[1]].get("name")] = spec
    return problems
