"""The spec and `datamix validate`: every error names its place (file:line, steps[i] (name: x).key), exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import chat, cli, write_jsonl


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
    problems = sorted(problems)
    assert len(problems) == 3
    assert problems[0] == "p.yaml:2: modles: unknown option; the options here are: name, store, seed, vars, models, steps, executor, memory_limit, temp_directory"
    # the openai backend's options (the list grows with the backend; these are its first ones)
    assert problems[1].startswith("p.yaml:4: models.api.ray: unknown option; the options here are: path, chat_template, ")
    assert "base_url, api_key_env, max_concurrency" in problems[1] and "replicas" not in problems[1]
    assert problems[2] == ("p.yaml:5: models.local.ray.adress: unknown option; the options here are: replicas, address, "
                           "gpus_per_replica, cpus_per_replica")


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


# ---- validate checks everything a run would need, before any work (issue 14) --------------

HEAD = """\
name: t
models:
  tm: {backend: transformers, path: .datamix/models/tm, tiny: {chat_template: chatml}}
steps:
  - {name: src, kind: load, path: a.jsonl, keep_fields: [category]}
"""  # the steps below start at line 6


@pytest.mark.parametrize("steps, place, message", [
    # columns: from the upstream steps' declared outputs
    ("""\
  - {name: g, kind: generate, input: src, models: [tm]}
  - {name: sc, kind: judge, input: g, judges: [tm], scorer: reward_model}
  - {name: best, kind: select, input: sc, group_by: instruction}
""", "p.yaml:8: steps[3] (name: best).group_by", "input 'sc' has no column 'instruction' (its columns: candidate_id,"),
    ("""\
  - {name: f, kind: filter, input: src, rules: [{rule: length, min: 1}, {rule: regex, field: answer, exclude: x}]}
""", "p.yaml:6: steps[1] (name: f).rules[1].field", "unknown field 'answer': input 'src' has no such column"),
    ("""\
  - {name: d, kind: dedup, input: src, keep: highest, keep_column: score}
""", "p.yaml:6: steps[1] (name: d).keep_column", "input 'src' has no column 'score' (its columns: category, messages"),
    ("""\
  - {name: d, kind: dedup, input: src, reference: src, reference_field: question}
""", "p.yaml:6: steps[1] (name: d).reference_field", "unknown field 'question'"),
    ("""\
  - {name: m, kind: mix, inputs: {a: src}, ratio: {a: 1}}
  - {name: f, kind: filter, input: m, rules: [{rule: length, field: category, min: 1}]}
  - {name: e, kind: export, input: f, fields: [category, source, nope]}
""", "p.yaml:8: steps[3] (name: e).fields[2]", "input 'f' has no column 'nope'"),
    ("""\
  - {name: e, kind: export, input: src}
  - {name: tr, kind: train, input: e, model: tm}
""", "p.yaml:7: steps[2] (name: tr).input", "no column 'folder' (its columns: file, row, sample_id); train on an export "
                                              "step with format: shards"),
    ("""\
  - {name: e, kind: export, input: src}
  - {name: d, kind: dedup, input: e, fields: [response]}
""", "p.yaml:7: steps[2] (name: d).fields[0]", "the field 'response' is read from `messages`, and input 'e' has no "
                                                "messages column (its columns: file, row, sample_id)"),
    # paths, tokenizers, models and templates
    ("""\
  - {name: d, kind: dedup, input: src, method: semantic, model: ./st-model, threshold: 0.9}
""", "p.yaml:6: steps[1] (name: d).model", "./st-model does not exist"),
    ("""\
  - {name: sh, kind: export, input: src, format: shards, shards: {tokenizer: /nonexistent, seq_len: 64}}
""", "p.yaml:6: steps[1] (name: sh).shards.tokenizer", "/nonexistent is neither a model under `models:` (tm) nor a folder"),
    ("""\
  - {name: sh, kind: export, input: src, format: shards, shards: {tokenizer: tm, seq_len: 64, chat_template: t/x.jinja}}
""", "p.yaml:6: steps[1] (name: sh).shards.chat_template", "no template file"),
    ("""\
  - {name: f, kind: filter, input: src, rules: [{rule: length, unit: tokens, min: 1, tokenizer: ./tok/missing}]}
""", "p.yaml:6: steps[1] (name: f).rules[0].tokenizer", "./tok/missing is neither a model"),
    ("""\
  - {name: m, kind: mix, inputs: {a: src}, ratio: {a: 1}, unit: tokens, tokenizer: ./no-tokenizer}
