"""Tiny randomly initialised models with a real chat template, built offline.

Tests and the quickstart need a model folder that `AutoTokenizer` /
`AutoModelForCausalLM.from_pretrained` load like a hub model, without ever
downloading anything. `build_tiny_model` writes one: a byte-level BPE tokenizer
trained on the spot on a small built-in English corpus (so any text round-trips),
the chat template's special tokens registered as special tokens, eos = the
template's end-of-turn token, a pad token, and a few-layer Llama or Qwen2 model
(or a one-label sequence-classification head, as a reward model).

The same arguments give byte-identical weights and tokenizer files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from datamix.chat_templates import family_tokens, load_chat_template

ARCHS = ("llama", "qwen2")

# A small English corpus: enough merges for a ~1000-token vocabulary that splits
# ordinary instructions into a handful of tokens each. Byte-level BPE covers all
# other text through its 256-byte alphabet.
_CORPUS = """\
Write a short story about a robot who learns to paint.
Explain the difference between a list and a tuple in Python.
What is the capital of France? The capital of France is Paris.
Give me three tips for staying healthy. Eat well, sleep enough and exercise.
Summarize the following paragraph in one sentence.
Translate this sentence into German: The weather is nice today.
How do I sort a dictionary by value in Python? Use sorted with a key function.
Solve the equation 2x + 3 = 11. Subtract three, then divide by two: x = 4.
A train travels 60 miles per hour for 3 hours. How far does it go? 180 miles.
Write a haiku about autumn leaves falling in the quiet morning light.
List five fruits that are rich in vitamin C: orange, kiwi, strawberry, guava, lemon.
Describe the water cycle. Water evaporates, condenses into clouds and falls as rain.
Why is the sky blue? Sunlight is scattered by the molecules of the atmosphere.
Write a function that returns the factorial of a number.
def factorial(n):
    return 1 if n <= 1 else n * factorial(n - 1)
Compose a polite email asking your manager for a day off next week.
What are the main causes of climate change? Burning fossil fuels and deforestation.
Classify the sentiment of this review: I loved the movie, the acting was great.
Generate a list of ideas for a birthday party for a ten year old.
Rewrite the sentence in the passive voice: The cat chased the mouse.
Explain how a neural network learns from data using gradient descent.
You are a helpful assistant. Answer the question as accurately as you can.
The user asked a question and the assistant gave a helpful, honest answer.
Please provide a step by step explanation of how to make a cup of tea.
Compare the advantages and disadvantages of working from home.
If a rectangle has a length of 8 and a width of 5, its area is 40.
Tell me a joke about computers. Why did the computer go to the doctor? It had a virus.
"""

_QWEN_ENDOFTEXT = "<|endoftext|>"

# Role names that templates splice into tokens at render time ('<|' + role + '|>').
_ROLES = ("system", "user", "assistant")


def special_tokens_of_template(template: str) -> list[str]:
    """The special-token literals a chat template writes, in first-seen order.

    `<|...|>` literals (ChatML, Llama-3, Phi-3, Granite), `<word_word>` literals
    (Gemma's <start_of_turn>, Qwen's <tool_call>), and, for templates that build
    `'<|' + message['role'] + '|>'`, the role tokens that produces.
    """
    found = re.findall(r"<\|[A-Za-z0-9_.\-]+\|>|<[a-z]+(?:_[a-z]+)+>", template)
    if re.search(r"'<\|'\s*\+\s*message\[?['\"]?role", template):
        found += [f"<|{role}|>" for role in _ROLES]
    return list(dict.fromkeys(found))


def tokenizer_texts(files: list[str]):
    """The text of data files to train a tokenizer on, one string at a time.

    JSONL / JSON: every string value of every record (messages' contents, prompt and
    response columns, whatever the shape); any other file: its lines."""
    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer data file {path} does not exist")
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield from strings(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); tokenizer data is JSONL or text") from None
            elif path.endswith(".json"):
                try:
                    yield from strings(json.load(f))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
            else:
                yield from f


def _train_tokenizer(vocab_size: int, special_tokens: list[str], files: list[str] | None = None):
    """A byte-level BPE `tokenizers.Tokenizer` with `special_tokens` as whole tokens (ids 0..k-1),
    trained on `files` (see tokenizer_texts) or, without them, on the built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if files:
        tok.train_from_iterator(tokenizer_texts(files), trainer=trainer)
    else:
        # Several copies so that frequent pairs clearly win and merges are stable.
        tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok


