"""The pipeline spec: YAML -> vars and overrides applied -> pydantic models.

Every error names its place: the YAML path (`steps[3] (name: dedup).threshold`)
and, where the YAML has it, file:line. All errors are collected, not just the
first, so one `datamix validate` shows everything to fix.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datamix.models import ModelSpec
from datamix.steps.base import REGISTRY, StepConfig


class SpecError(Exception):
    """The spec is wrong. `problems` lists every error with its place."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    store: str | None = None
    seed: int = 0
    vars: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    steps: list[StepConfig]
    # Set by load(): where the YAML lives (relative paths resolve against it).
    spec_path: str = ""

    @property
    def base_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.spec_path)) if self.spec_path else os.getcwd()

    def store_path(self, override: str | None = None) -> str:
        path = override or self.store or os.path.join(".datamix", f"{self.name}.duckdb")
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def step(self, name: str) -> StepConfig:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def order(self) -> list[StepConfig]:
        """Steps in dependency order (stable: YAML order among independent steps)."""
        done: set[str] = set()
        out: list[StepConfig] = []
        pending = list(self.steps)
        while pending:
            for s in pending:
                if all(p in done for p in s.parent_steps().values()):
                    out.append(s)
                    done.add(s.name)
                    pending.remove(s)
                    break
            else:  # validated against cycles in load(); kept as a guard
                raise SpecError([f"steps: cycle among {', '.join(s.name for s in pending)}"])
        return out


# ---- YAML with line numbers ------------------------------------------------------


