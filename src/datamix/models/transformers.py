"""The `transformers` backend: `AutoModelForCausalLM.generate`, batched, on CPU or GPU.

Semantics shared with the other backends (see `SamplingParams`):
- raw prompts (text or token ids) are sent as is, no special tokens added; chat
  prompts are rendered with the chat template and the generation prompt;
- temperature 0 is greedy (the n samples of a prompt are then identical, as in vLLM);
- generation stops at the tokenizer's eos, the generation config's eos ids (end of
  turn), `stop_token_ids` (finish "stop", the token is not in the text) and at stop
  strings (text cut before the first one, finish "stop"); else "length" at max_tokens.
- text is decoded without special tokens, as vLLM and OpenAI servers do.

Batching: every (prompt, sample index) pair is one row; rows are sorted by prompt
length (longest first) so a batch pads little, left padded, `spec.batch_size` rows
per forward pass; results come back in input order.

Seeds: sampling draws with the Gumbel-max trick from one `torch.Generator` per row,
seeded from (seed, prompt token ids, sample index). A row's draws therefore do not
depend on which other rows share its batch, the batch size, or the order of the
prompts: the same seed gives the same text for the same prompt and sample index.
What does not hold bit for bit: logits of a padded row in a different batch can
differ in the last float bits (other matmul shapes), which on rare near-ties flips a
token; on one device with one batch size, runs are reproducible exactly.
With seed None, a fresh random base seed is drawn per call.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass

from datamix.models import Completion, Prompt, SamplingParams, TransformersModel, report_progress


@dataclass
class _Row:
    """One generation: a prompt's token ids and which of its n samples this is."""

    prompt_index: int
    sample_index: int
    token_ids: list[int]
    seed: int


def row_seed(base_seed: int, token_ids: list[int], sample_index: int) -> int:
    """A 63-bit seed from (seed, prompt, sample index): independent of batch layout."""
    h = hashlib.sha256(f"{base_seed}:{sample_index}:".encode())
    h.update(",".join(map(str, token_ids)).encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def cut_at_stop_strings(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def encode_prompt(tok, prompt: Prompt, model_name: str) -> list[int]:
    """A prompt's token ids: raw text/ids as is (no special tokens added), chats through the chat template.

    Shared by the backends that tokenize locally (transformers, vllm).
    """
    if prompt.token_ids is not None:
        return list(prompt.token_ids)
    if prompt.text is not None:
        return tok(prompt.text, add_special_tokens=False)["input_ids"]
    if prompt.messages is not None:
        if not tok.chat_template:
            raise ValueError(
                f"model {model_name!r} has no chat template for chat prompts; "
                "set `chat_template:` on the model (a bundled name or a .jinja file)"
            )
        # Render to text, then encode without special tokens: the template writes
        # the BOS itself where the family has one, so it is never doubled.
        text = tok.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]
    raise ValueError("a Prompt needs text, token_ids or messages")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype; use auto, float32, bfloat16 or float16")
    return dtype


class TransformersBackend:
    """Backend over a local (or cached) Hugging Face causal LM. Loads lazily on first use."""

    def __init__(self, name: str, spec: TransformersModel):
        self.name = name
        self.spec = spec
        self._tokenizer = None
        self._model = None
        self._device: str | None = None

    def __repr__(self) -> str:
        return f"TransformersBackend(name={self.name!r}, path={self.spec.path!r})"

    # -- loading ---------------------------------------------------------------

    def tokenizer(self):
        if self._tokenizer is None:
            from datamix.models import load_tokenizer

            tok = load_tokenizer(self.spec.path, self.spec.chat_template, self.name)
            tok.padding_side = "left"
            self._tokenizer = tok
        return self._tokenizer

    def model(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM

            self._device = resolve_device(self.spec.device)
            model = AutoModelForCausalLM.from_pretrained(self.spec.path, dtype=_torch_dtype(self.spec.dtype))
            model.generation_config = _neutral_generation_config(model.generation_config)
            self._model = model.to(self._device).eval()
        return self._model

    # -- prompts ---------------------------------------------------------------

    def prompt_token_ids(self, prompt: Prompt) -> list[int]:
        """Token ids exactly as the model will see them."""
        return encode_prompt(self.tokenizer(), prompt, self.name)

    def stop_ids(self, params: SamplingParams) -> list[int]:
        """Token ids that end generation: the request's, the tokenizer's eos and the model's end-of-turn ids."""
        tok = self.tokenizer()
        ids = list(params.stop_token_ids)
        eos = self.model().generation_config.eos_token_id
        ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
        return list(dict.fromkeys(ids))

    # -- generation ------------------------------------------------------------

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        base_seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(62)
        greedy = params.temperature == 0.0
        rows = []
        for i, p in enumerate(prompts):
            ids = self.prompt_token_ids(p)
            if not ids:
                raise ValueError(f"prompt {i} is empty after tokenization; a model needs at least one input token")
            # Greedy samples are identical: generate one and copy it n times.
            for j in range(1 if greedy else params.n):
                rows.append(_Row(i, j, ids, row_seed(base_seed, ids, j)))

        results: dict[tuple[int, int], Completion] = {}
        order = sorted(range(len(rows)), key=lambda k: -len(rows[k].token_ids))
        bs = self.spec.batch_size
        for start in range(0, len(order), bs):
            batch = [rows[k] for k in order[start : start + bs]]
            for row, completion in zip(batch, self._generate_batch(batch, params, greedy)):
                results[(row.prompt_index, row.sample_index)] = completion
            report_progress(len(batch) * (params.n if greedy else 1))

        out = []
        for i in range(len(prompts)):
            if greedy:
                c = results[(i, 0)]
                out.append([c] + [Completion(**vars(c)) for _ in range(params.n - 1)])
            else:
                out.append([results[(i, j)] for j in range(params.n)])
        return out

    def _generate_batch(self, batch: list[_Row], params: SamplingParams, greedy: bool) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        model, tok = self.model(), self.tokenizer()
        stop_ids = self.stop_ids(params)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0]
        input_ids, attention_mask = _left_pad([r.token_ids for r in batch], pad_id, self._device)

        # A fresh config, so the checkpoint's own defaults (repetition penalty,
        # top_p, ...) do not leak in: every backend samples the same way.
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=False,  # sampling happens in _GumbelSampler; generate takes the argmax
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
        )
        processors = LogitsProcessorList()
        if not greedy:
            processors.extend(_sampling_processors(params, [r.seed for r in batch], self._device))
        criteria = StoppingCriteriaList()
        if params.stop:
            criteria.append(_StopStrings(tok, params.stop, input_ids.shape[1]))

        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=criteria,
            )
        latency = time.perf_counter() - t0
        new_tokens = out[:, input_ids.shape[1] :].tolist()
        return [
            _to_completion(tok, toks, len(r.token_ids), params, set(stop_ids), pad_id, latency)
            for r, toks in zip(batch, new_tokens)
        ]


