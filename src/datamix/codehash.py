"""The code a step kind runs, for its fingerprint: every datamix module it imports, and every
sql/ file those modules name.

A step's output depends on more than its own module: load runs sql/normalize_records.sql,
filter and dedup run fields.py, generate runs the backends. Hashing only the step's module
left stores holding outputs the current code would not produce. The closure is computed
from the import statements (anywhere in a module, so the lazy imports inside functions
count too) and from the `*.sql` names written in those modules, not from a hand list.

Not part of it: the store's bookkeeping (store.py and the schema/view files it loads: they
decide how outputs are recorded, not what they are) and package `__init__` files a module
is merely inside of.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import re
from pathlib import Path

PACKAGE = "datamix"
ROOT = Path(__file__).resolve().parent  # src/datamix
SQL_DIR = ROOT.parents[1] / "sql"
# the runner's and the store's own code: how a step's output is recorded, not what it is
BOOKKEEPING = {"datamix.store", "datamix.runner", "datamix.cli", "datamix.spec", "datamix.progress", "datamix.loop",
               "datamix.outputs", "datamix.estimate", "datamix.sweep"}
# A backend runs for the steps that call a model through it: the fingerprint adds
# `backend_files(backend)` for each model a step uses, instead of every backend for every
# step that can reach the model registry.
BACKENDS = {"transformers", "vllm", "openai", "ray"}
_SQL_NAME = re.compile(r"""["']([A-Za-z0-9_./-]+\.sql)["']""")


def _module_path(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(name: str, path: Path) -> set[str]:
    """datamix modules `name` imports, wherever in the file the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            # `from datamix.steps import base` imports a module, `from datamix.fields import x` a name
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if (m == PACKAGE or m.startswith(PACKAGE + ".")) and _module_path(m) is not None}


def _bookkeeping(module: str) -> bool:
    """A bookkeeping module, or one inside a bookkeeping package (datamix.spec.checks)."""
    return any(module == b or module.startswith(b + ".") for b in BOOKKEEPING)


@functools.lru_cache(maxsize=None)
def module_closure(name: str) -> frozenset[str]:
    """`name` and every datamix module it reaches through imports, bookkeeping modules excepted."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or _bookkeeping(current) or current in _BACKEND_MODULES:
            continue
        path = _module_path(current)
        if path is None:
            continue
        seen.add(current)
        todo.extend(_imports(current, path) - seen)
    seen.discard(PACKAGE)  # datamix/__init__.py: a version string
    return frozenset(seen)


_BACKEND_MODULES = {f"{PACKAGE}.models.{b}" for b in BACKENDS} | {
    f"{PACKAGE}.models.tiny", f"{PACKAGE}.models.openai_batch", f"{PACKAGE}.models.openai_wire",
    f"{PACKAGE}.models.ratelimit"}


def backend_files(backend: str, tiny: bool = False) -> tuple[tuple[str, str], ...]:
    """The code of one backend (and of the tiny-model builder when the model is a tiny one)."""
    files = dict(_hashes(_backend_closure(f"{PACKAGE}.models.{backend}")))
    if tiny:
        files.update(_hashes(_backend_closure(f"{PACKAGE}.models.tiny")))
    return tuple(sorted(files.items()))


@functools.lru_cache(maxsize=None)
def _backend_closure(module: str) -> frozenset[str]:
    """A backend module and what it imports beyond the step closure (other backends included
    when it imports them: the ray backend wraps the others)."""
    path = _module_path(module)
    if path is None:
        return frozenset()
    out = {module}
    for name in _imports(module, path):
        if name in _BACKEND_MODULES and name not in out:
            out |= _backend_closure(name)
    return frozenset(out)


def _display(name: str, path: Path) -> str:
    """The project-relative file of a module, from its name (src/datamix/fields.py)."""
    return "src/" + name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")


def _hashes(modules) -> dict[str, str]:
    return {_display(m, _module_path(m)): hashlib.sha256(_module_path(m).read_bytes()).hexdigest()[:12]
            for m in modules if _module_path(m) is not None}


def _bookkeeping_sql() -> set[str]:
    from datamix.store import SQL_FILES

    return set(SQL_FILES)


@functools.lru_cache(maxsize=None)
def code_files(module: str) -> tuple[tuple[str, str], ...]:
    """((file relative to the project, sha256 prefix), ...) of everything a step module runs."""
    files: dict[str, str] = {}
    sql_names: set[str] = set()
    for name in module_closure(module):
        path = _module_path(name)
        text = path.read_bytes()
        files[_display(name, path)] = hashlib.sha256(text).hexdigest()[:12]
        sql_names.update(_SQL_NAME.findall(text.decode("utf-8", "replace")))
    for sql in sorted(sql_names - _bookkeeping_sql()):
        path = SQL_DIR / Path(sql).name
        if path.is_file():
            files[f"sql/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return tuple(sorted(files.items()))


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Files whose hash differs, or that were added or removed, sorted."""
    return sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
