"""nll equals a plain transformers forward over the same chats; bpb is the same total over tokenizer-free bytes."""

from __future__ import annotations

import math

import pytest

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list in Python."},
     {"role": "assistant", "content": "Use sorted(x) for a new list."}],
    [{"role": "user", "content": "Name a fruit rich in vitamin C."}, {"role": "assistant", "content": "Kiwi."},
     {"role": "user", "content": "Another one?"}, {"role": "assistant", "content": "Oranges, lemons and guava."}],
    [{"role": "user", "content": "Only a question, no answer"}],  # nothing to score: skipped
]


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("m") / "chatml"), chat_template="chatml")


@pytest.fixture(scope="module")
def chatml_small_vocab(tmp_path_factory):
    from datamix.models.tiny import build_tiny_model

    # another tokenizer (a third of the merges) and other weights, same template
    return build_tiny_model(str(tmp_path_factory.mktemp("m") / "small"), chat_template="chatml", vocab_size=400, seed=3)


def independent(path: str, chats) -> tuple[float, int, int, float]:
    """(total nll in nats, labelled tokens, assistant bytes) by a plain forward per chat: every assistant
    turn's content + <|im_end|> is labelled, rendered with the template turn by turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    total, tokens, nbytes = 0.0, 0, 0
    for chat in chats:
        if not any(m["role"] == "assistant" for m in chat):
            continue
        ids, labels, done = [], [], ""  # done: the text rendered up to the previous answer's newline
        for i, m in enumerate(chat):
            if m["role"] != "assistant":
                continue
            prefix = tok.apply_chat_template(chat[:i], tokenize=False, add_generation_prompt=True)
            context = tok(prefix[len(done):] if prefix.startswith(done) else prefix, add_special_tokens=False)["input_ids"]
            answer = tok(m["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
            newline = tok("\n", add_special_tokens=False)["input_ids"]
            ids += context + answer + newline
            labels += [-100] * len(context) + answer + [-100] * len(newline)
            nbytes += len((m["content"] + "<|im_end|>").encode())
            done = tok.apply_chat_template(chat[: i + 1], tokenize=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        mask = target != -100
        logp = torch.log_softmax(logits, -1)[torch.arange(len(target))[mask], target[mask]]
        total += -float(logp.sum())
        tokens += int(mask.sum())
    return total, tokens, nbytes


def test_nll_equals_a_plain_transformers_forward_over_the_same_chats(chatml):
    from datamix.eval import nll
    from datamix.eval.lm import EvalModel

    total, tokens, nbytes = independent(chatml, CHATS)
    values = {v.metric: v for v in nll.evaluate(EvalModel("m", chatml, batch_size=2), CHATS)}
    assert values["nll"].n == 3  # chats, the one without an answer skipped
    assert values["nll"].value == pytest.approx(total / tokens, abs=1e-4)
    assert values["bpb"].value == pytest.approx(total / math.log(2) / nbytes, abs=1e-4)
    assert not values["nll"].higher_is_better and values["nll"].stderr > 0
    assert values["nll"].ci_low < values["nll"].value < values["nll"].ci_high


def test_batch_size_does_not_change_nll(chatml):
    from datamix.eval import nll
    from datamix.eval.lm import EvalModel

    one = nll.evaluate(EvalModel("m", chatml, batch_size=1), CHATS)
    four = nll.evaluate(EvalModel("m", chatml, batch_size=4), CHATS)
    assert [v.value for v in one] == pytest.approx([v.value for v in four], abs=1e-5)


def test_bpb_counts_the_same_bytes_under_two_tokenizers(chatml, chatml_small_vocab):
    """bpb = total nll in bits / bytes of the assistant spans: the bytes are the text's, not the
    tokenizer's, so the denominator is the same for both models while their token counts differ."""
    from datamix.eval import nll
    from datamix.eval.lm import EvalModel

    big, small = EvalModel("big", chatml), EvalModel("small", chatml_small_vocab)
    rows_big = [r for r in nll.labelled(big, CHATS) if r]
    rows_small = [r for r in nll.labelled(small, CHATS) if r]
    assert [b for _, _, b in rows_big] == [b for _, _, b in rows_small]
    assert sum(sum(m) for _, m, _ in rows_small) > sum(sum(m) for _, m, _ in rows_big)  # more, shorter tokens
    for path, model in ((chatml, big), (chatml_small_vocab, small)):
        total, tokens, nbytes = independent(path, CHATS)
        values = {v.metric: v.value for v in nll.evaluate(model, CHATS)}
        assert nbytes == sum(b for _, _, b in rows_big)
        assert values["bpb"] == pytest.approx(total / math.log(2) / nbytes, abs=1e-4)
        assert values["bpb"] == pytest.approx(values["nll"] * tokens / math.log(2) / nbytes, rel=1e-6)


def _no_gpu() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU"


@pytest.mark.gpu
@pytest.mark.skipif(_no_gpu() is not None, reason=_no_gpu() or "")
def test_nll_and_choice_on_a_gpu_equal_the_cpu(chatml):
    from datamix.eval import choice, nll
    from datamix.eval.lm import EvalModel
    from datamix.eval.sets import ChoiceMetric

    cpu = {v.metric: v.value for v in nll.evaluate(EvalModel("m", chatml, device="cpu"), CHATS)}
    gpu = {v.metric: v.value for v in nll.evaluate(EvalModel("m", chatml, device="cuda"), CHATS)}
    assert gpu == pytest.approx(cpu, abs=1e-3)  # float32 on both; kernels differ in the last bits
    records = [{"messages": [{"role": "user", "content": "Which is a fruit?"}, {"role": "assistant", "content": "0"}],
                "options": ["kiwi", "stone", "rain"]}]
    m = ChoiceMetric(metric="choice")
    assert [v.value for v in choice.evaluate(EvalModel("m", chatml, device="cuda"), records, m)] == \
           [v.value for v in choice.evaluate(EvalModel("m", chatml, device="cpu"), records, m)]
