"""Shards: assistant-only labels under real chat templates, packing, manifest and checksums."""

from __future__ import annotations

import json
import os

import numpy as np
import polars as pl
import pytest

from datamix.export.shards import IGNORE, ShardsConfig, best_fit_decreasing, verify_shards, write_shards


CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And why is the sky blue?"},
    {"role": "assistant", "content": "Sunlight is scattered by the molecules of the atmosphere.\nBlue light scatters most."},
]


def labelled_runs(labels: np.ndarray) -> list[list[int]]:
    """Contiguous runs of labelled token ids."""
    runs, current = [], []
    for t in labels.tolist():
        if t == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(t)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("template", ["chatml", "llama-3-instruct", "gemma-it", "mistral-instruct", "qwen2.5-instruct"])
@pytest.mark.parametrize("train_on", ["all_assistant", "last_assistant"])
def test_labels_are_exactly_the_assistant_turns(tmp_path, template, train_on):
    from transformers import AutoTokenizer

    from datamix.chat_templates import eos_token_for
    from datamix.models.tiny import build_tiny_model

    model = build_tiny_model(str(tmp_path / "m"), arch="qwen2" if template.startswith("qwen") else "llama",
                             chat_template=template, hidden_size=16, num_layers=1)
    rows = pl.DataFrame([{"sample_id": "a", "messages": CONVERSATION, "source": "x"}])
    manifest, placement = write_shards(rows, str(tmp_path / "out"), ShardsConfig(tokenizer=model, seq_len=256, train_on=train_on))
    assert placement["status"].to_list() == ["packed"]
    labels = np.load(tmp_path / "out" / "shard-00000.labels.npy")[0]
    ids = np.load(tmp_path / "out" / "shard-00000.input_ids.npy")[0]
    # Labels are the input ids themselves where set (the recipe shifts them).
    assert ((labels == IGNORE) | (labels == ids.astype(np.int64))).all()
    tok = AutoTokenizer.from_pretrained(model)
    decoded = [tok.decode(run).strip() for run in labelled_runs(labels)]
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    if train_on == "last_assistant":
        answers = answers[-1:]
    # Each assistant turn is labelled as its content plus the turn's end marker (so the model learns to stop),
    # and nothing else: no header, no user or system text.
    assert decoded == [a + eos_token_for(template) for a in answers]
    assert manifest["label_tokens"] == int((labels != IGNORE).sum())


def test_train_on_all_labels_every_token_user_turns_included(tmp_path):
    """train_on: all (a vendor model trained from scratch must learn the user turns too)."""
    from transformers import AutoTokenizer

    from datamix.models.tiny import build_tiny_model

    model = build_tiny_model(str(tmp_path / "m"), arch="qwen2", chat_template="qwen2.5-instruct", hidden_size=16, num_layers=1)
    rows = pl.DataFrame([{"sample_id": "a", "messages": CONVERSATION, "source": "x"}])
    manifest, placement = write_shards(rows, str(tmp_path / "out"), ShardsConfig(tokenizer=model, seq_len=256, train_on="all"))
    assert placement["status"].to_list() == ["packed"] and manifest["train_on"] == "all"
    labels = np.load(tmp_path / "out" / "shard-00000.labels.npy")[0]
    ids = np.load(tmp_path / "out" / "shard-00000.input_ids.npy")[0]
    pos = np.load(tmp_path / "out" / "shard-00000.position_ids.npy")[0]
    n = int(np.argmax(pos[1:] == 0)) + 1 if (pos[1:] == 0).any() else len(pos)  # the document's length
    # every token of the document but its first is a label, equal to the input id
    assert labels[0] == IGNORE and (labels[1:n] == ids[1:n].astype(np.int64)).all()
    tok = AutoTokenizer.from_pretrained(model)
    text = tok.decode(labels[1:n].astype(np.int64))
    for m in CONVERSATION:
        assert m["content"] in text
    assert manifest["label_tokens"] == n - 1