""", "p.yaml:6: steps[1] (name: m).tokenizer", "./no-tokenizer is neither a model"),
    ("""\
  - {name: tr, kind: train, shards: ., model: ./checkpoints/none}
""", "p.yaml:6: steps[1] (name: tr).model", "./checkpoints/none is neither a model"),
    # bad values that pydantic lets through
    ("""\
  - {name: m, kind: mix, inputs: {a: src, b: src}, ratio: {a: .nan, b: 1}}
""", "p.yaml:6: steps[1] (name: m).ratio.a", "must be a finite number, got nan"),
    ("""\
  - {name: b, kind: select, input: src, group_by: category, score: category, min_score: .inf}
""", "p.yaml:6: steps[1] (name: b).min_score", "must be a finite number, got inf"),
    ("""\
  - {name: g, kind: generate, input: src, models: [tm], n: true}
""", "p.yaml:6: steps[1] (name: g).n", "expected a number, got true"),
    ("""\
  - {name: m, kind: mix, inputs: {a: src}, ratio: {a: 1}, total: yes}
""", "p.yaml:6: steps[1] (name: m).total", "expected a number, got true"),
    ("""\
  - {name: tr, kind: train, shards: out, model: tm, options: {max_steps: true}}
""", "p.yaml:6: steps[1] (name: tr).options", "train option max_steps: expected a number, got True"),
    ("""\
  - {name: tr, kind: train, shards: out, model: tm, options: {lr: .inf}}
""", "p.yaml:6: steps[1] (name: tr).options", "train option lr: must be a finite number"),
    # names that would become paths or break SQL
    ("""\
  - {name: "", kind: export, input: src}
""", "p.yaml:6: steps[1].name", "'' is not a valid name: start with a letter"),
    ("""\
  - {name: ../../../escaped, kind: export, input: src}
""", "p.yaml:6: steps[1] (name: ../../../escaped).name", "'../../../escaped' is not a valid name"),
    ("""\
  - {name: out/data, kind: export, input: src}
""", "p.yaml:6: steps[1] (name: out/data).name", "is not a valid name"),
    (f"""\
  - {{name: {'x' * 65}, kind: export, input: src}}
""", f"p.yaml:6: steps[1] (name: {'x' * 65}).name", "at most 64 characters"),
    ("""\
  - {name: m, kind: mix, inputs: {"it's": src}, ratio: {"it's": 1}}
""", "p.yaml:6: steps[1] (name: m).inputs.it's", "\"it's\" is not a valid name"),
    # an unknown option of the shard writer, at its place
    ("""\
  - {name: sh, kind: export, input: src, format: shards, shards: {tokenizer: tm, seq_len: 64, colour: red}}
""", "p.yaml:6: steps[1] (name: sh).shards.colour", "unknown option; the options here are: tokenizer, chat_template, seq_len"),
    # duplicate keys: YAML keeps the last one silently
    ("""\
  - name: e
    kind: export
    input: src
    format: jsonl
    format: parquet
""", "p.yaml:10: steps[1] (name: e).format", "duplicate key (first at line 9)"),
])
def test_validate_names_the_place_of_every_problem_before_any_work(tmp_path, steps, place, message):
    result, problems = validate(tmp_path, HEAD + steps)
    assert result.exit_code == 2, result.output
    assert len(problems) == 1, problems
    assert problems[0].startswith(place + ": "), problems[0]
    assert message in problems[0], problems[0]


@pytest.mark.parametrize("models, place, message", [
    ("  other: {backend: transformers, path: ./models/other}\n", "p.yaml:3: models.other.path",
     "./models/other does not exist"),
    ("  other: {backend: vllm, path: /no/such/model}\n", "p.yaml:3: models.other.path", "/no/such/model does not exist"),
    ("  other: {backend: transformers, path: m, tiny: {chat_template: my-template.jinja}}\n",
     "p.yaml:3: models.other.tiny.chat_template", "no template file"),
    ("  other: {backend: transformers, path: m, tiny: {}, chat_template: tpl/x.jinja}\n",
     "p.yaml:3: models.other.chat_template", "no template file"),
    ("  other: {backend: transformers, path: m, tiny: {chat_template: no-such-family}}\n",
     "p.yaml:3: models.other.tiny.chat_template", "no bundled template named 'no-such-family' (bundled: alpaca,"),
    ("  other: {backend: openai, path: gpt-x, tokenizer: ./tok}\n", "p.yaml:3: models.other.tokenizer",
     "./tok does not exist"),
])
def test_model_folders_and_templates_must_exist(tmp_path, models, place, message):
    result, problems = validate(tmp_path, "name: t\nmodels:\n" + models + "steps: [{name: src, kind: load, path: a.jsonl}]\n")
    assert result.exit_code == 2, result.output
    assert len(problems) == 1 and problems[0].startswith(place + ": ") and message in problems[0], problems


@pytest.mark.parametrize("tokenizer", [
    "tm",  # a model under `models:` (built before the shards step if it is a tiny one)
    ".datamix/models/tm",  # the folder of a declared tiny model that is not built yet
    "Qwen/Qwen2.5-7B-Instruct",  # a hub id, from the local cache
    "tok",  # a folder beside the YAML
])
def test_tokenizers_that_will_be_there_pass(tmp_path, tokenizer):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tpl.jinja").write_text("{{ messages }}")
    result, problems = validate(tmp_path, HEAD + f"""\
  - {{name: sh, kind: export, input: src, format: shards, shards: {{tokenizer: {tokenizer}, seq_len: 64}}}}
  - {{name: s2, kind: export, input: src, format: shards, shards: {{tokenizer: {tokenizer}, chat_template: tpl.jinja}}}}
  - {{name: s3, kind: export, input: src, format: shards, shards: {{tokenizer: {tokenizer}, chat_template: llama-3}}}}
  - {{name: tr, kind: train, input: sh, model: tm, options: {{max_steps: 2, lr: "1e-3"}}}}
