"""dedup method exact: normalisation, keep policies, related_id, decontamination from a file or a step."""

from __future__ import annotations

import json

import polars as pl

from tests.helpers import chat, cli, query, run_pipeline, store_of, write_jsonl, write_pipeline


def run_dedups(tmp_path, records, dedups: dict[str, dict], extra_steps=()):
    """Load `records` and run one exact dedup step per entry of `dedups` (name -> options) on them.

    Returns {name: ({line: (reason, related line or id, score)} for removed, [kept lines])} and the store."""
    write_jsonl(tmp_path / "in.jsonl", records)
    steps = [{"name": "src", "kind": "load", "path": "in.jsonl", "keep_fields": ["score"]}, *extra_steps]
    steps += [{"name": name, "kind": "dedup", "input": "src", "method": "exact", **opts} for name, opts in dedups.items()]
    pipeline = write_pipeline(tmp_path, steps)
    result = run_pipeline(pipeline)
    assert result.ok, result.error
    store = store_of(pipeline)
    line = dict(query(store, "SELECT sample_id, origin_line FROM src"))
    out = {}
    for name in dedups:
        removed = {line[s]: (reason, line.get(rel, rel), score) for s, reason, rel, score in query(
            store, "SELECT sample_id, reason, related_id, score FROM dm.decisions WHERE step = ? AND NOT kept", [name])}
        kept = [r[0] for r in query(store, f'SELECT origin_line FROM "{name}" ORDER BY origin_line')]
        out[name] = (removed, kept)
    return out, store


def run_dedup(tmp_path, records, extra_steps=(), **dedup):
    out, store = run_dedups(tmp_path, records, {"dd": dedup}, extra_steps)
    return (*out["dd"], store)


def rec(user, assistant, score=None):
    r = chat(user, assistant)
    if score is not None:
        r["score"] = score
    return r


def test_normalised_text_matches_case_punctuation_and_whitespace(tmp_path):
    records = [rec("Hello, World!", "a"), rec("hello   world", "b"), rec("HELLO WORLD?!", "c"), rec("Hello there", "d")]
    removed, kept, _ = run_dedup(tmp_path, records, fields=["instruction"])
    assert kept == [1, 4]
    assert removed == {2: ("duplicate", 1, 1.0), 3: ("duplicate", 1, 1.0)}  # related_id = the kept sample


def test_normalize_false_compares_raw_text(tmp_path):
    records = [rec("Hello, World!", "a"), rec("hello world", "b"), rec("Hello, World!", "c")]
    removed, kept, _ = run_dedup(tmp_path, records, fields=["instruction"], normalize=False)
    assert kept == [1, 2] and removed == {3: ("duplicate", 1, 1.0)}


def test_fields_choose_the_text(tmp_path):
    records = [rec("Same question?", "answer one"), rec("Same question?", "answer two"),
               rec("Same question?", "answer one")]
    out, _ = run_dedups(tmp_path, records, {"conv": {}, "instr": {"fields": ["instruction"]},
                                            "resp": {"fields": ["response"]}})
    assert out["conv"] == ({3: ("duplicate", 1, 1.0)}, [1, 2])  # default: the whole conversation
    assert out["instr"][1] == [1]
    assert out["resp"][1] == [1, 2]


def test_keep_policies(tmp_path):
    records = [rec("Q?", "short", "0.9"), rec("Q?", "a much longer answer", "0.1"), rec("Q?", "medium one", "0.5"),
               rec("Other?", "x", "0.2")]
    out, _ = run_dedups(tmp_path / "a", records, {
        "first": {"fields": ["instruction"], "keep": "first"},
        "both_fields": {"fields": ["instruction", "response"], "keep": "longest"},
        "longest": {"fields": ["instruction"], "keep": "longest"},
        "highest": {"fields": ["instruction"], "keep": "highest", "keep_column": "score"},
    })
    assert out["first"][1] == [1, 4]
    assert out["both_fields"][1] == [1, 2, 3, 4]  # with the response in the text nothing is equal
    assert out["longest"][1] == [1, 4]  # the instruction texts are equal in length: first wins the tie
    # keep_column: the kept sample is the one with the highest value, and the others point to it
    assert out["highest"] == ({2: ("duplicate", 1, 1.0), 3: ("duplicate", 1, 1.0)}, [1, 4])
    records[1]["score"] = "0.95"
    out, _ = run_dedups(tmp_path / "b", records, {"highest": {"fields": ["instruction"], "keep": "highest",
                                                              "keep_column": "score"}})
    assert out["highest"] == ({1: ("duplicate", 2, 1.0), 3: ("duplicate", 2, 1.0)}, [2, 4])


