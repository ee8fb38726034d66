"""A model trained by a step of the same pipeline (its path in that step's output folder): retraining
it changes the fingerprint of every step that uses the model, and nothing else's."""

from __future__ import annotations

from datamix import runner, spec

from tests.helpers import chat, write_jsonl, write_pipeline


def pipeline(tmp_path, lr):
    write_jsonl(tmp_path / "d.jsonl", [chat("q?", "a.")])
    return write_pipeline(tmp_path, [
        {"name": "data", "kind": "load", "path": "d.jsonl"},
        {"name": "shards", "kind": "export", "input": "data", "format": "shards", "shards": {"tokenizer": "m"}},
        {"name": "train_v", "kind": "train", "input": "shards", "model": "init", "options": {"lr": lr}},
        {"name": "pool", "kind": "reconstruct", "model": "v", "num_samples": 4},
        {"name": "other", "kind": "reconstruct", "model": "init", "num_samples": 4},
    ], models={"init": {"backend": "transformers", "path": "m"},
               "v": {"backend": "transformers", "path": ".datamix/outputs/train_v/model"}})


def test_retraining_a_model_reruns_the_steps_that_use_it(tmp_path):
    a = runner.fingerprints(spec.load(str(pipeline(tmp_path / "a", 1e-3)), check_files=False))
    b = runner.fingerprints(spec.load(str(pipeline(tmp_path / "b", 2e-3)), check_files=False))
    assert a["train_v"] != b["train_v"]
    assert a["pool"] != b["pool"]  # samples the retrained model
    assert a["other"] == b["other"]  # uses a model no step of the pipeline makes
    assert runner._trained_models(spec.load(str(pipeline(tmp_path / "a", 1e-3)), check_files=False)) == {"v": "train_v"}


def test_validate_accepts_a_model_a_step_will_save_and_refuses_other_missing_folders(tmp_path):
    from tests.helpers import cli

    (tmp_path / "m").mkdir()
    p = pipeline(tmp_path, 1e-3)
    # "m" exists; v lives in train_v's output folder, made by the run
    result = cli("validate", str(p))
    assert "models.v.path" not in result.stderr, result.stderr
    text = p.read_text().replace(".datamix/outputs/train_v/model", ".datamix/outputs/nope/model")
    p.write_text(text)
    result = cli("validate", str(p))
    assert result.exit_code == 2 and "models.v.path: .datamix/outputs/nope/model does not exist" in result.stderr
