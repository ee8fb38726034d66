"""The shipped pipelines: the GPU recipe validates, the quickstart runs end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPELINES = os.path.join(REPO, "pipelines")


def datamix(*args, cwd):
    return subprocess.run([sys.executable, "-m", "datamix.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_the_gpu_recipe_validates():
    out = datamix("validate", "forgetting-mitigation.yaml", cwd=PIPELINES)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_the_gpu_recipe_mixes_about_83_to_17():
    import yaml

    spec = yaml.safe_load(open(os.path.join(PIPELINES, "forgetting-mitigation.yaml")))
    mix = next(s for s in spec["steps"] if s["kind"] == "mix")
    shares = {k: spec["vars"][v.strip("${}")] if isinstance(v, str) else v for k, v in mix["ratio"].items()}
    assert shares["general"] / sum(shares.values()) == pytest.approx(0.83, abs=0.01)
    judges = next(s for s in spec["steps"] if s["kind"] == "judge")
    gen = next(s for s in spec["steps"] if s["kind"] == "generate")
    assert sorted(judges["judges"]) == sorted(gen["models"]) and len(gen["models"]) == 3


@pytest.mark.slow
def test_the_quickstart_runs_offline_with_every_step_non_empty(tmp_path):
    work = tmp_path / "pipelines"
    shutil.copytree(PIPELINES, work, ignore=shutil.ignore_patterns(".datamix"))
    run = datamix("run", "quickstart.yaml", "-q", cwd=work)
    assert run.returncode == 0, run.stderr[-3000:]
    status = json.loads(datamix("status", "quickstart.yaml", "--format", "json", cwd=work).stdout)
    assert [s["state"] for s in status] == ["done"] * len(status)
    assert all(s["rows_out"] > 0 for s in status), status
    # the export is readable as a chat dataset, and a mixed sample traces back to its source
    data = [json.loads(line) for line in open(work / ".datamix" / "outputs" / "export" / "data.jsonl")]
    assert {d["source"] for d in data} == {"general", "domain"}
    domain_id = next(d["sample_id"] for d in data if d["source"] == "domain")
    chain = json.loads(datamix("lineage", domain_id, "quickstart.yaml", "--format", "json", cwd=work).stdout)
    assert chain[0]["depth"] == 0 and chain[-1]["kind"] == "load"
    assert chain[-1]["origin"]["file"] == "data/domain.jsonl" and chain[-1]["origin"]["line"] >= 1
    # lineage continues into the training data: the file row and the shard sequence it went to
    where = {r["step"]: r.get("origin", {}) for r in chain if r["depth"] == 0}
    assert where["export"]["file"] == "data.jsonl"
    assert where["shards"]["shard"].startswith("shard") and where["shards"]["sequence"] >= 0
    trained = json.loads(datamix("sql", "SELECT steps, final_loss FROM train", "quickstart.yaml", "--format", "json",
                                 cwd=work).stdout)
    assert trained[0]["steps"] == 4 and trained[0]["final_loss"] > 0
    # the quickstart's report: one page, every section, the store's rows per step and mix
    # composition (tests/report/ checks a richer store, and opens it in a browser)
    import html
    import re

    import duckdb

    from datamix.report import SECTIONS

    report = datamix("report", "quickstart.yaml", "--out", str(work / "report.html"), cwd=work)
    assert report.returncode == 0, report.stderr
    page = (work / "report.html").read_text()
    assert all(f'data-section="{key}"' in page for key in SECTIONS) and "<script" not in page
    shown = {html.unescape(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in re.finditer(
        r'<tr [^>]*data-step="([^"]*)"[^>]*data-rows-in="(\d+)"[^>]*data-rows-out="(\d+)"', page)}
    con = duckdb.connect(str(work / ".datamix" / "quickstart.duckdb"), read_only=True)
    steps = {n: (i, o) for n, i, o in con.execute("SELECT name, rows_in, rows_out FROM dm.steps").fetchall()}
    comp = {src: n for src, n, *_ in con.execute("SELECT * FROM dm.composition('mix')").fetchall()}
    con.close()
    assert shown == steps and len(steps) == 11
    for source, n in comp.items():
        assert re.search(r'<tr [^>]*data-source="' + source + r'"[^>]*data-samples="' + str(n) + '"', page)


def test_the_gpu_recipe_has_the_arms_and_real_benchmarks():
    import yaml

    spec = yaml.safe_load(open(os.path.join(PIPELINES, "forgetting-mitigation.yaml")))
    steps = {s["name"]: s for s in spec["steps"]}
    ev = next(s for s in spec["steps"] if s["kind"] == "evaluate")
    trains = [s for s in spec["steps"] if s["kind"] == "train"]
    assert sorted(ev["models"]) == sorted(["base", *(t["name"] for t in trains)]) and ev["baseline"] == "base"
    assert ev["no_replay"] == "sft_d" and steps["sft_d"]["input"] == "export_d" and steps["export_d"]["input"] == "domain"
    tasks = {t for s in ev["sets"].values() for m in s["metrics"] if isinstance(m, dict) for t in m.get("tasks", [])}
    assert {"gsm8k", "mmlu_pro", "ifeval"} <= tasks
    judged = [m for s in ev["sets"].values() for m in s["metrics"] if isinstance(m, dict) and m["metric"] == "judge_winrate"]
    assert judged and judged[0]["reference"] == "base"
    assert {s["role"] for s in ev["sets"].values()} == {"general", "domain"}

    def resolved(v):
        return spec["vars"][v.strip("${}")] if isinstance(v, str) and v.startswith("${") else v

    # the same optimiser settings and steps in every arm; each step holds the same domain tokens on average
    opts = [{k: resolved(v) for k, v in t["options"].items()} for t in trains]
    for key in ("lr", "warmup_steps", "max_steps"):
        assert len({o[key] for o in opts}) == 1, key
    share = spec["vars"]["domain_share"] / (spec["vars"]["domain_share"] + spec["vars"]["general_share"])
    domain_batch = next(o["batch_tokens"] for o, t in zip(opts, trains) if t["name"] == "sft_d")
    for o, t in zip(opts, trains):
        if t["name"] != "sft_d":
            assert o["batch_tokens"] * share == pytest.approx(domain_batch, rel=0.03)
    for mix in (s for s in spec["steps"] if s["kind"] == "mix"):
        assert mix["size_by"] == "domain"
