"""Packed vs padded training throughput, and the exporter's tokenize+pack rate, in one run on the same data.

    python benchmarks/train.py                 # CPU: tiny model; GPU: random Qwen2-style ~0.5B, seq_len 4096, bf16
    python benchmarks/train.py --rows 3000 --seq-len 2048 --steps 6

Data: GSM8K train (domain) + alpaca_eval answers (general) from /work/shared/datasets
when present, else synthetic chats with a log-normal length spread. The same rows
are exported twice: packed (best-fit-decreasing, pack=ffd) and padded (one sample
per sequence, pack=none); the recipe trains a few steps on each and we compare real
(non-padding) tokens/s: real tokens / time over the timed steps of a run (the first
step is warm-up), best of --repeats runs per variant, run alternately, plus the
ratio of each alternating pair (the spread says how noisy the machine was).

The padded peer is what a practitioner runs: samples in random order (HF Trainer's
default, group_by_length=False), each micro-batch padded to its longest sample
(the recipe's trim_padding, as HF's padding collators do), attention that never
looks at padding. `--no-trim` pads every sequence to seq_len instead (the older,
weaker baseline); `--attn sdpa` gives transformers' dense block-diagonal mask path.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

DATASETS = "/work/shared/datasets"


def load_rows(n: int, seed: int = 0) -> tuple[list[dict], str]:
    rng = random.Random(seed)
    rows: list[dict] = []
    gsm = os.path.join(DATASETS, "gsm8k", "train.jsonl")
    alpaca = os.path.join(DATASETS, "alpaca_eval")
    if os.path.isfile(gsm) and os.path.isdir(alpaca):
        for i, line in enumerate(open(gsm)):
            r = json.loads(line)
            rows.append({"sample_id": f"g{i}", "source": "gsm8k",
                         "messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]})
        for name in sorted(os.listdir(alpaca)):
            if name.endswith(".json"):
                for i, r in enumerate(json.load(open(os.path.join(alpaca, name)))):
                    rows.append({"sample_id": f"a{name}{i}", "source": "alpaca_eval",
                                 "messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]})
        what = "gsm8k train + alpaca_eval (7 models' answers)"
    else:
        words = "the model learns to answer questions about data and code with care and some detail".split()
        for i in range(n):
            k = max(3, int(rng.lognormvariate(4.5, 0.9)))
            rows.append({"sample_id": f"s{i}", "source": "synthetic", "messages": [
                {"role": "user", "content": " ".join(rng.choices(words, k=12))},
                {"role": "assistant", "content": " ".join(rng.choices(words, k=k))}]})
        what = "synthetic (log-normal answer lengths)"
    rng.shuffle(rows)
    return rows[:n], what


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--seq-len", type=int, default=None, help="default: 4096 on GPU, 1024 on CPU")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first is warm-up, not timed)")
    ap.add_argument("--sequences-per-step", type=int, default=None, help="default: 8 on GPU, 4 on CPU")
    ap.add_argument("--workers", type=int, default=1, help="tokenizer processes for the export")
    ap.add_argument("--repeats", type=int, default=3, help="train runs per variant, alternating packed/padded; the best counts (noisy shared CPUs)")
    ap.add_argument("--attn", default="auto", help="recipe attn_implementation (auto: documents on CPU, flash_attention_2/flex_attention on GPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on CPU: on a shared box a 2-thread kernel stalls at every barrier a neighbour delays)")
    ap.add_argument("--no-trim", action="store_true", help="pad every sequence to seq_len (no dynamic padding)")
    ap.add_argument("--peak-flops", type=float, default=790e12)
    args = ap.parse_args()

    import numpy as np
    import polars as pl
    import torch

    from datamix.export.shards import ShardsConfig, write_shards
    from datamix.models.tiny import build_tiny_model
    from datamix.train import recipe

    gpu = torch.cuda.is_available()
    if args.threads or not gpu:
        torch.set_num_threads(args.threads or 1)
    seq_len = args.seq_len or (4096 if gpu else 1024)
    per_step = args.sequences_per_step or (8 if gpu else 4)
    work = tempfile.mkdtemp(prefix="datamix-bench-train-")
    # The tokenizer: the tiny model's byte-level BPE with the Qwen2.5 chat template (no hub access here).
    tiny = build_tiny_model(os.path.join(work, "tiny"), arch="qwen2", chat_template="qwen2.5-instruct",
                            hidden_size=128, num_layers=2)
    model_dir, init, model_desc = tiny, "pretrained", "tiny qwen2 (hidden 128, 2 layers)"
    if gpu:  # a Qwen2-0.5B-shaped model with random weights; the tokenizer ids fit its vocabulary
        from transformers import AutoConfig

        cfg = AutoConfig.for_model("qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   max_position_embeddings=32768, tie_word_embeddings=True)
        model_dir = os.path.join(work, "qwen2-0.5b-random")
        cfg.save_pretrained(model_dir)
        for name in os.listdir(tiny):
            if name.startswith(("tokenizer", "chat_template")):
                os.link(os.path.join(tiny, name), os.path.join(model_dir, name))
        init, model_desc = "random", "random Qwen2-style ~0.5B (24 layers, hidden 896), bf16"

    rows, what = load_rows(args.rows)
    frame = pl.DataFrame(rows)
    results, shards = {}, {}
    for pack in ("ffd", "none"):
        out = shards[pack] = os.path.join(work, f"shards-{pack}")
        t0 = time.perf_counter()
        manifest, _ = write_shards(frame, out, ShardsConfig(tokenizer=tiny, seq_len=seq_len, pack=pack, workers=args.workers))
        export_s = time.perf_counter() - t0
        results[pack] = {
            "export_tokens_per_s": manifest["tokens"] / export_s,
            "padding": manifest["padding_fraction"],
            "sequences": manifest["sequences"],
            "tokens": manifest["tokens"],
            "truncated": manifest["counts"]["truncated"],
            "train_tokens_per_s": 0.0,
            "cpu_tokens_per_s": 0.0,
            "trained_padding": None,
            "mfu": None,
        }
    pair_ratios, cpu_ratios = [], []
    for repeat in range(args.repeats):
        rates = {}
        for pack in ("ffd", "none"):  # alternate, so a noisy neighbour hurts both variants alike
            run_dir = os.path.join(work, f"run-{pack}-{repeat}")
            code = recipe.main([f"model={model_dir}", f"init={init}", f"shards={shards[pack]}", f"output_dir={run_dir}",
                                f"batch_tokens={per_step * seq_len}", f"max_steps={args.steps}", "save_model=false",
                                "warmup_steps=1", "lr=1e-4", f"peak_flops={args.peak_flops}", f"log_every={args.steps}",
                                f"attn_implementation={args.attn}", f"trim_padding={not args.no_trim}"])
            assert code == 0
            steps = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))][1:]  # skip warm-up
            tokens = sum(s["tokens"] for s in steps)
            rate = rates[pack] = tokens / sum(s["step_s"] for s in steps)
            # Per CPU-second of this process (1 thread): what neighbours on a shared box do not distort.
            cpu_rate = rates[pack + "-cpu"] = tokens / sum(s["cpu_s"] for s in steps)
            r = results[pack]
            r["cpu_tokens_per_s"] = max(r["cpu_tokens_per_s"], cpu_rate)
            r["trained_padding"] = 1 - tokens / sum(s["positions"] for s in steps)  # the same batches every repeat
            if rate > r["train_tokens_per_s"]:
                r["train_tokens_per_s"] = rate
                # MFU of the whole timed run: FLOP-weighted, not a median of step MFUs
                r["mfu"] = sum(s["mfu"] * s["step_s"] for s in steps) / sum(s["step_s"] for s in steps) if gpu else None
        pair_ratios.append(rates["ffd"] / rates["none"])
        cpu_ratios.append(rates["ffd-cpu"] / rates["none-cpu"])

    packed_tokens = results["ffd"]["tokens"]
    p, d = results["ffd"], results["none"]
    attn = recipe.attention_for(args.attn, gpu)
    print(f"data: {what}; {len(rows)} rows, {packed_tokens:,} tokens; seq_len {seq_len}; model: {model_desc}; "
          f"{'GPU ' + torch.cuda.get_device_name() if gpu else 'CPU'}; attention {attn}; "
          f"{per_step} sequences/step, {args.steps - 1} timed steps x {args.repeats} repeats")
    print(f"export (tokenize + label + pack + write): {p['export_tokens_per_s']:,.0f} tokens/s (workers={args.workers})")
    # padding: of the shards (to seq_len); trained padding: of the batches the model ran on (after trimming)
    print(f"{'':8} {'sequences':>10} {'padding':>8} {'trained padding':>16} {'train tokens/s':>15}"
          + ("  MFU" if gpu else f" {'tokens/CPU-s':>13}"))
    for name, r in (("packed", p), ("padded", d)):
        print(f"{name:8} {r['sequences']:>10,} {r['padding']:>8.1%} {r['trained_padding']:>16.1%} {r['train_tokens_per_s']:>15,.0f}"
              + (f"  {r['mfu']:.1%}" if gpu else f" {r['cpu_tokens_per_s']:>13,.0f}"))
    print(f"packed / padded tokens/s: {p['train_tokens_per_s'] / d['train_tokens_per_s']:.2f}x best vs best "
          f"(per alternating pair: {', '.join(f'{x:.2f}x' for x in pair_ratios)}; target >= 1.8x); "
          f"packed padding {p['padding']:.1%} (target <= 3%); truncated samples: {p['truncated']}")
    if not gpu:
        print(f"per CPU-second of the training process: {p['cpu_tokens_per_s'] / d['cpu_tokens_per_s']:.2f}x best vs best "
              f"(per pair: {', '.join(f'{x:.2f}x' for x in cpu_ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