""")
    assert result.exit_code == 0, problems


def test_a_local_looking_path_is_not_taken_for_a_hub_id(tmp_path):
    (tmp_path / "models").mkdir()
    result, problems = validate(tmp_path, HEAD + """\
  - {name: sh, kind: export, input: src, format: shards, shards: {tokenizer: models/tok, seq_len: 64}}
""")
    assert result.exit_code == 2 and "models/tok is neither a model" in problems[0], problems


def test_schema_graph_file_and_column_problems_come_in_one_report(tmp_path):
    result, problems = validate(tmp_path, """\
        name: t
        steps:
          - {name: src, kind: load, path: a.jsonl, colour: red}
          - {name: gone, kind: load, path: missing.jsonl}
          - {name: f, kind: filter, input: sorce, rules: [{rule: sql, where: "true"}]}
          - {name: b, kind: select, input: gone, group_by: instruction}
          - {name: m, kind: mix, inputs: {a: gone}, ratio: {a: 1}, total: 0}
    """)
    assert result.exit_code == 2
    places = [
        "p.yaml:3: steps[0] (name: src).colour",
        "p.yaml:4: steps[1] (name: gone).path",
        "p.yaml:5: steps[2] (name: f).input",
        "p.yaml:6: steps[3] (name: b).group_by",
        "p.yaml:6: steps[3] (name: b).score",
        "p.yaml:7: steps[4] (name: m).total",
    ]
    assert len(problems) == len(places), problems
    assert all(p.startswith(place + ": ") for p, place in zip(problems, places)), problems
    assert "no step named 'sorce'" in problems[2]


def test_deep_nesting_is_refused_with_its_line(tmp_path):
    deep = "[" * 200 + "]" * 200
    result, problems = validate(tmp_path, f"name: t\nvars:\n  x: {deep}\nsteps: [{{name: src, kind: load, path: a.jsonl}}]\n")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert problems == ["p.yaml:3: not valid YAML: nested deeper than 32 levels; a pipeline is a few levels deep"]
    for override in (f"steps.src.limit={deep}", "steps.src." + ".".join(["a"] * 2000) + "=1"):
        result, problems = validate(tmp_path, "name: t\nsteps: [{name: src, kind: load, path: a.jsonl}]\n", override)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert len(problems) == 1 and problems[0].startswith(("p.yaml:2: steps[0] (name: src).limit:", "override ")), problems


def test_aliases_that_expand_exponentially_are_refused(tmp_path):
    laughs = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
    result, problems = validate(tmp_path, f"name: t\nvars:\n  l0: &l0 lol\n{laughs}steps: [{{name: src, kind: load, path: a.jsonl}}]\n")
    assert result.exit_code == 2
    assert problems == ["p.yaml: the YAML expands to more than 100,000 values (through aliases *name); a pipeline is far smaller"]


OVERRIDES = """\
    name: t
    vars: {n: 3}
    steps:
      - {name: src, kind: load, path: a.jsonl, limit: "${n}", keep_fields: ["${col}"]}
      - {name: f, kind: filter, input: src, rules: [{rule: length, min: 1}, {rule: length, min: 1, max: 3}]}
