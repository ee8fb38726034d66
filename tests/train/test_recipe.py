"""The FSDP2 recipe on CPU: no attention leakage across packed documents, 2-rank run, exact resume, HF export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from datamix.train import recipe


def losses(output_dir: str) -> list[float]:
    return [json.loads(line)["loss"] for line in open(os.path.join(output_dir, "metrics.jsonl"))]


def common(tiny_model, shards, out):
    # 64 chats pack into ~40 sequences of 128 tokens; 4 sequences per step, a high lr so it overfits fast.
    return [f"model={tiny_model}", f"shards={shards}", f"output_dir={out}", "batch_tokens=512",
            "lr=3e-3", "warmup_steps=2", "max_steps=8", "log_every=100"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model, shards):
    out = str(tmp_path_factory.mktemp("ref"))
    assert recipe.main(common(tiny_model, shards, out) + ["checkpoint_every=4"]) == 0
    return out


def packed_example(tiny_model, attn):
    """Three documents packed in one row, each also run alone, under the given attn_implementation."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=recipe.attention_for(attn, False)).eval()
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(5, 800, (n,), generator=gen) for n in (7, 12, 5)]
    packed = torch.cat(docs)[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in docs])[None]
    return model, docs, packed, position_ids


def assert_each_document_as_if_alone(model, docs, together):
    at = 0
    with torch.no_grad():
        for d in docs:
            alone = model(input_ids=d[None]).logits[0]
            torch.testing.assert_close(together[at : at + len(d)], alone, rtol=1e-4, atol=1e-5)
            at += len(d)


@pytest.mark.parametrize("attn", ["documents", "sdpa"])
def test_packed_documents_do_not_attend_to_each_other(tiny_model, attn):
    model, docs, packed, position_ids = packed_example(tiny_model, attn)
    with torch.no_grad():
        # use_cache=False as in the recipe: with a KV cache transformers skips packed-sequence detection.
        together = model(input_ids=packed, position_ids=position_ids, use_cache=False).logits[0]
        plain_causal = model(input_ids=packed).logits[0]  # one restart only: one long document
    assert_each_document_as_if_alone(model, docs, together)
    # Without the restarts the later documents see the earlier ones: the check above can fail.
    with pytest.raises(AssertionError):
        assert_each_document_as_if_alone(model, docs, plain_causal)


def test_document_attention_with_the_recipes_segments_and_a_padding_tail(tiny_model):
    model, docs, packed, position_ids = packed_example(tiny_model, "documents")
    pad = torch.zeros(6, dtype=torch.long)  # a padding tail: its own segment, skipped by the attention
    ids = torch.cat([packed[0], pad])[None]
    pos = torch.cat([position_ids[0], torch.arange(6)])[None]
    batch = {"input_ids": ids, "position_ids": pos, "labels": torch.full_like(ids, recipe.IGNORE)}
    lengths, is_pad = recipe.document_segments(batch, pad_id=0)
    assert lengths.tolist() == [7, 12, 5, 6] and is_pad.tolist() == [False, False, False, True]
    with torch.no_grad():
        together = model(input_ids=ids, position_ids=pos, use_cache=False, doc_segments=(lengths.tolist(), is_pad.tolist())).logits[0]
        merged = model(input_ids=ids, position_ids=pos, use_cache=False, doc_segments=([24, 6], [False, True])).logits[0]
    assert_each_document_as_if_alone(model, docs, together[:24])
    with pytest.raises(AssertionError):  # segments that merge the documents leak: the segments are what is used
        assert_each_document_as_if_alone(model, docs, merged[:24])