def test_packing_manifest_placement_and_checksums(tmp_path, tiny_model, make_chats):
    rows = pl.DataFrame(make_chats(60))
    out = str(tmp_path / "out")
    manifest, placement = write_shards(rows, out, ShardsConfig(tokenizer=tiny_model, seq_len=128, shard_sequences=8))
    assert verify_shards(out) == json.load(open(os.path.join(out, "manifest.json")))
    assert placement.height == 60 and placement["sample_id"].n_unique() == 60
    assert set(placement["status"]) == {"packed"}

    ids = np.concatenate([np.load(os.path.join(out, s["files"]["input_ids"]["file"]), mmap_mode="r") for s in manifest["shards"]])
    labels = np.concatenate([np.load(os.path.join(out, s["files"]["labels"]["file"])) for s in manifest["shards"]])
    pos = np.concatenate([np.load(os.path.join(out, s["files"]["position_ids"]["file"])) for s in manifest["shards"]])
    assert ids.shape == (manifest["sequences"], 128) and ids.dtype == np.uint32
    # Packing: fewer sequences than samples, and every sequence's document count = its restarts of position 0.
    assert manifest["sequences"] < 60
    real = 0
    for shard in manifest["shards"]:
        for seq, sample_ids in enumerate(shard["sample_ids"]):
            got = placement.filter((pl.col("shard") == shard["name"]) & (pl.col("sequence") == seq))["sample_id"].to_list()
            assert sorted(got) == sorted(sample_ids)
    starts = (pos == 0).sum(axis=1)
    per_seq_docs = [len(s) for shard in manifest["shards"] for s in shard["sample_ids"]]
    padded = (ids == manifest["pad_token_id"]) & (labels == IGNORE)
    real = int((~padded).sum())
    # a padding tail is its own segment (positions restart), so restarts = docs (+1 if padded)
    assert (starts - padded[:, -1].astype(int) == np.array(per_seq_docs)).all()
    assert manifest["tokens"] == real
    assert manifest["padding_fraction"] == pytest.approx(1 - real / ids.size)
    assert manifest["label_tokens"] == int((labels != IGNORE).sum())
    assert sum(manifest["label_tokens_by_source"].values()) == manifest["label_tokens"]
    assert set(manifest["label_tokens_by_source"]) == {"general", "domain", "(none)"}
    assert manifest["tokenizer_sha256"] and manifest["chat_template_sha256"]

    # A changed byte in a shard is caught.
    path = os.path.join(out, manifest["shards"][0]["files"]["labels"]["file"])
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        verify_shards(out)


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_overlong_policy(tmp_path, tiny_model, make_chats, policy):
    rows = make_chats(10, max_answer_words=6)
    rows[3]["messages"][1]["content"] = " ".join(["cat"] * 200)  # far longer than seq_len
    rows[5]["messages"] = [{"role": "user", "content": "hi"}]  # nothing to train on
    manifest, placement = write_shards(pl.DataFrame(rows), str(tmp_path / policy), ShardsConfig(tokenizer=tiny_model, seq_len=64, overlong=policy))
    status = dict(zip(placement["sample_id"], placement["status"]))
    assert status["s0003"] == ("truncated" if policy == "truncate" else "dropped")
    assert status["s0005"] == "dropped"
    assert manifest["counts"]["truncated"] == (policy == "truncate")
    assert manifest["counts"]["dropped_overlong"] == (policy == "drop")
    assert manifest["counts"]["dropped_no_labels"] == 1
    assert placement.filter(pl.col("status") == "dropped")["shard"].null_count() == placement.filter(pl.col("status") == "dropped").height


def test_best_fit_decreasing_fills_bins():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) <= lower_bound * 1.03 + 1


def test_workers_give_the_same_shards(tmp_path, tiny_model, make_chats):
    rows = pl.DataFrame(make_chats(40))
    one, _ = write_shards(rows, str(tmp_path / "one"), ShardsConfig(tokenizer=tiny_model, seq_len=128, batch_rows=8))
    two, _ = write_shards(rows, str(tmp_path / "two"), ShardsConfig(tokenizer=tiny_model, seq_len=128, batch_rows=8, workers=2))
    assert [f["sha256"] for s in one["shards"] for f in s["files"].values()] == [f["sha256"] for s in two["shards"] for f in s["files"].values()]
