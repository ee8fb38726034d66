"""mix: ratios by samples and by tokens, total, seeds, upsampling cap, source labels, composition."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.helpers import chat, cli, query, run_pipeline, store_of, write_jsonl, write_pipeline


def mix_pipeline(tmp_path, n_a=12, n_b=8, a_text=None, b_text=None, **mix):
    write_jsonl(tmp_path / "a.jsonl", [chat(f"a question {i}?", (a_text or "a answer {i}").format(i=i)) for i in range(n_a)])
    write_jsonl(tmp_path / "b.jsonl", [chat(f"b question {i}?", (b_text or "b answer {i}").format(i=i)) for i in range(n_b)])
    mix = {"ratio": {"a": 0.6, "b": 0.4}, **mix}
    return write_pipeline(tmp_path, [
        {"name": "la", "kind": "load", "path": "a.jsonl"},
        {"name": "lb", "kind": "load", "path": "b.jsonl"},
        {"name": "mix", "kind": "mix", "inputs": {"a": "la", "b": "lb"}, **mix},
    ])


def run_mix(tmp_path, **kw):
    pipeline = mix_pipeline(tmp_path, **kw)
    result = run_pipeline(pipeline)
    assert result.ok, result.error
    return store_of(pipeline)


def per_source(store):
    return dict(query(store, "SELECT source, count(*) FROM mix GROUP BY source"))


def test_sample_ratio_default_total_is_the_largest_mix_without_replacement(tmp_path):
    store = run_mix(tmp_path)  # a: 12/0.6 = 20, b: 8/0.4 = 20
    assert per_source(store) == {"a": 12, "b": 8}
    assert query(store, "SELECT count(DISTINCT sample_id) FROM mix") == [(20,)]
    store = run_mix(tmp_path / "skewed", n_a=12, n_b=2)  # b limits: 2/0.4 = 5 samples in all
    assert per_source(store) == {"a": 3, "b": 2}


def test_total_and_composition_view(tmp_path):
    store = run_mix(tmp_path, total=10)
    assert per_source(store) == {"a": 6, "b": 4}
    comp = query(store, "SELECT source, samples, sample_fraction FROM dm.composition('mix')")
    assert comp == [("a", 6, 0.6), ("b", 4, 0.4)]


def test_every_mixed_sample_links_to_the_sample_it_was_drawn_from(tmp_path):
    store = run_mix(tmp_path, total=10)
    rows = query(store, """
        SELECT m.source, e.parent_step, m.messages = coalesce(a.messages, b.messages)
        FROM mix m JOIN dm.edges e ON e.step = 'mix' AND e.sample_id = m.sample_id
        LEFT JOIN la a ON e.parent_step = 'la' AND a.sample_id = e.parent_id
        LEFT JOIN lb b ON e.parent_step = 'lb' AND b.sample_id = e.parent_id""")
    assert len(rows) == 10
    assert all((src, parent, same) in {("a", "la", True), ("b", "lb", True)} for src, parent, same in rows)


def test_token_ratio(tmp_path):
    # b's answers are ~10x longer: by tokens, half the tokens are far fewer b samples
    store = run_mix(tmp_path, n_a=40, n_b=40, b_text="b answer {i} " + "with many more words " * 10,
                    unit="tokens", ratio={"a": 0.5, "b": 0.5}, total=400)
    comp = {s: (n, tok, frac) for s, n, _, tok, frac in query(store, "SELECT * FROM dm.composition('mix')")}
    assert comp["a"][0] > 3 * comp["b"][0]
    assert comp["a"][2] == pytest.approx(0.5, abs=0.05) and comp["b"][2] == pytest.approx(0.5, abs=0.05)
    # each source reaches its share and overshoots by less than one sample
    longest = dict(query(store, "SELECT source, max(est_tokens) FROM mix GROUP BY source"))
    for s in "ab":
        assert 200 <= comp[s][1] < 200 + longest[s]


def test_seeded_draws_are_reproducible_and_the_seed_matters(tmp_path):
    pipeline = mix_pipeline(tmp_path, n_a=30, n_b=30, total=10, seed=7)
    import yaml

    spec = yaml.safe_load(pipeline.read_text())
    mix = spec["steps"][-1]
    spec["steps"] += [{**mix, "name": "again"}, {**mix, "name": "other", "seed": 8}]
    pipeline.write_text(yaml.safe_dump(spec))
    assert run_pipeline(pipeline).ok
    store = store_of(pipeline)

    def drawn(step):  # the parents drawn, in table order (the interleaving too)
        parent = dict(query(store, "SELECT sample_id, parent_id FROM dm.edges WHERE step = ?", [step]))
        return [(parent[sid], src) for sid, src in query(store, f"SELECT sample_id, source FROM {step}")]

    assert drawn("mix") == drawn("again")
    assert sorted(drawn("mix")) != sorted(drawn("other"))
    assert len({p for p, _ in drawn("mix")}) == 10


def test_a_too_small_source_without_upsampling_exits_2_and_says_what_to_do(tmp_path):
    pipeline = mix_pipeline(tmp_path, n_a=12, n_b=2, total=20)  # b needs 8, has 2
    result = cli("run", pipeline)
    assert result.exit_code == 2
    assert "input 'b' has 2 samples but the mix needs 8" in result.stderr
    assert "max_upsample: 4.00" in result.stderr


def test_upsampling_with_replacement_up_to_the_cap(tmp_path):
    store = run_mix(tmp_path, n_a=12, n_b=3, total=20, max_upsample=3)  # b needs 8 of 3 rows: 2.67x
    assert per_source(store) == {"a": 12, "b": 8}
    assert query(store, "SELECT count(DISTINCT sample_id) FROM mix") == [(20,)]  # repeats get their own ids
    uses = Counter(p for (p,) in query(store, "SELECT parent_id FROM dm.edges WHERE step = 'mix' AND parent_step = 'lb'"))
    assert len(uses) == 3 and max(uses.values()) - min(uses.values()) <= 1  # every row used before any repeats
    pipeline = mix_pipeline(tmp_path / "capped", n_a=12, n_b=3, total=20, max_upsample=2)
    result = cli("run", pipeline)
    assert result.exit_code == 2 and "mix needs 8" in result.stderr


def test_ratio_labels_must_match_inputs(tmp_path):
    pipeline = mix_pipeline(tmp_path, ratio={"a": 0.5, "c": 0.5})
    result = cli("validate", pipeline)
    assert result.exit_code == 2
    assert "steps[2] (name: mix)" in result.stderr and "ratio labels must match inputs labels" in result.stderr


def test_ratio_override_from_the_command_line(tmp_path):
    pipeline = mix_pipeline(tmp_path, n_a=40, n_b=40, total=10)
    result = cli("run", pipeline, "steps.mix.ratio.a=0.8", "steps.mix.ratio.b=0.2")
    assert result.exit_code == 0, result.output
    assert per_source(store_of(pipeline)) == {"a": 8, "b": 2}
    cfg = json.loads(query(store_of(pipeline), "SELECT config FROM dm.steps WHERE name = 'mix'")[0][0])
    assert cfg["ratio"] == {"a": 0.8, "b": 0.2}


def test_size_by_uses_every_row_of_that_input_as_its_share(tmp_path):
    # b (domain) has 8 rows at 0.2: 40 in all, 32 from a (of 50)
    store = run_mix(tmp_path, n_a=50, n_b=8, ratio={"a": 0.8, "b": 0.2}, size_by="b")
    assert per_source(store) == {"a": 32, "b": 8}
    drawn = {p for (p,) in query(store, "SELECT parent_id FROM dm.edges WHERE step = 'mix' AND parent_step = 'lb'")}
    assert len(drawn) == 8  # every b row, once
    # general share 0: the domain rows alone
    assert per_source(run_mix(tmp_path / "zero", n_a=50, n_b=8, ratio={"a": 0, "b": 1}, size_by="b")) == {"b": 8}
    # a too small for its share: the usual error and what to do
    result = cli("run", mix_pipeline(tmp_path / "small", n_a=10, n_b=8, ratio={"a": 0.8, "b": 0.2}, size_by="b"))
    assert result.exit_code == 2 and "input 'a' has 10 samples but the mix needs 32" in result.stderr


@pytest.mark.parametrize("mix,message", [
    ({"size_by": "c"}, "size_by: 'c' is not an input label"),
    ({"size_by": "b", "total": 10}, "give `total` or `size_by`, not both"),
    ({"size_by": "b", "ratio": {"a": 1, "b": 0}}, "'b' has ratio 0"),
])
def test_size_by_errors_name_the_step(tmp_path, mix, message):
    result = cli("validate", mix_pipeline(tmp_path, **mix))
    assert result.exit_code == 2
    assert "steps[2] (name: mix)" in result.stderr and message in result.stderr
