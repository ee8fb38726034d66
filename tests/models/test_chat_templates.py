"""The bundled chat templates load flat, render like the real models, and know their family's BOS."""

import jinja2
import pytest

from datamix.chat_templates import (
    bos_token_for,
    bundled_template_names,
    eos_token_for,
    load_chat_template,
)

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def render(template: str, messages, add_generation_prompt=False, bos="<s>", eos="</s>") -> str:
    env = jinja2.Environment()

    def raise_exception(msg):
        raise ValueError(msg)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
    )


def test_all_upstream_templates_are_bundled():
    names = bundled_template_names()
    assert len(names) == 18
    for name in ("chatml", "qwen2.5-instruct", "llama-3-instruct", "gemma-it", "mistral-instruct", "phi-3", "vicuna"):
        assert name in names


@pytest.mark.parametrize("name", bundled_template_names())
def test_every_template_is_flat_and_renders(name):
    text = load_chat_template(name)
    if name != "qwen2.5-instruct":
        # pretty-printing removed: no real newline and no 4-space indentation left
        assert "\n" not in text and "    " not in text
    out = render(text, CHAT, add_generation_prompt=True)
    assert "Hi" in out and "Hello" in out


def test_known_renderings():
    assert render(load_chat_template("chatml"), CHAT[:1], True, bos="<s>") == (
        "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(load_chat_template("llama-3"), CHAT[:1], True, bos="<|begin_of_text|>") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Qwen2.5 inserts its default system prompt
    assert render(load_chat_template("qwen2.5-instruct"), CHAT[:1], True) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_file_path_and_family_tokens(tmp_path):
    p = tmp_path / "mine.jinja"
    p.write_text("{{ messages[0]['content'] }}")
    assert load_chat_template(str(p)) == "{{ messages[0]['content'] }}"
    assert bos_token_for("llama-3-instruct") == "<|begin_of_text|>"
    assert bos_token_for("mistral-instruct") == "<s>"
    assert bos_token_for("gemma-it") == "<bos>"
    assert bos_token_for("qwen2.5-instruct") is None
    assert bos_token_for(str(tmp_path / "vicuna.jinja")) == "<s>"
    assert eos_token_for("llama-3") == "<|eot_id|>"
    assert eos_token_for("chatml") == "<|im_end|>"
    assert bos_token_for(str(p)) is None


def test_unknown_name_says_what_exists():
    with pytest.raises(FileNotFoundError, match="Bundled: .*chatml"):
        load_chat_template("no-such-template")
