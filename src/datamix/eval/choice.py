"""choice: multiple-choice accuracy by comparing the log-likelihood of each option (MMLU/ARC style).

A record has the question (the chat before the last assistant turn, usually one
user message), a list of options and the answer: a 0-based index ("2" or 2), the
option's text, or a letter ("C"), tried in that order. Each option is scored as the assistant's reply:
log p(option tokens | the chat rendered with the generation prompt), the context
and the option tokenized apart and joined (as lm-evaluation-harness does), so the
option's first token is not merged into the template's header.

- acc: the option with the highest total log-likelihood is the answer;
- acc_norm: the highest log-likelihood per UTF-8 byte of the option (lm-eval's
  acc_norm), which does not favour short options.
"""

from __future__ import annotations

import string

from datamix.eval import Value
from datamix.eval.lm import EvalModel, sequence_logprobs
from datamix.eval.sets import ChoiceMetric, options_of, prompt_and_reference
from datamix.eval.stats import proportion_value


def answer_index(answer, options: list[str]) -> int:
    """The answer as a 0-based option index: an index, a letter, or the option's text."""
    text = str(answer).strip()
    # digits are an index even when an option reads the same (MMLU's numeric options); an option's
    # own text before a letter (an option "A" or "B" is its text, not a position)
    if text.lstrip("-").isdigit():
        index = int(text)
    elif text in options:
        index = options.index(text)
    elif len(text) == 1 and text.upper() in string.ascii_uppercase:
        index = string.ascii_uppercase.index(text.upper())
    else:
        raise ValueError(f"answer {text!r} is not an option index, a letter or one of the options")
    if not 0 <= index < len(options):
        raise ValueError(f"answer {text!r} is out of range for {len(options)} options")
    return index


def evaluate(model: EvalModel, records: list[dict], m: ChoiceMetric) -> list[Value]:
    """[acc, acc_norm] over the records."""
    tok, lm, device = model.load()
    sequences, owners = [], []  # one sequence per (record, option)
    gold, option_bytes = [], []
    for k, r in enumerate(records):
        chat, reply = prompt_and_reference(r["messages"])
        options = options_of(r, m.options_field)
        try:
            gold.append(answer_index(r.get(m.answer_field) if m.answer_field else reply, options))
        except ValueError as e:
            where = f"{r['origin_file']}:{r['origin_line']}" if r.get("origin_file") else f"sample {r.get('sample_id')}"
            raise ValueError(f"{where}: {e}") from None
        context = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
        for option in options:
            opt_ids = tok(option, add_special_tokens=False)["input_ids"]
            sequences.append((ctx_ids + opt_ids, [False] * len(ctx_ids) + [True] * len(opt_ids)))
            owners.append(k)
        option_bytes.append([max(1, len(o.encode("utf-8"))) for o in options])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    logps = sequence_logprobs(lm, device, sequences, model.batch_size, pad)
    per_record: list[list[float]] = [[] for _ in records]
    for k, lp in zip(owners, logps):
        per_record[k].append(sum(lp))
    acc = [float(max(range(len(s)), key=s.__getitem__) == g) for s, g in zip(per_record, gold)]
    acc_norm = [float(max(range(len(s)), key=lambda i: s[i] / b[i]) == g)
                for s, b, g in zip(per_record, option_bytes, gold)]
    values = [proportion_value("acc", acc), proportion_value("acc_norm", acc_norm)]
    values[0].samples = [{"sample_id": r.get("sample_id"), "gold": g, "loglik": s, "correct": bool(a)}
                         for r, g, s, a in zip(records, gold, per_record, acc)]
    return values
