"""filter: every rule, first failing rule wins, every dropped sample has a decision with its reason."""

from __future__ import annotations

import pytest

from tests.helpers import chat, cli, query, run_pipeline, store_of, write_jsonl, write_pipeline


def run_filters(tmp_path, records, filters: dict[str, list], **step):
    """Load `records` and run one filter step per entry of `filters` (name -> rules) on them, in one store.

    Returns {name: ({line: (reason, score)} for dropped, [kept lines])} and the store."""
    write_jsonl(tmp_path / "in.jsonl", records)
    steps = [{"name": "src", "kind": "load", "path": "in.jsonl"}]
    steps += [{"name": name, "kind": "filter", "input": "src", "rules": rules, **step} for name, rules in filters.items()]
    pipeline = write_pipeline(tmp_path, steps)
    result = run_pipeline(pipeline)
    assert result.ok, result.error
    store = store_of(pipeline)
    out = {}
    for name in filters:
        dropped = {line: (reason, score) for line, reason, score in query(store, """
            SELECT s.origin_line, d.reason, d.score FROM dm.decisions d JOIN src s USING (sample_id)
            WHERE d.step = ? AND NOT d.kept""", [name])}
        kept = [r[0] for r in query(store, f'SELECT origin_line FROM "{name}" ORDER BY origin_line')]
        assert sorted(kept + list(dropped)) == list(range(1, len(records) + 1))  # each sample kept xor dropped
        out[name] = (dropped, kept)
    return out, store


def run_filter(tmp_path, records, rules, **step):
    """One filter step `f`: ({line: (reason, score)} for dropped, [kept lines], store)."""
    out, store = run_filters(tmp_path, records, {"f": rules}, **step)
    return (*out["f"], store)


def test_length_in_chars_and_words_records_the_measured_value(tmp_path):
    records = [chat("q?", "abc"), chat("q?", "one two three four five six"), chat("q?", "one two  three")]
    out, _ = run_filters(tmp_path, records, {"chars": [{"rule": "length", "min": 4, "max": 20}],
                                             "words": [{"rule": "length", "unit": "words", "min": 4}]})
    assert out["chars"][0] == {1: ("length(response)", 3.0), 2: ("length(response)", 27.0)}
    assert out["words"][0] == {1: ("length(response)", 1.0), 3: ("length(response)", 3.0)}  # double spaces: 3 words


def test_length_on_the_instruction_field(tmp_path):
    records = [chat("Hi", "long enough answer"), chat("A real question here?", "long enough answer")]
    dropped, kept, _ = run_filter(tmp_path, records, [{"rule": "length", "field": "instruction", "min": 5}])
    assert dropped == {1: ("length(instruction)", 2.0)}


def test_regex_include_and_exclude(tmp_path):
    records = [chat("q?", "The answer is 42."), chat("q?", "No digits."), chat("q?", "As an AI, 7.")]
    out, _ = run_filters(tmp_path, records, {"inc": [{"rule": "regex", "include": r"\d"}],
                                             "exc": [{"rule": "regex", "exclude": r"(?i)as an ai"}]})
    assert out["inc"][0] == {2: ("regex(response)", None)}
    assert out["exc"][0] == {3: ("regex(response)", None)}


def test_repetition_duplicate_lines_and_repeated_ngrams(tmp_path):
    varied = "The quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches."
    records = [
        chat("q?", varied),
        chat("q?", "Buy now.\nBuy now.\nBuy now.\nGood stuff here."),  # 2 of 4 lines duplicate
        chat("q?", " ".join(["very good"] * 12)),  # one bigram covers nearly all characters
    ]
    only_lines = {"rule": "repetition", "max_top_ngram_fraction": None, "max_duplicate_ngram_fraction": None,
                  "max_duplicate_line_fraction": 0.3}
    out, _ = run_filters(tmp_path, records, {"f": [{"rule": "repetition"}], "lines": [only_lines]})
    dropped, kept = out["f"]
    assert kept == [1]
    # the reason names the criterion that fired; the score is its measured value
    assert dropped[2][0] == "repetition(response): duplicate_lines"
    assert dropped[2][1] == pytest.approx(0.5)
    assert dropped[3][0] == "repetition(response): top_2gram"
    assert dropped[3][1] > 0.9
    assert list(out["lines"][0]) == [2]


def test_phrases_custom_and_presets_case_insensitive(tmp_path):
    records = [chat("q?", "I'm sorry, but I can't do that."), chat("q?", "Click HERE for more."),
               chat("q?", "Bananas are yellow."), chat("q?", "Sure, here it is.")]
    out, _ = run_filters(tmp_path, records, {
        "refusals": [{"rule": "phrases", "preset": "refusals"}],
        "boilerplate": [{"rule": "phrases", "preset": "boilerplate"}],
        "both": [{"rule": "phrases", "phrases": ["BANANA"], "preset": "refusals"}]})
    assert list(out["refusals"][0]) == [1]
    assert list(out["boilerplate"][0]) == [2]
    assert sorted(out["both"][0]) == [1, 3]


