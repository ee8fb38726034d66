"""Pre-query templates derived from real chat templates.

Every expected string below was written by hand from reading the template text
(src/datamix/chat_templates/*.jinja, or the upstream template quoted here), not
copied from the code's output.
"""

from __future__ import annotations

import pytest

from datamix.chat_templates import bos_token_for, eos_token_for, load_chat_template
from datamix.templates import (
    SENTINEL,
    TemplateError,
    _render_with_jinja,
    derive_pre_query_template,
    render_chat_template,
)

QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# name -> (pre-query without system prompt, with system prompt "Be brief.", end-of-turn marker)
EXPECTED = {
    # bos_token, then '<|im_start|>' + role + '\n' + content
    "chatml": ("<s><|im_start|>user\n", "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n", "<|im_end|>"),
    # no BOS in the family; the template writes its default system turn when messages[0] is not system
    "qwen2.5-instruct": (
        f"<|im_start|>system\n{QWEN_DEFAULT}<|im_end|>\n<|im_start|>user\n",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n",
        "<|im_end|>",
    ),
    "llama-3-instruct": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|>",
    ),
    # this Gemma template renders no bos_token and folds the system prompt into the first user turn + '\n\n'
    "gemma-it": ("<start_of_turn>user\n", "<start_of_turn>user\nBe brief.\n\n", "<end_of_turn>"),
    # bos_token + system_message ('Be brief.' + '\n\n') before the first '[INST] '
    "mistral-instruct": ("<s>[INST] ", "<s>Be brief.\n\n[INST] ", "[/INST]"),
    # no bos_token in this template; '<|' + role + '|>\n'
    "phi-3": ("<|user|>\n", "<|system|>\nBe brief.<|end|>\n<|user|>\n", "<|end|>"),
    "vicuna": ("<s>USER: ", "<s>Be brief.\n\nUSER: ", "ASSISTANT:"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_templates_without_system_prompt(name):
    plain, _, end_of_turn = EXPECTED[name]
    pq = derive_pre_query_template(chat_template=load_chat_template(name), bos_token=bos_token_for(name), eos_token=eos_token_for(name))
    assert pq.text == plain
    assert pq.end_of_turn == end_of_turn
    assert pq.system_prompt_used == (QWEN_DEFAULT if name == "qwen2.5-instruct" else None)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_templates_with_system_prompt(name):
    _, with_system, _ = EXPECTED[name]
    pq = derive_pre_query_template(
        chat_template=load_chat_template(name), bos_token=bos_token_for(name), eos_token=eos_token_for(name), system_prompt="Be brief."
    )
    assert pq.text == with_system
    assert pq.system_prompt_used == "Be brief."


# google/gemma-2-*-it's own template: BOS, and it RAISES on a system message.
GEMMA_UPSTREAM = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# mistralai/Mistral-7B-Instruct-v0.1's template: raises on any role but user/assistant.
MISTRAL_V01_UPSTREAM = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def test_template_raising_on_system_role_gets_it_folded_into_the_user_turn():
    plain = derive_pre_query_template(chat_template=GEMMA_UPSTREAM, bos_token="<bos>")
    assert plain.text == "<bos><start_of_turn>user\n"
    assert plain.system_prompt_used is None
    folded = derive_pre_query_template(chat_template=GEMMA_UPSTREAM, bos_token="<bos>", system_prompt="Be brief.")
    assert folded.text == "<bos><start_of_turn>user\nBe brief.\n\n"
    assert "System role not supported" in folded.note


def test_template_raising_on_unexpected_roles():
    assert derive_pre_query_template(chat_template=MISTRAL_V01_UPSTREAM, bos_token="<s>").text == "<s>[INST] "
    folded = derive_pre_query_template(chat_template=MISTRAL_V01_UPSTREAM, bos_token="<s>", system_prompt="Answer in French.")
    assert folded.text == "<s>[INST] Answer in French.\n\n"
    assert folded.end_of_turn == "[/INST]"


def test_template_that_drops_the_user_message_is_an_actionable_error():
    with pytest.raises(TemplateError, match="pre_query_template"):
        derive_pre_query_template(chat_template="{% for m in messages %}<turn>{% endfor %}")


def test_no_template_at_all_is_an_actionable_error():
    with pytest.raises(TemplateError, match="chat_template"):
        derive_pre_query_template(chat_template=None)


def test_template_failing_on_a_user_message_reports_its_own_message():
    with pytest.raises(TemplateError, match="nope"):
        derive_pre_query_template(chat_template="{{ raise_exception('nope') }}")


def test_tokenizer_supplies_template_and_bos():
    class FakeTokenizer:  # the three attributes derive_pre_query_template reads
        chat_template = load_chat_template("llama-3-instruct")
        bos_token = "<|begin_of_text|>"
        eos_token = "<|eot_id|>"

    assert derive_pre_query_template(FakeTokenizer()).text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    # an explicit template wins over the tokenizer's
    assert derive_pre_query_template(FakeTokenizer(), chat_template=load_chat_template("phi-3")).text == "<|user|>\n"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fallback_renderer_matches_transformers(name):
    template = load_chat_template(name)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": SENTINEL}]
    extra = {"bos_token": "<s>", "eos_token": "</s>"}
    ours = _render_with_jinja(template, messages, True, extra)
    assert ours == render_chat_template(template, messages, add_generation_prompt=True, **extra)


def test_a_pretty_printed_template_is_warned_about():
    # issue 14: a pretty-printed .jinja file gave a pre-query template full of whitespace, silently
    pretty = (
        "{% for message in messages %}\n"
        "    {{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n    {{ '<|im_start|>assistant\\n' }}\n{% endif %}"
    )
    pq = derive_pre_query_template(chat_template=pretty)
    assert pq.text == "    <|im_start|>user\n"  # jinja's trim of the first newline leaves the indentation
    assert "runs of whitespace" in pq.note and "flatten" in pq.note
    flat = derive_pre_query_template(chat_template=pretty.replace("    ", "").replace("\n", "").replace("'\\n", "'\\n"))
    assert "whitespace" not in flat.note


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_templates_carry_no_whitespace_warning(name):
    pq = derive_pre_query_template(chat_template=load_chat_template(name), bos_token=bos_token_for(name), eos_token=eos_token_for(name))
    assert "whitespace" not in pq.note