def _resolve_tokens(template_name: str, template: str) -> tuple[str | None, str, list[str], str, list[str]]:
    """(bos, eos, all special tokens, pad, end-of-generation tokens) for a template.

    The family's tokens when the template is a bundled one, else derived from the template.
    """
    family = family_tokens(template_name)
    in_template = special_tokens_of_template(template)
    if family is not None:
        bos, eos, extra = family.bos, family.eos, list(family.extra_eos)
    else:
        # An unknown template: end the turn on its end-of-turn-looking literal if any.
        enders = [t for t in in_template if re.search(r"end|eot|eos|done|stop", t, re.IGNORECASE)]
        bos, eos, extra = "<s>", (enders[0] if enders else "</s>"), []
    pad = "<|pad|>"
    specials = [pad] + ([bos] if bos else []) + [eos] + extra + in_template
    return bos, eos, list(dict.fromkeys(specials)), pad, list(dict.fromkeys([eos, *extra]))


def build_tiny_model(
    path: str,
    arch: str = "llama",
    chat_template: str = "chatml",
    reward: bool = False,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 1000,
    num_heads: int = 4,
    tokenizer_data: list[str] | None = None,
    intermediate_size: int | None = None,
) -> str:
    """Write a tiny random causal LM (or, with reward=True, a one-label reward model) to `path`.

    `chat_template` is a bundled template name ("chatml", "llama-3-instruct",
    "qwen2.5-instruct", ...) or a .jinja file. `tokenizer_data`: JSONL / JSON / text files
    the BPE tokenizer is trained on (default: a small built-in English text), so that a
    model trained from scratch on that data sees it in few tokens. Returns the folder path.
    Deterministic: the same arguments give the same weights and tokenizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    if arch not in ARCHS:
        raise ValueError(f"tiny model arch {arch!r} is not supported; choose one of {', '.join(ARCHS)}")
    if num_heads < 1 or hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError(f"hidden_size={hidden_size} must be a multiple of 2 x heads (heads={num_heads}): "
                         "each head's width must be even (rotary embeddings)")
    # grouped-query attention as in Llama/Qwen2: half as many key/value heads when heads is even
    kv_heads = num_heads // 2 if num_heads % 2 == 0 else num_heads
    template = load_chat_template(chat_template)
    bos, eos, specials, pad, stop_tokens = _resolve_tokens(chat_template, template)
    if vocab_size < 256 + len(specials) + 16:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {256 + len(specials) + 16}")

    if arch == "qwen2" and _QWEN_ENDOFTEXT not in specials:
        # transformers loads a qwen2 folder with Qwen2Tokenizer, which adds <|endoftext|>
        # when it is missing; registering it here keeps len(tokenizer) == the model's vocab.
        specials.append(_QWEN_ENDOFTEXT)
    raw = _train_tokenizer(vocab_size, specials, tokenizer_data)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=[t for t in specials if t not in (bos, eos, pad)],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = template

    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens]
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    torch.manual_seed(seed)
    if reward:
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
    model.eval()

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "datamix_tiny.json").write_text(
        json.dumps(
            {
                "arch": arch,
                "chat_template": chat_template,
                "reward": reward,
                "seed": seed,
                "hidden_size": hidden_size,
                "num_layers": num_layers,
                "vocab_size": vocab_size,
                "num_heads": num_heads,
                "tokenizer_data": [os.path.basename(f) for f in tokenizer_data or []],
                "intermediate_size": intermediate_size or hidden_size * 2,
            },
            indent=2,
        )
        + "\n"
    )
    return str(out)