def test_shape_roles_alternate_and_end_with_assistant(tmp_path):
    def m(*roles):
        return {"messages": [{"role": r, "content": f"turn {i}"} for i, r in enumerate(roles)]}

    records = [m("user", "assistant"), m("system", "user", "assistant", "user", "assistant"),
               m("user", "user", "assistant"), m("user", "assistant", "user"), m("assistant", "user", "assistant"),
               m("user", "system", "assistant"), m("user")]
    out, _ = run_filters(tmp_path, records, {"strict": [{"rule": "shape"}],
                                             "loose": [{"rule": "shape", "ends_with": "any", "min_turns": 1}]})
    dropped, kept = out["strict"]
    assert kept == [1, 2]
    assert set(dropped) == {3, 4, 5, 6, 7} and {r for r, _ in dropped.values()} == {"shape"}
    assert out["loose"][1] == [1, 2, 4, 7]


def test_sql_where_predicate_over_columns(tmp_path):
    records = [chat("q?", "a"), {"messages": chat("q?", "a")["messages"] * 2}]
    dropped, kept, _ = run_filter(tmp_path, records, [{"rule": "sql", "where": "len(messages) >= 4"}])
    assert dropped == {1: ("sql", None)} and kept == [2]


def test_first_failing_rule_is_the_reason_and_names_can_be_given(tmp_path):
    records = [chat("q?", "no"), chat("q?", "As an AI language model I will not.")]
    rules = [{"rule": "length", "unit": "words", "min": 3, "name": "too_short"},
             {"rule": "phrases", "preset": "refusals", "name": "refusal"}]
    dropped, _, store = run_filter(tmp_path, records, rules)
    assert dropped == {1: ("too_short", 1.0), 2: ("refusal", None)}
    funnel = query(store, "SELECT reason, dropped FROM dm.funnel WHERE step = 'f' ORDER BY reason")
    assert funnel == [("refusal", 1), ("too_short", 1)]


def test_filter_output_keeps_ids_and_chunking_does_not_change_decisions(tmp_path):
    records = [chat(f"q{i}?", "ok answer here" if i % 3 else "x") for i in range(10)]
    rules = [{"rule": "length", "unit": "words", "min": 2}]
    dropped_one, kept_one, store = run_filter(tmp_path / "one", records, rules)
    dropped_many, kept_many, store2 = run_filter(tmp_path / "many", records, rules, chunk_size=3)
    assert (dropped_one, kept_one) == (dropped_many, kept_many)
    assert query(store2, "SELECT key FROM dm.chunks WHERE step = 'f' ORDER BY key") == [
        ("rows-0-3",), ("rows-3-6",), ("rows-6-9",), ("rows-9-10",)]
    ids = query(store, "SELECT sample_id FROM f ORDER BY sample_id")
    assert ids == query(store, "SELECT sample_id FROM src WHERE origin_line IN (2, 3, 5, 6, 8, 9) ORDER BY sample_id")
    assert query(store, "SELECT rows_in, rows_out FROM dm.steps WHERE name = 'f'") == [(10, 6)]


@pytest.mark.parametrize("rule, message", [
    ({"rule": "length", "field": "answer_text", "min": 1}, "unknown field 'answer_text'"),
    ({"rule": "sql", "where": "no_such_column > 1"}, "invalid predicate"),
])
def test_bad_rule_inputs_exit_2_with_the_reason(tmp_path, rule, message):
    write_jsonl(tmp_path / "in.jsonl", [chat("q?", "a")])
    pipeline = write_pipeline(tmp_path, [{"name": "src", "kind": "load", "path": "in.jsonl"},
                                         {"name": "f", "kind": "filter", "input": "src", "rules": [rule]}])
    result = cli("run", pipeline)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_word_count_is_the_non_empty_pieces_between_spaces():
    """Words are split on plain spaces only (tabs and no-break spaces are inside words)."""
    import polars as pl

    from datamix.steps.filter import LengthRule, _length

    texts = ["", " ", "  a  b ", "a\u00a0b c", "\tx  y\t", "one", " lead", "trail ", "a  b   c", "é 🙂 x"]
    rule = LengthRule(rule="length", unit="words", min=0)
    ok, counts = _length(pl.DataFrame({"i": range(len(texts))}), rule, lambda field, lower=False: pl.Series(texts))
    assert counts.to_list() == [float(len([w for w in t.split(" ") if w])) for t in texts]
    assert counts.to_list() == [0, 0, 2, 2, 2, 1, 1, 1, 3, 3]
