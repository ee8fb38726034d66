"""Pre-query templates: the chat-template prefix that opens a user turn.

Fed only this prefix, an aligned model writes a user message: a draw from the
instructions it was tuned on (Magpie). We derive the prefix from the model's own
chat template instead of hard-coding it per family: render a conversation whose
user message is a sentinel and cut right before the sentinel. Whatever the
template puts in front of a user message (BOS, a default system prompt, a
folded system prompt, role headers) is then exactly what the model saw in
training.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# Plain letters and digits: templates `trim`, `strip` or otherwise touch the
# content, and a sentinel with whitespace or markup could be altered.
SENTINEL = "DATAMIXQUERYSENTINEL7f3a9c"
SYSTEM_SENTINEL = "DATAMIXSYSTEMSENTINEL51e0b2"

# A leading special token in the text after a user message: <|im_end|>, <|eot_id|>,
# <end_of_turn>, [/INST], </s>.
_SPECIAL_TOKEN = re.compile(r"^\s*(<[^<>\s]{1,40}>|\[/?[A-Z_]{2,20}\])")


@dataclasses.dataclass(frozen=True)
class PreQuery:
    text: str  # the prefix to feed the model, byte-exact
    system_prompt_used: str | None  # the system prompt in `text` (the given one, or the template's default)
    note: str = ""  # how it was derived when it was not the plain path (fallbacks), for logs
    # What the template writes right after a user message (its end-of-turn marker),
    # e.g. "<|im_end|>", "<|eot_id|>", "[/INST]": a stop string for instruction sampling.
    end_of_turn: str | None = None


class TemplateError(ValueError):
    """The chat template cannot give a pre-query template; the message says why and what to do."""


def render_chat_template(
    chat_template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    bos_token: str | None = None,
    eos_token: str | None = None,
) -> str:
    """Render a raw template string exactly as `tokenizer.apply_chat_template(tokenize=False)` would.

    transformers' own renderer is used (same sandbox, `raise_exception`,
    `strftime_now`, `tojson`, trim_blocks/lstrip_blocks) so no tokenizer is needed.
    Jinja errors (including the template's own `raise_exception`) propagate.
    """
    extra: dict[str, Any] = {"bos_token": bos_token or "", "eos_token": eos_token or ""}
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # transformers absent or moved: same environment, built here
        return _render_with_jinja(chat_template, messages, add_generation_prompt, extra)
    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=chat_template, add_generation_prompt=add_generation_prompt, **extra
    )
    return rendered[0]


def _render_with_jinja(chat_template: str, messages: list[dict], add_generation_prompt: bool, extra: dict) -> str:
    """The fallback renderer: the environment transformers builds for chat templates."""
    import json
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None, **extra
    )


def _template_of(tokenizer, chat_template: str | dict | None) -> str:
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # older tokenizers keep named templates; "default" is the chat one
        template = template.get("default") or next(iter(template.values()), None)
    if not template:
        raise TemplateError(
            "no chat template: the tokenizer has none and none was given. Set `chat_template:` on the model "
            "(a bundled name such as 'chatml' or a .jinja file), or give the step an explicit `pre_query_template:`."
        )
    return template


def _cut_before(rendered: str, sentinel: str) -> str:
    at = rendered.find(sentinel)
    if at < 0:
        raise TemplateError(
            "the chat template dropped the user message (the sentinel is not in its output), so the text "
            "before a user message cannot be found. Give the step an explicit `pre_query_template:`."
        )
    return rendered[:at]


def _end_of_turn(after_user: str) -> str | None:
    """The end-of-turn marker: a leading special token, else the first non-empty line ('ASSISTANT:')."""
    match = _SPECIAL_TOKEN.match(after_user)
    if match:
        return match.group(1)
    for line in after_user.splitlines():
        if line.strip():
            return line.strip()
    return None


def _default_system_prompt(render, plain_prefix: str) -> str | None:
    """The system prompt a template inserts on its own (Qwen2.5), found by diffing against an explicit one.

    With an explicit system message the prefix is `A + SYSTEM + B`; if the plain
    prefix is `A + X + B` with X non-empty, X is the template's default.
    """
    try:
        with_system = _cut_before(render([{"role": "system", "content": SYSTEM_SENTINEL}, {"role": "user", "content": SENTINEL}]), SENTINEL)
    except Exception:  # noqa: BLE001 - any template failure means "no system role, so no default either"
        return None
    if SYSTEM_SENTINEL not in with_system:
        return None
    head, tail = with_system.split(SYSTEM_SENTINEL, 1)
    if len(plain_prefix) > len(head) + len(tail) and plain_prefix.startswith(head) and plain_prefix.endswith(tail):
        return plain_prefix[len(head) : len(plain_prefix) - len(tail)]
    return None


def derive_pre_query_template(
    tokenizer=None,
    *,
    chat_template: str | dict | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    system_prompt: str | None = None,
) -> PreQuery:
    """The text a chat template puts before a user message's content.

    `tokenizer` supplies the template and its bos/eos tokens; `chat_template`,
    `bos_token` and `eos_token` override them (a raw template string needs no
    tokenizer). With `system_prompt`, it is placed where the template puts a
    system message; a template that rejects the system role gets it folded into
    the user turn (system + blank line + user, as Gemma and Mistral templates do
    themselves), and `note` says so.
    """
    template = _template_of(tokenizer, chat_template)
    bos = bos_token if bos_token is not None else getattr(tokenizer, "bos_token", None)
    eos = eos_token if eos_token is not None else getattr(tokenizer, "eos_token", None)

    def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
        return render_chat_template(template, messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)

    user_only = [{"role": "user", "content": SENTINEL}]
    try:
        end_of_turn = _end_of_turn(render(user_only, add_generation_prompt=True).split(SENTINEL, 1)[-1])
    except Exception as exc:  # noqa: BLE001 - jinja raises many types; the user needs the template's own message
        raise TemplateError(f"the chat template fails on a single user message: {exc}. Give an explicit `pre_query_template:`.") from exc

    if system_prompt is None:
        text = _cut_before(render(user_only), SENTINEL)
        default = _default_system_prompt(render, text)
        note = "the template inserts a default system prompt" if default else ""
        note = "; ".join(n for n in (note, _whitespace_note(text)) if n)
        return PreQuery(text=text, system_prompt_used=default, note=note, end_of_turn=end_of_turn)

    try:
        rendered = render([{"role": "system", "content": system_prompt}, {"role": "user", "content": SENTINEL}])
        text = _cut_before(rendered, SENTINEL)
        if system_prompt.strip() in text:
            return PreQuery(text=text, system_prompt_used=system_prompt, end_of_turn=end_of_turn)
        note = "the template ignored the system message; folded it into the user turn"
    except TemplateError:
        raise
    except Exception as exc:  # noqa: BLE001 - templates raise_exception on roles they do not support
        note = f"the template rejects a system message ({exc}); folded it into the user turn"
    # Fold the way templates that accept no system role do it themselves: system, blank line, user.
    folded = render([{"role": "user", "content": system_prompt.strip() + "\n\n" + SENTINEL}])
    return PreQuery(text=_cut_before(folded, SENTINEL), system_prompt_used=system_prompt, note=note, end_of_turn=end_of_turn)


def _whitespace_note(text: str) -> str:
    """A warning when the prefix holds indentation or blank-line runs: what a pretty-printed .jinja
    file renders (its layout is output, not formatting), which no real model was trained on."""
    import re

    if re.search(r"\n[ \t]{2,}|\n{3,}| {4,}|\t", text):
        return (f"the pre-query template {text!r} holds runs of whitespace; a pretty-printed .jinja file "
                "renders its indentation and newlines: flatten the file (remove the layout whitespace) "
                "or give an explicit `pre_query_template:`")
    return ""


def pre_query_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a pre-query template, with no special tokens added: the template already holds its BOS."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def next_user_turn_prefix(
    messages: list[dict],
    tokenizer=None,
    *,
    chat_template: str | dict | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
) -> str:
    """The conversation so far plus the opening of the next user turn (Magpie's multi-turn append).

    Fed this, the model writes the user's follow-up message, conditioned on the whole
    exchange, exactly as it would see it in a real multi-turn chat.
    """
    template = _template_of(tokenizer, chat_template)
    bos = bos_token if bos_token is not None else getattr(tokenizer, "bos_token", None)
    eos = eos_token if eos_token is not None else getattr(tokenizer, "eos_token", None)
    rendered = render_chat_template(template, [*messages, {"role": "user", "content": SENTINEL}], bos_token=bos, eos_token=eos)
    return _cut_before(rendered, SENTINEL)
