"""Reward-model and log-likelihood scoring: datamix's judge scorers against a plain batched
transformers forward pass over the same rows, sorted by length, in the same run.

Both sides start from the same conversations (messages) and do the same work: render the
chat template, tokenize, forward, read the score (the reward head's logit; the mean
log-probability of the answer tokens). The peer is the loop one would write by hand:
texts sorted by token length, batches of `--batch-size`, `tokenizer(..., padding=True)`.
Target (issue 14): datamix within 1.3x of the peer.

    python benchmarks/judge_scoring.py --rows 400 --repeat 3
    python benchmarks/judge_scoring.py --rows 400 --baseline   # also the code before length-sorted batches

Data: the answers of ../shared/datasets/alpaca_eval (real instructions and answers of
varied length), or synthetic chats where that folder is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
SHARED = os.path.join(HERE, "..", "..", "shared", "datasets", "alpaca_eval")


def conversations(n: int) -> list[tuple[list[dict], str, str]]:
    rows = []
    if os.path.isdir(SHARED):
        for name in sorted(os.listdir(SHARED)):
            if name.endswith(".json"):
                rows += json.load(open(os.path.join(SHARED, name)))
            if len(rows) >= n:
                break
    else:  # synthetic answers with a spread of lengths
        import random

        rng = random.Random(0)
        words = "the model answers every question with a few words and sometimes with many more".split()
        rows = [{"instruction": f"Question {i}?", "output": " ".join(rng.choice(words) for _ in range(rng.randint(5, 400)))}
                for i in range(n)]
    return [([{"role": "user", "content": r["instruction"]}], r["instruction"], r["output"]) for r in rows[:n]]


def peer_reward(tokenizer, model, convs, batch_size: int) -> list[float]:
    import torch

    texts = [tokenizer.apply_chat_template([*b, {"role": "assistant", "content": r}], tokenize=False) for b, _, r in convs]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out = [0.0] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            for i, v in zip(idx, model(**batch).logits[:, 0].tolist()):
                out[i] = v
    return out


def peer_loglik(tokenizer, model, convs, batch_size: int) -> list[float]:
    import torch

    prompts = [tokenizer.apply_chat_template(b, tokenize=False, add_generation_prompt=True) for b, _, _ in convs]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([r for _, _, r in convs], add_special_tokens=False)["input_ids"]
    order = sorted(range(len(convs)), key=lambda i: -(len(p_ids[i]) + len(a_ids[i])))
    out = [0.0] * len(convs)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            seqs = [p_ids[i] + a_ids[i] for i in idx]
            width = max(map(len, seqs))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
            logp = logp.gather(-1, ids[:, 1:, None])[..., 0]
            for row, i in enumerate(idx):
                lo, hi = len(p_ids[i]) - 1, len(p_ids[i]) + len(a_ids[i]) - 1
                out[i] = float(logp[row, lo:hi].mean()) if hi > lo else float("nan")
    return out


def baseline_module():
    """The judge module as it was before length-sorted batches (git), for --baseline."""
    import importlib.util
    import subprocess

    source = subprocess.run(["git", "show", "b4b1767:src/datamix/steps/judge.py"], cwd=HERE, capture_output=True,
                            text=True, check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "judge_before.py")
    open(path, "w").write(source.replace('@register("judge", JudgeConfig', '@(lambda f: f) if True else register("judge", JudgeConfig'))
    spec = importlib.util.spec_from_file_location("judge_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", action="store_true", help="also time the scorers as they were before this change")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from datamix.models import load_tokenizer
    from datamix.models.tiny import build_tiny_model
    from datamix.steps import judge

    work = tempfile.mkdtemp()
    reward_path = build_tiny_model(os.path.join(work, "reward"), arch="llama", chat_template="chatml", reward=True, seed=2)
    lm_path = build_tiny_model(os.path.join(work, "lm"), arch="qwen2", chat_template="qwen2.5-instruct", seed=0)
    convs = conversations(args.rows)
    sides = {
        "reward_model": (load_tokenizer(reward_path, None, "reward"),
                         AutoModelForSequenceClassification.from_pretrained(reward_path).eval(),
                         judge._reward_scores, peer_reward),
        "loglik": (load_tokenizer(lm_path, None, "lm"), AutoModelForCausalLM.from_pretrained(lm_path).eval(),
                   judge._loglik_scores, peer_loglik),
    }
    before = baseline_module() if args.baseline else None
    print(f"{len(convs)} conversations, batch size {args.batch_size}, torch threads {torch.get_num_threads()}")
    for name, (tok, model, ours, peer) in sides.items():
        times: dict[str, list[float]] = {"datamix": [], "peer": [], "before": []}
        for _ in range(args.repeat):  # interleaved, so load on the machine hits both sides alike
            t = time.perf_counter()
            got = ours(tok, model, "cpu", convs, args.batch_size)
            times["datamix"].append(time.perf_counter() - t)
            t = time.perf_counter()
            want = peer(tok, model, convs, args.batch_size)
            times["peer"].append(time.perf_counter() - t)
            if before is not None:
                fn = before._reward_scores if name == "reward_model" else before._loglik_scores
                t = time.perf_counter()
                fn(tok, model, "cpu", convs, args.batch_size)
                times["before"].append(time.perf_counter() - t)
        worst = max(abs(a - b) for a, b in zip(got, want) if a is not None and b == b)
        med = {k: statistics.median(v) for k, v in times.items() if v}
        line = (f"{name:13s} datamix {med['datamix']:7.2f} s ({len(convs) / med['datamix']:7.1f} rows/s)  "
                f"peer {med['peer']:7.2f} s  ratio {med['datamix'] / med['peer']:.2f}x  (max |diff| {worst:.1e})")
        if "before" in med:
            line += f"  before {med['before']:7.2f} s ({med['before'] / med['peer']:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
