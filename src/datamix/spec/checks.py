"""What `validate` checks before any work, and how a problem names its place: pydantic errors
in YAML terms, the step graph, files, models, columns and odd values."""

from __future__ import annotations

import functools
import glob
import math
import os
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from datamix.models import ModelSpec
from datamix.spec.pipeline import Pipeline, _model_refs
from datamix.steps.base import StepConfig


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
            flat = getattr(model, "flat_options", None)
            if flat and err["loc"][0] == flat:
                # the union's options sit beside the step's own (dedup's method options)
                own = [n for n in model.model_fields if n not in ("name", "kind", flat, "chunk_size")]
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


@functools.cache
def _union_tags() -> frozenset[str]:
    """Parts of a pydantic error location that are not in the YAML: the tags of discriminated
    unions (a backend, a dedup method, a filter rule), read from the step and model configs
    themselves, so a new rule or backend needs no edit here."""
    import typing

    from pydantic.fields import FieldInfo

    tags: set[str] = set()
    seen: set[type] = set()

    def walk(model) -> None:
        if not isinstance(model, type) or not hasattr(model, "model_fields") or model in seen:
            return
        seen.add(model)
        for field in model.model_fields.values():
            visit(field.annotation, field.discriminator)

    def visit(ann, discriminator=None) -> None:
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin is typing.Annotated:
            info = next((a for a in args[1:] if isinstance(a, FieldInfo)), None)
            visit(args[0], discriminator or (info.discriminator if info else None))
            return
        members = args if args else (ann,)
        for member in members:
            if discriminator and hasattr(member, "model_fields") and discriminator in member.model_fields:
                tags.update(a for a in typing.get_args(member.model_fields[discriminator].annotation) if isinstance(a, str))
            if typing.get_args(member):
                visit(member)
            walk(member)

    from datamix.steps import load_registry

    for entry in load_registry().values():
        walk(entry.config)
    visit(ModelSpec)
    return frozenset(tags)


@functools.cache
def _flat_options() -> frozenset[str]:
    """Fields where a kind gathers a union's flat YAML options (dedup: its method's)."""
    from datamix.steps import load_registry

    return frozenset(entry.config.flat_options for entry in load_registry().values() if entry.config.flat_options)


def _yaml_loc(loc: tuple) -> tuple:
    """A pydantic error location as the YAML spells it: no union tags, and no field where a
    step gathered a union's flat options (dedup: options.minhash.threshold is `threshold`)."""
    out = []
    for i, part in enumerate(loc):
        if part in _flat_options() and i + 1 < len(loc) and loc[i + 1] in _union_tags():
            continue
        if isinstance(part, str) and part in _union_tags():
            continue
        if part == "[key]":  # a mapping's key was wrong (a mix label): the location is the key itself
            continue
        out.append(part)
    return tuple(out)


def _graph_entries(raw_steps: list, parsed: dict[int, StepConfig]) -> list[tuple[int, str | None, dict, Any, Any]]:
    """(YAML index, name, parents by label, input, inputs) of every step: from the parsed step,
    or as far as the YAML tells for a step that did not parse."""
    entries = []
    for i, r in enumerate(raw_steps):
        if i in parsed:
            s = parsed[i]
            entries.append((i, s.name, s.parent_steps(), s.input, s.inputs))
        elif isinstance(r, dict):
            name = r.get("name") if isinstance(r.get("name"), str) else None
            inputs = r.get("inputs") if isinstance(r.get("inputs"), dict) else None
            single = r.get("input") if isinstance(r.get("input"), str) else None
            parents = ({str(k): v for k, v in inputs.items() if isinstance(v, str)} if inputs
                       else {"input": single} if single else {})
            entries.append((i, name, parents, single, inputs))
    return entries


