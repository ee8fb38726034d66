"""The YAML of a pipeline: read with line numbers (duplicate keys and deep nesting refused), vars
interpolated, KEY=VALUE overrides applied."""

from __future__ import annotations

import re
from typing import Any

import yaml

from datamix.spec.pipeline import SpecError


# Deeper than any real pipeline (the deepest option is about 6 levels down), shallow enough
# that composing, interpolating and validating never reach Python's recursion limit.
MAX_DEPTH = 32
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses nesting deeper than MAX_DEPTH with the line where it happens."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels; a pipeline is a few levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _read_yaml(text: str) -> tuple[Any, Any]:
    """(node tree, data) of one YAML document through _Loader; (None, None) when it is empty."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, (None if node is None else loader.construct_document(node))
    finally:
        loader.dispose()


def _line_map(root) -> tuple[dict[tuple, int], list[tuple[tuple, int, int]]]:
    """YAML path (tuple of keys and indexes) -> 1-based line where its value starts; and the
    duplicate keys as (path, line, line of the first one): YAML keeps the last one silently."""
    lines: dict[tuple, int] = {}
    duplicates: list[tuple[tuple, int, int]] = []
    count = [0]

    def walk(node, path):
        count[0] += 1
        if count[0] > MAX_NODES:  # aliases of aliases expand exponentially ("billion laughs")
            raise SpecError([f"the YAML expands to more than {MAX_NODES:,} values (through aliases *name); "
                             "a pipeline is far smaller"])
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                line = k.start_mark.line + 1
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        duplicates.append((path + (k.value,), line, seen[k.value]))
                    else:
                        seen[k.value] = line
                walk(v, path + (k.value,))
                lines[path + (k.value,)] = line
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines, duplicates


def _parse_value(text: str) -> Any:
    """KEY=VALUE values are YAML scalars: 0.8 -> float, true -> bool, [a, b] -> list."""
    try:
        return _read_yaml(text)[1]
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


def _apply_override(raw: dict, key: str, value: Any, problems: list[str], referenced: set[str]) -> None:
    """`n=5` sets a var; `steps.mix.ratio.general=0.8` sets a step option (a step by name or
    index, a list item by index: `steps.clean.rules.1.max=500`); `models.base.path=...`.

    A var must be declared under `vars:` or used as ${n} in the YAML (`referenced`): an
    override of nothing would otherwise be accepted and change nothing."""
    example = "e.g. n=100 or steps.mix.ratio.general=0.8"
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        problems.append(f"override {key!r}: empty name in the key; write KEY=VALUE, {example}")
        return
    if len(parts) > MAX_DEPTH:
        problems.append(f"override {key[:80]}...: nested deeper than {MAX_DEPTH} levels")
        return
    if len(parts) == 1:
        raw.setdefault("vars", {})
        if not isinstance(raw["vars"], dict):
            problems.append(f"override {key}: `vars` is not a mapping")
            return
        if key not in raw["vars"] and key not in referenced:
            declared = ", ".join(map(str, raw["vars"])) or "none"
            problems.append(f"override {key}: no variable {key!r} under `vars:` (declared: {declared}) and no "
                            f"${{{key}}} in the pipeline; a step option is steps.STEP.OPTION=VALUE")
            return
        raw["vars"][key] = value
        return
    target: Any = raw
    done: list[str] = []  # the part of the key walked so far, for messages
    if parts[0] == "steps":
        if len(parts) < 3:
            problems.append(f"override {key}: name a step option, e.g. steps.mix.ratio.general=0.8")
            return
        steps = raw.get("steps") if isinstance(raw.get("steps"), list) else []
        match = [s for s in steps if isinstance(s, dict) and s.get("name") == parts[1]]
        if not match and parts[1].isdigit() and int(parts[1]) < len(steps) and isinstance(steps[int(parts[1])], dict):
            match = [steps[int(parts[1])]]
        if not match:
            names = ", ".join(str(s.get("name")) for s in steps if isinstance(s, dict))
            problems.append(f"override {key}: no step named {parts[1]!r} (steps: {names})")
            return
        target, done, parts = match[0], parts[:2], parts[2:]
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(done) or "the pipeline"
        if isinstance(target, list):
            if not p.isdigit() or int(p) >= len(target):
                problems.append(f"override {key}: {where} is a list of {len(target)}; "
                                f"{p!r} is not one of its indexes (0 to {len(target) - 1})")
                return
            if last:
                target[int(p)] = value
                return
            target = target[int(p)]
        elif isinstance(target, dict):
            if last:
                target[p] = value
                return
            if target.get(p) is None:
                target[p] = {}
            target = target[p]
        else:
            problems.append(f"override {key}: {where} is {target!r}, not a mapping or a list")
            return
        done.append(p)
