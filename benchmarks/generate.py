"""Generation overhead: datamix's transformers backend vs a plain `model.generate` loop.

Same randomly initialised model, same chat prompts, same batch size, same
sampling settings (temperature, top_p, max_new_tokens, stop ids), in the same
process. Prints generated tokens/s for both and the ratio (target: datamix
costs at most 10% more time per token).

    python benchmarks/generate.py [--prompts 64] [--batch-size 16] [--max-tokens 64]
        [--hidden 256] [--layers 4] [--repeats 3] [--device auto]

Prompts: the alpaca_eval instructions when /work/shared/datasets is there, else
built-in ones. Each side runs `--repeats` times, interleaved; the best run of each
counts (the machine is shared, the best run is the least disturbed one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ALPACA = Path("/work/shared/datasets/alpaca_eval/gpt4.json")
FALLBACK = [
    "Explain the difference between a list and a tuple in Python.",
    "Write a haiku about autumn.",
    "Give me three tips for staying healthy.",
    "What causes the seasons on Earth?",
    "Summarize the plot of a detective story in two sentences.",
    "How do I sort a dictionary by value?",
    "Translate 'good morning' into French and German.",
    "Describe the water cycle.",
]


def instructions(k: int) -> list[str]:
    if ALPACA.exists():
        rows = json.loads(ALPACA.read_text())
        return [r["instruction"] for r in rows[:k]]
    return [FALLBACK[i % len(FALLBACK)] + f" ({i})" for i in range(k)]


def run_datamix(backend, prompts, params) -> tuple[int, float]:
    t0 = time.perf_counter()
    out = backend.generate(prompts, params)
    return sum(c.tokens_out for per in out for c in per), time.perf_counter() - t0


def run_plain(model, tok, chats, batch_size, params, eos_ids, device) -> tuple[int, float]:
    """The loop a user would write: batches in input order, tokenizer padding, HF sampling."""
    import torch

    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, len(chats), batch_size):
        texts = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats[start : start + batch_size]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                max_new_tokens=params.max_tokens,
                eos_token_id=eos_ids,
                pad_token_id=tok.pad_token_id,
            )
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            n = next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))
            tokens += n
    return tokens, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    import torch

    from datamix.models import Prompt, SamplingParams, TransformersModel
    from datamix.models.tiny import build_tiny_model
    from datamix.models.transformers import TransformersBackend

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(os.path.join(tmp, "m"), hidden_size=args.hidden, num_layers=args.layers)
        spec = TransformersModel(backend="transformers", path=path, batch_size=args.batch_size, device=args.device)
        backend = TransformersBackend("bench", spec)
        model, tok = backend.model(), backend.tokenizer()  # one model object for both sides
        device = backend._device
        chats = [[{"role": "user", "content": text}] for text in instructions(args.prompts)]
        prompts = [Prompt(messages=c) for c in chats]
        params = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=args.max_tokens, seed=0)
        eos_ids = backend.stop_ids(params)

        run_datamix(backend, prompts[: args.batch_size], params)  # warm-up
        run_plain(model, tok, chats[: args.batch_size], args.batch_size, params, eos_ids, device)
        best_dm, best_plain = None, None
        for _ in range(args.repeats):
            dm = run_datamix(backend, prompts, params)
            pl = run_plain(model, tok, chats, args.batch_size, params, eos_ids, device)
            best_dm = dm if best_dm is None or dm[0] / dm[1] > best_dm[0] / best_dm[1] else best_dm
            best_plain = pl if best_plain is None or pl[0] / pl[1] > best_plain[0] / best_plain[1] else best_plain

    dm_tps = best_dm[0] / best_dm[1]
    plain_tps = best_plain[0] / best_plain[1]
    print(f"device {device}, torch threads {torch.get_num_threads()}, model hidden {args.hidden} x {args.layers} layers")
    print(f"{args.prompts} chat prompts, batch {args.batch_size}, max_tokens {args.max_tokens}, temperature 1.0, top_p 0.95")
    print(f"datamix TransformersBackend.generate: {best_dm[0]} tokens in {best_dm[1]:.2f}s = {dm_tps:,.0f} tokens/s")
    print(f"plain model.generate loop:            {best_plain[0]} tokens in {best_plain[1]:.2f}s = {plain_tps:,.0f} tokens/s")
    overhead = plain_tps / dm_tps - 1
    print(f"ratio datamix/plain tokens/s: {dm_tps / plain_tps:.3f} (overhead {overhead:+.1%}, target <= +10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
