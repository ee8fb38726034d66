"""`datamix eval MODEL_DIR --set ...`: the evaluate step's metrics outside a pipeline, bad input refused (exit 2)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli, general_records, write_jsonl


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("adhoc")
    build_tiny_model(str(root / "model"), chat_template="chatml")
    write_jsonl(root / "chats.jsonl", general_records(5))
    write_jsonl(root / "gsm.jsonl", [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
                                     for i in range(3)])
    write_jsonl(root / "mc.jsonl", [{"question": "Pick one", "options": ["kiwi", "stone"], "answer": "0"}])
    write_jsonl(root / "mc_int.jsonl", [{"question": "Pick one", "options": ["kiwi", "stone"], "answer": 0}])
    return root


def test_eval_prints_the_metrics_of_every_set_as_json(folder):
    from datamix.eval import nll
    from datamix.eval.lm import EvalModel

    result = cli("eval", str(folder / "model"), "--set", f"chat={folder / 'chats.jsonl'}",
                 "--set", f"gsm={folder / 'gsm.jsonl'}:nll,exact_match", "--option", "gsm.prompt_field=question",
                 "--option", "gsm.response_field=answer", "--option", "gsm.preset=gsm8k", "--option", "gsm.max_tokens=4",
                 "--role", "chat=general", "--role", "gsm=domain", "--format", "json", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["set"], r["role"], r["metric"], r["n"]) for r in rows] == [
        ("chat", "general", "nll", 5), ("chat", "general", "bpb", 5),
        ("gsm", "domain", "nll", 3), ("gsm", "domain", "bpb", 3), ("gsm", "domain", "exact_match", 3)]
    # the same value the evaluate step's metric gives on the same chats
    chats = [r["messages"] for r in general_records(5)]
    expected = nll.evaluate(EvalModel("m", str(folder / "model")), chats)[0].value
    assert rows[0]["value"] == pytest.approx(expected, abs=1e-6)


def test_eval_choice_as_csv(folder):
    result = cli("eval", str(folder / "model"), "--set", f"mc={folder / 'mc.jsonl'}:choice",
                 "--option", "mc.prompt_field=question", "--option", "mc.response_field=answer", "--format", "csv",
                 "--dtype", "float32")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "model,model_path,set,role,metric,value,n,stderr,ci_low,ci_high,higher_is_better"
    assert [line.split(",")[4] for line in lines[1:]] == ["acc", "acc_norm"]


@pytest.mark.parametrize("args, message", [
    (["--set", "x={folder}/nope.jsonl"], "--set x: {folder}/nope.jsonl matches no file"),
    (["--set", "g={folder}/gsm.jsonl:choice", "--option", "g.prompt_field=question", "--option",
      "g.response_field=answer"], "--set g: choice: {folder}/gsm.jsonl:1: field 'options' is missing"),
    (["--set", "m={folder}/mc_int.jsonl:choice", "--option", "m.prompt_field=question", "--option",
      "m.response_field=answer"], 'mc_int.jsonl:1: answer is a number, not a string (write it as a string, e.g. "2")'),
    (["--set", "c={folder}/chats.jsonl:judge_winrate"], "metric judge_winrate needs judge models"),
    (["--set", "c={folder}/chats.jsonl", "--role", "c=both"], "set 'c'.role: Input should be 'general' or 'domain'"),
    (["--set", "c={folder}/chats.jsonl", "--option", "c.temperature=1"], "neither the set nor its metrics have an option"),
    (["--set", "c={folder}/chats.jsonl", "--role", "d=general"], "no --set named 'd'"),
    ([], "give at least one --set"),
])
def test_eval_refuses_bad_input(folder, args, message):
    result = cli("eval", str(folder / "model"), *[a.format(folder=folder) for a in args])
    assert result.exit_code == 2, result.output
    assert message.format(folder=folder) in result.output
    assert "Traceback" not in result.output