def _check_graph(entries: list[tuple[int, str | None, dict, Any, Any]], at) -> list[str]:
    problems = []
    names: dict[str, int] = {}
    for i, name, _, single, inputs in entries:
        if name is None:
            continue
        if name in names:
            problems.append(f"{at(('steps', i, 'name'))}steps[{i}].name: {name!r} is already the name of steps[{names[name]}]")
        names.setdefault(name, i)
        if single and inputs:
            problems.append(f"{at(('steps', i))}steps[{i}] (name: {name}): give `input` or `inputs`, not both")
    for i, name, parents, single, _ in entries:
        for label, parent in parents.items():
            if parent not in names:
                key = "input" if label == "input" and single else "inputs" if label != "reference" else "reference"
                problems.append(
                    f"{at(('steps', i, key))}steps[{i}] (name: {name}).{key}: no step named {parent!r}"
                    f" (steps: {', '.join(names)})"
                )
    if problems:
        return problems
    # cycle check: Kahn's algorithm over the name graph
    graph = {name: set(parents.values()) for _, name, parents, _, _ in entries if name is not None}
    indeg = {n: len(ps) for n, ps in graph.items()}
    children: dict[str, list[str]] = {n: [] for n in graph}
    for n, ps in graph.items():
        for parent in ps:
            children[parent].append(n)
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


def _without(raw: dict, locs: list[tuple]) -> dict | None:
    """A copy of a step's YAML mapping without the options at `locs`; None when a location is
    the step itself or a list item (nothing sensible is left to check)."""
    import copy

    out = copy.deepcopy(raw)
    for loc in locs:
        if not loc or isinstance(loc[-1], int):
            return None
        parent = _at_path(out, loc[:-1])
        if isinstance(parent, dict):
            parent.pop(loc[-1], None)
    return out


def _at_path(value: Any, loc: tuple) -> Any:
    """The value at a YAML location (keys and list indexes), or None."""
    for part in loc:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            return None
    return value


def _declared_models(raw: dict, pipeline: Pipeline | None) -> dict[str, Any]:
    """name -> parsed model declaration (None where the declaration itself is wrong: reported
    already, and a step naming it is not told the model does not exist)."""
    if pipeline is not None:
        return dict(pipeline.models)
    from pydantic import TypeAdapter

    adapter = TypeAdapter(ModelSpec)
    out: dict[str, Any] = {}
    for name, spec in (raw.get("models") if isinstance(raw.get("models"), dict) else {}).items():
        try:
            out[str(name)] = adapter.validate_python(spec)
        except ValidationError:
            out[str(name)] = None
    return out


# A Hugging Face hub id (org/name): loaded from the local cache by transformers and vLLM.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _resource_problem(what: str, value: str, base_dir: str, models: dict[str, Any],
                      step_names: set = frozenset()) -> str | None:
    """Why `value` (a steps.base.Resource, or a model declaration's path) cannot be used; None if it can.
    Relative paths resolve beside the YAML, as the steps resolve them."""
    full = value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))
    if what == "file":
        if value in step_names or os.path.exists(full) or glob.glob(full):
            return None
        return f"{value} does not exist (looked for {full})"
    if what == "chat_template":
        from datamix.chat_templates import bundled_template_names, is_bundled_template

        if os.path.isfile(full) or is_bundled_template(value):
            return None
        return (f"no template file {full} and no bundled template named {value!r} "
                f"(bundled: {', '.join(bundled_template_names())})")
    # "tokenizer", "model": a declared model, a folder, or a hub id
    if what != "folder" and value in models:
        return None
    if os.path.exists(full):
        return None
    for spec in models.values():  # a declared tiny model's folder: built before it is used
        if getattr(spec, "tiny", None) is not None and os.path.normpath(
                spec.path if os.path.isabs(spec.path) else os.path.join(base_dir, spec.path)) == full:
            return None
    first = value.split("/", 1)[0]
    if _HUB_ID.fullmatch(value) and not os.path.isdir(os.path.join(base_dir, first)):
        return None  # org/name: a hub id (a local folder's first part would exist beside the YAML)
    if what == "folder":
        return f"{value} does not exist (looked for {full}); give a model folder or a hub id (org/name)"
    known = ", ".join(models) or "none declared"
    return f"{value} is neither a model under `models:` ({known}) nor a folder (looked for {full})"