def test_keep_longest_prefers_the_longest_text(tmp_path):
    records = [rec("Tell me about cats", "a"), rec("tell me about cats!!!", "b")]
    # punctuation makes the raw text longer but normalises away
    removed, kept, _ = run_dedup(tmp_path, records, fields=["instruction"], keep="longest")
    assert kept == [2] and removed == {1: ("duplicate", 2, 1.0)}


def test_decontamination_against_a_reference_file(tmp_path):
    write_jsonl(tmp_path / "bench" / "test.jsonl", [
        {"question": "What is 2 + 2?", "answer": "4"}, {"question": "Name the capital of Peru.", "answer": "Lima"}])
    records = [rec("what is 3+3", "six"), rec("What is 2 + 2?", "4"), rec("Unrelated question?", "ok"),
               rec("What is 2 + 2?", "4")]
    removed, kept, _ = run_dedup(tmp_path, records, fields=["instruction"], reference="bench/test.jsonl",
                                 reference_field="instruction")
    assert kept == [1, 3]
    # a contaminated row records the reference row it matched as file:line, even inside a duplicate cluster
    assert removed == {2: ("contamination", "bench/test.jsonl:1", 1.0), 4: ("contamination", "bench/test.jsonl:1", 1.0)}


def test_decontamination_against_a_step(tmp_path):
    write_jsonl(tmp_path / "eval.jsonl", [chat("Secret eval question?", "x")])
    records = [rec("Secret eval question?", "y"), rec("Public question?", "z")]
    removed, kept, store = run_dedup(
        tmp_path, records, extra_steps=[{"name": "evalset", "kind": "load", "path": "eval.jsonl"}],
        fields=["instruction"], reference="evalset", reference_field="instruction")
    eval_id = query(store, "SELECT sample_id FROM evalset")[0][0]
    assert kept == [2] and removed == {1: ("contamination", eval_id, 1.0)}
    assert json.loads(query(store, "SELECT parents FROM dm.steps WHERE name = 'dd'")[0][0]) == {
        "input": "src", "reference": "evalset"}


def test_decontamination_leaves_duplicates_within_the_input_alone(tmp_path):
    # issue 14: placed before select, decontamination collapsed 7 answers per instruction
    # into one as `near_duplicate` though none matched the reference
    write_jsonl(tmp_path / "bench" / "test.jsonl", [{"question": "What is 2 + 2?", "answer": "4"}])
    records = [rec("Same instruction?", "a"), rec("Same instruction?", "b"), rec("What is 2 + 2?", "4"),
               rec("Same instruction?", "c")]
    # reference_field defaults to `fields`: instructions are compared with the reference's instructions
    removed, kept, _ = run_dedup(tmp_path, records, fields=["instruction"], reference="bench/test.jsonl")
    assert kept == [1, 2, 4]
    assert removed == {3: ("contamination", "bench/test.jsonl:1", 1.0)}


def test_decontamination_and_dedup_when_asked_for_both_counted_apart(tmp_path):
    write_jsonl(tmp_path / "bench" / "test.jsonl", [{"question": "What is 2 + 2?", "answer": "4"}])
    records = [rec("Same instruction?", "a"), rec("Same instruction?", "b"), rec("What is 2 + 2?", "4")]
    removed, kept, store = run_dedup(tmp_path, records, fields=["instruction"], reference="bench/test.jsonl",
                                     within_input=True)
    assert kept == [1]
    assert removed == {2: ("duplicate", 1, 1.0), 3: ("contamination", "bench/test.jsonl:1", 1.0)}
    status = json.loads(cli("status", "--store", store, "--format", "json").stdout)
    assert {r["name"]: r["dropped"] for r in status}["dd"] == {"duplicate": 1, "contamination": 1}


