"""`datamix train CONFIG.yaml KEY=VALUE --nproc-per-node 2`: the CLI, the torchrun wrapper and the recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl

from datamix.export.shards import ShardsConfig, write_shards
from datamix.models.tiny import build_tiny_model


def test_train_command_runs_two_ranks_and_saves_a_loadable_model(tmp_path):
    model = build_tiny_model(str(tmp_path / "tiny"), arch="qwen2", chat_template="qwen2.5-instruct")
    rows = pl.DataFrame([
        {"sample_id": f"s{i}", "source": "general",
         "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}." * (1 + i % 3)}]}
        for i in range(48)
    ])
    shards = str(tmp_path / "shards")
    write_shards(rows, shards, ShardsConfig(tokenizer=model, seq_len=128, shard_sequences=8))
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {model}\nshards: {shards}\noutput_dir: {tmp_path / 'out'}\n"
                      "batch_tokens: 512\nlr: 3.0e-3\nwarmup_steps: 1\nmax_steps: 20\n")
    proc = subprocess.run(
        [sys.executable, "-m", "datamix.cli", "train", str(config), "max_steps=3", "--nproc-per-node", "2"],
        capture_output=True, text=True, timeout=300, start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [1, 2, 3]  # the override beat the file's max_steps
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "model")).config.model_type == "qwen2"


def test_train_command_reports_a_missing_shards_folder(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"model: {tmp_path}/m\nshards: {tmp_path}/nowhere\noutput_dir: {tmp_path}/out\n")
    proc = subprocess.run([sys.executable, "-m", "datamix.cli", "train", str(config)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr
