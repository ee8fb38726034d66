"""exact_match and choice on hand-made sets with known answers: a backend that always answers the same
string, a model that always prefers one token, and a real tiny model against an independent computation."""

from __future__ import annotations

import pytest

from datamix.eval.sets import ChoiceMetric, EvalSet, ExactMatchMetric


def q(question: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


class FixedBackend:
    """A generation backend that answers every prompt with the same text (greedy or not)."""

    name = "fixed"

    def __init__(self, text: str):
        self.text, self.prompts = text, []

    def generate(self, prompts, params):
        from datamix.models import Completion

        assert params.temperature == 0.0  # exact_match answers greedily
        self.prompts += prompts
        return [[Completion(self.text, "stop", 1, 1)] * params.n for _ in prompts]


@pytest.mark.parametrize("text, expected", [
    ("so the total is 18 dollars.\n#### 18", "18"),
    ("#### 1,234", "1234"),
    ("#### $5.00", "5"),
    ("The answer is 72.", "72"),            # no '####': the last number (lm-eval's flexible-extract)
    ("It costs $1,000.50 in total", "1000.5"),
    ("I do not know", None),
])
def test_gsm8k_extraction_and_normalisation(text, expected):
    from datamix.eval.exact_match import extract, normalise, rule

    pattern, last = rule(ExactMatchMetric(metric="exact_match", preset="gsm8k"))
    assert normalise(extract(text, pattern, last)) == expected


def test_exact_match_of_a_backend_that_always_answers_the_same():
    from datamix.eval.exact_match import evaluate

    records = [q("Tom has 40 apples and 2 more?", "40 + 2 = 42\n#### 42"),
               q("What is 6 * 7?", "#### 42.0"),
               q("What is 1000 + 1?", "#### 1,001"),
               q("Half of 84?", "Half is 42")]  # a reference without '####': its last number
    backend = FixedBackend("Let me think. 6 times 7 is 42.\n#### 42")
    (value,) = evaluate(backend, records, ExactMatchMetric(metric="exact_match", preset="gsm8k", max_tokens=16))
    assert (value.metric, value.n, value.value) == ("exact_match", 4, pytest.approx(0.75))
    assert value.stderr == pytest.approx((0.75 * 0.25 / 3) ** 0.5)  # sample sd / sqrt(n)
    # the prompt is the chat before the reference answer
    assert backend.prompts[0].messages == [{"role": "user", "content": "Tom has 40 apples and 2 more?"}]


def test_exact_match_with_an_answer_field_and_a_custom_regex():
    from datamix.eval.exact_match import evaluate

    records = [{"messages": [{"role": "user", "content": "Capital of France?"}], "gold": "Paris"},
               {"messages": [{"role": "user", "content": "Capital of Italy?"}], "gold": "Rome"}]
    m = ExactMatchMetric(metric="exact_match", regex=r"ANSWER:\s*(\w+)", answer_field="gold")
    (value,) = evaluate(FixedBackend("I think... ANSWER: paris"), records, m)
    assert value.value == pytest.approx(0.5)  # compared case-insensitively


class PreferOneToken:
    """A causal LM stand-in whose next-token distribution always puts almost all mass on one token."""

    def __init__(self, vocab: int, token: int):
        self.vocab, self.token = vocab, token

    def __call__(self, input_ids, attention_mask=None):
        import types

        import torch

        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 12.0
        return types.SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("m") / "chatml"), chat_template="chatml")


def test_choice_of_a_model_that_always_prefers_one_token(tiny):
    from transformers import AutoTokenizer

    from datamix.eval.choice import evaluate
    from datamix.eval.lm import EvalModel

    tok = AutoTokenizer.from_pretrained(tiny)
    word = "Q"  # one byte: one token in any byte-level BPE
    fav = tok(word, add_special_tokens=False)["input_ids"][0]
    model = EvalModel("fav", tiny)
    model._loaded = (tok, PreferOneToken(len(tok), fav), "cpu")
    records = [
        q("Which one?", "1", options=["Rome", word, "Madrid"]),      # an index: right
        q("Which one?", "C", options=[word, "Rome", "Madrid"]),      # a letter (Madrid): the model says `word`
        q("Which one?", word, options=["Berlin", word]),             # the option's text: right
        q("Which one?", "0", options=["Rome", f"{word} {word}"]),    # the second token is not the favoured one
    ]
    values = {v.metric: v for v in evaluate(model, records, ChoiceMetric(metric="choice"))}
    # the option that is exactly the favoured token wins wherever it is offered, so 2 of 4 are right;
    # in the last record "Rome" beats "word word" (whose second token, with a space, is not favoured)
    assert values["acc"].n == 4
    assert values["acc"].value == pytest.approx(0.5)
    assert values["acc_norm"].value == pytest.approx(0.5)


def test_choice_matches_an_independent_loglikelihood_comparison(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datamix.eval.choice import evaluate
    from datamix.eval.lm import EvalModel

    options = ["kiwi", "stone", "a red car", "rain"]
    records = [q("Which is a fruit?", str(g), options=options) for g in range(4)]
    model = EvalModel("t", tiny, batch_size=3)
    per_record = [{v.metric: v.value for v in evaluate(model, [r], ChoiceMetric(metric="choice"))} for r in records]
    tok = AutoTokenizer.from_pretrained(tiny)
    lm = AutoModelForCausalLM.from_pretrained(tiny).eval()
    context = tok.apply_chat_template([{"role": "user", "content": "Which is a fruit?"}], tokenize=False,
                                      add_generation_prompt=True)
    c = tok(context, add_special_tokens=False)["input_ids"]
    scores = []
    for option in options:
        o = tok(option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm(input_ids=torch.tensor([c + o])).logits[0].float(), -1)
        scores.append(sum(float(logp[len(c) - 1 + k, t]) for k, t in enumerate(o)))
    best = max(range(4), key=scores.__getitem__)
    norm = max(range(4), key=lambda i: scores[i] / len(options[i].encode()))
    # the same question with each gold answer once: exactly the record whose gold is the argmax is right
    assert [r["acc"] for r in per_record] == [float(g == best) for g in range(4)]
    assert [r["acc_norm"] for r in per_record] == [float(g == norm) for g in range(4)]
    together = {v.metric: v.value for v in evaluate(model, records, ChoiceMetric(metric="choice"))}
    assert together == {"acc": 0.25, "acc_norm": 0.25}


def test_choice_needs_options_and_a_valid_answer():
    from datamix.eval.sets import check_fit

    s = EvalSet(path="x.jsonl", metrics=[{"metric": "choice"}])
    problems = check_fit(s, [q("Which?", "0", origin_file="x.jsonl", origin_line=3)])
    assert problems == [(0, "choice: x.jsonl:3: field 'options' is missing or has fewer than two "
                            "options; choice needs records with a list of options")]


def test_accuracy_intervals_are_wilson_intervals():
    from datamix.eval.stats import proportion_value

    none_right = proportion_value("acc", [0.0] * 10)
    assert none_right.value == 0.0 and none_right.ci_low == 0.0
    assert none_right.ci_high == pytest.approx(0.2775, abs=1e-4)  # Wilson 95% upper bound for 0/10
    half = proportion_value("acc", [1.0, 0.0] * 10)
    assert (half.ci_low, half.ci_high) == (pytest.approx(0.2993, abs=1e-4), pytest.approx(0.7007, abs=1e-4))
    assert half.stderr == pytest.approx((0.25 * 20 / 19 / 20) ** 0.5)
