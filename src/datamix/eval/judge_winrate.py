"""judge_winrate: the model's answers against reference answers, judged pairwise (AlpacaEval style).

For every prompt (the chat before the record's last assistant turn) the model
answers greedily; the reference answer is the record's own reply (`reference: set`)
or another model's greedy answer. Every judge model sees each pair twice, once in
each order (the model's answer as A, then as B), which cancels a judge's position
bias. A verdict is a win (1), a tie (0.5) or a loss (0) for the model; a verdict the
parser cannot read is left out and counted (metric judge_unparsed).

- judge_winrate: the mean verdict over prompts (each prompt's mean over judges and
  orders), with its standard error over prompts and a bootstrap 95% interval (prompts
  resampled, seeded);
- judge_ties: the fraction of verdicts that were ties.

Judges are called through the judge step's machinery (datamix.steps.generate:
declared models, loaded once, answers through the store's response cache).
"""

from __future__ import annotations

import re

from datamix.eval import Value
from datamix.eval.sets import JudgeWinrateMetric, prompt_and_reference
from datamix.eval.stats import bootstrap_interval, mean_value

PAIRWISE_PROMPT = """Please act as an impartial judge and compare the two responses to the user instruction below. Consider helpfulness, relevance, accuracy, depth and clarity. Do not let the order of the responses or their length influence you.

[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

Give a one-sentence justification, then the verdict on its own line as "Winner: A", "Winner: B" or "Winner: tie"."""

_VERDICT = re.compile(r"(?:winner|verdict|better(?: response)?)\**\s*(?:is|:|=)?\s*\**\s*\[?\[?\s*"
                      r"(?:response\s+)?(A|B|tie|draw|both|neither)\b", re.IGNORECASE)
_BRACKETS = re.compile(r"\[\[(A|B|C|tie)\]\]", re.IGNORECASE)  # MT-Bench style [[A]] / [[C]] (tie)
_BARE = re.compile(r"^\s*(A|B|tie)\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B', 'tie' or None (unreadable). The last verdict in the text wins (judges reason first)."""
    if not text or not text.strip():
        return None
    for pattern in (_VERDICT, _BRACKETS, _BARE):
        found = pattern.findall(text)
        if found:
            v = found[-1].lower()
            if v == "a":
                return "A"
            if v == "b":
                return "B"
            return "tie"  # tie, draw, both, neither, [[C]]
    return None


def pairwise_prompt(template: str, instruction: str, response_a: str, response_b: str) -> str:
    # str.replace, not format: instructions and answers are full of braces
    return (template.replace("{instruction}", instruction).replace("{response_a}", response_a)
            .replace("{response_b}", response_b))


def greedy_answers(backend, chats: list[list[dict]], max_tokens: int) -> list[str]:
    from datamix.eval.exact_match import greedy

    return greedy(backend, chats, max_tokens)


def verdict_score(verdict: str | None, model_is: str) -> float | None:
    """The model's score for one verdict: 1 win, 0.5 tie, 0 loss, None unreadable."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0.5
    return 1.0 if verdict == model_is else 0.0


def score(instructions: list[str], answers: list[str], references: list[str], judges: dict,
          template: str = PAIRWISE_PROMPT) -> list[Value]:
    """[judge_winrate, judge_ties, judge_unparsed] of `answers` against `references`.

    `judges`: name -> a function from judge prompts (user messages) to the judge's verdict texts."""
    n = len(instructions)
    per_prompt: list[list[float]] = [[] for _ in range(n)]
    verdicts: list[list[dict]] = [[] for _ in range(n)]
    ties = total = unparsed = 0
    for judge_name, judge in sorted(judges.items()):
        forward = [pairwise_prompt(template, i, a, r) for i, a, r in zip(instructions, answers, references)]
        backward = [pairwise_prompt(template, i, r, a) for i, a, r in zip(instructions, answers, references)]
        texts = judge(forward + backward)
        for k, text in enumerate(texts):
            verdict = parse_verdict(text)
            s = verdict_score(verdict, "A" if k < n else "B")
            verdicts[k % n].append({"judge": judge_name, "model_is": "A" if k < n else "B", "verdict": verdict, "score": s})
            total += 1
            if s is None:
                unparsed += 1
                continue
            ties += verdict == "tie"
            per_prompt[k % n].append(s)
    means = [sum(v) / len(v) for v in per_prompt if v]
    win = mean_value("judge_winrate", means)
    # a bootstrap over prompts: win rates sit in [0, 1] and often near its ends, where a normal
    # interval would cross them
    interval = bootstrap_interval(means)
    if interval is not None:
        win.ci_low, win.ci_high = interval
    win.samples = [{"instruction": i, "answer": a, "reference": r, "verdicts": v,
                    "score": sum(p) / len(p) if p else None}
                   for i, a, r, v, p in zip(instructions, answers, references, verdicts, per_prompt)]
    parsed = total - unparsed
    return [win,
            Value("judge_ties", ties / parsed if parsed else None, parsed),
            Value("judge_unparsed", unparsed / total if total else None, total, higher_is_better=False)]


def evaluate(model, set_name: str, records: list[dict], m: JudgeWinrateMetric, res) -> list[Value]:
    """judge_winrate of `model` on the set's prompts (see the module doc)."""
    import os

    chats, replies, instructions = [], [], []
    for r in records:
        chat, reply = prompt_and_reference(r["messages"])
        chats.append(chat)
        replies.append(reply)
        instructions.append(next((x["content"] for x in reversed(chat) if x["role"] == "user"), ""))
    key = (model.name, set_name, m.max_tokens)
    if key not in res.answers:
        res.answers[key] = greedy_answers(model.backend(), chats, m.max_tokens)
    answers = res.answers[key]
    if m.reference == "set":
        if any(r is None for r in replies):
            raise ValueError(f"set {set_name!r}: judge_winrate with reference: set needs an assistant reply in every "
                             "record; name a reference model instead")
        references = replies
    else:
        ref_key = (m.reference, set_name, m.max_tokens)
        if ref_key not in res.answers:
            res.answers[ref_key] = res.answers_of(m.reference, set_name, chats, m.max_tokens)
        references = res.answers[ref_key]
    template = PAIRWISE_PROMPT
    if m.prompt_file:
        path = m.prompt_file if os.path.isabs(m.prompt_file) else os.path.join(res.base_dir, m.prompt_file)
        with open(path, encoding="utf-8") as f:
            template = f.read()
    judges = {name: (lambda prompts, name=name: res.judge_texts(name, prompts, m.judge_max_tokens)) for name in m.judges}
    return score(instructions, answers, references, judges, template)
