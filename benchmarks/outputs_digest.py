"""A digest of everything a pipeline run produced, to prove a refactor changed no output.

Runs PIPELINE (default: pipelines/quickstart.yaml) in a fresh copy of its folder and prints,
as JSON, a content hash of every step table and of dm.decisions, dm.edges,
dm.quarantine and dm.chunks' keys and counts (rows sorted, so the hash does not depend on write order), and of every file
the exports and the train step wrote (manifests excepted: they hold absolute paths).

    python benchmarks/outputs_digest.py > before.json          # on the old code
    python benchmarks/outputs_digest.py > after.json           # on the new code
    diff before.json after.json

To digest another checkout's code with this venv: PYTHONPATH=/path/to/checkout/src.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def table_digests(store: str) -> dict[str, str]:
    import duckdb

    con = duckdb.connect(store, read_only=True)
    names = [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' UNION "
        "SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal").fetchall()]
    out = {}
    for name in sorted(names) + ["dm.decisions", "dm.edges", "dm.quarantine", "dm.chunks"]:
        source = name if name.startswith("dm.") else '"' + name.replace('"', '""') + '"'
        cols = [c[0] for c in con.execute(f"DESCRIBE {source}").fetchall()]
        # paths (folders, model paths, and the shard manifest that holds them) differ between two
        # copies; latencies and commit times differ between runs
        skip = ("folder", "model_path", "shards", "base_model", "latency_s", "shards_manifest_sha256")
        if name == "dm.chunks":  # chunk keys and counts (what a resume skips by); files are paths
            skip += ("files", "committed_at")
        keep = [c for c in cols if c not in skip]
        select = ", ".join('"' + c + '"' for c in keep)
        rows = con.execute(f"SELECT {select} FROM {source}").fetchall()
        text = "\n".join(sorted(json.dumps(r, default=str, sort_keys=True) for r in rows))
        out[name] = f"{len(rows)} rows, {hashlib.sha256(text.encode()).hexdigest()[:16]}"
    con.close()
    return out


def file_digests(outputs: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(outputs):
        for f in sorted(files):
            path = os.path.join(root, f)
            rel = os.path.relpath(path, outputs)
            if f in ("manifest.json", "metrics.jsonl", "run.json") or f.endswith(".tmp") or "/checkpoints/" in f"/{rel}":
                continue
            out[rel] = hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
    return dict(sorted(out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipeline", nargs="?", default=os.path.join(HERE, "..", "pipelines", "quickstart.yaml"))
    args = ap.parse_args()
    folder = os.path.dirname(os.path.abspath(args.pipeline))
    work = os.path.join(tempfile.mkdtemp(), "pipelines")
    shutil.copytree(folder, work, ignore=shutil.ignore_patterns(".datamix"))
    name = os.path.basename(args.pipeline)
    proc = subprocess.run([sys.executable, "-m", "datamix.cli", "run", name, "-q"], cwd=work,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    import yaml

    spec = yaml.safe_load(open(os.path.join(work, name)))
    store = os.path.join(work, ".datamix", f"{spec['name']}.duckdb")
    digest = {"tables": table_digests(store), "files": file_digests(os.path.join(work, ".datamix", "outputs"))}
    print(json.dumps(digest, indent=1))


if __name__ == "__main__":
    main()