def test_trim_padding_pads_to_the_longest_row():
    seq = 10
    # row 0: documents 3 + 4 then a 3-token tail; row 1: a document of 5 then a 5-token tail (pad id 0, no labels)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]])
    ids = torch.tensor([[5] * 7 + [0] * 3, [6] * 5 + [0] * 5])
    labels = torch.where(ids == 0, recipe.IGNORE, ids)
    trimmed = recipe.trim_padding({"input_ids": ids, "position_ids": pos, "labels": labels}, pad_id=0)
    assert trimmed["input_ids"].shape == (2, 7) and trimmed["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 0, 1]
    full = recipe.trim_padding({"input_ids": ids, "position_ids": pos, "labels": torch.where(ids >= 0, ids, 0)}, pad_id=0)
    assert full["input_ids"].shape == (2, seq)  # labelled "pad" tokens are a document, not padding: nothing trimmed


def test_loss_falls_and_the_saved_model_is_the_trained_one(reference_run, tiny_model, shards):
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    curve = losses(reference_run)
    assert len(curve) == 8
    assert curve[-1] < curve[0] - 1.0
    path = os.path.join(reference_run, "model")
    assert json.load(open(os.path.join(path, "config.json")))["architectures"] == ["LlamaForCausalLM"]
    # the saved model, reloaded, fits the training data as the end of the curve says, and the
    # model it started from does not (a folder holding the initial weights would fail here)
    manifest = json.load(open(os.path.join(shards, "manifest.json")))
    files = manifest["shards"][0]["files"]
    batch = {k: torch.from_numpy(np.load(os.path.join(shards, files[k]["file"]))[:8].astype(np.int64))
             for k in ("input_ids", "labels", "position_ids")}

    def loss_of(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=recipe.attention_for("documents", False)).eval()
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]).loss.item()

    trained, initial = loss_of(path), loss_of(tiny_model)
    assert trained < initial - 1.0 and abs(trained - curve[-1]) < 1.0, (trained, initial, curve[-1])
    # and it generates: a chat template came along with the weights
    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "the cat"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = AutoModelForCausalLM.from_pretrained(path).generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    row = json.loads(open(os.path.join(reference_run, "metrics.jsonl")).readline())
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(row)


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, tiny_model, shards, reference_run):
    out = str(tmp_path / "resumed")
    args = common(tiny_model, shards, out)
    assert recipe.main(args + ["stop_after_steps=3"]) == 0
    assert len(losses(out)) == 3 and not os.path.exists(os.path.join(out, "model"))
    assert recipe.main(args) == 0  # resume=auto picks up checkpoints/latest
    assert losses(out) == pytest.approx(losses(reference_run), rel=1e-6)


def test_a_changed_config_never_continues_an_old_run(tmp_path, tiny_model, shards):
    # issue 14: `datamix train CONFIG lr=...` on an existing output folder resumed the old run
    # at its last step, trained nothing and handed back the old model
    out = str(tmp_path / "run")
    args = common(tiny_model, shards, out) + ["max_steps=2"]
    assert recipe.main(args) == 0
    weights = open(os.path.join(out, "model", "model.safetensors"), "rb").read()
    with pytest.raises(SystemExit, match=r"another training run; changed: lr: 0.003 -> 0.001"):
        recipe.main(args + ["lr=1e-3"])
    assert open(os.path.join(out, "model", "model.safetensors"), "rb").read() == weights  # nothing touched
    # resume=never starts over and keeps the old run, moved aside
    assert recipe.main(args + ["lr=1e-3", "resume=never"]) == 0
    moved = [d for d in os.listdir(out) if d.startswith("previous-")]
    assert len(moved) == 1
    assert open(os.path.join(out, moved[0], "model", "model.safetensors"), "rb").read() == weights
    assert open(os.path.join(out, "model", "model.safetensors"), "rb").read() != weights
    assert [m["step"] for m in map(json.loads, open(os.path.join(out, "metrics.jsonl")))] == [1, 2]


def test_changed_shards_never_continue_an_old_run(tmp_path, tiny_model, shards, make_chats):
    import shutil

    import polars as pl

    from datamix.export.shards import ShardsConfig, write_shards

    data = str(tmp_path / "shards")
    shutil.copytree(shards, data)
    out = str(tmp_path / "run")
    args = common(tiny_model, data, out) + ["max_steps=2"]
    assert recipe.main(args) == 0
    shutil.rmtree(data)
    write_shards(pl.DataFrame(make_chats(64, seed=1)), data, ShardsConfig(tokenizer=tiny_model, seq_len=128, shard_sequences=16))
    with pytest.raises(SystemExit, match=r"changed: the shards \(manifest.json\)"):
        recipe.main(args)


