"""Models as Ray replicas: a real local Ray, real actors, a tiny transformers model on CPU.

Sampling seeds are per prompt, so splitting a step's prompts over replicas must give
exactly the completions one process gives; and where a model runs must not change a
step's fingerprint.
"""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("transformers")

from datamix.models import Prompt, SamplingParams, TransformersModel, VLLMModel, load_backend  # noqa: E402
from datamix.models.ray import RayBackend, RayUnavailable, gpus_needed, shards  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def local_ray():
    # another module's Ray may still be up in this process (tests/executors shares one per package)
    if ray.is_initialized():
        ray.shutdown()
    # logical CPUs: replicas of several backends may be alive at once in this process
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def spec(path, **kw):
    return TransformersModel(backend="transformers", path=path, batch_size=3, **kw)


PROMPTS = [Prompt(text=f"Explain topic number {i}") for i in range(7)] + [
    Prompt(messages=[{"role": "user", "content": "Write a haiku."}])]


def test_shards_are_contiguous_and_balanced():
    assert shards(8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert shards(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert shards(0, 2) == [(0, 0), (0, 0)]


def test_gpus_per_replica_default_to_the_backends_need():
    tf = spec("m", ray={"replicas": 2})
    assert gpus_needed(tf, cluster_gpus=0) == 0 and gpus_needed(tf, cluster_gpus=8) == 1
    assert gpus_needed(spec("m", device="cpu", ray={"replicas": 2}), cluster_gpus=8) == 0
    vllm = VLLMModel(backend="vllm", path="m", tensor_parallel_size=4, ray={"replicas": 2})
    assert gpus_needed(vllm, cluster_gpus=0) == 4
    assert gpus_needed(spec("m", ray={"replicas": 2, "gpus_per_replica": 0.5}), cluster_gpus=8) == 0.5


def test_replicas_give_exactly_the_one_process_completions(local_ray, tiny_chatml):
    params = SamplingParams(n=2, max_tokens=8, seed=3)
    expected = load_backend("t", spec(tiny_chatml)).generate(PROMPTS, params)
    backend = load_backend("t", spec(tiny_chatml, ray={"replicas": 3}))
    assert isinstance(backend, RayBackend)
    got = backend.generate(PROMPTS, params)
    assert [[(c.text, c.tokens_in, c.tokens_out, c.finish_reason) for c in p] for p in got] == [
        [(c.text, c.tokens_in, c.tokens_out, c.finish_reason) for c in p] for p in expected]
    served = backend.prompts_served()
    assert sum(served) == len(PROMPTS) and all(k > 0 for k in served)  # every replica did some
    assert backend.generate(PROMPTS[:1], params)[0][0].text == expected[0][0].text  # fewer prompts than replicas
    assert backend.tokenizer()("hello")["input_ids"] == load_backend("t", spec(tiny_chatml)).tokenizer()(
        "hello")["input_ids"]


def test_a_killed_replica_is_restarted_and_its_shard_retried(local_ray, tiny_chatml):
    params = SamplingParams(n=1, max_tokens=6, seed=1)
    backend = load_backend("t", spec(tiny_chatml, ray={"replicas": 2}))
    expected = backend.generate(PROMPTS, params)
    ray.kill(backend._actors[0], no_restart=False)  # as a lost node or an OOM kill would
    again = backend.generate(PROMPTS, params)
    assert [[c.text for c in p] for p in again] == [[c.text for c in p] for p in expected]
    assert sum(backend.prompts_served()) < 2 * len(PROMPTS)  # the killed replica's count restarted from 0


def test_more_gpus_than_the_cluster_has_is_refused_with_the_numbers(local_ray, tiny_chatml):
    with pytest.raises(RayUnavailable, match=r"2 replicas x 1 GPUs need 2 GPUs but the Ray cluster has 0"):
        RayBackend("t", spec(tiny_chatml, ray={"replicas": 2, "gpus_per_replica": 1}))


def test_without_ray_installed_the_message_says_what_to_install(monkeypatch, tiny_chatml):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'datamix\[ray\]'"):
        RayBackend("t", spec(tiny_chatml, ray={"replicas": 2}))


PIPELINE = """
name: gen
store: store.duckdb
seed: 5
models:
  m: {{backend: transformers, path: {model}, batch_size: 4{ray}}}
steps:
  - {{name: instructions, kind: load, path: instructions.jsonl}}
  - {{name: answers, kind: generate, input: instructions, models: [m], n: 2, chunk_size: 4,
      sampling: {{temperature: 1.0, max_tokens: 6}}}}
"""


def test_datamix_run_with_ray_replicas_equals_the_plain_run(tmp_path, tiny_chatml):
    """Through the CLI (its own local Ray): same answers table, and the same fingerprints."""
    tables = {}
    for label, ray_option in (("plain", ""), ("ray", ", ray: {replicas: 2}")):
        folder = tmp_path / label
        folder.mkdir()
        with open(folder / "instructions.jsonl", "w") as f:
            for i in range(6):
                f.write(json.dumps({"prompt": f"Write about the number {i}.", "response": "-"}) + "\n")
        (folder / "gen.yaml").write_text(PIPELINE.format(model=tiny_chatml, ray=ray_option))
        run = subprocess.run([sys.executable, "-m", "datamix.cli", "run", "gen.yaml", "-q"], cwd=folder,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        con = duckdb.connect(str(folder / "store.duckdb"), read_only=True)
        tables[label] = con.sql("SELECT sample_id, messages FROM answers ORDER BY sample_id").fetchall()
        con.close()
    assert len(tables["plain"]) == 12
    assert tables["ray"] == tables["plain"]
    # the plain run's store stays up to date when its model moves onto Ray
    (tmp_path / "plain" / "gen.yaml").write_text(PIPELINE.format(model=tiny_chatml, ray=", ray: {replicas: 2}"))
    plan = subprocess.run([sys.executable, "-m", "datamix.cli", "plan", "gen.yaml", "--format", "json"],
                          cwd=tmp_path / "plain", capture_output=True, text=True)
    assert [e["action"] for e in json.loads(plan.stdout)] == ["skip", "skip"], plan.stdout
