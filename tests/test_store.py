"""The store: crash and resume, idempotent reruns, fingerprint invalidation, one writer at a time."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import (chat, cli, query, run_pipeline, store_of, write_jsonl, write_pipeline)

N_FILES, PER_FILE, CHUNK = 6, 4, 2  # 12 load chunks of 2 rows


def crash_pipeline(folder: Path) -> Path:
    """A load over a folder of many small files, committed 2 rows at a time, and steps after it."""
    for f in range(N_FILES):
        write_jsonl(folder / "data" / f"part-{f}.jsonl",
                    [chat(f"Question {f}-{i} about the topic of file {f}?",
                          f"A complete and useful answer number {i} from file {f}, with several words.")
                     for i in range(PER_FILE)])
    steps = [
        {"name": "src", "kind": "load", "path": "data", "chunk_size": CHUNK},
        {"name": "clean", "kind": "filter", "input": "src", "chunk_size": 5,
         "rules": [{"rule": "regex", "field": "instruction", "exclude": "Question 3-"}]},
        {"name": "mix", "kind": "mix", "inputs": {"a": "clean"}, "ratio": {"a": 1.0}, "seed": 3},
        {"name": "export", "kind": "export", "input": "mix", "format": "jsonl", "path": "out"},
    ]
    return write_pipeline(folder, steps, name="crash")


# Kills its own process with SIGKILL inside the transaction of the KILL_AT-th chunk, before COMMIT:
# chunks 1..KILL_AT-1 are committed, the KILL_AT-th is half-written.
KILL_INSIDE_CHUNK = textwrap.dedent("""
    import os, signal, sys
    from datamix import runner, spec
    from datamix.store import Store

    KILL_AT = int(sys.argv[2])
    state = {"n": 0}
    orig_commit, orig_tx = Store.commit_chunk, Store.transaction

    def commit_chunk(self, *a, **k):
        state["n"] += 1
        return orig_commit(self, *a, **k)

    def transaction(self):
        tx = orig_tx(self)

        class KillBeforeCommit:
            def __enter__(s):
                return tx.__enter__()

            def __exit__(s, *exc):
                if state["n"] == KILL_AT and exc[0] is None:
                    os.kill(os.getpid(), signal.SIGKILL)
                return tx.__exit__(*exc)

        return KillBeforeCommit()

    Store.commit_chunk, Store.transaction = commit_chunk, transaction
    p = spec.load(sys.argv[1])
    runner.run(p, p.store_path(), log=lambda m: None)
""")

# Announces every committed chunk and dawdles after it, so the test can kill it from outside.
SLOW_RUN = textwrap.dedent("""
    import sys, time
    from datamix import runner, spec
    from datamix.store import Store

    orig_commit = Store.commit_chunk

    def commit_chunk(self, step, key, *a, **k):
        n = orig_commit(self, step, key, *a, **k)
        print("committed", step, key, flush=True)
        time.sleep(0.3)
        return n

    Store.commit_chunk = commit_chunk
    p = spec.load(sys.argv[1])
    runner.run(p, p.store_path(), log=lambda m: None)