def _check_files(base_dir: str, parsed: list[tuple[int, StepConfig]], raw_steps: list, models: dict[str, Any],
                 at, only_written: bool = False) -> list[str]:
    """Every file, tokenizer, model folder and chat template a step names (StepConfig.resources);
    with `only_written`, only those the YAML gives (a salvaged step's defaults are not the user's)."""
    problems = []
    names = {r.get("name") for r in raw_steps if isinstance(r, dict)}  # a step name is not a file
    for i, s in parsed:
        for res in s.resources():
            if only_written and _at_path(raw_steps[i], res.option) != res.value:
                continue
            problem = _resource_problem(res.what, res.value, base_dir, models, names)
            if problem:
                problems.append(f"{at(('steps', i) + res.option)}steps[{i}] (name: {s.name})."
                                f"{_format_loc(res.option, [])}: {problem}")
    return problems


def _step_output_dirs(pipeline: Pipeline | None, raw_steps: list, base_dir: str) -> tuple[str, ...]:
    """The output folders the pipeline's steps write (<store folder>/outputs/<step>): a model
    declared there is made by the pipeline (a train step's saved model) before a later step uses it."""
    if pipeline is not None:
        root = os.path.dirname(pipeline.store_path())
    else:
        root = os.path.join(base_dir, ".datamix")
    return tuple(os.path.normpath(os.path.join(root, "outputs", str(r.get("name"))))
                 for r in raw_steps if isinstance(r, dict) and r.get("name"))


def _check_model_files(base_dir: str, models: dict[str, Any], at, made: tuple[str, ...] = ()) -> list[str]:
    """The folders, templates and data files of the models declared under `models:`."""
    problems = []
    for name, spec in models.items():
        if spec is None:
            continue
        found: list[tuple[tuple, str, str]] = []
        tiny = getattr(spec, "tiny", None)
        full = os.path.normpath(spec.path if os.path.isabs(spec.path) else os.path.join(base_dir, spec.path))
        if any(full == d or full.startswith(d + os.sep) for d in made):
            pass  # a step of this pipeline writes it (train's saved model)
        elif spec.backend in ("transformers", "vllm") and tiny is None:
            found.append((("path",), spec.path, "folder"))
        if spec.chat_template:
            found.append((("chat_template",), spec.chat_template, "chat_template"))
        if tiny is not None:
            found.append((("tiny", "chat_template"), tiny.chat_template, "chat_template"))
            found += [(("tiny", "tokenizer_data", i), f, "file") for i, f in enumerate(getattr(tiny, "tokenizer_data", []))]
        if getattr(spec, "tokenizer", None):
            found.append((("tokenizer",), spec.tokenizer, "folder"))
        for loc, value, what in found:
            problem = _resource_problem(what, value, base_dir, models)
            if problem:
                problems.append(f"{at(('models', name) + loc)}models.{name}.{_format_loc(loc, [])}: {problem}")
    return problems


def _check_columns(parsed: list[tuple[int, StepConfig]], at) -> list[str]:
    """Every column a step's options name (StepConfig.columns_read) against the columns its input
    steps declare (StepConfig.columns_out), through the graph, before any work."""
    from datamix.fields import CHAT_FIELDS

    by_name = {s.name: s for _, s in parsed}
    columns: dict[str, frozenset[str] | None] = {}
    pending = [s for _, s in parsed]
    while pending:  # in dependency order; steps in a cycle (reported already) stay unknown
        ready = [s for s in pending if all(p in columns or p not in by_name for p in s.parent_steps().values())]
        if not ready:
            break
        for s in ready:
            try:
                columns[s.name] = s.columns_out({label: columns.get(p) for label, p in s.parent_steps().items()})
            except Exception:  # a kind that cannot tell: no check downstream
                columns[s.name] = None
            pending.remove(s)
    problems = []
    for i, s in parsed:
        parents = s.parent_steps()
        for use in s.columns_read():
            have = columns.get(parents.get(use.input, ""))
            if have is None or use.column in have or (use.chat_field and use.column in CHAT_FIELDS and "messages" in have):
                continue
            where = f"{at(('steps', i) + use.option)}steps[{i}] (name: {s.name}).{_format_loc(use.option, [])}"
            listed = ", ".join(sorted(have))
            hint = f"; {use.hint}" if use.hint else ""
            if use.chat_field and use.column in CHAT_FIELDS:
                problems.append(f"{where}: the field {use.column!r} is read from `messages`, and input "
                                f"{parents[use.input]!r} has no messages column (its columns: {listed}){hint}")
            elif use.chat_field:
                problems.append(f"{where}: unknown field {use.column!r}: input {parents[use.input]!r} has no such "
                                f"column (its columns: {listed}; or a chat field: {', '.join(CHAT_FIELDS)}){hint}")
            else:
                problems.append(f"{where}: input {parents[use.input]!r} has no column {use.column!r} "
                                f"(its columns: {listed}){hint}")
    return problems


