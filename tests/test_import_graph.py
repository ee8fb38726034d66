"""No import circle among datamix's modules: a module-level import of a module that is still
being initialised sees it half-made (names missing), so which module a user imports first
decides whether it works (cli's command modules once imported the package that imported them)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_level_imports() -> dict[str, set[str]]:
    """datamix module -> the datamix modules its top level imports (not those inside functions,
    which run once every module is loaded, nor `if TYPE_CHECKING:` ones, which never run)."""
    files = {}
    for path in (SRC / "datamix").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: each as the path from a module back to itself."""
    out, done = [], set()

    def walk(node, path):
        for nxt in sorted(graph[node]):
            if nxt in path:
                out.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                walk(nxt, path + [nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            walk(start, [start])
    return out


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_module_level_import_circle_in_datamix():
    graph = module_level_imports()
    assert {"datamix.runner", "datamix.cli", "datamix.steps.base"} <= set(graph)  # it read the tree
    assert "datamix.store" in graph["datamix.steps.base"]  # and the imports in it
    assert circles(graph) == []