def test_a_reference_without_the_field_is_a_clear_error(tmp_path):
    write_jsonl(tmp_path / "bench" / "test.jsonl", [{"question": "What is 2 + 2?", "answer": "4"}])
    write_jsonl(tmp_path / "in.jsonl", [rec("x?", "y")])
    pipeline = write_pipeline(tmp_path, [
        {"name": "src", "kind": "load", "path": "in.jsonl"},
        {"name": "dd", "kind": "dedup", "input": "src", "fields": ["instruction"], "reference": "bench/test.jsonl",
         "reference_field": "title"}])
    result = run_pipeline(pipeline)
    assert not result.ok and result.bad_input
    assert "reference_field" in result.error and "title" in result.error


def test_clusters_view_and_status_count_duplicates(tmp_path):
    records = [rec("A?", "1"), rec("a", "2"), rec("A!", "3"), rec("B?", "4"), rec("b.", "5")]
    removed, kept, store = run_dedup(tmp_path, records, fields=["instruction"])
    line = {v: k for k, v in query(store, "SELECT origin_line, sample_id FROM src")}
    clusters = [(line[k], n) for _, k, n, _ in query(store, "SELECT * FROM dm.clusters")]
    assert clusters == [(1, 3), (4, 2)]
    status = json.loads(cli("status", "--store", store, "--format", "json").stdout)
    assert {r["name"]: r["dropped"] for r in status}["dd"] == {"duplicate": 3}


def test_find_duplicates_directly():
    """The method's own contract: one row per removed text, pointing at the kept one."""
    import numpy as np

    from datamix.dedup.exact import ExactConfig, find_duplicates

    texts = pl.Series(["x y", "X, Y", "z", "x   y!"])
    out = find_duplicates(texts, np.arange(4, dtype=float), ExactConfig(), reference=pl.Series(["Z"]))
    assert out.to_dicts() == [
        {"index": 1, "dup_of": 0, "ref_index": None, "similarity": 1.0},
        {"index": 2, "dup_of": None, "ref_index": 0, "similarity": 1.0},
        {"index": 3, "dup_of": 0, "ref_index": None, "similarity": 1.0},
    ]


def test_a_column_can_be_a_field_alone_or_beside_a_chat_field(tmp_path):
    """`score` is a kept record field (text): equal scores are duplicates; with the
    instruction beside it, both must match (a null column reads as empty text)."""
    records = [rec("q one", "a", "5"), rec("q two", "b", "5"), rec("q one", "c", "5"), rec("q one", "d"),
               rec("q three", "e"), rec("q one", "f")]
    out, _ = run_dedups(tmp_path, records, {"by_score": {"fields": ["score"]},
                                            "by_both": {"fields": ["score", "instruction"]}})
    assert out["by_score"][1] == [1, 4]  # "5" x3 and empty x3
    assert out["by_both"][1] == [1, 2, 4, 5]
    assert out["by_both"][0] == {3: ("duplicate", 1, 1.0), 6: ("duplicate", 4, 1.0)}


def test_minhash_step_removes_near_duplicates_and_stores_no_signatures(tmp_path):
    # Signing costs less than a store lookup, so the step keeps no signature cache (issue 11).
    words = "the quick brown fox jumps over the lazy dog while seven tired cats sleep in warm sun".split()
    records = [rec("q1", " ".join(words)), rec("q2", " ".join(reversed(words))), rec("q3", " ".join(words) + "!")]
    removed, kept, store = run_dedup(tmp_path, records, method="minhash", fields=["response"])
    assert kept == [1, 2] and removed == {3: ("near_duplicate", 1, 1.0)}
    assert query(store, "SELECT count(*) FROM dm.cache") == [(0,)]