""")


def snapshot(store: Path) -> dict:
    """Everything a resumed run must reproduce: step tables and bookkeeping, in a stable order."""
    out = {}
    for step in ("src", "clean", "mix", "export"):
        out[step] = query(store, f"SELECT * EXCLUDE (origin_file) FROM {step} ORDER BY sample_id"
                          if step == "src" else f"SELECT * FROM {step} ORDER BY sample_id")
    out["edges"] = query(store, "SELECT * FROM dm.edges ORDER BY ALL")
    out["decisions"] = query(store, "SELECT * FROM dm.decisions ORDER BY ALL")
    out["steps"] = query(store, "SELECT name, state, rows_in, rows_out FROM dm.steps ORDER BY name")
    out["chunks"] = query(store, "SELECT step, key, rows_in, rows_out FROM dm.chunks ORDER BY step, key")
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, str]:
    """The crash pipeline run without a crash: what every resumed run must end with."""
    folder = tmp_path_factory.mktemp("ref")
    ref = crash_pipeline(folder)
    assert run_pipeline(ref).ok
    return snapshot(store_of(ref)), (folder / "out" / "data.jsonl").read_text()


def assert_resumed_equals_reference(uninterrupted, pipeline: Path, before: list) -> None:
    store = store_of(pipeline)
    result = cli("run", pipeline)
    assert result.exit_code == 0, result.output
    assert "resume src" in result.stderr
    got = snapshot(store)
    ref, ref_export = uninterrupted
    assert got == ref  # same rows, same ids, same decisions and edges, and no duplicates
    assert (pipeline.parent / "out" / "data.jsonl").read_text() == ref_export
    keys = query(store, "SELECT key, count(*) FROM dm.chunks WHERE step = 'src' GROUP BY key HAVING count(*) > 1")
    assert keys == []
    assert query(store, "SELECT count(*), count(DISTINCT sample_id) FROM src")[0] == (N_FILES * PER_FILE,) * 2
    # chunks committed before the crash were not redone: same rows, same commit time
    after = query(store, "SELECT key, rows_out, committed_at FROM dm.chunks WHERE step = 'src' ORDER BY key")
    assert set(before) <= set(after)


def test_resume_after_sigkill_inside_a_chunk_transaction(tmp_path, uninterrupted):
    pipeline = crash_pipeline(tmp_path / "crash")
    kill_at = 5
    script = tmp_path / "kill_inside.py"
    script.write_text(KILL_INSIDE_CHUNK)
    proc = subprocess.run([sys.executable, str(script), str(pipeline), str(kill_at)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = store_of(pipeline)
    before = query(store, "SELECT key, rows_out, committed_at FROM dm.chunks WHERE step = 'src' ORDER BY key")
    assert len(before) == kill_at - 1  # the half-written chunk left no marker...
    assert query(store, "SELECT count(*) FROM src")[0][0] == (kill_at - 1) * CHUNK  # ...and no rows
    assert query(store, "SELECT state FROM dm.steps WHERE name = 'src'") == [("partial",)]
    plan = cli("plan", pipeline, "--format", "json")
    assert plan.exit_code == 0, plan.output
    actions = {e["name"]: e["action"] for e in json.loads(plan.stdout)}
    assert actions == {"src": "resume", "clean": "run", "mix": "run", "export": "run"}
    assert_resumed_equals_reference(uninterrupted, pipeline, before)


def test_resume_after_external_sigkill(tmp_path, uninterrupted):
    pipeline = crash_pipeline(tmp_path / "crash")
    script = tmp_path / "slow.py"
    script.write_text(SLOW_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(pipeline)], stdout=subprocess.PIPE, text=True)
    try:
        seen = [proc.stdout.readline() for _ in range(2)]
        assert all(line.startswith("committed src") for line in seen), seen
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    store = store_of(pipeline)
    before = query(store, "SELECT key, rows_out, committed_at FROM dm.chunks WHERE step = 'src' ORDER BY key")
    assert 2 <= len(before) < N_FILES * PER_FILE // CHUNK
    assert query(store, "SELECT count(*) FROM src")[0][0] == sum(r[1] for r in before)
    assert_resumed_equals_reference(uninterrupted, pipeline, before)


def test_step_failing_midway_in_process_keeps_committed_chunks_and_resumes(tmp_path, monkeypatch, uninterrupted):
    """The 4th chunk's write raises: the run fails (exit 1), the rerun picks up where it stopped.

    (The failure is injected in the store, not the step: patching the step would change
    its code version and so its fingerprint.)"""
    from datamix.store import Store

    pipeline = crash_pipeline(tmp_path / "crash")
    real = Store.commit_chunk
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk on fire")
        return real(self, *a, **k)

    monkeypatch.setattr(Store, "commit_chunk", flaky)
    result = cli("run", pipeline)
    assert result.exit_code == 1
    assert "step src failed" in result.stderr and "disk on fire" in result.stderr
    store = store_of(pipeline)
    before = query(store, "SELECT key, rows_out, committed_at FROM dm.chunks WHERE step = 'src' ORDER BY key")
    assert len(before) == 3
    assert query(store, "SELECT state FROM dm.steps WHERE name = 'src'") == [("failed",)]
    status = cli("status", pipeline, "--format", "json")
    assert [r["state"] for r in json.loads(status.stdout)] == ["failed", "pending", "pending", "pending"]
    monkeypatch.setattr(Store, "commit_chunk", real)
    assert_resumed_equals_reference(uninterrupted, pipeline, before)


# ---- idempotence and fingerprints -----------------------------------------------------


def step_runs(store: Path) -> dict[str, str]:
    return dict(query(store, "SELECT name, run_id FROM dm.steps"))


def test_second_run_skips_every_step_and_keeps_ids(core_pipeline):
    first = cli("run", core_pipeline)
    assert first.exit_code == 0, first.output
    store = store_of(core_pipeline)
    runs_before = step_runs(store)
    ids_before = query(store, "SELECT sample_id FROM export ORDER BY sample_id")
    second = cli("run", core_pipeline)
    assert second.exit_code == 0, second.output
    for step in runs_before:
        assert f"skip   {step}" in second.stderr
    assert step_runs(store) == runs_before
    assert query(store, "SELECT sample_id FROM export ORDER BY sample_id") == ids_before
    assert query(store, "SELECT count(*) FROM dm.runs") == [(2,)]
    assert query(store, "SELECT count(*) FROM dm.chunks WHERE step = 'general'") == [(1,)]


def test_sample_ids_are_stable_across_stores(core_pipeline, tmp_path):
    """Same inputs and config in a fresh store: the same ids at every step."""
    assert run_pipeline(core_pipeline).ok
    other = tmp_path / "elsewhere.duckdb"
    assert run_pipeline(core_pipeline, store=other).ok
    for step in ("general", "domain", "clean", "dedup", "mix", "export"):
        sql = f"SELECT sample_id FROM {step} ORDER BY sample_id"
        assert query(store_of(core_pipeline), sql) == query(other, sql), step


def rewrite_step(pipeline: Path, name: str, **changes) -> None:
    import yaml

    spec = yaml.safe_load(pipeline.read_text())
    for s in spec["steps"]:
        if s["name"] == name:
            s.update(changes)
    pipeline.write_text(yaml.safe_dump(spec, sort_keys=False))


def test_changed_config_reruns_that_step_and_downstream_only(core_pipeline):
    assert run_pipeline(core_pipeline).ok
    store = store_of(core_pipeline)
    before = step_runs(store)
    ids_before = dict(query(store, "SELECT step, count(*) FROM dm.decisions GROUP BY step"))
    rewrite_step(core_pipeline, "clean", rules=[{"rule": "length", "field": "response", "min": 5, "unit": "words"}])
    plan = cli("plan", core_pipeline, "--format", "json")
    assert plan.exit_code == 0
    # the plan names the changed option with its old and new value (here one rule of two left)
    why = {e["name"]: e["reason"] for e in json.loads(plan.stdout)}["clean"]
    assert why == "changed: config (rules.0.min: 3 -> 5, rules.1: removed)", why
    assert run_pipeline(core_pipeline).ok
    after = step_runs(store)
    rerun = {s for s in before if after[s] != before[s]}
    assert rerun == {"clean", "dedup", "mix", "export"}
    # the old filter's decisions are gone, not doubled: the refusal now passes, only "Hi." is dropped
    reasons = query(store, "SELECT reason, count(*) FROM dm.decisions WHERE step = 'clean' GROUP BY reason")
    assert reasons == [("length(response)", 1)]
    assert ids_before["clean"] == 2


@pytest.mark.parametrize("source, rerun", [
    ("domain", {"domain", "mix", "export"}),
    # general's table is dropped and rebuilt under the filter and dedup views that read it
    ("general", {"general", "clean", "dedup", "mix", "export"}),
])
def test_changed_data_file_reruns_its_load_and_downstream_not_siblings(core_pipeline, source, rerun):
    assert run_pipeline(core_pipeline).ok
    store = store_of(core_pipeline)
    before = step_runs(store)
    rows_sql = f"SELECT sample_id, messages FROM {source} ORDER BY origin_line"
    rows_before = query(store, rows_sql)
    added = chat("And 9 plus 10, a new question?", "Nine plus ten is 19.")
    data = core_pipeline.parent / "data" / f"{source}.jsonl"
    data.write_text(data.read_text() + json.dumps(added) + "\n")
    assert run_pipeline(core_pipeline).ok
    after = step_runs(store)
    assert {s for s in before if after[s] != before[s]} == rerun
    rows_after = query(store, rows_sql)
    # the rows already there keep their ids; the new line is one new sample
    assert rows_after[:-1] == rows_before and rows_after[-1][1] == added["messages"]
    assert rows_after[-1][0] not in {sid for sid, _ in rows_before}
    assert query(store, "SELECT count(*) FROM dm.chunks WHERE step = ?", [source]) == [(1,)]


def test_changed_upstream_config_invalidates_downstream(core_pipeline):
    assert run_pipeline(core_pipeline).ok
    store = store_of(core_pipeline)
    before = step_runs(store)
    rewrite_step(core_pipeline, "domain", limit=4)
    plan = cli("plan", core_pipeline, "--format", "json")
    reasons = {e["name"]: (e["action"], e["reason"]) for e in json.loads(plan.stdout)}
    assert reasons["general"] == ("skip", "up to date")
    assert reasons["domain"][0] == "run" and "limit" in reasons["domain"][1]
    assert reasons["mix"][0] == "run" and "upstream" in reasons["mix"][1]
    # the mix needs 0.4 domain; with 4 domain rows the total shrinks to 10 samples
    assert run_pipeline(core_pipeline).ok
    after = step_runs(store)
    assert {s for s in before if after[s] != before[s]} == {"domain", "mix", "export"}
    assert query(store, "SELECT source, count(*) FROM mix GROUP BY source ORDER BY source") == [
        ("domain", 4), ("general", 6)]


@pytest.mark.parametrize("gone", ["folder", "one file"])
def test_deleted_export_files_rerun_the_export_only(core_pipeline, gone):
    """Fingerprints say the export is up to date, but its files are gone: it is written again."""
    assert run_pipeline(core_pipeline).ok
    store = store_of(core_pipeline)
    before = step_runs(store)
    out = core_pipeline.parent / "out"
    data = (out / "data.jsonl").read_bytes()
    if gone == "folder":
        shutil.rmtree(out)
    else:
        (out / "data.jsonl").unlink()
    plan = cli("plan", core_pipeline, "--format", "json")
    reasons = {e["name"]: (e["action"], e["reason"]) for e in json.loads(plan.stdout)}
    assert reasons["mix"] == ("skip", "up to date")
    assert reasons["export"][0] == "run" and "output files are gone" in reasons["export"][1]
    assert "data.jsonl" in reasons["export"][1]
    result = cli("run", core_pipeline)
    assert result.exit_code == 0, result.output
    assert "rerun  export (export): its output files are gone" in result.stderr
    after = step_runs(store)
    assert {s for s in before if after[s] != before[s]} == {"export"}
    assert (out / "data.jsonl").read_bytes() == data
    assert query(store, "SELECT count(*) FROM dm.chunks WHERE step = 'export'") == [(1,)]
    assert "skip   export" in cli("run", core_pipeline).stderr


# ---- one writer at a time ---------------------------------------------------------------


@pytest.fixture(scope="module")
def held_store(core_ran):
    """Another process holding the pipeline's store open for writing."""
    core_pipeline = core_ran
    store = store_of(core_pipeline)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
         " time.sleep(60)", str(store)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield core_pipeline, holder.pid
    holder.kill()
    holder.wait()


