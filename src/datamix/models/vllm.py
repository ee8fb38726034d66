"""The `vllm` backend: the offline `vllm.LLM` engine (optional extra `datamix[vllm]`, imported lazily).

Prompts always go in as token ids (`{"prompt_token_ids": [...]}`, vLLM's
TokensPrompt), so a pre-query template reaches the model byte for byte; chat
prompts are rendered with the tokenizer's chat template here first (the same
`encode_prompt` as the transformers backend, so both see identical ids).

The mapping to and from vLLM is in pure functions (`llm_kwargs`,
`to_vllm_sampling_kwargs`, `to_vllm_prompt`, `from_vllm_output`), tested without
vLLM installed.

Seeds: each prompt gets its own `SamplingParams(seed=...)`, derived from (seed,
prompt ids) as in the transformers backend, so vLLM's per-request generator makes a
prompt's samples independent of what else is in the batch. The draws themselves
differ from the transformers backend's (another sampler): same seed, same backend,
same text; not the same text across backends.
"""

from __future__ import annotations

import time

from datamix.models import Completion, Prompt, SamplingParams, VLLMModel


def llm_kwargs(spec: VLLMModel) -> dict:
    """Keyword arguments of `vllm.LLM(...)` for a declared model."""
    kwargs = {
        "model": spec.path,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "dtype": spec.dtype,
        "gpu_memory_utilization": spec.gpu_memory_utilization,
        "seed": spec.seed,
    }
    if spec.max_model_len is not None:
        kwargs["max_model_len"] = spec.max_model_len
    return kwargs


def to_vllm_sampling_kwargs(params: SamplingParams, seed: int | None = None, extra_stop_token_ids=()) -> dict:
    """Keyword arguments of `vllm.SamplingParams(...)` for one prompt.

    top_k: ours is 0 = disabled; vLLM before 0.9 accepts only -1 for that, newer
    accepts 0 or -1, so -1 works everywhere. Greedy (temperature 0) asks for one
    sample: the caller copies it n times (older vLLM rejects n > 1 when greedy).
    """
    stop_ids = list(dict.fromkeys([*params.stop_token_ids, *extra_stop_token_ids]))
    kwargs = {
        "n": 1 if params.temperature == 0.0 else params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop) or None,
        "stop_token_ids": stop_ids or None,
        "seed": seed,
        # as the transformers backend and OpenAI servers: no special tokens in
        # the text, no stop string either
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
    }
    return kwargs


def to_vllm_prompt(token_ids: list[int]) -> dict:
    """vLLM's TokensPrompt (a TypedDict, so a plain dict works in every version)."""
    return {"prompt_token_ids": list(token_ids)}


def from_vllm_output(output, n: int, latency_s: float) -> list[Completion]:
    """`n` Completions from one `vllm.RequestOutput` (copied when vLLM made one greedy sample)."""
    tokens_in = len(output.prompt_token_ids or [])
    done = [
        Completion(
            text=o.text,
            finish_reason=o.finish_reason or "stop",
            tokens_in=tokens_in,
            tokens_out=len(o.token_ids),
            latency_s=latency_s,
        )
        for o in sorted(output.outputs, key=lambda o: getattr(o, "index", 0))
    ]
    if not done:
        raise RuntimeError("vLLM returned no output for a prompt")
    while len(done) < n:  # greedy: one sample stands for all n
        done.append(Completion(**vars(done[0])))
    return done[:n]


class VLLMBackend:
    """Backend over `vllm.LLM`; the engine starts on first use (it takes the GPU memory)."""

    def __init__(self, name: str, spec: VLLMModel, *, engine_kwargs: dict | None = None):
        self.name = name
        self.spec = spec
        # Extra `vllm.LLM` arguments not in the YAML schema (e.g. enforce_eager in tests).
        self.engine_kwargs = dict(engine_kwargs or {})
        self._llm = None
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"VLLMBackend(name={self.name!r}, path={self.spec.path!r})"

    def tokenizer(self):
        if self._tokenizer is None:
            from datamix.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.spec.path, self.spec.chat_template, self.name)
        return self._tokenizer

    def llm(self):
        if self._llm is None:
            try:
                import vllm
            except ImportError as e:
                raise ImportError(
                    f"model {self.name!r} uses backend vllm, which is not installed here ({e}). "
                    "Install it with `pip install 'datamix[vllm]'` on a machine with a GPU, "
                    "or declare the model with `backend: transformers`."
                ) from e
            self._llm = vllm.LLM(**llm_kwargs(self.spec), **self.engine_kwargs)
        return self._llm

    def end_of_turn_ids(self) -> list[int]:
        """The tokenizer's eos: vLLM stops there by itself, listed anyway so both backends stop alike."""
        tok = self.tokenizer()
        return [tok.eos_token_id] if tok.eos_token_id is not None else []

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        import vllm

        from datamix.models.transformers import encode_prompt, row_seed

        token_ids = [encode_prompt(self.tokenizer(), p, self.name) for p in prompts]
        for i, ids in enumerate(token_ids):
            if not ids:
                raise ValueError(f"prompt {i} is empty after tokenization; a model needs at least one input token")
        extra = self.end_of_turn_ids()
        per_prompt = [
            vllm.SamplingParams(
                **to_vllm_sampling_kwargs(
                    params,
                    None if params.seed is None else row_seed(params.seed, ids, 0) & 0x7FFFFFFF,
                    extra,
                )
            )
            for ids in token_ids
        ]
        llm = self.llm()
        t0 = time.perf_counter()
        outputs = llm.generate([to_vllm_prompt(ids) for ids in token_ids], per_prompt, use_tqdm=False)
        latency = time.perf_counter() - t0
        # vLLM returns outputs in the order of the prompts
        return [from_vllm_output(o, params.n, latency) for o in outputs]
