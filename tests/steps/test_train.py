"""The train step in a pipeline: a changed upstream retrains from scratch; a no-op rerun skips every step.

Issue 14: after the mix changed, the train step resumed the old run's last checkpoint,
trained nothing and handed back the old model; the shards step reran on every run
because dm.chunks recorded a file-name prefix instead of the files.
"""

from __future__ import annotations

import hashlib
import os

from tests.helpers import cli, domain_records, general_records, query, store_of, write_jsonl, write_pipeline

STEPS = [
    {"name": "general", "kind": "load", "path": "data/general.jsonl"},
    {"name": "domain", "kind": "load", "path": "data/domain.jsonl", "prompt_field": "question",
     "response_field": "answer"},
    {"name": "mix", "kind": "mix", "inputs": {"general": "general", "domain": "domain"},
     "ratio": {"general": "${general_share}", "domain": 0.5}, "seed": 0},
    {"name": "shards", "kind": "export", "input": "mix", "format": "shards",
     "shards": {"tokenizer": "models/base", "seq_len": 128}},
    {"name": "train", "kind": "train", "input": "shards", "model": "base",
     "options": {"max_steps": 2, "batch_tokens": 256, "lr": 1.0e-3, "warmup_steps": 1}},
]


def make_pipeline(tmp_path):
    write_jsonl(tmp_path / "data" / "general.jsonl", general_records(12))
    write_jsonl(tmp_path / "data" / "domain.jsonl", domain_records(8))
    models = {"base": {"backend": "transformers", "path": "models/base",
                       "tiny": {"arch": "qwen2", "chat_template": "qwen2.5-instruct"}}}
    return write_pipeline(tmp_path, STEPS, name="tr", vars={"general_share": 0.5}, models=models)


def weights_hash(tmp_path) -> str:
    path = tmp_path / ".datamix" / "outputs" / "train" / "model" / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_mix_retrains_from_scratch_and_a_noop_rerun_skips_everything(tmp_path):
    from datamix.models.tiny import build_tiny_model

    build_tiny_model(str(tmp_path / "models" / "base"), arch="qwen2", chat_template="qwen2.5-instruct")
    pipeline = make_pipeline(tmp_path)
    first = cli("run", pipeline, cwd=tmp_path)
    assert first.exit_code == 0, first.output
    before = weights_hash(tmp_path)
    manifest_before = query(store_of(pipeline), "SELECT shards_manifest_sha256 FROM train")[0][0]

    again = cli("run", pipeline, cwd=tmp_path)
    assert again.exit_code == 0, again.output
    assert [line.split()[0] for line in again.output.splitlines() if line.strip()][:5] == ["skip"] * 5, again.output

    changed = cli("run", pipeline, "general_share=0.8", cwd=tmp_path)
    assert changed.exit_code == 0, changed.output
    assert "resumed from" not in changed.output
    assert weights_hash(tmp_path) != before
    steps = [m for m in query(store_of(pipeline), "SELECT steps FROM train")]
    assert steps == [(2,)]
    status = cli("status", pipeline, cwd=tmp_path)
    manifest_after = query(store_of(pipeline), "SELECT shards_manifest_sha256 FROM train")[0][0]
    assert manifest_after != manifest_before
    assert f"manifest sha256 {manifest_after[:12]}" in status.output


