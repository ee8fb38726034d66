"""Real chat templates of popular instruct models, bundled so nothing is downloaded.

The .jinja files come from chujiezheng/chat_templates (MIT, LICENSE beside them).
Upstream writes all but qwen2.5-instruct.jinja pretty-printed and flattens them
with `text.replace('    ', '').replace('\\n', '')` before use; the copies here are
already flattened, so `load_chat_template` returns text to set on a tokenizer as is.

Several templates render `bos_token` / `eos_token`, so a tokenizer needs the tokens
of the model family: `bos_token_for`, `eos_token_for` and `family_tokens` give them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class FamilyTokens:
    """Special tokens of a model family, as its real tokenizer has them.

    `bos` is what the tokenizer's bos_token is (None: the family has none);
    `eos` is the token that ends an assistant turn (what generation stops on);
    `extra_eos` are further tokens that also end generation (e.g. Llama-3's
    <|end_of_text|> besides <|eot_id|>).
    """

    bos: str | None
    eos: str
    extra_eos: tuple[str, ...] = ()


# Why these values: they are the bos/eos of the reference model each template was
# written for (Llama/Mistral-based families use <s> </s>; Llama-3 <|begin_of_text|>
# and <|eot_id|>; Gemma <bos> and <end_of_turn>; Qwen2.5 has no BOS at all).
# The ChatML template of this collection renders bos_token because it targets
# Mistral-based ChatML models (OpenHermes), whose BOS is <s>.
_FAMILIES: dict[str, FamilyTokens] = {
    "alpaca": FamilyTokens("<s>", "</s>"),
    "amberchat": FamilyTokens("<s>", "</s>"),
    "chatml": FamilyTokens("<s>", "<|im_end|>", ("</s>",)),
    "chatqa": FamilyTokens("<|begin_of_text|>", "<|end_of_text|>"),
    "falcon-instruct": FamilyTokens(None, "<|endoftext|>"),
    "gemma-it": FamilyTokens("<bos>", "<end_of_turn>", ("<eos>",)),
    "granite-3.0-instruct": FamilyTokens("<|end_of_text|>", "<|end_of_text|>"),
    "llama-2-chat": FamilyTokens("<s>", "</s>"),
    "llama-3-instruct": FamilyTokens("<|begin_of_text|>", "<|eot_id|>", ("<|end_of_text|>",)),
    "mistral-instruct": FamilyTokens("<s>", "</s>"),
    "openchat-3.5": FamilyTokens("<s>", "<|end_of_turn|>", ("</s>",)),
    "phi-3-small": FamilyTokens("<|endoftext|>", "<|end|>", ("<|endoftext|>",)),
    "phi-3": FamilyTokens("<s>", "<|end|>", ("<|endoftext|>",)),
    "qwen2.5-instruct": FamilyTokens(None, "<|im_end|>", ("<|endoftext|>",)),
    "saiga": FamilyTokens("<s>", "</s>"),
    "solar-instruct": FamilyTokens("<s>", "</s>"),
    "vicuna": FamilyTokens("<s>", "</s>"),
    "zephyr": FamilyTokens("<s>", "</s>"),
}

# Other names users reach for.
_ALIASES = {
    "qwen2.5": "qwen2.5-instruct",
    "qwen2": "qwen2.5-instruct",
    "qwen": "qwen2.5-instruct",
    "llama-3": "llama-3-instruct",
    "llama3": "llama-3-instruct",
    "llama-2": "llama-2-chat",
    "llama2": "llama-2-chat",
    "mistral": "mistral-instruct",
    "gemma": "gemma-it",
    "granite": "granite-3.0-instruct",
    "openchat": "openchat-3.5",
    "solar": "solar-instruct",
    "falcon": "falcon-instruct",
}


def bundled_template_names() -> list[str]:
    """Names accepted by `load_chat_template` (file stems of the bundled templates)."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


def is_bundled_template(name: str) -> bool:
    """True when `name` is a bundled template's name or alias (not a path: a file must exist)."""
    if "/" in name or os.sep in name or name.endswith(".jinja"):
        return False
    return (TEMPLATE_DIR / f"{_canonical_name(name)}.jinja").is_file()


def _canonical_name(name_or_path: str) -> str:
    """'llama-3', 'llama-3-instruct.jinja' or '/x/llama-3-instruct.jinja' -> 'llama-3-instruct'."""
    stem = Path(name_or_path).name
    if stem.endswith(".jinja"):
        stem = stem[: -len(".jinja")]
    return _ALIASES.get(stem.lower(), stem.lower())


def load_chat_template(name_or_path: str) -> str:
    """The template text for a bundled name ("chatml", "llama-3-instruct", ...) or a .jinja file.

    A path that exists wins over a bundled name. A user file is returned as is:
    if it is pretty-printed, flatten it yourself (we cannot know which newlines
    are meant).
    """
    if os.path.isfile(name_or_path):
        return Path(name_or_path).read_text(encoding="utf-8")
    name = _canonical_name(name_or_path)
    path = TEMPLATE_DIR / f"{name}.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    looks_like_path = os.sep in name_or_path or name_or_path.endswith(".jinja")
    where = f"no file at {name_or_path!r} and no bundled" if looks_like_path else "no bundled"
    raise FileNotFoundError(
        f"chat template {name_or_path!r}: {where} template of that name. "
        f"Bundled: {', '.join(bundled_template_names())}; or give the path of a .jinja file."
    )


def family_tokens(name_or_path: str) -> FamilyTokens | None:
    """The family's special tokens for a bundled template name (or a file named like one); None if unknown."""
    return _FAMILIES.get(_canonical_name(name_or_path))


def bos_token_for(name_or_path: str) -> str | None:
    """The BOS token the family uses ("<|begin_of_text|>" for llama-3, "<s>" for mistral, "<bos>" for gemma).

    None when the family has no BOS (Qwen2.5, Falcon) or the name is not a bundled template.
    """
    tokens = family_tokens(name_or_path)
    return tokens.bos if tokens else None


def eos_token_for(name_or_path: str) -> str | None:
    """The token that ends an assistant turn in the family ("<|eot_id|>", "<|im_end|>", "</s>", ...)."""
    tokens = family_tokens(name_or_path)
    return tokens.eos if tokens else None
