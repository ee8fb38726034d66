"""The spec and `datamix validate`: every error names its place (file:line, steps[i] (name: x).key), exit 2."""

from __future__ import annotations

import re
import textwrap

import pytest

from .helpers import chat, cli, write_jsonl


def validate(tmp_path, text: str, *overrides: str):
    write_jsonl(tmp_path / "a.jsonl", [chat("q?", "a")])
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    result = cli("validate", path, *overrides)
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    return result, [p.replace(f"{path}:", "p.yaml:") for p in problems]


MANY_ERRORS = """\
    name: bad
    steps:
      - name: src
        kind: load
        path: a.jsonl
        colour: red
      - name: f
        kind: filtre
        input: src
      - name: g
        kind: filter
        input: src
        rules: [{rule: length, min: -1}]
      - name: dedup
        kind: dedup
        input: src
        method: minhash
        threshold: 1.5
      - name: m
        kind: mix
        inputs: {a: src}
        ratio: {a: many}
"""


def test_all_errors_at_once_each_with_file_line_and_yaml_path(tmp_path):
    result, problems = validate(tmp_path, MANY_ERRORS)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].endswith("5 problem(s):")
    assert [list(re.match(r"(p\.yaml:\d+): (steps\[\d\] \(name: \w+\)[^:]*): ", p).groups()) for p in problems] == [
        ["p.yaml:6", "steps[0] (name: src).colour"],
        ["p.yaml:8", "steps[1] (name: f).kind"],
        ["p.yaml:13", "steps[2] (name: g).rules[0].min"],
        ["p.yaml:18", "steps[3] (name: dedup).threshold"],
        ["p.yaml:22", "steps[4] (name: m).ratio.a"],
    ]
    assert "unknown option" in problems[0]
    assert "unknown kind 'filtre'" in problems[1] and "filter" in problems[1]
    assert "greater than or equal to 0" in problems[2]
    assert "1" in problems[3].split("threshold:")[1]  # the bound the user must respect
    assert "valid number" in problems[4]


def test_method_options_are_checked_against_the_method(tmp_path):
    result, problems = validate(tmp_path, """\
        name: t
        steps:
          - {name: src, kind: load, path: a.jsonl}
          - {name: dd, kind: dedup, input: src, method: exact, threshold: 0.5}
          - {name: d2, kind: dedup, input: src, method: fuzzy}
    """)
    assert result.exit_code == 2
    assert problems[0].startswith("p.yaml:4: steps[1] (name: dd).threshold: unknown option")
    assert problems[1].startswith("p.yaml:5: steps[2] (name: d2)") and "'fuzzy'" in problems[1]


def test_unknown_keys_of_the_pipeline_and_of_models_list_the_options_there(tmp_path):
    result, problems = validate(tmp_path, """\
        name: t
        modles: {}
        models:
          api: {backend: openai, path: x, ray: {replicas: 2}}
          local: {backend: transformers, path: x, ray: {replicas: 2, adress: auto}}
        steps:
          - {name: src, kind: load, path: a.jsonl}
    """)
    assert result.exit_code == 2
    assert sorted(problems) == [
        "p.yaml:2: modles: unknown option; the options here are: name, store, seed, vars, models, steps",
        "p.yaml:4: models.api.ray: unknown option; the options here are: path, chat_template, base_url, "
        "api_key_env, max_concurrency, timeout_s, max_retries, tokenizer",
        "p.yaml:5: models.local.ray.adress: unknown option; the options here are: replicas, address, "
        "gpus_per_replica, cpus_per_replica",
    ]


def test_inputs_naming_no_step_missing_files_and_duplicate_names(tmp_path):
    result, problems = validate(tmp_path, """\
        name: t
        steps:
          - {name: src, kind: load, path: a.jsonl}
          - {name: gone, kind: load, path: data/missing.jsonl}
          - name: f
            kind: filter
            input: sorce
            rules: [{rule: sql, where: "true"}]
          - {name: m, kind: mix, inputs: {x: src, y: nothing}, ratio: {x: 1, y: 1}}
          - {name: src, kind: export, input: m}
    """)
    assert result.exit_code == 2
    assert "p.yaml:7: steps[2] (name: f).input: no step named 'sorce' (steps: src, gone, f, m)" in problems
    assert any(p.startswith("p.yaml:9: steps[3] (name: m).inputs: no step named 'nothing'") for p in problems)
    assert any(p.startswith("p.yaml:10: steps[4].name: 'src' is already the name of steps[0]") for p in problems)