"""


def test_overrides_index_lists_and_address_steps_by_name_or_index(tmp_path):
    from datamix import spec

    validate(tmp_path, OVERRIDES)
    p = spec.load(str(tmp_path / "p.yaml"), ["col=x", "steps.f.rules.1.max=500", "steps.1.rules.0.min=2", "n=4"])
    assert [(r.min, r.max) for r in p.step("f").rules] == [(2, None), (1, 500)]
    assert p.step("src").limit == 4 and p.step("src").keep_fields == ["x"]  # ${col}: used, so it may be set


@pytest.mark.parametrize("override, message", [
    ("nosuch=1", "override nosuch: no variable 'nosuch' under `vars:` (declared: n, col) and no ${nosuch} in the pipeline"),
    ("=1", "override '': empty name in the key"),
    ("steps..min=1", "override 'steps..min': empty name in the key"),
    ("steps.f.rules.2.max=5", "override steps.f.rules.2.max: steps.f.rules is a list of 2; '2' is not one of its "
                              "indexes (0 to 1)"),
    ("steps.f.rules.first.max=5", "'first' is not one of its indexes"),
    ("steps.f.rules.0.min.x=5", "override steps.f.rules.0.min.x: steps.f.rules.0.min is 1, not a mapping or a list"),
])
def test_overrides_of_nothing_are_refused(tmp_path, override, message):
    result, problems = validate(tmp_path, OVERRIDES, "col=x", override)
    assert result.exit_code == 2
    assert len(problems) == 1 and message in problems[0], problems


def test_validate_plan_and_status_import_no_torch(tmp_path):
    """Validating a pipeline with a train step must not import torch or transformers (5 s)."""
    import subprocess
    import sys

    validate(tmp_path, HEAD + """\
  - {name: sh, kind: export, input: src, format: shards, shards: {tokenizer: tm, seq_len: 64}}
  - {name: tr, kind: train, input: sh, model: tm, options: {max_steps: 2}}
