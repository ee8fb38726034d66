"""Which answers the forgetting miniature's judge picks: V's own mean log-likelihood against pmi.

    cd pipelines && datamix run forgetting-miniature.yaml --sweep rep=0     # the pool and V
    python benchmarks/miniature_judge_picks.py --rep 0 [--store pipelines/.datamix/forgetting-miniature.duckdb]

For every instruction of one replicate's pool with two candidate answers left after the filter
and dedup (the choices `select` has), both scorers rate both answers with V (judge's own
functions: `_loglik_scores` and `_pmi_scores`) and each keeps its best. Printed: how often they
disagree, what each keeps (words, digit share, the answerer: V at temperature 0.7 or 1.0), and a
few instructions where they disagree. Reads a copy of the store, so it also runs beside a pipeline.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINES = os.path.join(ROOT, "pipelines")


def digit_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / max(1, len(chars))


def describe(name: str, picks: list[dict]) -> str:
    words = [len(p["answer"].split()) for p in picks]
    digits = [digit_share(p["answer"]) for p in picks]
    cool = sum(p["model"] == "vendor_cool" for p in picks)
    return (f"{name:>8}: {len(picks)} answers, median {statistics.median(words):.0f} words, "
            f"mean digit share {statistics.mean(digits):.3f}, {sum(d > 0.3 for d in digits)} over 30% digits, "
            f"{cool} from V at T=0.7 ({cool / len(picks):.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rep", type=int, default=0)
    ap.add_argument("--store", default=os.path.join(PIPELINES, ".datamix", "forgetting-miniature.duckdb"))
    ap.add_argument("--model", default=os.path.join(PIPELINES, ".datamix", "outputs", "train_vendor", "model"))
    ap.add_argument("--examples", type=int, default=5)
    args = ap.parse_args()

    import duckdb

    from datamix.models import load_tokenizer
    from datamix.steps.judge import _instruction_and_response, _loglik_scores, _pmi_scores
    from datamix.store import quote

    with tempfile.TemporaryDirectory() as tmp:  # a copy: the pipeline may hold the store's lock
        copy = os.path.join(tmp, "store.duckdb")
        shutil.copy(args.store, copy)
        con = duckdb.connect(copy, read_only=True)
        table = quote(f"unique_answers__rep_{args.rep}")
        rows = con.execute(f"SELECT instruction_id, model, messages FROM {table} ORDER BY instruction_id, model").fetchall()
        con.close()
    groups: dict[str, list[dict]] = {}
    for instruction_id, model, messages in rows:
        before, user, answer = _instruction_and_response(messages)
        groups.setdefault(instruction_id, []).append({"model": model, "before": before, "user": user, "answer": answer})
    pairs = [g for g in groups.values() if len(g) == 2]
    flat = [c for g in pairs for c in g]

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    convs = [(c["before"], c["user"], c["answer"]) for c in flat]
    for c, ll, pmi in zip(flat, _loglik_scores(tokenizer, model, "cpu", convs, 32),
                          _pmi_scores(tokenizer, model, "cpu", convs, 32)):
        c["loglik"], c["pmi"] = ll, pmi

    by = {s: [max(g, key=lambda c: c[s] if c[s] is not None else float("-inf")) for g in pairs] for s in ("loglik", "pmi")}
    differ = [i for i in range(len(pairs)) if by["loglik"][i] is not by["pmi"][i]]
    print(f"rep {args.rep}: {len(groups)} instructions in the filtered pool, {len(pairs)} with two answers; "
          f"the scorers keep different answers for {len(differ)} ({len(differ) / max(1, len(pairs)):.0%})")
    for s in ("loglik", "pmi"):
        print(describe(s, by[s]))
    print(f"score correlation over all candidates (Spearman): "
          f"{_spearman([c['loglik'] for c in flat], [c['pmi'] for c in flat]):.2f}")
    random.Random(0).shuffle(differ)
    for i in differ[: args.examples]:
        short = lambda t: re.sub(r"\s+", " ", t)[:160]  # noqa: E731
        print(f"\ninstruction: {short(pairs[i][0]['user'])}")
        for c in pairs[i]:
            tags = [s for s in ("loglik", "pmi") if by[s][i] is c]
            print(f"  [{'+'.join(tags) or '-':>10}] loglik {c['loglik']:.2f} pmi {c['pmi']:+.2f} ({c['model']}): "
                  f"{short(c['answer'])}")


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=x.__getitem__)
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    return statistics.correlation(ra, rb) if len(a) > 2 else float("nan")


if __name__ == "__main__":
    main()
