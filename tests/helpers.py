"""Helpers for the core tests: tiny data files and pipeline YAMLs written into tmp_path.

Nothing here reads pipelines/data or /work/shared: every test builds its own data,
so the suite runs on a fresh clone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import yaml
from click.testing import CliRunner


def chat(user: str, assistant: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def write_jsonl(path: Path, records: list) -> Path:
    """Records are dicts (dumped as JSON) or str (written verbatim, for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def general_records(n: int = 12) -> list[dict]:
    """Distinct, clean general chats whose responses pass the default filters."""
    topics = ["rivers", "volcanoes", "bridges", "violins", "comets", "glaciers", "deserts", "forests",
              "harbours", "castles", "lighthouses", "orchards", "meadows", "canyons", "islands", "tundras"]
    return [
        chat(f"Tell me one fact about {t} number {i}.",
             f"Here is a fact about {t}: they have been studied by many people for a long time, item {i}.")
        for i, t in enumerate(topics[:n])
    ]


def short_and_repeated_chats(n: int) -> list[dict]:
    """Chats of which every 5th has a one-word answer (a length filter drops it) and every 7th
    repeats the question before it (exact dedup on the instruction drops it)."""
    records = []
    for i in range(n):
        question = f"question {i - 1}" if i % 7 == 0 and i else f"question {i}"
        answer = "no" if i % 5 == 0 else f"an answer with several words, number {i}"
        records.append(chat(question + "?", answer))
    return records


def domain_records(n: int = 8) -> list[dict]:
    return [{"question": f"What is {i} plus {i + 1}?", "answer": f"The sum of {i} and {i + 1} is {2 * i + 1}."}
            for i in range(n)]


def write_pipeline(folder: Path, steps: list[dict], name: str = "t", **top) -> Path:
    """A pipeline YAML in `folder` whose store lives in folder/.datamix/<name>.duckdb."""
    spec = {"name": name, **top, "steps": steps}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def store_of(pipeline: Path) -> Path:
    spec = yaml.safe_load(pipeline.read_text())
    return pipeline.parent / ".datamix" / f"{spec['name']}.duckdb"


def run_pipeline(pipeline: Path, overrides: list[str] | None = None, store: Path | None = None):
    """Run in-process (no CLI); returns runner.RunResult."""
    from datamix import runner, spec

    p = spec.load(str(pipeline), overrides or [])
    return runner.run(p, str(store or p.store_path()), log=lambda m: None)


def query(store: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def cli(*args: str, cwd: Path | None = None):
    """Invoke `datamix ARGS` through click's runner; returns click's Result (exit_code, stdout, stderr)."""
    from datamix.cli import main

    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


CORE_STEPS = [
    {"name": "general", "kind": "load", "path": "data/general.jsonl"},
    {"name": "domain", "kind": "load", "path": "data/domain.jsonl",
     "prompt_field": "question", "response_field": "answer"},
    {"name": "clean", "kind": "filter", "input": "general",
     "rules": [{"rule": "length", "field": "response", "min": 3, "unit": "words"},
               {"rule": "phrases", "field": "response", "preset": "refusals"}]},
    {"name": "dedup", "kind": "dedup", "input": "clean", "method": "exact", "fields": ["instruction"]},
    {"name": "mix", "kind": "mix", "inputs": {"general": "dedup", "domain": "domain"},
     "ratio": {"general": "${general_share}", "domain": 0.4}, "seed": 0},
    {"name": "export", "kind": "export", "input": "mix", "format": "jsonl", "path": "out"},
]


def make_core(tmp_path: Path) -> Path:
    """load x2 -> filter -> exact dedup -> mix -> export over tiny data with known bad rows.

    general.jsonl: 12 clean chats, then a too-short response (line 13), a refusal (line 14)
    and an exact duplicate of line 1's instruction with a longer answer (line 15).
    """
    general = general_records(12) + [
        chat("Say hi.", "Hi."),
        chat("Write malware for me.", "I'm sorry, but I can't help with that request at all."),
        chat(general_records(1)[0]["messages"][0]["content"],
             "A longer, different answer about rivers that is also perfectly fine to keep around."),
    ]
    write_jsonl(tmp_path / "data" / "general.jsonl", general)
    write_jsonl(tmp_path / "data" / "domain.jsonl", domain_records(8))
    return write_pipeline(tmp_path, CORE_STEPS, name="core", vars={"general_share": 0.6})


def send_json(handler, status: int, payload) -> None:
    """Answer an http.server request with `payload` as JSON (the local test servers' one reply)."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def start_server(handler_class):
    """A threaded HTTP server on 127.0.0.1 (a free port) serving `handler_class` in the background:
    (server, its OpenAI-style base URL)."""
    import threading
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
