"""The transformers backend end to end on a tiny random model."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from datamix.models import Prompt, SamplingParams, TransformersModel, load_backend  # noqa: E402
from datamix.models.transformers import TransformersBackend, cut_at_stop_strings  # noqa: E402

CHAT = [{"role": "user", "content": "Write a haiku about autumn."}]


def backend(path, batch_size=4, **kw):
    return TransformersBackend("tiny", TransformersModel(backend="transformers", path=path, batch_size=batch_size, **kw))


def texts(results):
    return [[c.text for c in per_prompt] for per_prompt in results]


PROMPTS = [
    Prompt(text="Explain gradient descent"),
    Prompt(messages=CHAT),
    Prompt(token_ids=[40, 41, 42, 43, 44, 45, 46, 47, 48]),
    Prompt(text="Hi"),
    Prompt(text="What is the capital of France? Answer in one word please"),
]


def test_n_samples_per_prompt_in_order_with_counts(tiny_chatml):
    b = backend(tiny_chatml)
    tok = b.tokenizer()
    out = b.generate(PROMPTS, SamplingParams(n=3, max_tokens=6, seed=0))
    assert len(out) == len(PROMPTS) and all(len(per) == 3 for per in out)
    # tokens_in is the exact prompt: raw text without special tokens, chat with template + BOS
    assert out[0][0].tokens_in == len(tok("Explain gradient descent", add_special_tokens=False)["input_ids"])
    chat_ids = b.prompt_token_ids(Prompt(messages=CHAT))
    assert chat_ids[0] == tok.bos_token_id and tok.decode(chat_ids).endswith("<|im_start|>assistant\n")
    assert out[1][0].tokens_in == len(chat_ids)
    assert out[2][0].tokens_in == 9
    for per in out:
        for c in per:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.tokens_out <= 6 and c.latency_s > 0
            if c.finish_reason == "length":
                assert c.tokens_out == 6
    # samples of one prompt differ (random model, 6 tokens: equal would be a broken sampler)
    assert len(set(texts(out)[0])) == 3


def test_seed_gives_same_outputs_whatever_the_batch(tiny_chatml):
    params = SamplingParams(n=2, max_tokens=8, seed=7, top_k=50, top_p=0.9, temperature=0.8)
    reference = texts(backend(tiny_chatml, batch_size=4).generate(PROMPTS, params))
    assert texts(backend(tiny_chatml, batch_size=4).generate(PROMPTS, params)) == reference
    # other batch size, reversed order, prompts alone: same text per (prompt, sample)
    assert texts(backend(tiny_chatml, batch_size=3).generate(PROMPTS[::-1], params)) == reference[::-1]
    alone = backend(tiny_chatml, batch_size=1)
    assert texts(alone.generate([PROMPTS[2]], params)) == [reference[2]]
    other_seed = texts(backend(tiny_chatml).generate(PROMPTS, params.model_copy(update={"seed": 8})))
    assert other_seed != reference


def test_greedy_is_deterministic_and_n_copies(tiny_chatml):
    b = backend(tiny_chatml)
    out = b.generate(PROMPTS[:2], SamplingParams(n=3, temperature=0, max_tokens=5))
    assert all(len(set(per)) == 1 for per in texts(out))
    assert texts(b.generate(PROMPTS[:2], SamplingParams(n=3, temperature=0, max_tokens=5, seed=99))) == texts(out)


def test_max_tokens_gives_length(tiny_chatml):
    out = backend(tiny_chatml).generate([Prompt(text="Tell me a joke")], SamplingParams(max_tokens=3, temperature=0))
    c = out[0][0]
    assert (c.finish_reason, c.tokens_out) == ("length", 3)


def test_stop_string_cuts_text(tiny_chatml):
    b = backend(tiny_chatml)
    params = SamplingParams(max_tokens=24, seed=3)
    full = b.generate([PROMPTS[0]], params)[0][0].text
    assert len(full) > 10
    stop = full[5:8]
    cut = b.generate([PROMPTS[0]], params.model_copy(update={"stop": [stop, "never-there"]}))[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.find(stop)]
    assert stop not in cut.text and cut.tokens_out < 24


def test_stop_token_ids_and_eos(tiny_chatml):
    b = backend(tiny_chatml)
    tok = b.tokenizer()
    assert tok.eos_token_id in b.stop_ids(SamplingParams())  # <|im_end|> ends generation
    first = b.generate([PROMPTS[3]], SamplingParams(max_tokens=4, temperature=0))[0][0]
    first_id = tok(first.text, add_special_tokens=False)["input_ids"][0]
    stopped = b.generate([PROMPTS[3]], SamplingParams(max_tokens=4, temperature=0, stop_token_ids=[first_id]))[0][0]
    assert (stopped.text, stopped.finish_reason, stopped.tokens_out) == ("", "stop", 1)


def test_chat_template_override_and_load_backend(tiny_chatml, tmp_path):
    b = load_backend("m", TransformersModel(backend="transformers", path=tiny_chatml, chat_template="llama-3-instruct"))
    ids = b.prompt_token_ids(Prompt(messages=CHAT))
    assert "<|start_header_id|>" in b.tokenizer().decode(ids)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        b.generate([Prompt(text="")], SamplingParams(max_tokens=2))


def test_cut_at_stop_strings():
    assert cut_at_stop_strings("abc###def", ["#", "c"]) == ("ab", True)
    assert cut_at_stop_strings("abc", ["x"]) == ("abc", False)
    assert cut_at_stop_strings("abc", [""]) == ("abc", False)


def test_checkpoint_sampling_defaults_do_not_leak(tiny_chatml, tmp_path):
    import shutil

    from transformers import GenerationConfig

    leaky = tmp_path / "leaky"
    shutil.copytree(tiny_chatml, leaky)
    config = GenerationConfig.from_pretrained(leaky)
    config.repetition_penalty, config.do_sample, config.top_k = 50.0, True, 1
    config.save_pretrained(leaky)
    params = SamplingParams(temperature=0, max_tokens=12)
    reference = backend(tiny_chatml).generate([PROMPTS[3]], params)
    assert texts(backend(str(leaky)).generate([PROMPTS[3]], params)) == texts(reference)
