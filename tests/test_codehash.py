"""Fingerprints see all the code a step runs: editing a shared module or a sql/ file reruns
exactly the steps that use it and `plan` names the file; a changed chunk size reruns nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from datamix import codehash

from tests.helpers import cli, make_core, query, run_pipeline, store_of


def test_closure_follows_imports_inside_functions_and_names_sql_files():
    load = dict(codehash.code_files("datamix.steps.load"))
    assert "src/datamix/steps/load.py" in load and "sql/normalize_records.sql" in load
    filt = dict(codehash.code_files("datamix.steps.filter"))
    assert "src/datamix/fields.py" in filt and "sql/normalize_records.sql" not in filt
    # bookkeeping and backends are not part of a step's own code
    assert not any(f.endswith(("store.py", "runner.py", "models/openai.py")) for f in filt)
    # the store's schema and views are bookkeeping too
    assert "sql/schema.sql" not in load and "sql/funnel.sql" not in load
    assert dict(codehash.backend_files("transformers", tiny=True)).keys() == {
        "src/datamix/models/transformers.py", "src/datamix/models/tiny.py"}


@pytest.fixture
def edited(monkeypatch, tmp_path):
    """edit(kind, name): pretend a project file changed, through a copy that codehash reads instead.
    No cache is cleared: codehash memoises per file (path, mtime, size) and must see the edit."""
    sql_copy = tmp_path / "sql_copy"
    shutil.copytree(codehash.SQL_DIR, sql_copy)
    monkeypatch.setattr(codehash, "SQL_DIR", sql_copy)
    real_path = codehash._module_path
    copies = {}

    def module_path(name):
        return copies.get(name) or real_path(name)

    monkeypatch.setattr(codehash, "_module_path", module_path)

    def edit(kind: str, name: str, text: str = "") -> None:
        if kind == "sql":
            with open(sql_copy / name, "a") as f:
                f.write("\n-- an edit\n")
        else:
            copy = tmp_path / (name.replace(".", "_") + ".py")
            copy.write_text(real_path(name).read_text() + "\n# an edit\n" + text)
            copies[name] = copy  # named after the module, as the real file is

    yield edit


def plan_of(pipeline, *overrides) -> dict[str, tuple[str, str]]:
    result = cli("plan", pipeline, *overrides, "--format", "json")
    assert result.exit_code == 0, result.output
    return {e["name"]: (e["action"], e["reason"]) for e in json.loads(result.stdout)}


def test_editing_a_sql_file_reruns_the_steps_that_run_it_and_plan_names_it(tmp_path, edited):
    pipeline = make_core(tmp_path)
    assert run_pipeline(pipeline).ok
    edited("sql", "normalize_records.sql")
    actions = plan_of(pipeline)
    # both loads run the normalisation; everything downstream changes with them
    assert actions["general"] == ("run", "changed: code (sql/normalize_records.sql)")
    assert actions["domain"] == ("run", "changed: code (sql/normalize_records.sql)")
    assert actions["clean"] == ("run", "changed: an upstream step (general)")


def test_editing_a_shared_module_reruns_exactly_its_users(tmp_path, edited):
    pipeline = make_core(tmp_path)
    assert run_pipeline(pipeline).ok
    edited("module", "datamix.fields")
    actions = plan_of(pipeline)
    assert actions["general"] == ("skip", "up to date") and actions["domain"] == ("skip", "up to date")
    action, why = actions["clean"]  # the filter reads chat fields through fields.py
    assert action == "run" and why.startswith("changed: code (") and "fields" in why


def test_a_changed_chunk_size_reruns_nothing(tmp_path):
    pipeline = make_core(tmp_path)
    assert run_pipeline(pipeline).ok
    store = store_of(pipeline)
    before = dict(query(store, "SELECT name, finished_at FROM dm.steps"))
    assert set(a for a, _ in plan_of(pipeline, "steps.clean.chunk_size=2").values()) == {"skip"}
    assert run_pipeline(pipeline, ["steps.clean.chunk_size=2", "steps.general.chunk_size=3"]).ok
    assert dict(query(store, "SELECT name, finished_at FROM dm.steps")) == before


def test_a_partial_step_whose_chunks_change_starts_over(tmp_path):
    import duckdb

    pipeline = make_core(tmp_path)
    assert run_pipeline(pipeline).ok
    con = duckdb.connect(str(store_of(pipeline)))
    con.execute("UPDATE dm.steps SET state = 'partial' WHERE name = 'clean'")
    con.close()
    decisions_sql = "SELECT sample_id, kept, reason FROM dm.decisions WHERE step = 'clean' ORDER BY ALL"
    decided = query(store_of(pipeline), decisions_sql)
    assert plan_of(pipeline)["clean"] == ("resume", "partial: resumes after its committed chunks")
    assert plan_of(pipeline, "steps.clean.chunk_size=2")["clean"] == (
        "run", "partial: chunk_size: 10000 -> 2 changed, so it starts over")
    assert run_pipeline(pipeline, ["steps.clean.chunk_size=2"]).ok
    # started over: the same decisions once each, not the old ones plus new ones
    assert len(decided) == 2 and query(store_of(pipeline), decisions_sql) == decided


def test_chunk_size_is_a_run_setting_only_where_it_changes_no_output():
    from datamix.runner import run_settings
    from datamix.steps.filter import FilterConfig
    from datamix.steps.reconstruct import ReconstructConfig

    flt = FilterConfig(name="f", kind="filter", input="x", rules=[{"rule": "length", "min": 1}])
    assert run_settings(flt) == {"chunk_size"}
    # reconstruct seeds its draws per chunk: another chunking gives other samples, so it reruns
    rec = ReconstructConfig(name="r", kind="reconstruct", model="m", num_samples=4)
    assert run_settings(rec) == {"batch"}  # where its calls go (batch files or live) is one still


def test_an_edit_is_seen_in_the_same_process_without_clearing_anything(edited):
    before = dict(codehash.code_files("datamix.steps.load"))
    edited("sql", "normalize_records.sql")
    after = dict(codehash.code_files("datamix.steps.load"))
    assert codehash.changed_files(before, after) == ["sql/normalize_records.sql"]
    # a new import in an edited module brings its file into the closure
    filt = dict(codehash.code_files("datamix.steps.filter"))
    assert "src/datamix/dedup/exact.py" not in filt
    edited("module", "datamix.steps.filter", "def later():\n    from datamix.dedup import exact\n")
    now = dict(codehash.code_files("datamix.steps.filter"))
    assert "src/datamix/dedup/exact.py" in now
    assert now["src/datamix/steps/filter.py"] != filt["src/datamix/steps/filter.py"]


def test_module_files_are_the_ones_python_imports():
    """Resolving names by path (no imports) finds the file importlib would, and nothing for
    names that are not modules."""
    import importlib.util

    names = set()
    for path in codehash.ROOT.rglob("*.py"):
        rel = path.relative_to(codehash.ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        names.add(name)
        names |= codehash._imports(name, path)
    names |= {"datamix.fields.pick", "datamix.steps.base.REGISTRY", "datamix.nope", "datamix.dedup.*"}
    for name in sorted(names):
        try:
            spec = importlib.util.find_spec(name)
            expected = spec.origin if spec is not None and spec.origin.endswith(".py") else None
        except (ImportError, ValueError):
            expected = None
        found = codehash._module_path(name)
        assert (str(found) if found else None) == expected, name


def test_parsed_facts_are_kept_by_content_and_a_stale_entry_is_never_read(monkeypatch, tmp_path):
    cache = tmp_path / "facts.json"
    monkeypatch.setattr(codehash, "_FACTS_CACHE", cache)
    monkeypatch.setattr(codehash, "_facts", codehash._Facts())
    module = tmp_path / "m.py"
    module.write_text("from datamix import fields\nSQL = 'a.sql'\n")
    digest, imports, sql = codehash._facts.of(module)
    assert imports == (("datamix", 0, ("fields",)),) and sql == ("a.sql",)
    codehash._facts.save()
    stored = json.loads(cache.read_text())
    assert list(stored) == [digest]
    # another process reads the stored entry by the content's hash, not by the file's name
    stored[digest][1] = ["from_disk.sql"]
    cache.write_text(json.dumps(stored))
    monkeypatch.setattr(codehash, "_facts", codehash._Facts())
    assert codehash._facts.of(module)[2] == ("from_disk.sql",)
    # the same file with other content is parsed again
    module.write_text("import datamix.dedup.exact\nSQL = 'b.sql'\n")
    digest2, imports2, sql2 = codehash._facts.of(module)
    assert digest2 != digest and imports2 == (("datamix.dedup.exact", 0, ()),) and sql2 == ("b.sql",)


def test_fingerprinting_imports_no_step_code(tmp_path):
    """Hashing the code of every step kind reads files; it imports neither the modules it
    hashes nor their dependencies (the model registry, numba, pandas)."""
    import subprocess
    import sys

    probe = ("import sys; from datamix import codehash\n"
             "for m in ('steps.dedup', 'steps.load', 'steps.generate', 'steps.train'):\n"
             "    codehash.code_files('datamix.' + m)\n"
             "codehash.backend_files('transformers', tiny=True)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "{'numba', 'pandas', 'torch', 'polars'} or m.startswith(('datamix.models', 'datamix.steps'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_facts_file_keeps_only_what_is_in_use_once_it_grows(monkeypatch, tmp_path):
    cache = tmp_path / "facts.json"
    cache.write_text(json.dumps({f"{i:064x}": [[], []] for i in range(codehash._FACTS_KEPT + 1)}))
    monkeypatch.setattr(codehash, "_FACTS_CACHE", cache)
    monkeypatch.setattr(codehash, "_facts", codehash._Facts())
    module = tmp_path / "m.py"
    module.write_text("import datamix.fields\n")
    digest = codehash._facts.of(module)[0]
    codehash._facts.save()
    assert list(json.loads(cache.read_text())) == [digest]
