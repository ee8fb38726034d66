"""judge_winrate with scripted judges: both orders, ties, unreadable verdicts."""

from __future__ import annotations

import re

import pytest

from datamix.eval.judge_winrate import parse_verdict, score


@pytest.mark.parametrize("text, verdict", [
    ("A is more detailed.\nWinner: A", "A"),
    ("Both are fine. Winner: tie", "tie"),
    ("**Winner:** B", "B"),
    ("The better response is B.", "B"),
    ("[[C]]", "tie"),
    ("Winner: A ... on reflection, Winner: B", "B"),  # the last verdict wins
    ("B", "B"),
    ("I cannot decide", None),
    ("", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def responses(prompts: list[str]) -> list[tuple[str, str]]:
    out = []
    for p in prompts:
        a = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", p, re.S).group(1)
        b = re.search(r"\[Response B\]\n(.*?)\n\nGive", p, re.S).group(1)
        out.append((a, b))
    return out


def prefers_longer(prompts):
    return [f"Winner: {'A' if len(a) > len(b) else 'B' if len(b) > len(a) else 'tie'}" for a, b in responses(prompts)]


INSTRUCTIONS = ["Explain rain.", "Name a colour.", "Say hi.", "Count to three."]
ANSWERS = ["Water falls from clouds when droplets grow heavy.", "Blue", "hi", "one two three"]
REFERENCES = ["Rain is water.", "Red, a warm colour", "hello", "1 2 3 4 5 6 7 8"]


def test_a_judge_that_prefers_longer_answers_in_both_orders():
    values = {v.metric: v for v in score(INSTRUCTIONS, ANSWERS, REFERENCES, {"len": prefers_longer})}
    # the longer one: the answer, then the reference three times (in both orders): 1 win of 4
    assert values["judge_winrate"].value == pytest.approx(0.25)
    assert values["judge_winrate"].n == 4
    # a bootstrap interval over the four prompts' outcomes (1, 0, 0, 0): inside [0, 1], around the mean
    win = values["judge_winrate"]
    assert 0.0 == win.ci_low <= win.value <= win.ci_high <= 1.0 and win.ci_high >= 0.5
    assert values["judge_ties"].value == 0.0 and values["judge_unparsed"].value == 0.0


def test_a_judge_that_always_says_a_is_cancelled_by_the_swapped_order():
    values = {v.metric: v for v in score(INSTRUCTIONS, ANSWERS, REFERENCES, {"first": lambda ps: ["Winner: A"] * len(ps)})}
    assert values["judge_winrate"].value == pytest.approx(0.5)
    assert values["judge_winrate"].stderr == pytest.approx(0.0)


def test_ties_count_half_and_unreadable_verdicts_are_left_out_and_counted():
    def tie_then_nonsense(prompts):
        n = len(prompts) // 2
        return ["Winner: tie"] * n + ["no idea"] * n  # forward order: ties; swapped order: unreadable

    values = {v.metric: v for v in score(INSTRUCTIONS, ANSWERS, REFERENCES, {"t": tie_then_nonsense})}
    assert values["judge_winrate"].value == pytest.approx(0.5)
    assert values["judge_ties"].value == pytest.approx(1.0) and values["judge_ties"].n == 4
    assert values["judge_unparsed"].value == pytest.approx(0.5) and values["judge_unparsed"].n == 8


def test_two_judges_are_averaged_per_prompt():
    always_model = lambda ps: ["Winner: A"] * (len(ps) // 2) + ["Winner: B"] * (len(ps) // 2)  # noqa: E731
    always_reference = lambda ps: ["Winner: B"] * (len(ps) // 2) + ["Winner: A"] * (len(ps) // 2)  # noqa: E731
    values = {v.metric: v for v in score(INSTRUCTIONS, ANSWERS, REFERENCES, {"m": always_model})}
    assert values["judge_winrate"].value == 1.0
    values = {v.metric: v for v in score(INSTRUCTIONS, ANSWERS, REFERENCES,
                                         {"m": always_model, "r": always_reference})}
    assert values["judge_winrate"].value == pytest.approx(0.5)
