"""MinHash dedup through the runner: signatures live in the store, so new data is signed alone."""

from __future__ import annotations

import json
import random

import duckdb

from datamix import runner, spec

PIPELINE = """
name: nd
steps:
  - {name: docs, kind: load, path: docs.jsonl}
  - {name: dedup, kind: dedup, input: docs, method: minhash, fields: [response], threshold: 0.7, ngram: 3}
"""


def write_docs(path, n, seed=0):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)]
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(60))
        rows.append({"prompt": f"doc {i}", "response": text})
        if i % 5 == 0:  # a near copy: two words changed
            tokens = text.split()
            tokens[3], tokens[40] = "changed", "again"
            rows.append({"prompt": f"doc {i} copy", "response": " ".join(tokens)})
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return len(rows)


def signatures(store) -> int:
    con = duckdb.connect(str(store), read_only=True)
    n = con.execute("SELECT count(*) FROM dm.cache WHERE key LIKE 'minhash/%'").fetchall()[0][0]
    con.close()
    return n


def test_new_rows_are_signed_alone_and_copies_point_at_what_they_duplicate(tmp_path):
    (tmp_path / "nd.yaml").write_text(PIPELINE)
    first = write_docs(tmp_path / "docs.jsonl", 40)
    p = spec.load(str(tmp_path / "nd.yaml"))
    assert runner.run(p, p.store_path(), log=lambda m: None).ok
    assert signatures(p.store_path()) == first

    con = duckdb.connect(str(p.store_path()), read_only=True)
    removed = con.execute(
        "SELECT d.reason, d.score, k.prompt_text, r.prompt_text FROM dm.decisions d "
        "JOIN (SELECT sample_id, messages[1].content AS prompt_text FROM docs) r ON r.sample_id = d.sample_id "
        "JOIN (SELECT sample_id, messages[1].content AS prompt_text FROM docs) k ON k.sample_id = d.related_id "
        "WHERE d.step = 'dedup'").fetchall()
    con.close()
    assert len(removed) == 8  # every planted copy, and nothing else
    for reason, score, kept, dropped in removed:
        assert reason == "near_duplicate" and 0.7 <= score <= 1.0
        assert dropped.removesuffix(" copy") == kept.removesuffix(" copy")

    # more data arrives: the file grows, the step reruns, only the new rows are signed
    with open(tmp_path / "docs.jsonl", "a") as f:
        for i in range(5):
            f.write(json.dumps({"prompt": f"new {i}", "response": f"a brand new text number {i} " * 5}) + "\n")
    p = spec.load(str(tmp_path / "nd.yaml"))
    assert runner.run(p, p.store_path(), log=lambda m: None).ok
    assert signatures(p.store_path()) == first + 5