def test_concurrent_run_is_refused_naming_the_holder(held_store):
    pipeline, pid = held_store
    result = cli("run", pipeline)
    assert result.exit_code == 1
    assert f"in use by process {pid}" in result.stderr
    assert "only one `datamix run`" in result.stderr


def test_sql_while_a_writer_holds_the_store_says_why(held_store):
    pipeline, pid = held_store
    result = cli("sql", "SELECT count(*) FROM export", pipeline)
    assert result.exit_code == 1
    assert f"being written by process {pid}" in result.stderr


# ---- names that reach SQL are values or quoted identifiers, never SQL text ---------------------------

ODD = ["it's", 'say "hi"', "naïve ✓ 名前", "x'); DROP TABLE dm.steps; --", "back\\slash"]


def test_odd_step_names_and_mix_labels_stay_values(tmp_path):
    """The spec restricts names to a safe pattern; the store must be safe without that: labels and
    step names with quotes, SQL and unicode commit, pass through and walk lineage as themselves."""
    import pyarrow as pa

    from datamix.lineage import walk
    from datamix.store import Store, quote

    st = Store(str(tmp_path / "odd.duckdb"))
    sources = {label: f"src {label}" for label in ODD}
    for i, (label, name) in enumerate(sources.items()):
        st.begin_step(name, "load", "fp", {}, {}, False, "r")
        st.commit_chunk(name, "k", pa.table({"sample_id": [f"s{i}"], "text": [label]}), None, None, 1, [], None)
    mix = "mix " + ODD[0] + ODD[1]
    st.begin_step(mix, "mix", "fp", {}, sources, False, "r")
    rows = pa.table({"sample_id": [f"m{i}" for i in range(len(ODD))], "source": ODD,
                     "parent_ids": [[f"s{i}"] for i in range(len(ODD))]})
    st.commit_chunk(mix, "k", rows, None, None, len(ODD), [], sources)
    edges = st.con.execute("SELECT sample_id, parent_step, parent_id FROM dm.edges ORDER BY sample_id").fetchall()
    assert edges == [(f"m{i}", f"src {label}", f"s{i}") for i, label in enumerate(ODD)]

    kept = ODD[3] + " kept"  # a pass-through step whose name is an injection attempt
    st.begin_step(kept, "filter", "fp", {}, {"input": mix}, True, "r")
    decisions = pa.table({"sample_id": ["m0", "m1"], "kept": [False, True], "reason": ["x", None],
                          "score": pa.array([None, None], pa.float64()), "related_id": pa.array([None, None], pa.string())})
    st.commit_chunk(kept, "k", None, decisions, None, len(ODD), [], None)
    st.create_passthrough_view(kept, mix)
    assert [r[0] for r in st.con.execute(f"SELECT sample_id FROM {quote(kept)} ORDER BY 1").fetchall()] == \
        [f"m{i}" for i in range(1, len(ODD))]
    assert st.con.execute("SELECT count(*) FROM dm.steps").fetchall() == [(len(ODD) + 2,)]
    assert [(r["sample_id"], r["step"]) for r in walk(st.con, "m3")] == [("m3", kept), ("m3", mix), ("s3", sources[ODD[3]])]
    st.close()


