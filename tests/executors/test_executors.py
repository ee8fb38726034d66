"""`executor:` in the YAML: parsed at the pipeline and step level, kept out of fingerprints, and
checked at validate time (ray installed, the cluster's address answering), with the YAML place."""

from __future__ import annotations

import re
import socket
import sys

from datamix import runner, spec
from tests.helpers import chat, cli, write_jsonl, write_pipeline

STEPS = [
    {"name": "src", "kind": "load", "path": "d.jsonl"},
    {"name": "clean", "kind": "filter", "input": "src",
     "rules": [{"rule": "length", "field": "response", "min": 1, "unit": "words"}]},
]


def pipeline(folder, executor=None, step_executor=None):
    write_jsonl(folder / "d.jsonl", [chat("Hello there?", "Hello to you too.")])
    steps = [dict(s) for s in STEPS]
    if step_executor is not None:
        steps[1]["executor"] = step_executor
    top = {} if executor is None else {"executor": executor}
    return write_pipeline(folder, steps, name="x", **top)


def problems(result) -> list[str]:
    """Each problem after its file:line (every one has a line in the YAML)."""
    return [m.group(1) for line in result.output.splitlines() if (m := re.search(r"x\.yaml:\d+: (.*)", line))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_the_executor_is_a_run_setting_outside_every_fingerprint(tmp_path):
    local = spec.load(str(pipeline(tmp_path / "a")))
    on_ray = spec.load(str(pipeline(tmp_path / "a", executor={"type": "ray", "address": "local"},
                                    step_executor="local")))
    assert local.executor.type == "local" and on_ray.executor.type == "ray"
    assert on_ray.executor_of("src").type == "ray" and on_ray.executor_of("clean").type == "local"
    assert runner.fingerprints(local) == runner.fingerprints(on_ray)


def test_an_unreachable_address_is_bad_input_naming_its_place(tmp_path):
    port = free_port()
    path = pipeline(tmp_path, executor={"type": "ray", "address": f"127.0.0.1:{port}"},
                    step_executor={"type": "ray", "address": "ray://127.0.0.1:1", "num_cpus": 2})
    result = cli("validate", path)
    assert result.exit_code == 2
    found = problems(result)
    assert any(p.startswith("executor.address: no Ray cluster answers at 127.0.0.1:" f"{port}")
               for p in found), found
    # num_cpus sizes a Ray started for the run; it is checked before the address
    assert any("steps[1] (name: clean).executor.num_cpus: num_cpus sizes a Ray started for the run" in p
               for p in found), found


def test_address_auto_without_a_running_cluster_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no-ray-here"))
    result = cli("validate", pipeline(tmp_path, executor={"type": "ray", "address": "auto"}))
    assert result.exit_code == 2
    assert "executor.address: address: auto, but no Ray cluster is running on this machine" in result.output
    assert "ray start --head" in result.output


def test_ray_not_installed_is_bad_input_at_validate_time(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed: find_spec gives None
    result = cli("validate", pipeline(tmp_path, step_executor={"type": "ray"}))
    assert result.exit_code == 2
    assert problems(result) == [
        "steps[1] (name: clean).executor.type: ray is not installed in this environment: "
        "pip install 'datamix[ray]' (ray>=2.9), or use executor: local"]


def test_misspelt_executors_name_the_option(tmp_path):
    result = cli("validate", pipeline(tmp_path, executor={"type": "rya"},
                                      step_executor={"type": "ray", "adress": "auto"}))
    assert result.exit_code == 2
    found = problems(result)
    assert found[0].startswith("executor.type: give `local` (the default) or `ray`"), found
    assert found[1].startswith("steps[1] (name: clean).executor.adress: unknown option; a ray "
                               "executor takes type, address, num_cpus_per_task"), found


def test_a_partial_step_whose_rows_are_in_the_other_executors_form_starts_over(tmp_path, monkeypatch):
    """A map left partial by the local loop (rows in a table) cannot take Parquet parts after them
    in order: under ray it reruns, and plan says why; its input, done, is skipped."""
    from datamix.store import Store

    write_jsonl(tmp_path / "d.jsonl", [chat(f"Question {i}?", f"Answer {i}.") for i in range(4)])
    steps = [{"name": "src", "kind": "load", "path": "d.jsonl"},
             {"name": "sized", "kind": "map", "input": "src", "chunk_size": 1, "columns": {"n": "len(messages)"}}]
    local = write_pipeline(tmp_path, steps, name="x")
    real = Store.commit_chunk

    def fail_second(self, step, key, *a, **k):
        if key == "rows-1-2":
            raise RuntimeError("disk gone")
        return real(self, step, key, *a, **k)

    monkeypatch.setattr(Store, "commit_chunk", fail_second)
    p = spec.load(str(local))
    assert not runner.run(p, p.store_path(), log=lambda m: None).ok
    monkeypatch.setattr(Store, "commit_chunk", real)
    on_ray = spec.load(str(write_pipeline(tmp_path, steps, name="x", executor={"type": "ray"})))
    store = Store(on_ray.store_path())
    try:
        entries = {e.name: (e.action, e.reason) for e in runner.plan(on_ray, store)}
        assert entries["src"][0] == "skip"
        assert entries["sized"] == ("run", "failed: its committed rows were written by the local executor and this "
                                           "run's is ray, so it starts over")
        assert {e.name: e.action for e in runner.plan(p, store)}["sized"] == "resume"  # the same executor resumes
    finally:
        store.close()
