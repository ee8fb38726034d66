"""Build the data of pipelines/forgetting-miniature.yaml from public datasets (pipelines/data/miniature/README.md).

    python pipelines/data/make_miniature_data.py [--source /work/shared/datasets]   # writes pipelines/data/miniature/

SOURCE holds the unchanged public files: alpaca_eval/<model>.json (tatsu-lab/alpaca_eval,
results/MODEL/model_outputs.json), self_instruct/seed_tasks.jsonl (tatsu-lab/stanford_alpaca)
and gsm8k/{train,test}.jsonl (openai/grade-school-math). Every output is OpenAI `messages`
JSONL, deterministic (no randomness beyond a fixed hash of each instruction):

- vendor.jsonl       the "vendor's SFT set": AlpacaEval instructions from the conversational
                     subsets (helpful_base, oasst, koala, vicuna), each answered by four models
                     (gpt4, Llama-3-70B, Qwen2-72B, Mixtral-8x7B): one chat per (instruction, model),
                     model by model (the first 497 rows are gpt4's, the next 497 Llama-3-70B's, ...);
- vendor_eval.jsonl  held-out chats of the same distribution: 1 in 9 of those instructions
                     (chosen by a hash of the text), with the same four answerers; no instruction
                     is in vendor.jsonl, and none is near one (word 3-gram Jaccard < 0.3);
- public.jsonl       a general set from ANOTHER distribution: AlpacaEval's self-instruct subset
                     (task-style instructions) answered by three other models (Llama-3-8B,
                     Mistral-7B, Qwen1.5-1.8B) plus the 175 self-instruct seed tasks with their
                     human-written instances; every instruction near a vendor or eval instruction
                     (3-gram Jaccard >= 0.3) is left out;
- gsm8k_train.jsonl  the domain set: the first 600 GSM8K train problems (question -> worked answer);
- gsm8k_test.jsonl   the domain evaluation set: the first 250 GSM8K test problems;
- alpaca_eval.jsonl  all 805 AlpacaEval instructions with gpt4's answers (uncut), for the judge
                     win rate of pipelines/forgetting-mitigation.yaml (the real-model recipe).

Answers are cut to at most MAX_ANSWER characters at a sentence or line end (the same rule for
every file): the miniature's models are a few million parameters on 2 CPU cores, and long
answers cost time without adding signal at that size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re

VENDOR_SUBSETS = ("helpful_base", "oasst", "koala", "vicuna")
VENDOR_MODELS = ("gpt4", "Meta-Llama-3-70B-Instruct", "Qwen2-72B-Instruct", "Mixtral-8x7B-Instruct-v0.1")
PUBLIC_MODELS = ("Meta-Llama-3-8B-Instruct", "Mistral-7B-Instruct-v0.2", "Qwen1.5-1.8B-Chat")
EVAL_ONE_IN = 9
MAX_ANSWER = 600
NEAR = 0.3  # word 3-gram Jaccard at or above which two instructions count as the same
DOMAIN_TRAIN, DOMAIN_TEST = 600, 250


def cut(text: str, limit: int = MAX_ANSWER) -> str:
    """`text` up to `limit` characters, ending at the last sentence or line end inside it."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [m.end() for m in re.finditer(r"[.!?:](\s|$)|\n", head)]
    end = ends[-1] if ends and ends[-1] > limit // 3 else head.rfind(" ")
    return head[: end if end > 0 else limit].strip()


def grams(text: str) -> set:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i: i + 3]) for i in range(max(len(words) - 2, 1))}


def near(a: set, others: list[set]) -> bool:
    return any(len(a & b) / max(len(a | b), 1) >= NEAR for b in others)


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": cut(assistant)}]}


def held_out(instruction: str) -> bool:
    return int(hashlib.sha256(instruction.encode()).hexdigest(), 16) % EVAL_ONE_IN == 0


def write(path: str, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    try:
        with open(path, encoding="utf-8") as f:
            same = f.read() == text
    except OSError:
        same = False
    if not same:  # an unchanged file keeps its mtime, so pipelines reading it are not rerun
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    print(f"{path}: {len(rows)} rows, {os.path.getsize(path) / 1e6:.2f} MB{' (unchanged)' if same else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="/work/shared/datasets", help="folder with alpaca_eval/, self_instruct/, gsm8k/")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "miniature"))
    args = ap.parse_args()
    src = args.source

    answers = {m: json.load(open(os.path.join(src, "alpaca_eval", f"{m}.json"), encoding="utf-8"))
               for m in VENDOR_MODELS + PUBLIC_MODELS}
    first = answers[VENDOR_MODELS[0]]  # every file lists the same 805 instructions in the same order
    for m, rows in answers.items():
        assert [r["instruction"] for r in rows] == [r["instruction"] for r in first], m

    vendor_idx = [i for i, r in enumerate(first) if r["dataset"] in VENDOR_SUBSETS]
    train_idx = [i for i in vendor_idx if not held_out(first[i]["instruction"])]
    train_grams = [grams(first[i]["instruction"]) for i in train_idx]
    eval_idx = [i for i in vendor_idx if held_out(first[i]["instruction"])
                and not near(grams(first[i]["instruction"]), train_grams)]
    # model-major: the first N rows are whole answerers (limit: 994 = gpt4's and Llama-3-70B's answers)
    vendor = [chat(first[i]["instruction"], answers[m][i]["output"]) for m in VENDOR_MODELS for i in train_idx]
    vendor_eval = [chat(first[i]["instruction"], answers[m][i]["output"]) for i in eval_idx for m in VENDOR_MODELS]

    seen = train_grams + [grams(first[i]["instruction"]) for i in eval_idx]
    public = []
    for i, r in enumerate(first):
        if r["dataset"] == "selfinstruct" and not near(grams(r["instruction"]), seen):
            public += [chat(r["instruction"], answers[m][i]["output"]) for m in PUBLIC_MODELS]
    with open(os.path.join(src, "self_instruct", "seed_tasks.jsonl"), encoding="utf-8") as f:
        for line in f:
            task = json.loads(line)
            for inst in task["instances"]:
                user = task["instruction"] + (f"\n\n{inst['input']}" if inst["input"].strip() else "")
                if inst["output"].strip() and not near(grams(user), seen):
                    public.append(chat(user, inst["output"]))

    def gsm8k(name: str, n: int) -> list[dict]:
        with open(os.path.join(src, "gsm8k", f"{name}.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f][:n]
        # GSM8K answers are kept whole (the final "#### N" line is what exact_match reads)
        return [{"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]}
                for r in rows]

    os.makedirs(args.out, exist_ok=True)
    write(os.path.join(args.out, "vendor.jsonl"), vendor)
    write(os.path.join(args.out, "vendor_eval.jsonl"), vendor_eval)
    write(os.path.join(args.out, "public.jsonl"), public)
    write(os.path.join(args.out, "gsm8k_train.jsonl"), gsm8k("train", DOMAIN_TRAIN))
    write(os.path.join(args.out, "gsm8k_test.jsonl"), gsm8k("test", DOMAIN_TEST))
    write(os.path.join(args.out, "alpaca_eval.jsonl"),
          [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
           for r in first])


if __name__ == "__main__":
    main()