def test_literal_is_a_complete_escape():
    import duckdb

    from datamix.store import literal

    con = duckdb.connect()
    for value in ODD + ["", "''", "\\'", "\n'\t"]:
        assert con.execute(f"SELECT {literal(value)}").fetchall() == [(value,)]
    with pytest.raises(ValueError, match="NUL"):
        literal("a\0b")


# ---- a damaged store, a full disk: one message, no traceback --------------------------------------------

COMMANDS = [("status", "--store", "{store}"), ("sql", "SELECT * FROM general", "--store", "{store}"),
            ("show", "general", "--store", "{store}"), ("lineage", "x", "--store", "{store}"),
            ("plan", "{pipeline}", "--store", "{store}"), ("run", "{pipeline}", "--store", "{store}", "-q")]


def datamix(*args, cwd=None):
    """`datamix ARGS` in its own process, as a user runs it (DuckDB keeps no state between them)."""
    return subprocess.run([sys.executable, "-m", "datamix.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_blocks(data: bytes) -> bytes:
    """Invert 64 bytes at the start of every 256 KiB block (after DuckDB's 3 header pages and
    the block's checksum): the blocks no longer match their checksums."""
    out = bytearray(data)
    for start in range(3 * 4096, len(data) - 4096, 262144):
        out[start + 16:start + 80] = bytes(b ^ 0xFF for b in out[start + 16:start + 80])
    return bytes(out)


def _overwrite_header(data: bytes) -> bytes:
    return b"\0" * 4096 + data[4096:]


@pytest.mark.parametrize("damage", [_truncate, _flip_blocks, _overwrite_header])
def test_every_command_says_the_store_is_damaged(core_ran, tmp_path, damage):
    store = tmp_path / "damaged.duckdb"
    store.write_bytes(damage(store_of(core_ran).read_bytes()))
    for command in COMMANDS:
        args = [a.format(store=store, pipeline=core_ran) for a in command]
        result = datamix(*args, cwd=tmp_path)
        if command[0] == "sql" and damage is _truncate and result.returncode == 0:
            continue  # DuckDB answered from blocks before the cut: nothing damaged was read
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert f"the store {store} is damaged" in result.stderr or "damaged.duckdb is damaged" in result.stderr, \
            (args, result.stderr)
        assert "mv " in result.stderr and "run the pipeline again" in result.stderr


def test_a_short_read_of_an_input_file_is_not_called_a_damaged_store():
    from datamix.store import explain

    assert explain('IO Error: Could not read enough bytes from file "/data/in.parquet"', "/s/store.duckdb") is None
    assert explain('IO Error: Could not read enough bytes from file "/s/store.duckdb"', "/s/store.duckdb")[1] == 2
    assert explain(OSError(28, "No space left on device", "/out/x.jsonl"), "/s/store.duckdb")[1] == 1
    assert explain(ValueError("something else"), "/s/store.duckdb") is None


@pytest.fixture
def small_disk(tmp_path):
    """A 48 KiB tmpfs: room for the pipeline's files and an empty store, not for its run."""
    import os

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill the disk needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the full-disk test needs one")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_ends_in_one_message_and_a_rerun_finishes_the_same(small_disk, tmp_path):
    from tests.helpers import make_core

    pipeline = make_core(small_disk / "p")
    full = datamix("run", pipeline, "-q", cwd=pipeline.parent)
    assert full.returncode == 1, (full.stdout, full.stderr)
    assert "Traceback" not in full.stderr and full.stderr.count("error:") == 1, full.stderr
    assert "the disk is full" in full.stderr and "rerun resumes" in full.stderr

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    again = datamix("run", pipeline, "-q", cwd=pipeline.parent)
    assert again.returncode == 0, again.stderr
    reference = make_core(tmp_path / "ref")
    assert datamix("run", reference, "-q", cwd=reference.parent).returncode == 0
    for step in ("general", "domain", "clean", "dedup", "mix", "export"):
        sql = f"SELECT sample_id FROM {step} ORDER BY sample_id"
        assert query(store_of(pipeline), sql) == query(store_of(reference), sql), step
    assert (pipeline.parent / "out" / "data.jsonl").read_text() == (reference.parent / "out" / "data.jsonl").read_text()


def test_a_long_chain_of_filters_reads_the_stored_table_once(tmp_path):
    # issue 14: 199 chained filters took 6 minutes, each level's view reading the one before it
    import duckdb

    rows = [chat(f"Question number {i}?", f"Answer number {i} is here.") for i in range(60)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    steps = [{"name": "src", "kind": "load", "path": "in.jsonl"}]
    for i in range(40):  # each filter drops exactly one row: the one numbered i
        steps.append({"name": f"f{i}", "kind": "filter", "input": steps[-1]["name"],
                      "rules": [{"rule": "regex", "field": "instruction", "exclude": f"number {i}\\?"}]})
    pipeline = write_pipeline(tmp_path, steps, name="chain")
    assert run_pipeline(pipeline).ok
    store = store_of(pipeline)
    assert query(store, "SELECT count(*) FROM f39") == [(20,)]
    assert query(store, "SELECT rows_out FROM dm.steps WHERE name = 'f39'") == [(20,)]
    con = duckdb.connect(str(store), read_only=True)
    view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'f39'").fetchall()[0][0]
    con.close()
    # the last view reads the stored rows of the load directly, not the 39 views before it
    assert view.startswith("CREATE VIEW f39 AS SELECT p.* FROM (src AS p ANTI JOIN"), view


def test_odd_names_run_end_to_end_when_validation_is_bypassed(core_pipeline):
    """`validate` limits names to a safe pattern; past it (a spec built in code), a mix label it's
    and a step name with quotes and unicode still run, skip on rerun and walk lineage."""
    from datamix import runner, spec
    from datamix.lineage import walk
    from datamix.store import Store, quote

    odd_step, odd_label = "cl\"ean 'x' ✓", "it's"
    pipe = spec.load(str(core_pipeline), [])
    steps = []
    for s in pipe.steps:
        if s.name == "clean":
            s = s.model_copy(update={"name": odd_step})
        elif s.name == "dedup":
            s = s.model_copy(update={"input": odd_step})
        elif s.name == "mix":
            s = s.model_copy(update={"inputs": {odd_label: "dedup", "domain": "domain"},
                                     "ratio": {odd_label: s.ratio["general"], "domain": s.ratio["domain"]}})
        steps.append(s)
    pipe = pipe.model_copy(update={"steps": steps})
    logged = []
    first = runner.run(pipe, pipe.store_path(), log=lambda m: None)
    assert first.ok, first.error
    again = runner.run(pipe, pipe.store_path(), log=logged.append)
    assert again.ok and all(line.startswith("skip") for line in logged), logged
    store = store_of(core_pipeline)
    assert query(store, "SELECT source, count(*) FROM mix GROUP BY 1 ORDER BY 1") == [("domain", 8), (odd_label, 12)]
    assert query(store, f"SELECT count(*) FROM {quote(odd_step)}") == [(13,)]
    (sid,) = query(store, "SELECT sample_id FROM mix WHERE source = ? LIMIT 1", [odd_label])[0]
    st = Store(str(store), read_only=True)
    assert [r["step"] for r in walk(st.con, sid)][:4] == ["export", "mix", "dedup", odd_step]
    st.close()


def test_loaded_text_is_stored_zstd_compressed(tmp_path):
    """The store forces zstd for text (smaller and faster to checkpoint than DuckDB's default
    DICT_FSST on long texts); numbers keep DuckDB's own choice."""
    rows = [chat(f"Question {i} about a long topic?", " ".join(f"word{(i * 7 + j) % 500}" for j in range(300)))
            for i in range(3000)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "in.jsonl"}], name="zstd")
    assert run_pipeline(pipeline).ok
    store = store_of(pipeline)
    methods = dict(query(store, "SELECT column_name, list(DISTINCT compression) FROM pragma_storage_info('src') "
                                "WHERE segment_type IN ('VARCHAR', 'BIGINT', 'INTEGER') GROUP BY ALL"))
    assert methods["sample_id"] == ["ZSTD"], methods
    assert "ZSTD" in methods["messages"], methods
    # the texts read back intact
    assert query(store, "SELECT messages[-1].content FROM src ORDER BY messages[1].content LIMIT 1")[0][0] == \
        rows[0]["messages"][-1]["content"]


@pytest.mark.parametrize("file_name", ["pipeline.duckdb", "memory.duckdb", "it's \"odd\".duckdb"])
def test_the_store_writes_row_groups_of_its_own_size_under_any_file_name(tmp_path, file_name):
    """Writers attach the file with datamix's row-group size (an insert smaller than DuckDB's
    default 122,880 rows would go through the WAL and be compressed twice); the catalog's
    name comes from the file name, or `store` where that name is DuckDB's own."""
    from datamix.store import ROW_GROUP_SIZE, Store

    store = Store(str(tmp_path / file_name))
    n = 70_000  # one row group at DuckDB's default size
    store.con.execute("CREATE TABLE t AS SELECT range AS i, 'text ' || range AS s FROM range(?)", [n])
    store.con.execute("CHECKPOINT")
    store.close()
    groups = query(tmp_path / file_name, "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('t')")
    assert groups == [(-(-n // ROW_GROUP_SIZE),)] and ROW_GROUP_SIZE < n
    assert query(tmp_path / file_name, "SELECT count(*), sum(i) FROM t") == [(n, sum(range(n)))]


def test_chunk_rows_reach_duckdb_in_batches_of_one_row_group():
    import pyarrow as pa

    from datamix.store import ROW_GROUP_SIZE, _row_group_batches

    n = ROW_GROUP_SIZE * 2 + 100
    values = list(range(n))
    uneven = pa.Table.from_batches([pa.record_batch({"i": values[a:b]})
                                    for a, b in [(0, 7), (7, ROW_GROUP_SIZE + 3), (ROW_GROUP_SIZE + 3, n)]])
    out = _row_group_batches(uneven)
    assert [b.num_rows for b in out.to_batches()] == [ROW_GROUP_SIZE, ROW_GROUP_SIZE, 100]
    assert out.column("i").to_pylist() == values
    small = pa.table({"i": [1, 2, 3]})
    assert _row_group_batches(small) is small
    aligned = pa.Table.from_batches(out.to_batches())
    assert _row_group_batches(aligned) is aligned
    one = pa.table({"i": values})
    assert [b.num_rows for b in _row_group_batches(one).to_batches()] == [ROW_GROUP_SIZE, ROW_GROUP_SIZE, 100]


def test_a_cursor_leaves_the_runners_connection_free(tmp_path):
    """A step reading its input through a cursor while the runner goes on using `con`."""
    import pyarrow as pa

    from datamix.store import Store

    store = Store(str(tmp_path / "s.duckdb"))
    cursor = store.cursor()
    store.con.register("_rows", pa.table({"a": [1, 2]}))
    assert store.con.execute("SELECT sum(a) FROM _rows").fetchall() == [(3,)]
    assert cursor.execute("SELECT 1").fetchall() == [(1,)]
    cursor.close()
    store.close()
