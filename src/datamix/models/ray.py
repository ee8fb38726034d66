"""A model run as replicas on a Ray cluster: generation beyond one GPU or one machine.

    models:
      qwen:
        backend: vllm
        path: Qwen/Qwen2.5-7B-Instruct
        ray: {replicas: 8, address: auto}   # 8 copies anywhere in the cluster

Each replica is a Ray actor that loads the declared backend (vllm or transformers) once,
on whichever node Ray places it, with `gpus_per_replica` GPUs (default: the backend's
need: tensor_parallel_size for vllm, one for transformers on a cluster with GPUs, none
otherwise). A step's prompts are cut into contiguous shards, a few per replica, each
handed to the next free replica, and the results put back in order. Everything else stays in the driver process: the step,
its chunk commits, the response cache and the store. So a killed run resumes as before,
and sampling seeds, which are per prompt (seed, prompt, sample index), give the same
outputs whatever the number of replicas.

Replicas serve generation (reconstruct, generate, judge with LLM judges); the judge's
reward-model and log-likelihood scorers load their model in the driver process.

Ray runs the actors; datamix starts nothing of its own. `address: auto` joins a running
cluster (`ray start --head` ...), an address `ray://host:10001` connects through Ray
Client, and no address starts a local Ray on this machine. Every node needs datamix and
the backend's packages installed, as Ray needs for any code it runs.
"""

from __future__ import annotations

from typing import Any

from datamix.models import Completion, Prompt, SamplingParams


RESTARTS = 3  # per replica, then the step fails (its committed chunks stay; a rerun resumes)
SHARDS_PER_REPLICA = 4  # smaller shards balance the load; larger ones batch better (vLLM)


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot hold the replicas asked for."""


class _Replica:
    """One copy of the model, inside a Ray actor."""

    def __init__(self, name: str, spec, base_dir: str):
        from datamix.models import load_backend

        self.backend = load_backend(name, spec, base_dir)
        self.prompts_served = 0

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        self.prompts_served += len(prompts)
        return self.backend.generate(prompts, params)

    def served(self) -> int:
        return self.prompts_served


def shards(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (start, stop) ranges covering range(n), sizes differing by at most one."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def gpus_needed(spec, cluster_gpus: float) -> float:
    """GPUs per replica: the declared number, else what the backend needs on this cluster."""
    declared = spec.ray.gpus_per_replica
    if declared is not None:
        return declared
    if spec.backend == "vllm":
        return float(spec.tensor_parallel_size)
    return 1.0 if cluster_gpus > 0 and spec.device != "cpu" else 0.0


class RayBackend:
    """The declared backend, `spec.ray.replicas` times, as Ray actors."""

    def __init__(self, name: str, spec, base_dir: str = "."):
        try:
            import ray
        except ImportError:
            raise RayUnavailable(
                f"model {name!r} asks for Ray replicas (ray: ...) but ray is not installed here: "
                "pip install 'datamix[ray]', or remove `ray:` to run the model in this process"
            ) from None
        self.name = name
        self.spec = spec
        if not ray.is_initialized():
            ray.init(address=spec.ray.address, ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        gpus = gpus_needed(spec, cluster_gpus)
        if gpus * spec.ray.replicas > cluster_gpus:
            raise RayUnavailable(
                f"model {name!r}: {spec.ray.replicas} replicas x {gpus:g} GPUs need {gpus * spec.ray.replicas:g} "
                f"GPUs but the Ray cluster has {cluster_gpus:g}; lower ray.replicas or set ray.gpus_per_replica"
            )
        inner = spec.model_copy(update={"ray": None})  # each actor runs the plain backend
        # A replica whose process dies (a node lost, an out-of-memory kill) is restarted by Ray
        # and its call retried: a step sees an error only when that keeps failing.
        actor = ray.remote(num_gpus=gpus, num_cpus=spec.ray.cpus_per_replica, max_restarts=RESTARTS,
                           max_task_retries=RESTARTS)(_Replica)
        self._actors = [actor.remote(name, inner, base_dir) for _ in range(spec.ray.replicas)]
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        return f"RayBackend(name={self.name!r}, backend={self.spec.backend!r}, replicas={len(self._actors)})"

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """The prompts in SHARDS_PER_REPLICA shards per replica, each handed to the next replica
        that is free: a replica that drew long answers does not hold the others up."""
        import ray

        bounds = [b for b in shards(len(prompts), len(self._actors) * SHARDS_PER_REPLICA) if b[1] > b[0]]
        results: list = [None] * len(bounds)
        running: dict = {}  # object ref -> (shard index, actor)
        todo = iter(range(len(bounds)))

        def hand(actor) -> None:
            i = next(todo, None)
            if i is not None:
                running[actor.generate.remote(prompts[bounds[i][0]:bounds[i][1]], params)] = (i, actor)

        for actor in self._actors:
            hand(actor)
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(done)
            results[i] = ray.get(done)
            hand(actor)
        return [per_prompt for shard in results for per_prompt in shard]

    def tokenizer(self):
        """The model's tokenizer, loaded here in the driver (steps build prompts with it)."""
        if self._tokenizer is None:
            from datamix.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.spec.path, self.spec.chat_template, self.name)
        return self._tokenizer

    def prompts_served(self) -> list[int]:
        """Prompts each replica has generated for (to see that the work was spread)."""
        import ray

        return ray.get([a.served.remote() for a in self._actors])
