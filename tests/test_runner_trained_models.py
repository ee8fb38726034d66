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


def by_step(tmp_path, lr=1e-3, **model):
    """The same pipeline with v declared `from_step: train_v` (or as `model` says)."""
    p = pipeline(tmp_path, lr)
    text = p.read_text()
    import yaml

    raw = yaml.safe_load(text)
    raw["models"]["v"] = model or {"backend": "transformers", "from_step": "train_v"}
    p.write_text(yaml.safe_dump(raw))
    return p


def test_a_model_from_a_train_step_lives_beside_whichever_store_the_run_uses(tmp_path):
    p = by_step(tmp_path / "a")
    default = spec.load(str(p), check_files=False)
    assert default.models["v"].path == str(tmp_path / "a" / ".datamix" / "outputs" / "train_v" / "model")
    moved = spec.load(str(p), check_files=False, store=str(tmp_path / "else" / "s.duckdb"))
    assert moved.models["v"].path == str(tmp_path / "else" / "outputs" / "train_v" / "model")
    assert runner._trained_models(moved) == {"v": "train_v"}
    # where the store is changes no fingerprint; retraining the model changes those that use it
    assert runner.fingerprints(default) == runner.fingerprints(moved)
    retrained = runner.fingerprints(spec.load(str(by_step(tmp_path / "b", 2e-3)), check_files=False))
    assert retrained["pool"] != runner.fingerprints(default)["pool"]
    assert retrained["other"] == runner.fingerprints(default)["other"]


def test_a_declared_path_keeps_its_old_fingerprint(tmp_path):
    """`from_step` is left out of the fingerprint where unset, so existing stores are not rerun."""
    p = spec.load(str(pipeline(tmp_path, 1e-3)), check_files=False)
    assert "from_step" not in runner._model_identity(p.models["v"])
    assert runner._model_identity(p.models["v"])["path"] == ".datamix/outputs/train_v/model"


def test_from_step_must_name_a_train_step_of_the_pipeline(tmp_path):
    from tests.helpers import cli

    for step, said in (("nope", "no step named 'nope'"), ("pool", "step 'pool' is a reconstruct step")):
        p = by_step(tmp_path / step, backend="transformers", from_step=step)
        result = cli("validate", str(p))
        assert result.exit_code == 2, result.stderr
        assert f"models.v.from_step: {said}; from_step names a train step" in result.stderr
        assert "(train steps: train_v)" in result.stderr
    both = by_step(tmp_path / "both", backend="transformers", from_step="train_v", path="m")
    result = cli("validate", str(both))
    assert result.exit_code == 2 and "give `path` or `from_step`, not both" in result.stderr
    served = by_step(tmp_path / "served", backend="openai", from_step="train_v")
    result = cli("validate", str(served))
    assert result.exit_code == 2 and "models.v.from_step: unknown option" in result.stderr, result.stderr
