"""exact_match: greedy answers compared with reference answers after extraction and normalisation.

The prompt is the chat before the record's last assistant turn; the model answers it
greedily (temperature 0) through the transformers backend with the chat template.
An answer is extracted from both the model's text and the reference by the same
rule, then normalised:

- preset gsm8k: lm-evaluation-harness's gsm8k filters: the number after '####'
  ("strict-match"); when there is none, the last number in the text ("flexible-extract");
- regex: its first group (or the whole match); `fallback: last_number` as for gsm8k;
- neither: the whole text.

Normalisation: trim, drop commas and '$', a trailing '.', and a zero fraction
('72.0' -> '72', '72.50' -> '72.5'), compare case-insensitively.
"""

from __future__ import annotations

import re

from datamix.eval import Value
from datamix.eval.sets import ExactMatchMetric, prompt_and_reference
from datamix.eval.stats import proportion_value

GSM8K = r"#### (\-?[0-9\.\,]+)"
# lm-eval's flexible-extract: the last number-like run (with $, commas and a sign)
_LAST_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def rule(m: ExactMatchMetric) -> tuple[str | None, bool]:
    """(regex or None, fall back to the last number)."""
    if m.preset == "gsm8k":
        return m.regex or GSM8K, m.fallback != "none"
    return m.regex, m.fallback == "last_number"


def extract(text: str | None, pattern: str | None, last_number: bool) -> str | None:
    """The answer in `text` by `pattern` (its first group), else the last number if asked, else the text."""
    if text is None:
        return None
    if pattern:
        found = list(re.finditer(pattern, text))
        if found:
            hit = found[0]
            return hit.group(1) if hit.re.groups else hit.group(0)
    if last_number:
        numbers = [a or b for a, b in _LAST_NUMBER.findall(text)]
        numbers = [n for n in numbers if re.search(r"[0-9]", n)]
        return numbers[-1] if numbers else None
    return None if pattern else text


def normalise(answer: str | None) -> str | None:
    if answer is None:
        return None
    a = answer.strip().replace(",", "").replace("$", "").strip()
    a = a.rstrip(".")
    if re.fullmatch(r"-?\d+\.\d+", a):
        a = a.rstrip("0").rstrip(".")
    return a.lower()


def greedy(backend, chats: list[list[dict]], max_tokens: int) -> list[str]:
    """The backend's greedy answer to each chat (its chat template, generation prompt appended)."""
    from datamix.models import Prompt, SamplingParams

    if not chats:
        return []
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, seed=0)
    return [c[0].text for c in backend.generate([Prompt(messages=chat) for chat in chats], params)]


def evaluate(backend, records: list[dict], m: ExactMatchMetric) -> list[Value]:
    """[exact_match]: the fraction of records whose extracted, normalised answer equals the reference's.

    `backend` is anything with the Backend interface (generate(prompts, params))."""
    pattern, last_number = rule(m)
    prompts, references = [], []
    for r in records:
        chat, reply = prompt_and_reference(r["messages"])
        prompts.append(chat)
        reference = r.get(m.answer_field) if m.answer_field else reply
        # a reference in the GSM8K format has its answer after '####'; a bare one is the answer itself
        references.append(normalise(extract(str(reference), pattern, last_number) or str(reference)))
    answers = greedy(backend, prompts, m.max_tokens)
    extracted = [normalise(extract(a, pattern, last_number)) for a in answers]
    scores = [float(x == ref and ref is not None) for x, ref in zip(extracted, references)]
    value = proportion_value("exact_match", scores)
    value.samples = [{"sample_id": r.get("sample_id"), "prompt": chat[-1]["content"] if chat else "", "answer": a,
                      "extracted": x, "reference": ref, "correct": bool(sc)}
                     for r, chat, a, x, ref, sc in zip(records, prompts, answers, extracted, references, scores)]
    return [value]
