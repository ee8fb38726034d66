"""MinHash dedup through the runner: removal records point at the kept copy, and a rerun on grown
data removes the same copies (signatures are not cached in the store: signing from raw bytes
costs less than a cache lookup, benchmarks/dedup.py)."""

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


def removed_pairs(store) -> list[tuple]:
    """(reason, score, kept prompt, removed prompt) of every dedup removal, sorted."""
    con = duckdb.connect(str(store), read_only=True)
    rows = con.execute(
        "SELECT d.reason, d.score, k.prompt_text, r.prompt_text FROM dm.decisions d "
        "JOIN (SELECT sample_id, messages[1].content AS prompt_text FROM docs) r ON r.sample_id = d.sample_id "
        "JOIN (SELECT sample_id, messages[1].content AS prompt_text FROM docs) k ON k.sample_id = d.related_id "
        "WHERE d.step = 'dedup' ORDER BY r.prompt_text").fetchall()
    con.close()
    return rows


def signatures(store) -> int:
    con = duckdb.connect(str(store), read_only=True)
    n = con.execute("SELECT count(*) FROM dm.cache WHERE key LIKE 'minhash/%'").fetchall()[0][0]
    con.close()
    return n


def test_copies_point_at_what_they_duplicate_before_and_after_new_data(tmp_path):
    (tmp_path / "nd.yaml").write_text(PIPELINE)
    first = write_docs(tmp_path / "docs.jsonl", 40)
    p = spec.load(str(tmp_path / "nd.yaml"))
    assert runner.run(p, p.store_path(), log=lambda m: None).ok
    assert first == 48 and signatures(p.store_path()) == 0
    before = removed_pairs(p.store_path())
    assert sorted(dropped for _, _, _, dropped in before) == sorted(f"doc {i} copy" for i in range(0, 40, 5))
    for reason, score, kept, dropped in before:  # every planted copy, and nothing else
        assert reason == "near_duplicate" and 0.7 <= score <= 1.0
        assert dropped.removesuffix(" copy") == kept

    # more data arrives: the file grows, the step reruns and removes the same copies, nothing new
    with open(tmp_path / "docs.jsonl", "a") as f:
        for i in range(5):
            f.write(json.dumps({"prompt": f"new {i}", "response": f"a brand new text number {i} " * 5}) + "\n")
    p = spec.load(str(tmp_path / "nd.yaml"))
    assert runner.run(p, p.store_path(), log=lambda m: None).ok
    assert removed_pairs(p.store_path()) == before and signatures(p.store_path()) == 0