def _odd_values(value: Any, raw: Any, loc: tuple):
    """(YAML location, problem) for numbers pydantic lets through that a user never means: nan
    and inf, and a boolean where a number goes (true would be 1). `raw` is the YAML's value."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            if isinstance(raw, dict) and name in raw:
                yield from _odd_values(getattr(value, name), raw[name], loc + (name,))
            elif isinstance(getattr(value, name), BaseModel) and isinstance(raw, dict):
                yield from _odd_values(getattr(value, name), raw, loc)  # options gathered from flat keys (dedup)
    elif isinstance(value, dict) and isinstance(raw, dict):
        for k, v in value.items():
            if k in raw:
                yield from _odd_values(v, raw[k], loc + (k,))
    elif isinstance(value, (list, tuple)) and isinstance(raw, (list, tuple)):
        for i, (v, r) in enumerate(zip(value, raw)):
            yield from _odd_values(v, r, loc + (i,))
    elif isinstance(raw, bool) and type(value) in (int, float):
        yield loc, f"expected a number, got {str(raw).lower()}"
    elif isinstance(value, float) and not math.isfinite(value):
        yield loc, f"must be a finite number, got {value}"


def _check_values(pipeline: Pipeline | None, raw: dict, parsed: list[tuple[int, StepConfig]], raw_steps: list,
                  at) -> list[str]:
    problems = []
    for i, s in parsed:
        for loc, message in _odd_values(s, raw_steps[i], ()):
            problems.append(f"{at(('steps', i) + loc)}steps[{i}] (name: {s.name}).{_format_loc(loc, [])}: {message}")
    if pipeline is not None:
        for key in ("seed", "models"):
            if key in raw:
                for loc, message in _odd_values(getattr(pipeline, key), raw[key], (key,)):
                    problems.append(f"{at(loc)}{_format_loc(loc, [])}: {message}")
    return problems


def _check_models(models: dict[str, Any], parsed: list[tuple[int, StepConfig]], at) -> list[str]:
    """Model names a step refers to must be declared (a model that may also be a folder is a
    Resource of the step, checked with the files)."""
    problems = []
    for i, s in parsed:
        folders = {res.option[0] for res in s.resources() if res.what == "model"}
        for field, name in _model_refs(s):
            if name not in models and field not in folders:
                known = ", ".join(models) or "none declared"
                problems.append(
                    f"{at(('steps', i, field))}steps[{i}] (name: {s.name}).{field}: no model named {name!r} under "
                    f"`models:` ({known})"
                )
                continue
            from datamix.llm import batch_problem  # here: a pipeline that calls no model never loads the LLM layer

            if problem := batch_problem(models.get(name), name, getattr(s, "batch", None)):
                problems.append(f"{at(('steps', i, 'batch'))}steps[{i}] (name: {s.name}).batch: {problem}")
    return problems


def _check_trained_models(models: dict[str, Any], raw_steps: list, at) -> list[str]:
    """A model declared `from_step:` names a train step of this pipeline (its saved model)."""
    kinds = {r.get("name"): r.get("kind") for r in raw_steps if isinstance(r, dict)}
    problems = []
    for name, spec in models.items():
        step = getattr(spec, "from_step", None)
        if step is None or kinds.get(step) == "train":
            continue
        trains = ", ".join(sorted(str(n) for n, k in kinds.items() if k == "train")) or "none"
        what = f"step {step!r} is a {kinds[step]} step" if step in kinds else f"no step named {step!r}"
        problems.append(f"{at(('models', name, 'from_step'))}models.{name}.from_step: {what}; from_step names "
                        f"a train step of this pipeline, whose saved model this is (train steps: {trains})")
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
