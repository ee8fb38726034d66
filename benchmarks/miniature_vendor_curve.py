"""How many epochs the forgetting miniature's vendor model V needs: held-out loss per epoch count.

    cd pipelines && datamix run forgetting-miniature.yaml --sweep rep=0     # builds vendor-init and vendor_shards
    python benchmarks/miniature_vendor_curve.py --epochs 2,4,6,8            # run from the repository root

For each epoch count, V is trained from the same random init on the same shards with the
pipeline's own options (train_vendor's), each run with its own cosine schedule, and its mean
assistant-token nll on the held-out vendor-distribution chats (vendor_eval.jsonl) is printed:
where that stops improving. (The pipeline itself now stops V by early stopping on held-out
vendor chats, `validation:` in train_vendor; this script is the fixed-epoch view, on the
evaluation set, without early stopping.) Models land in --out (default pipelines/.datamix/vendor-curve/E).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINES = os.path.join(ROOT, "pipelines")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", default="2,4,6,8")
    ap.add_argument("--out", default=os.path.join(PIPELINES, ".datamix", "vendor-curve"))
    args = ap.parse_args()
    spec = yaml.safe_load(open(os.path.join(PIPELINES, "forgetting-miniature.yaml")))
    variables = spec["vars"]
    train = next(s for s in spec["steps"] if s["name"] == "train_vendor")
    init = os.path.join(PIPELINES, spec["models"]["vendor_init"]["path"])
    shards = os.path.join(PIPELINES, ".datamix", "outputs", "vendor_shards")
    held_out = os.path.join(PIPELINES, variables["data"], "vendor_eval.jsonl")
    if not os.path.isfile(os.path.join(shards, "manifest.json")):
        sys.exit(f"no shards in {shards}: run the miniature once first (see this script's docstring)")
    datamix = os.path.join(os.path.dirname(sys.executable), "datamix")
    options = {k: (variables[v[2:-1]] if isinstance(v, str) and v.startswith("${") else v)
               for k, v in train["options"].items() if k not in ("epochs", "patience", "eval_every")}
    print(f"{'epochs':>6}  {'steps':>5}  {'train loss':>10}  {'held-out nll':>12}  {'held-out bpb':>12}")
    for epochs in [int(e) for e in args.epochs.split(",")]:
        out = os.path.join(args.out, str(epochs))
        overrides = [f"model={init}", f"shards={shards}", f"output_dir={out}", f"epochs={epochs}", "resume=never",
                     *(f"{k}={v}" for k, v in options.items())]
        if not os.path.isfile(os.path.join(out, "model", "config.json")):
            subprocess.run([datamix, "train", os.devnull, *overrides], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            metrics = [json.loads(line) for line in f if line.strip()]
        result = subprocess.run([datamix, "eval", os.path.join(out, "model"), "--set", f"general={held_out}:nll",
                                 "--format", "json", "--batch-size", "16"], check=True, capture_output=True, text=True)
        rows = json.loads(result.stdout)
        value = {r["metric"]: r["value"] for r in rows}
        tail = sum(m["loss"] for m in metrics[-5:]) / min(5, len(metrics))
        print(f"{epochs:>6}  {metrics[-1]['step']:>5}  {tail:>10.4f}  {value.get('nll', float('nan')):>12.4f}  "
              f"{value.get('bpb', float('nan')):>12.4f}", flush=True)


if __name__ == "__main__":
    main()
