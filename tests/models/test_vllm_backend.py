"""The vllm backend: argument mapping without vLLM; a real run where vLLM and a GPU are present."""

import importlib.util
from types import SimpleNamespace

import pytest

from datamix.models import Prompt, SamplingParams, VLLMModel, load_backend
from datamix.models.vllm import VLLMBackend, from_vllm_output, llm_kwargs, to_vllm_prompt, to_vllm_sampling_kwargs


def test_sampling_kwargs_mapping():
    kw = to_vllm_sampling_kwargs(
        SamplingParams(n=3, temperature=0.7, top_p=0.9, top_k=0, max_tokens=64, stop=["\n\n"], stop_token_ids=[5]),
        seed=42,
        extra_stop_token_ids=[7, 5],
    )
    assert kw["n"] == 3 and kw["temperature"] == 0.7 and kw["top_p"] == 0.9 and kw["max_tokens"] == 64
    assert kw["top_k"] == -1  # disabled, in the spelling every vLLM version accepts
    assert kw["stop"] == ["\n\n"] and kw["stop_token_ids"] == [5, 7] and kw["seed"] == 42
    assert kw["skip_special_tokens"] is True and kw["include_stop_str_in_output"] is False
    assert to_vllm_sampling_kwargs(SamplingParams(top_k=40))["top_k"] == 40
    plain = to_vllm_sampling_kwargs(SamplingParams())
    assert plain["stop"] is None and plain["stop_token_ids"] is None and plain["seed"] is None
    # greedy asks for one sample; from_vllm_output copies it n times
    assert to_vllm_sampling_kwargs(SamplingParams(n=4, temperature=0))["n"] == 1


def test_llm_kwargs_and_prompt():
    spec = VLLMModel(backend="vllm", path="/m", tensor_parallel_size=2, dtype="bfloat16", gpu_memory_utilization=0.5)
    assert llm_kwargs(spec) == {
        "model": "/m", "tensor_parallel_size": 2, "dtype": "bfloat16", "gpu_memory_utilization": 0.5, "seed": 0,
    }
    assert llm_kwargs(spec.model_copy(update={"max_model_len": 4096}))["max_model_len"] == 4096
    assert to_vllm_prompt([1, 2, 3]) == {"prompt_token_ids": [1, 2, 3]}


def _fake_output(texts, reasons, prompt_ids=(1, 2, 3)):
    outs = [SimpleNamespace(index=i, text=t, token_ids=list(range(len(t))), finish_reason=r) for i, (t, r) in enumerate(zip(texts, reasons))]
    return SimpleNamespace(prompt_token_ids=list(prompt_ids), outputs=outs[::-1])


def test_from_vllm_output():
    got = from_vllm_output(_fake_output(["ab", "cde"], ["stop", "length"]), n=2, latency_s=0.5)
    assert [(c.text, c.finish_reason, c.tokens_in, c.tokens_out) for c in got] == [("ab", "stop", 3, 2), ("cde", "length", 3, 3)]
    copies = from_vllm_output(_fake_output(["g"], ["stop"]), n=3, latency_s=0.1)
    assert [c.text for c in copies] == ["g", "g", "g"] and copies[0] is not copies[1]


def test_chat_prompts_are_rendered_to_token_ids(tiny_chatml):
    b = load_backend("v", VLLMModel(backend="vllm", path=tiny_chatml, chat_template="llama-3-instruct"))
    assert isinstance(b, VLLMBackend)
    from datamix.models.transformers import encode_prompt

    ids = encode_prompt(b.tokenizer(), Prompt(messages=[{"role": "user", "content": "hi"}]), "v")
    assert b.tokenizer().decode(ids).startswith("<s><|start_header_id|>user")
    assert b.end_of_turn_ids() == [b.tokenizer().eos_token_id]


def _gpu_and_vllm() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'datamix[vllm]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_and_vllm() is not None, reason=_gpu_and_vllm() or "")
def test_real_vllm_generates(tmp_path):
    from datamix.models.tiny import build_tiny_model

    # head_dim 64: the attention kernels of vLLM do not all take tiny head sizes
    path = build_tiny_model(str(tmp_path / "m"), hidden_size=256, num_layers=2)
    spec = VLLMModel(backend="vllm", path=path, gpu_memory_utilization=0.3, max_model_len=512, dtype="float32")
    b = VLLMBackend("v", spec, engine_kwargs={"enforce_eager": True})
    prompts = [Prompt(text="Hello"), Prompt(messages=[{"role": "user", "content": "Write a haiku"}])]
    params = SamplingParams(n=2, max_tokens=8, seed=3)
    out = b.generate(prompts, params)
    assert [len(per) for per in out] == [2, 2]
    assert all(c.tokens_out <= 8 and c.finish_reason in ("stop", "length") for per in out for c in per)
    assert out[1][0].tokens_in == len(b.tokenizer()(b.tokenizer().apply_chat_template(
        prompts[1].messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
    # the same seed gives the same text, also with the prompts in another batch
    assert [c.text for c in b.generate(prompts[::-1], params)[1]] == [c.text for c in out[0]]
    length = b.generate([prompts[0]], SamplingParams(max_tokens=2, temperature=0, n=2))[0]
    assert length[0].text == length[1].text