def test_two_process_fsdp_on_cpu_matches_one_process(tmp_path, tiny_model, shards, reference_run):
    out = str(tmp_path / "ddp2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "datamix.train.recipe", *common(tiny_model, shards, out)]
    # Own session so that a hang kills torchrun's workers too, not only torchrun.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        raise
    assert proc.returncode == 0, stderr[-3000:]
    # The loss is normalised by the global label-token count, so 2 ranks follow the 1-rank curve.
    assert losses(out) == pytest.approx(losses(reference_run), rel=1e-4)
    assert os.path.isfile(os.path.join(out, "model", "model.safetensors"))


def test_bad_batch_size_is_reported(tmp_path, tiny_model, shards):
    with pytest.raises(SystemExit, match="batch_tokens=100 must be a multiple"):
        recipe.main(common(tiny_model, shards, str(tmp_path)) + ["batch_tokens=100"])
    with pytest.raises(SystemExit, match="unknown config keys"):
        recipe.main(common(tiny_model, shards, str(tmp_path)) + ["learning_rate=1"])


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"model": "m", "shards": "s", "lr": 1e-4, "betas": [0.9, 0.99]}))
    cfg = recipe.load_config(str(path), ["lr=5e-5", "activation_checkpointing=true", "max_steps=3"])
    assert (cfg.lr, cfg.betas, cfg.activation_checkpointing, cfg.max_steps) == (5e-5, (0.9, 0.99), True, 3)


def test_train_step_yields_the_model_folder(tmp_path, tiny_model, shards):
    from pydantic import ValidationError

    from datamix.steps.base import Context
    from datamix.loop import chunks_of
    from datamix.steps.train import TrainStepConfig

    cfg = TrainStepConfig(name="sft", kind="train", model=tiny_model, shards=shards,
                          options={"batch_tokens": 512, "max_steps": 2, "lr": 1e-3})
    ctx = Context(step="sft", pipeline_dir=str(tmp_path), output_dir=str(tmp_path / "sft"), seed=0)
    chunks = chunks_of(cfg, {}, ctx)
    assert [c.files for c in chunks] == [[str(tmp_path / "sft" / "model")]]
    summary = chunks[0].rows.to_dicts()  # one row: the trained model and how training ended
    assert len(summary) == 1 and summary[0]["steps"] == 2
    assert summary[0]["model_path"] == str(tmp_path / "sft" / "model")
    assert summary[0]["final_loss"] == pytest.approx(losses(str(tmp_path / "sft"))[-1])
    assert len(losses(str(tmp_path / "sft"))) == 2
    # unknown recipe keys are caught when the config is validated (`datamix validate`), before any run
    with pytest.raises(ValidationError, match="unknown train options"):
        TrainStepConfig(name="sft", kind="train", model=tiny_model, shards=shards, options={"learning_rate": 1})


def test_activation_checkpointing_gives_the_same_loss_curve(tmp_path, tiny_model, shards, reference_run):
    # recomputing activations in the backward pass changes memory, not the math
    out = str(tmp_path / "ckpt")
    assert recipe.main(common(tiny_model, shards, out) + ["activation_checkpointing=true"]) == 0
    assert losses(out) == pytest.approx(losses(reference_run), rel=1e-5)


def test_the_default_output_folder_is_announced(tmp_path, tiny_model, shards, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert recipe.main([f"model={tiny_model}", f"shards={shards}", "batch_tokens=512", "max_steps=1",
                        "save_model=false"]) == 0
    assert f"output_dir not given: writing to {tmp_path / 'train-out'}" in capsys.readouterr().out
    assert (tmp_path / "train-out" / "metrics.jsonl").is_file()