def test_file_that_does_not_exist(tmp_path):
    result, problems = validate(tmp_path, """\
        name: t
        steps:
          - {name: src, kind: load, path: a.jsonl}
          - name: gone
            kind: load
            path: data/missing.jsonl
    """)
    assert result.exit_code == 2
    assert problems == [f"p.yaml:6: steps[1] (name: gone).path: data/missing.jsonl does not exist "
                        f"(looked for {tmp_path}/data/missing.jsonl)"]


def test_cycle(tmp_path):
    result, problems = validate(tmp_path, """\
        name: t
        steps:
          - {name: src, kind: load, path: a.jsonl}
          - {name: a, kind: filter, input: b, rules: [{rule: sql, where: "true"}]}
          - {name: b, kind: filter, input: a, rules: [{rule: sql, where: "true"}]}
    """)
    assert result.exit_code == 2
    assert len(problems) == 1 and "cycle among a, b" in problems[0]


def test_invalid_yaml_and_wrong_top_level(tmp_path):
    result, problems = validate(tmp_path, "name: t\nsteps:\n  - {name: src, kind: load\n  - x\n")
    assert result.exit_code == 2
    assert problems[0].startswith("p.yaml:") and "not valid YAML" in problems[0]
    result, problems = validate(tmp_path, "name: t\n")
    assert result.exit_code == 2 and "steps: a pipeline needs a non-empty list of steps" in problems[0]
    result, problems = validate(tmp_path, "name: has spaces\nsteps: [{name: src, kind: load, path: a.jsonl}]\n")
    assert result.exit_code == 2 and problems[0].startswith("p.yaml:1: name:")


VARS = """\
    name: t
    vars: {n: 3, file: a.jsonl}
    steps:
      - {name: src, kind: load, path: "${file}", limit: "${n}"}
      - {name: m, kind: mix, inputs: {a: src}, ratio: {a: 1.0}, seed: 1}
"""


def test_vars_and_overrides(tmp_path):
    from datamix import spec

    result, problems = validate(tmp_path, VARS)
    assert result.exit_code == 0 and "ok (2 steps" in result.stdout
    p = spec.load(str(tmp_path / "p.yaml"))
    assert p.step("src").limit == 3  # "${n}" alone keeps the variable's type
    p = spec.load(str(tmp_path / "p.yaml"), ["n=5", "steps.m.seed=9", "steps.m.ratio.a=0.5"])
    assert (p.step("src").limit, p.step("m").seed, p.step("m").ratio) == (5, 9, {"a": 0.5})
    assert p.store_path() == str(tmp_path / ".datamix" / "t.duckdb")


@pytest.mark.parametrize("override, message", [
    ("steps.nosuch.seed=1", "override steps.nosuch.seed: no step named 'nosuch' (steps: src, m)"),
    ("n", "override 'n': write KEY=VALUE"),
    ("steps.m.seed=abc", "steps[1] (name: m).seed"),
    ("file=b.jsonl", "steps[0] (name: src).path: b.jsonl does not exist"),
])
def test_bad_overrides_are_reported(tmp_path, override, message):
    result, problems = validate(tmp_path, VARS, override)
    assert result.exit_code == 2
    assert any(message in p for p in problems), problems


def test_unknown_variable(tmp_path):
    result, problems = validate(tmp_path, "name: t\nsteps: [{name: src, kind: load, path: '${where}'}]\n")
    assert result.exit_code == 2
    assert any("unknown variable ${where}" in p and "where=VALUE" in p for p in problems)


def test_a_bad_option_does_not_hide_a_missing_file(tmp_path):
    result, problems = validate(tmp_path, """\
        name: t
        steps:
          - {name: src, kind: load, path: a.jsonl, colour: red}
          - {name: gone, kind: load, path: data/missing.jsonl}
    """)
    assert result.exit_code == 2
    assert any("steps[0] (name: src).colour" in p for p in problems)
    assert any("steps[1] (name: gone).path: data/missing.jsonl does not exist" in p for p in problems)