def _neutral_generation_config(checkpoint_config):
    """Only the checkpoint's special-token ids, none of its sampling defaults.

    generate() fills fields left unset in the config we pass from the model's own
    generation_config, so a checkpoint's repetition_penalty or top_p would leak
    into every request; the other backends do not apply them either.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=checkpoint_config.bos_token_id,
        eos_token_id=checkpoint_config.eos_token_id,
        pad_token_id=checkpoint_config.pad_token_id,
    )


def _left_pad(seqs: list[list[int]], pad_id: int, device: str):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _to_completion(tok, new_tokens, tokens_in, params, stop_ids, pad_id, latency) -> Completion:
    """Cut a row's new tokens at the first stop token, then its text at the first stop string.

    tokens_out counts generated tokens up to and including the stop token (as vLLM does).
    """
    stop_at = next((k for k, t in enumerate(new_tokens) if t in stop_ids), None)
    if stop_at is not None:
        kept, tokens_out, finish = new_tokens[:stop_at], stop_at + 1, "stop"
    else:
        kept, tokens_out, finish = list(new_tokens), len(new_tokens), "length"
    text, hit = cut_at_stop_strings(tok.decode(kept, skip_special_tokens=True), params.stop)
    if hit and stop_at is None:
        # generate pads a row after its stop string while the rest of the batch goes on
        while kept and kept[-1] == pad_id:
            kept.pop()
        tokens_out = len(kept)
    if hit:
        finish = "stop"
    return Completion(text=text, finish_reason=finish, tokens_in=tokens_in, tokens_out=tokens_out, latency_s=latency)


def _sampling_processors(params: SamplingParams, seeds: list[int], device: str) -> list:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    procs = []
    if params.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k > 0:
        procs.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        procs.append(TopPLogitsWarper(params.top_p))
    procs.append(_GumbelSampler(seeds, device))
    return procs


class _GumbelSampler:
    """Adds Gumbel noise from one generator per row: argmax(logits + G) ~ softmax(logits).

    generate() then takes the argmax (do_sample=False), so the draw of a row depends
    only on its own generator, never on the other rows of the batch.
    """

    def __init__(self, seeds: list[int], device: str):
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        u = torch.stack(
            [torch.rand(scores.shape[1], generator=g, device=scores.device, dtype=torch.float32) for g in self.generators]
        )
        gumbel = -torch.log(-torch.log(u.clamp_(min=1e-20, max=1.0 - 1e-7)))
        return scores.float() + gumbel


class _StopStrings:
    """Marks a row done once its generated text contains a stop string.

    Decodes only the tail of each row: enough tokens to hold the longest stop
    string even if every token were a single byte of a 4-byte character.
    """

    def __init__(self, tok, stops: list[str], prompt_width: int):
        self.tok = tok
        self.stops = [s for s in stops if s]
        self.prompt_width = prompt_width
        self.tail = 4 * max(len(s) for s in self.stops) + 4

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.prompt_width :]
        tails = new[:, -self.tail :].tolist()
        texts = self.tok.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], dtype=torch.bool, device=input_ids.device)
