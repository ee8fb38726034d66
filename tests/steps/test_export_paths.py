"""export (format: shards): every path in the YAML resolves beside the YAML, whatever the working folder.

`datamix run pipelines/quickstart.yaml` from the project root failed at the shards step while
`cd pipelines && datamix run quickstart.yaml` worked: the tokenizer folder was looked up in the
working folder. These runs start from another folder on purpose.
"""

from __future__ import annotations

import json

import yaml

from datamix.chat_templates import load_chat_template
from tests.helpers import cli, general_records, write_jsonl


def _project(tmp_path):
    """A pipeline in tmp_path/proj whose tiny model, template and data live beside it; nothing built yet."""
    proj = tmp_path / "proj"
    write_jsonl(proj / "data" / "d.jsonl", general_records(6))
    (proj / "tpl").mkdir()
    (proj / "tpl" / "chat.jinja").write_text(load_chat_template("chatml"))
    spec = {
        "name": "t",
        "models": {"tm": {"backend": "transformers", "path": ".datamix/models/tm",
                          "tiny": {"chat_template": "tpl/chat.jinja", "vocab": 300, "hidden": 16, "heads": 2}}},
        "steps": [
            {"name": "src", "kind": "load", "path": "data/d.jsonl"},
            # a token count with the tiny model's folder: built first, found beside the YAML
            {"name": "f", "kind": "filter", "input": "src",
             "rules": [{"rule": "length", "unit": "tokens", "min": 1, "tokenizer": ".datamix/models/tm"}]},
            # the tokenizer by model name: its folder and its declared template
            {"name": "sh", "kind": "export", "input": "f", "format": "shards", "shards": {"tokenizer": "tm", "seq_len": 64}},
            {"name": "sh2", "kind": "export", "input": "f", "format": "shards", "path": "out/sh2",
             "shards": {"tokenizer": ".datamix/models/tm", "chat_template": "tpl/chat.jinja", "seq_len": 64}},
        ],
    }
    (proj / "p.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return proj, elsewhere


def test_a_pipeline_runs_the_same_from_another_folder(tmp_path):
    proj, elsewhere = _project(tmp_path)
    assert cli("validate", "../proj/p.yaml", cwd=elsewhere).exit_code == 0
    result = cli("run", "-q", "../proj/p.yaml", cwd=elsewhere)
    assert result.exit_code == 0, result.output
    model = proj / ".datamix" / "models" / "tm"
    assert (model / "config.json").is_file()  # the tiny model was built beside the YAML, from its template file
    for manifest in (proj / ".datamix" / "outputs" / "sh" / "manifest.json", proj / "out" / "sh2" / "manifest.json"):
        shards = json.loads(manifest.read_text())
        assert shards["tokenizer"] == str(model) and shards["samples"] == 6
    assert list(elsewhere.iterdir()) == []  # nothing written where the command ran
    again = cli("run", "../proj/p.yaml", cwd=elsewhere)  # and a rerun from there finds everything up to date
    assert again.exit_code == 0 and "run   " not in again.stderr, again.stderr


def test_validate_from_another_folder_finds_what_is_missing_beside_the_yaml(tmp_path):
    proj, elsewhere = _project(tmp_path)
    (proj / "tpl" / "chat.jinja").unlink()
    result = cli("validate", "../proj/p.yaml", cwd=elsewhere)
    assert result.exit_code == 2
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert any("models.tm.tiny.chat_template: no template file" in p and str(proj / "tpl" / "chat.jinja") in p
               for p in problems), problems
    assert any("steps[3] (name: sh2).shards.chat_template: no template file" in p for p in problems), problems
