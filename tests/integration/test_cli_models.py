"""`datamix models tiny` and `datamix template` through the CLI."""

from __future__ import annotations

import json

from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from datamix.cli import main

QWEN_PRE_QUERY = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)


def test_tiny_model_then_its_pre_query_template(tmp_path):
    path = str(tmp_path / "qwen")
    out = CliRunner().invoke(main, ["models", "tiny", path, "--arch", "qwen2", "--chat-template", "qwen2.5-instruct"])
    assert out.exit_code == 0, out.output
    assert AutoModelForCausalLM.from_pretrained(path).config.model_type == "qwen2"
    assert AutoTokenizer.from_pretrained(path).chat_template
    tpl = CliRunner().invoke(main, ["template", path, "--format", "json"])
    assert tpl.exit_code == 0, tpl.output
    assert json.loads(tpl.output) == {"pre_query_template": QWEN_PRE_QUERY}
    text = CliRunner().invoke(main, ["template", path])
    assert text.output == QWEN_PRE_QUERY


def test_unknown_chat_template_is_bad_input(tmp_path):
    out = CliRunner().invoke(main, ["models", "tiny", str(tmp_path / "m"), "--chat-template", "no-such-template"])
    assert out.exit_code == 2
    assert "no-such-template" in out.output


def test_tiny_model_with_a_size_and_tokenizer_data(tmp_path):
    from transformers import AutoConfig

    a, b = tmp_path / "a.jsonl", tmp_path / "b.txt"
    a.write_text(json.dumps({"prompt": "Quantify the glorbnak.", "response": "Glorbnak quantified."}) + "\n")
    b.write_text("glorbnak glorbnak\n")
    path = str(tmp_path / "m")
    out = CliRunner().invoke(main, ["models", "tiny", path, "--hidden", "32", "--layers", "3", "--heads", "2",
                                    "--vocab", "300", "--tokenizer-data", str(a), str(b)])
    assert out.exit_code == 0, out.output
    config = AutoConfig.from_pretrained(path)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 3, 2)
    assert len(AutoTokenizer.from_pretrained(path)("glorbnak", add_special_tokens=False)["input_ids"]) == 1
    stray = CliRunner().invoke(main, ["models", "tiny", str(tmp_path / "x"), str(a)])
    assert stray.exit_code == 2 and "--tokenizer-data" in stray.output
    bad = CliRunner().invoke(main, ["models", "tiny", str(tmp_path / "y"), "--hidden", "30"])
    assert bad.exit_code == 2 and "heads" in bad.output