def test_a_step_that_reruns_removes_the_files_of_its_old_fingerprint(tmp_path):
    from datamix.models.tiny import build_tiny_model

    build_tiny_model(str(tmp_path / "models" / "base"), arch="qwen2", chat_template="qwen2.5-instruct")
    pipeline = make_pipeline(tmp_path)
    assert cli("run", pipeline, cwd=tmp_path).exit_code == 0
    shards_dir = tmp_path / ".datamix" / "outputs" / "shards"
    stray = shards_dir / "shard-00099.input_ids.npy"  # a file an older, larger run could have left
    stray.write_bytes(b"old")
    result = cli("run", pipeline, "steps.shards.shards.seq_len=64", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert not stray.exists()
    assert os.path.isfile(shards_dir / "manifest.json")


def early_stopping_pipeline(tmp_path, validation):
    write_jsonl(tmp_path / "data" / "general.jsonl", general_records(12))
    write_jsonl(tmp_path / "data" / "domain.jsonl", domain_records(8))
    write_jsonl(tmp_path / "data" / "heldout.jsonl", general_records(16)[12:])
    steps = [*STEPS[:-1], {"name": "heldout", "kind": "load", "path": "data/heldout.jsonl"},
             {**STEPS[-1], "validation": validation,
              "options": {**STEPS[-1]["options"], "max_steps": 4, "eval_every": 1, "patience": 2}}]
    models = {"base": {"backend": "transformers", "path": "models/base",
                       "tiny": {"arch": "qwen2", "chat_template": "qwen2.5-instruct"}}}
    return write_pipeline(tmp_path, steps, name="es", vars={"general_share": 0.5}, models=models)


def test_validation_from_a_step_measures_the_held_out_loss_and_is_part_of_the_fingerprint(tmp_path):
    import json

    from datamix.eval.lm import EvalModel
    from datamix.eval.nll import evaluate

    pipeline = early_stopping_pipeline(tmp_path, {"input": "heldout"})
    first = cli("run", pipeline, cwd=tmp_path)
    assert first.exit_code == 0, first.output
    out = tmp_path / ".datamix" / "outputs" / "train"
    early = json.loads((out / "run.json").read_text())["early_stopping"]
    assert [e["step"] for e in early["evals"]][:2] == [1, 2] and early["patience"] == 2
    # the held-out chats were written with assistant-only labels: the recipe's loss is the evaluate
    # step's nll of the kept model on the same chats
    chats = [r["messages"] for r in general_records(16)[12:]]
    nll = evaluate(EvalModel("m", str(out / "model"), chat_template="qwen2.5-instruct"), chats)[0].value
    assert abs(nll - early["best_loss"]) < 1e-4

    # the validation set is part of the train step's fingerprint: fewer held-out chats, or other
    # ones upstream, would retrain; nothing changed, nothing would
    def action(*overrides):
        plan = cli("plan", pipeline, *overrides, "--format", "json", cwd=tmp_path)
        assert plan.exit_code == 0, plan.output
        return {e["name"]: e["action"] for e in json.loads(plan.output)}["train"]

    assert action() == "skip"
    assert action("steps.train.validation.limit=2") == "run"
    assert action("steps.heldout.limit=3") == "run"


def test_validate_names_a_bad_validation_file(tmp_path):
    from datamix.models.tiny import build_tiny_model

    build_tiny_model(str(tmp_path / "models" / "base"), arch="qwen2", chat_template="qwen2.5-instruct")
    pipeline = early_stopping_pipeline(tmp_path, {"path": "data/missing.jsonl"})
    result = cli("validate", pipeline, cwd=tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ".validation.path: data/missing.jsonl does not exist" in result.output

    (tmp_path / "data" / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "oops"\n')
    pipeline = early_stopping_pipeline(tmp_path, {"path": "data/broken.jsonl"})
    result = cli("validate", pipeline, cwd=tmp_path)
    assert result.exit_code == 2 and "validation.path" in result.output and "broken.jsonl:2" in result.output

    (tmp_path / "data" / "unanswered.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    pipeline = early_stopping_pipeline(tmp_path, {"path": "data/unanswered.jsonl"})
    result = cli("validate", pipeline, cwd=tmp_path)
    assert result.exit_code == 2 and "validation.path" in result.output and "no assistant reply" in result.output


def test_run_quiet_prints_nothing_and_keeps_the_trainers_lines_in_a_log(tmp_path):
    """`datamix run -q` prints nothing on success: the trainer's loss lines go to train.log in
    the step's output folder; without -q they are printed as before."""
    from datamix.models.tiny import build_tiny_model

    build_tiny_model(str(tmp_path / "models" / "base"), arch="qwen2", chat_template="qwen2.5-instruct")
    pipeline = make_pipeline(tmp_path)
    quiet = cli("run", "-q", pipeline, cwd=tmp_path)
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output.strip() == ""
    log = (tmp_path / ".datamix" / "outputs" / "train" / "train.log").read_text()
    assert "step 2/2 loss" in log
    loud = cli("run", pipeline, "general_share=0.8", cwd=tmp_path)
    assert loud.exit_code == 0 and "step 2/2 loss" in loud.output
