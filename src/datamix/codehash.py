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

Cost: every `run`, `plan` and `status` fingerprints every step, so this runs on each command.
A module name is resolved to its file by path, not with importlib's find_spec (which imports
every parent package on the way: `datamix.models.x` imported the model registry); what a
file imports and which sql/ names it holds is parsed once per file content and kept on disk
(`_FACTS_CACHE`, keyed by the content's sha256, so a stale entry cannot be read) and in
memory per (path, mtime, size), so an edited file is read again even in a long-lived process.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import tempfile
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
# Parsed facts of file contents seen before, by content hash (bump the version when what is
# stored per file changes). Beside the package's own bytecode: written where Python writes .pyc.
_FACTS_VERSION = 1
_FACTS_CACHE = ROOT / "__pycache__" / f"codehash-facts-v{_FACTS_VERSION}.json"
_FACTS_KEPT = 2000  # entries (~300 bytes each; the package has ~100 files)


@functools.lru_cache(maxsize=None)  # which files exist: fixed while a process runs
def _module_path(name: str) -> Path | None:
    """The .py file of a datamix module (a package's __init__.py), or None when `name` is not
    a module (`datamix.fields.pick` names a function), without importing anything."""
    parts = name.split(".")
    if parts[0] != PACKAGE or not all(p.isidentifier() for p in parts):
        return None
    base = ROOT.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    module = base.with_name(base.name + ".py") if len(parts) > 1 else None
    return module if module is not None and module.is_file() else None


class _Facts:
    """Per-file facts, memoised: content hash, import statements, sql names."""

    def __init__(self) -> None:
        self.by_stat: dict[tuple, tuple[str, tuple, tuple]] = {}
        self.disk: dict[str, list] | None = None
        self.used: set[str] = set()  # content hashes this process read
        self.dirty = False

    def of(self, path: Path) -> tuple[str, tuple, tuple]:
        """(sha256 hex, imports as (module, level, names) triples, sql names) of a file."""
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        found = self.by_stat.get(key)
        if found is None:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            parsed = self._disk().get(digest)
            if parsed is None:
                parsed = [_import_statements(data), sorted(set(_SQL_NAME.findall(data.decode("utf-8", "replace"))))]
                self.disk[digest] = parsed
                self.dirty = True
            self.used.add(digest)
            found = (digest, tuple((m, lvl, tuple(n)) for m, lvl, n in parsed[0]), tuple(parsed[1]))
            self.by_stat[key] = found
        return found

    def digest(self, path: Path) -> str:
        """sha256 of a file that is not parsed (a sql/ file), memoised the same way."""
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self.by_stat:
            self.by_stat[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), (), ())
        return self.by_stat[key][0]

    def _disk(self) -> dict:
        if self.disk is None:
            try:
                self.disk = json.loads(_FACTS_CACHE.read_text())
            except (OSError, ValueError):
                self.disk = {}
        return self.disk

    def save(self) -> None:
        """Write new entries (atomically: another process may be reading); a read-only install
        just parses again next time."""
        if not self.dirty:
            return
        if len(self.disk) > _FACTS_KEPT:  # old versions of edited files pile up: keep what is in use
            self.disk = {k: v for k, v in self.disk.items() if k in self.used}
        try:
            _FACTS_CACHE.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=_FACTS_CACHE.parent, prefix=".codehash-")
            with os.fdopen(fd, "w") as f:
                json.dump(self.disk, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; it is a cache anyone may read
            os.replace(tmp, _FACTS_CACHE)
            self.dirty = False
        except OSError:
            pass


_facts = _Facts()


def _import_statements(source: bytes) -> list:
    """[(module, level, [names])] of every import statement, wherever in the file."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend([alias.name, 0, []] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append([node.module or "", node.level, [alias.name for alias in node.names]])
    return out


def _imports(name: str, path: Path) -> set[str]:
    """datamix modules `name` imports, wherever in the file the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for module, level, names in _facts.of(path)[1]:
        if not names:  # import a.b
            found.add(module)
            continue
        base = module
        if level:  # relative: from . import x / from .x import y
            parts = package.split(".")
            parent = ".".join(parts[: len(parts) - level + 1])
            base = f"{parent}.{base}" if base else parent
        found.add(base)
        # `from datamix.steps import base` imports a module, `from datamix.fields import x` a name
        found.update(f"{base}.{n}" for n in names)
    return {m for m in found if (m == PACKAGE or m.startswith(PACKAGE + ".")) and _module_path(m) is not None}


def _bookkeeping(module: str) -> bool:
    """A bookkeeping module, or one inside a bookkeeping package (datamix.spec.checks)."""
    return any(module == b or module.startswith(b + ".") for b in BOOKKEEPING)


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
    _facts.save()
    return frozenset(seen)


_BACKEND_MODULES = {f"{PACKAGE}.models.{b}" for b in BACKENDS} | {
    f"{PACKAGE}.models.tiny", f"{PACKAGE}.models.openai_batch", f"{PACKAGE}.models.openai_wire",
    f"{PACKAGE}.models.ratelimit"}


def backend_files(backend: str, tiny: bool = False) -> tuple[tuple[str, str], ...]:
    """The code of one backend (and of the tiny-model builder when the model is a tiny one)."""
    files = dict(_hashes(_backend_closure(f"{PACKAGE}.models.{backend}")))
    if tiny:
        files.update(_hashes(_backend_closure(f"{PACKAGE}.models.tiny")))
    _facts.save()
    return tuple(sorted(files.items()))


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
    out = {}
    for m in modules:
        path = _module_path(m)
        if path is not None:
            out[_display(m, path)] = _facts.of(path)[0][:12]
    return out


def _bookkeeping_sql() -> set[str]:
    from datamix.store import SQL_FILES

    return set(SQL_FILES)


def code_files(module: str) -> tuple[tuple[str, str], ...]:
    """((file relative to the project, sha256 prefix), ...) of everything a step module runs.
    Memoised per file (above), so a pipeline's steps share the work and an edit is seen."""
    files: dict[str, str] = {}
    sql_names: set[str] = set()
    for name in module_closure(module):
        path = _module_path(name)
        digest, _, sql = _facts.of(path)
        files[_display(name, path)] = digest[:12]
        sql_names.update(sql)
    for sql in sorted(sql_names - _bookkeeping_sql()):
        path = SQL_DIR / Path(sql).name
        if path.is_file():
            files[f"sql/{path.name}"] = _facts.digest(path)[:12]
    return tuple(sorted(files.items()))


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Files whose hash differs, or that were added or removed, sorted."""
    return sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