""")
    script = textwrap.dedent(f"""\
        import sys
        from datamix.cli import main
        for args in (["validate"], ["plan"], ["status"]):
            try:
                main(args + [{str(tmp_path / "p.yaml")!r}])
            except SystemExit as e:
                assert e.code in (0, None), (args, e.code)
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # the check can fail: importing the recipe (what validation did) pulls torch in
    out = subprocess.run([sys.executable, "-c", "import sys, datamix.train.recipe; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True"


def test_train_shards_folder_exists_or_is_written_by_an_export_step(tmp_path):
    steps = HEAD + """\
  - {name: sh, kind: export, input: src, format: shards, path: out/shards, shards: {tokenizer: tm, seq_len: 64}}
  - {name: tr, kind: train, model: tm, shards: SHARDS}
"""
    result, problems = validate(tmp_path, steps.replace("SHARDS", "out/shards"))
    assert result.exit_code == 0, problems
    result, problems = validate(tmp_path, steps.replace("SHARDS", "out/shard"))
    assert result.exit_code == 2
    assert problems == [f"p.yaml:7: steps[2] (name: tr).shards: out/shard does not exist (looked for {tmp_path}/out/shard) "
                        "and no export step with format: shards writes it; or train on the export step with `input:`"]


@pytest.mark.parametrize("where, message", [
    ("len(messages >= 2", "invalid predicate 'len(messages >= 2': Parser Error"),
    ("true), false) AS ok FROM sample; COPY (SELECT 1) TO 'x.csv'; SELECT ((true",
     "write one condition over the sample's columns"),
])
def test_sql_rules_are_parsed_at_validate_time(tmp_path, where, message):
    text = HEAD + "  - {name: f, kind: filter, input: src, rules: [{rule: sql, where: WHERE}]}\n"
    result, problems = validate(tmp_path, text.replace("WHERE", '"' + where + '"'))
    assert result.exit_code == 2
    assert len(problems) == 1 and problems[0].startswith("p.yaml:6: steps[1] (name: f).rules[0].where: "), problems
    assert message in problems[0]
    assert not (tmp_path / "x.csv").exists()


def test_a_judge_prompt_file_needs_both_placeholders(tmp_path):
    (tmp_path / "rubric.txt").write_text("Rate this: {response}")
    result, problems = validate(tmp_path, HEAD + """\
  - {name: sc, kind: judge, input: src, judges: [tm], prompt_file: rubric.txt}
""")
    assert result.exit_code == 2
    assert problems == [f"p.yaml:6: steps[1] (name: sc).prompt_file: {tmp_path}/rubric.txt lacks {{instruction}}; "
                        "put both placeholders where the texts go"]


@pytest.mark.parametrize("path, place, message", [
    ("data.txt", "steps[1] (name: l).format", "cannot tell the format of data.txt from its extension; set `format:`"),
    ("empty", "steps[1] (name: l).path", "has no .csv, .json, .jsonl, .ndjson, .parquet file"),
])
def test_load_files_are_checked_at_validate_time(tmp_path, path, place, message):
    (tmp_path / "data.txt").write_text("{}\n")
    (tmp_path / "empty").mkdir()
    result, problems = validate(tmp_path, HEAD + f"  - {{name: l, kind: load, path: {path}}}\n")
    assert result.exit_code == 2 and len(problems) == 1, problems
    assert problems[0].startswith(f"p.yaml:6: {place}: ") and message in problems[0], problems
    result, problems = validate(tmp_path, HEAD + "  - {name: l, kind: load, path: data.txt, format: jsonl}\n")
    assert result.exit_code == 0, problems


def test_a_dedup_reference_file_must_be_readable(tmp_path):
    (tmp_path / "bench.txt").write_text("{}\n")
    result, problems = validate(tmp_path, HEAD + "  - {name: d, kind: dedup, input: src, reference: bench.txt}\n")
    assert result.exit_code == 2
    assert problems == ["p.yaml:6: steps[1] (name: d).reference: cannot tell the format of bench.txt from its "
                        "extension: use .jsonl, .json, .parquet or .csv"]


def test_a_bad_option_does_not_hide_the_files_of_the_same_step(tmp_path):
    result, problems = validate(tmp_path, HEAD + """\
  - {name: sh, kind: export, input: src, format: shards, shards: {tokenizer: /nonexistent, seq_len: 64, colour: red}}
  - {name: d, kind: dedup, input: src, method: minhash, threshold: 2, reference: bench/none.jsonl}
  - {name: ex, kind: export, input: src, format: shard}
  - {name: tr, kind: train, input: sh, model: tm, options: {lr: x}}
""")
    assert result.exit_code == 2
    assert [p.split(": ")[0] + ": " + p.split(": ")[1].split(" ")[0] for p in problems] == [
        "p.yaml:6: steps[1]", "p.yaml:6: steps[1]", "p.yaml:7: steps[2]", "p.yaml:7: steps[2]", "p.yaml:8: steps[3]",
        "p.yaml:9: steps[4]"]
    assert "(name: sh).shards.colour: unknown option" in problems[0]
    assert "(name: sh).shards.tokenizer: /nonexistent is neither a model" in problems[1]
    assert "(name: d).threshold: must be between 0 and 1" in problems[2]
    assert "(name: d).reference: bench/none.jsonl does not exist" in problems[3]
    assert "(name: ex).format:" in problems[4] and "(name: tr).options: train option lr" in problems[5]


LOADED_KINDS = """
import sys
from datamix.spec import load
pipeline = load(sys.argv[1])
print(" ".join(s.kind for s in pipeline.steps))
print(" ".join(sorted(m.rpartition(".")[2] for m in sys.modules if m.startswith("datamix.steps.") and m != "datamix.steps.base")))
"""


def test_a_pipeline_imports_the_step_modules_of_its_own_kinds_only(tmp_path):
    """In a fresh process: a load -> dedup pipeline imports steps/load.py and steps/dedup.py, not
    export, evaluate, train, ... (their imports were ~55 ms of every run); the kind given by a var
    is the one loaded."""
    write_jsonl(tmp_path / "a.jsonl", [chat("q?", "a")])
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""\
        name: lazy
        vars: {how: dedup}
        steps:
          - {name: src, kind: load, path: a.jsonl}
          - {name: d, kind: "${how}", input: src, method: exact}
    """))
    out = subprocess.run([sys.executable, "-c", LOADED_KINDS, str(tmp_path / "p.yaml")], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    kinds, modules = out.stdout.splitlines()
    assert kinds == "load dedup"
    assert modules == "dedup load"


def test_an_unknown_kind_still_lists_every_kind(tmp_path):
    """The kinds a pipeline does not use are not imported, yet the message names them all."""
    result, problems = validate(tmp_path, HEAD + "  - {name: x, kind: exprot, input: src}\n")
    assert result.exit_code == 2
    assert problems[0].startswith("p.yaml:6: steps[1] (name: x).kind: unknown kind 'exprot'; known kinds: ")
    known = problems[0].split("known kinds: ")[1].split(", ")
    assert {"dedup", "evaluate", "export", "filter", "generate", "judge", "load", "map", "mix", "reconstruct",
            "report", "select", "train"} <= set(known)
    assert known == sorted(known) and "base" not in known