def _line_map(text: str) -> dict[tuple, int]:
    """YAML path (tuple of keys and indexes) -> 1-based line where its value starts."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[path + (k.value,)] = k.start_mark.line + 1
                walk(v, path + (k.value,))
                lines[path + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _parse_value(text: str) -> Any:
    """KEY=VALUE values are YAML scalars: 0.8 -> float, true -> bool, [a, b] -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _interpolate(value: Any, variables: dict[str, Any], where: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:  # "${n}" alone keeps the variable's type
            name = whole.group(1)
            if name not in variables:
                problems.append(f"{where}: unknown variable ${{{name}}}; define it under `vars:` or pass {name}=VALUE")
                return value
            return variables[name]

        def sub(m):
            if m.group(1) not in variables:
                problems.append(f"{where}: unknown variable ${{{m.group(1)}}}; define it under `vars:` or pass {m.group(1)}=VALUE")
                return m.group(0)
            return str(variables[m.group(1)])

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, variables, f"{where}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, variables, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _apply_override(raw: dict, key: str, value: Any, problems: list[str]) -> None:
    """`n=5` sets a var; `steps.mix.ratio.general=0.8` sets a step option; `models.base.path=...`."""
    parts = key.split(".")
    if len(parts) == 1:
        raw.setdefault("vars", {})
        if not isinstance(raw["vars"], dict):
            problems.append(f"override {key}: `vars` is not a mapping")
            return
        raw["vars"][key] = value
        return
    target: Any = raw
    if parts[0] == "steps":
        if len(parts) < 3:
            problems.append(f"override {key}: name a step option, e.g. steps.mix.ratio.general=0.8")
            return
        steps = raw.get("steps") or []
        match = [s for s in steps if isinstance(s, dict) and s.get("name") == parts[1]]
        if not match:
            names = ", ".join(str(s.get("name")) for s in steps if isinstance(s, dict))
            problems.append(f"override {key}: no step named {parts[1]!r} (steps: {names})")
            return
        target, parts = match[0], parts[2:]
    for p in parts[:-1]:
        if not isinstance(target, dict):
            problems.append(f"override {key}: {p!r} is not a mapping")
            return
        target = target.setdefault(p, {})
    if not isinstance(target, dict):
        problems.append(f"override {key}: cannot set {parts[-1]!r} inside a non-mapping")
        return
    target[parts[-1]] = value


def _format_loc(loc: tuple, raw_steps: list, base: tuple = ()) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if base + loc[:i] == ("steps",) and part < len(raw_steps) and isinstance(raw_steps[part], dict):
                out += f" (name: {raw_steps[part].get('name')})"
        else:
            out += ("." if out else "") + str(part)
    return out


def _bounds(model: type | None, loc: tuple) -> tuple | None:
    """(low, high) of the field at `loc` in `model` when it declares both, else None."""
    import annotated_types as at

    field = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if field is None:
        return None
    low = high = None
    for m in field.metadata:
        if isinstance(m, (at.Ge, at.Gt)):
            low = getattr(m, "ge", getattr(m, "gt", None))
        if isinstance(m, (at.Le, at.Lt)):
            high = getattr(m, "le", getattr(m, "lt", None))
    return (low, high) if low is not None and high is not None else None


def _members(ann) -> list[type]:
    """The pydantic models an annotation can hold: through Optional, unions, Annotated,
    lists and dict values."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    args = typing.get_args(ann)
    origin = typing.get_origin(ann)
    if origin is dict:
        args = args[1:]
    elif origin is typing.Annotated:
        args = args[:1]
    return [m for a in args for m in _members(a)]


def _model_at(model: type | None, raw_loc: tuple) -> type | None:
    """The pydantic model that holds the field at `raw_loc` (a pydantic error location,
    union tags and dict keys included), or None when it cannot be told."""
    import typing

    key_next = False  # the part after a dict field is a key (a model's name), not a field
    for part in raw_loc[:-1]:
        if model is None:
            return None
        if key_next or isinstance(part, int):
            key_next = False
            continue
        fields = getattr(model, "model_fields", {})
        if part in fields:
            ann = fields[part].annotation
            key_next = typing.get_origin(ann) is dict
            members = _members(ann)
            model = members[0] if len(members) == 1 else (members or None)
        elif isinstance(model, list):  # a union: the location names the member by its tag
            model = next((m for m in model if any(
                typing.get_args(f.annotation) == (part,) for f in m.model_fields.values())), None)
        else:
            return None
    return model if isinstance(model, type) else None


def _friendly(err: dict, model: type | None = None, loc: tuple = ()) -> str:
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == "extra_forbidden":
        holder = _model_at(model, tuple(err["loc"]))
        if holder is not None:
            hidden = ("spec_path",) if holder is Pipeline else ("name", "kind", "method", "rule", "backend")
            names = [n for n in holder.model_fields if n not in hidden]
            if err["loc"][0] == "options" and "options" in getattr(model, "model_fields", {}):
                # dedup: the method's options sit beside the step's own
                own = [n for n in model.model_fields if n not in ("name", "kind", "options", "chunk_size")]
                names = own + [n for n in names if n not in own]
            return f"unknown option; the options here are: {', '.join(names)}"
    if err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = _bounds(model, loc)
        if bounds:
            return f"must be between {bounds[0]:g} and {bounds[1]:g}"
    if err["type"] == "extra_forbidden":
        return "unknown option (check its spelling)"
    if err["type"] == "value_error" and msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if err["type"] == "union_tag_invalid":
        return f"unknown value {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    return msg[0].lower() + msg[1:] if msg else msg


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


def load(path: str, overrides: list[str] | None = None, check_files: bool = True) -> Pipeline:
    """Read, override, interpolate and validate a pipeline YAML. Raises SpecError."""
    from datamix.steps import load_registry

    load_registry()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SpecError([f"{path}: cannot read the pipeline file ({e.strerror})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise SpecError([f"{where}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    if not isinstance(raw, dict):
        raise SpecError([f"{path}: a pipeline is a mapping with `name` and `steps`"])
    lines = _line_map(text)
    problems: list[str] = []

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
        _apply_override(raw, key.strip(), _parse_value(value), problems)

    variables = raw.get("vars") or {}
    if not isinstance(variables, dict):
        problems.append(f"{at(('vars',))}vars: must be a mapping of names to values")
        variables = {}
    for key in ("store", "models", "steps", "name", "seed"):
        if key in raw:
            raw[key] = _interpolate(raw[key], variables, key, problems)

    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append(f"{at(('steps',))}steps: a pipeline needs a non-empty list of steps")
        raw_steps = []

    steps: list[StepConfig] = []
    parsed: list[tuple[int, StepConfig]] = []  # (YAML index, step) of the steps that parsed
    for i, s in enumerate(raw_steps):
        label = f"steps[{i}]" + (f" (name: {s.get('name')})" if isinstance(s, dict) and s.get("name") else "")
        if not isinstance(s, dict):
            problems.append(f"{at(('steps', i))}{label}: a step is a mapping with name, kind and options")
            continue
        kind = s.get("kind")
        if kind not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            problems.append(f"{at(('steps', i, 'kind'))}{label}.kind: unknown kind {kind!r}; known kinds: {known}")
            continue
        try:
            # the declared model names: a step whose options name models and steps alike (evaluate)
            # tells them apart by this
            context = {"models": set(raw.get("models") or {}) if isinstance(raw.get("models"), dict) else set()}
            steps.append(REGISTRY[kind].config.model_validate(s, context=context))
            parsed.append((i, steps[-1]))
        except ValidationError as e:
            for err in e.errors():
                loc = _yaml_loc(tuple(err["loc"]))
                problems.append(f"{at(('steps', i) + loc)}{label}.{_format_loc(loc, [])}: "
                                f"{_friendly(err, REGISTRY[kind].config, loc)}")

    top = {k: v for k, v in raw.items() if k != "steps"}
    pipeline = None
    try:
        pipeline = Pipeline.model_validate({**top, "steps": [], "spec_path": path})
    except ValidationError as e:
        for err in e.errors():
            loc = _yaml_loc(tuple(err["loc"]))
            problems.append(f"{at(loc)}{_format_loc(loc, raw_steps)}: {_friendly(err, Pipeline, loc)}")

    if pipeline is not None and len(steps) == len(raw_steps):
        pipeline.steps = steps
        problems += _check_graph(pipeline, raw_steps, at)
    if pipeline is not None:  # files and models of every step that parsed, even if others did not
        if check_files:
            problems += _check_files(pipeline, parsed, raw_steps, at)
        problems += _check_models(pipeline, parsed, at)
        if len(steps) == len(raw_steps):
            problems += _check_in_pipeline(pipeline, parsed, check_files, at)
    if problems:
        raise SpecError(problems)
    return pipeline


# Parts of a pydantic error location that are not in the YAML: union tags.
_UNION_TAGS = {"transformers", "vllm", "openai", "exact", "minhash", "semantic",
               "length", "regex", "repetition", "phrases", "shape", "sql"}
_METHOD_TAGS = {"exact", "minhash", "semantic"}


def _yaml_loc(loc: tuple) -> tuple:
    """A pydantic error location as the YAML spells it: no union tags, and no `options`
    where the dedup step gathered its method's flat options (options.minhash.threshold)."""
    out = []
    for i, part in enumerate(loc):
        if part == "options" and i + 1 < len(loc) and loc[i + 1] in _METHOD_TAGS:
            continue
        if isinstance(part, str) and part in _UNION_TAGS:
            continue
        out.append(part)
    return tuple(out)


def _check_graph(p: Pipeline, raw_steps: list, at) -> list[str]:
    problems = []
    names: dict[str, int] = {}
    for i, s in enumerate(p.steps):
        if s.name in names:
            problems.append(f"{at(('steps', i, 'name'))}steps[{i}].name: {s.name!r} is already the name of steps[{names[s.name]}]")
        names[s.name] = i
        if s.input and s.inputs:
            problems.append(f"{at(('steps', i))}steps[{i}] (name: {s.name}): give `input` or `inputs`, not both")
    for i, s in enumerate(p.steps):
        for label, parent in s.parent_steps().items():
            if parent not in names:
                key = "input" if label == "input" and s.input else "inputs"
                problems.append(
                    f"{at(('steps', i, key))}steps[{i}] (name: {s.name}).{key}: no step named {parent!r}"
                    f" (steps: {', '.join(names)})"
                )
    if problems:
        return problems
    # cycle check: Kahn's algorithm over the name graph
    indeg = {s.name: len(set(s.parent_steps().values())) for s in p.steps}
    children: dict[str, list[str]] = {s.name: [] for s in p.steps}
    for s in p.steps:
        for parent in set(s.parent_steps().values()):
            children[parent].append(s.name)
    ready = [n for n, d in indeg.items() if d == 0]
    while ready:
        n = ready.pop()
        for c in children[n]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    cyclic = [n for n, d in indeg.items() if d > 0]
    if cyclic:
        first = min(names[n] for n in cyclic)
        problems.append(f"{at(('steps', first))}steps: the inputs form a cycle among {', '.join(cyclic)}; "
                        "a step cannot depend on its own output")
    return problems


def _check_files(p: Pipeline, parsed: list[tuple[int, StepConfig]], raw_steps: list, at) -> list[str]:
    problems = []
    names = {r.get("name") for r in raw_steps if isinstance(r, dict)}  # a step name is not a file
    for i, s in parsed:
        for field in type(s).path_fields:
            value = getattr(s, field, None)
            if not value or (isinstance(value, str) and value in names):
                continue
            full = value if os.path.isabs(value) else os.path.join(p.base_dir, value)
            if not (os.path.exists(full) or glob.glob(full)):
                problems.append(
                    f"{at(('steps', i, field))}steps[{i}] (name: {s.name}).{field}: {value} does not exist"
                    f" (looked for {full})"
                )
    return problems


def _check_models(p: Pipeline, parsed: list[tuple[int, StepConfig]], at) -> list[str]:
    problems = []
    for i, s in parsed:
        for field, name in _model_refs(s):
            if name not in p.models and not (field == "model" and ("/" in name or os.path.exists(name))):
                known = ", ".join(p.models) or "none declared"
                problems.append(
                    f"{at(('steps', i, field))}steps[{i}] (name: {s.name}).{field}: no model named {name!r} under "
                    f"`models:` ({known})"
                )
    return problems


def _check_in_pipeline(p: Pipeline, parsed: list[tuple[int, StepConfig]], check_files: bool, at) -> list[str]:
    """What only the whole pipeline can tell about a step (a kind's `check_pipeline(pipeline,
    check_files)` returns (location inside the step, problem) pairs)."""
    problems = []
    for i, s in parsed:
        check = getattr(s, "check_pipeline", None)
        if check is None:
            continue
        for loc, message in check(p, check_files):
            problems.append(f"{at(('steps', i) + loc)}steps[{i}] (name: {s.name}).{_format_loc(loc, [])}: {message}")
    return problems


def _model_refs(step: StepConfig) -> list[tuple[str, str]]:
    """(field, model name) for every model a step refers to: fields named model/models/judges."""
    if hasattr(step, "model_refs"):  # a kind whose options name models in nested places (evaluate)
        return step.model_refs()
    refs = []
    for field in ("model", "models", "judges", "reference_model"):
        value = getattr(step, field, None)
        if isinstance(value, str):
            refs.append((field, value))
        elif isinstance(value, list):
            refs += [(field, v) for v in value if isinstance(v, str)]
    return refs


def models_used(step: StepConfig) -> list[str]:
    return sorted({name for _, name in _model_refs(step)})

