"""Early stopping in the recipe: the held-out loss is the evaluate step's nll, the run stops after
`patience` measurements without a new best, and the saved model is the best one."""

from __future__ import annotations

import json
import os
import random

import pytest

from datamix.train import recipe

# Held-out answers in words the training chats never use: the held-out loss falls while the
# model learns the chat template, then rises as it learns the training words, so the run
# must stop and hand back an earlier model than its last.
OTHER = "zebra quantum violet harbour seven lantern copper meadow whisper orbit".split()


def held_out_chats(n: int = 16) -> list[dict]:
    rng = random.Random(5)
    return [{"sample_id": f"h{i}", "messages": [
        {"role": "user", "content": " ".join(rng.choice(OTHER) for _ in range(6))},
        {"role": "assistant", "content": " ".join(rng.choice(OTHER) for _ in range(rng.randint(3, 20)))}]}
        for i in range(n)]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, tiny_model):
    import polars as pl

    from datamix.export.shards import ShardsConfig, write_shards

    out = str(tmp_path_factory.mktemp("heldout"))
    write_shards(pl.DataFrame(held_out_chats()), out, ShardsConfig(tokenizer=tiny_model, seq_len=128))
    return out


def run(tiny_model, shards, held_out, out, *extra):
    args = [f"model={tiny_model}", f"shards={shards}", f"output_dir={out}", "batch_tokens=512", "lr=1e-2",
            "warmup_steps=1", "max_steps=20", "log_every=100", f"eval_shards={held_out}", *extra]
    assert recipe.main(args) == 0
    return json.load(open(os.path.join(out, "run.json")))


def test_stops_when_the_held_out_loss_stops_improving_and_saves_the_best_model(tmp_path, tiny_model, shards, held_out):
    from datamix.eval.lm import EvalModel
    from datamix.eval.nll import evaluate

    record = run(tiny_model, shards, held_out, str(tmp_path / "es"), "eval_every=1", "patience=2")
    early = record["early_stopping"]
    losses = [e["loss"] for e in early["evals"]]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert early["stopped_early"] and early["last_step"] < 20
    # it stopped exactly `patience` measurements after the best, none of which beat it
    assert len(losses) - 1 - best == 2 and all(v >= losses[best] for v in losses[best:])
    assert early["best_step"] == early["evals"][best]["step"] < early["last_step"]
    assert early["restored_best"]
    metrics = [json.loads(line) for line in open(tmp_path / "es" / "metrics.jsonl")]
    assert [m["eval_loss"] for m in metrics] == pytest.approx(losses)  # eval_every=1: a measurement per step

    # the saved model is the best step's: the evaluate step's nll of it (an independent padded
    # forward over the chats) is the recipe's best held-out loss, and not the last one
    value = {v.metric: v.value for v in evaluate(EvalModel("m", str(tmp_path / "es" / "model")),
                                                 [c["messages"] for c in held_out_chats()])}
    assert value["nll"] == pytest.approx(early["best_loss"], abs=1e-4)
    assert abs(value["nll"] - losses[-1]) > 1e-3


def test_without_patience_it_trains_to_the_end_and_keeps_the_best(tmp_path, tiny_model, shards, held_out):
    record = run(tiny_model, shards, held_out, str(tmp_path / "keep"), "max_steps=6", "eval_every=4")
    early = record["early_stopping"]
    assert not early["stopped_early"] and early["last_step"] == 6
    assert [e["step"] for e in early["evals"]] == [4, 6]  # every eval_every steps and at the end
    assert record["identity"]["eval_shards_manifest_sha256"]  # the held-out set is part of the run


def test_early_stopping_options_need_a_held_out_set(tmp_path, tiny_model, shards):
    with pytest.raises(SystemExit, match="need eval_shards"):
        recipe.main([f"model={tiny_model}", f"shards={shards}", f"output_dir={tmp_path}", "batch_tokens=512",
                     "max_steps=2", "patience=2"])
