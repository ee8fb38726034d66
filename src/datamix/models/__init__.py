"""Generation backends behind one small interface.

A model is declared once under `models:` in the YAML and referenced by name
from steps. Every backend takes the same `SamplingParams` and returns, per
prompt, `n` `Completion`s. Backends never know about steps or the store.

A prompt is either raw (`Prompt(text=...)` or `Prompt(token_ids=[...])`, sent
as is: needed for pre-query sampling, where the exact template prefix matters)
or a chat (`Prompt(messages=[...])`, rendered with the model's chat template
and the generation prompt appended).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SamplingParams(BaseModel):
    """The same sampling semantics for every backend."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 = disabled")
    max_tokens: int = Field(default=256, ge=1)
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    seed: int | None = None


@dataclasses.dataclass
class Prompt:
    text: str | None = None
    token_ids: list[int] | None = None
    messages: list[dict] | None = None


@dataclasses.dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (end of turn / stop string) or "length"
    tokens_in: int
    tokens_out: int
    latency_s: float = 0.0
    # Failed attempts (429, 5xx, timeouts, unusable replies) before this answer came; on the
    # first completion of a request only, so a sum over completions counts each request once.
    retries: int = 0


_progress_hook = None  # set by the shared generation path (steps/generate.py) around a backend call


def report_progress(completions: int) -> None:
    """Backends call this as completions finish inside one long call, so the progress bar
    and the progress file move between chunks (a call may take minutes)."""
    hook = _progress_hook
    if hook is not None:
        hook(completions)


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, `params.n` completions, in order."""
        ...

    def tokenizer(self):
        """The model's Hugging Face tokenizer, or None when the backend has none (hosted API)."""
        ...


class ModelSampling(BaseModel):
    """Sampling defaults of one declared model. A step's own `sampling:` keys win over these,
    and these over the step kind's defaults: one model folder declared twice at two
    temperatures acts as two answerers."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")
    input_per_m: float = Field(ge=0, description="per million prompt tokens")
    output_per_m: float = Field(ge=0, description="per million completion tokens")


class _ModelBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="local folder, hub id, or the served model name")
    # A chat template file to use instead of the tokenizer's own (optional).
    chat_template: str | None = None
    # What a hosted model costs, for `datamix plan` and the report's cost section; not part
    # of any fingerprint (a price change changes no output).
    price: Price | None = None
    sampling: ModelSampling | None = None


class _LocalModel(_ModelBase):
    """A model whose weights datamix loads (transformers, vllm): a folder, a hub id, or the model a
    train step of this pipeline saves."""

    path: str = Field(default="", description="local folder or hub id")
    # Instead of `path`: the model a train step of this pipeline saves (<store folder>/outputs/<step>/model).
    # The pipeline fills `path` from the store it runs on, so a `--store` elsewhere finds it too.
    from_step: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _path_or_step(cls, data):
        if isinstance(data, dict):
            if data.get("path") and data.get("from_step"):
                raise ValueError("give `path` or `from_step`, not both: from_step is the folder a train step of "
                                 "this pipeline saves its model in")
            if not data.get("path") and not data.get("from_step"):
                raise ValueError("give `path` (a local folder or a hub id) or `from_step` "
                                 "(a train step of this pipeline whose saved model this is)")
        return data


class TinyModel(BaseModel):
    """Build a tiny random model at `path` when it is missing (offline demos and tests)."""

    model_config = ConfigDict(extra="forbid")
    arch: Literal["llama", "qwen2"] = "llama"
    chat_template: str = "chatml"
    reward: bool = False
    seed: int = 0
    hidden: int = Field(default=64, ge=8, description="hidden size (a multiple of 2 x heads)")
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    vocab: int = Field(default=1000, ge=300, description="BPE vocabulary size (special tokens included)")
    intermediate: int | None = Field(default=None, ge=1, description="MLP width; default 2 x hidden")
    tokenizer_data: list[str] = Field(
        default_factory=list, description="JSONL / JSON / text files the tokenizer is trained on (beside the YAML); "
        "default: a small built-in English text")

    def build_args(self, base_dir: str = ".") -> dict:
        """build_tiny_model's keyword arguments, data files resolved beside the YAML."""
        import os

        template = self.chat_template  # a bundled name, or a .jinja file beside the YAML (whatever the working folder)
        if not os.path.isabs(template) and os.path.isfile(os.path.join(base_dir, template)):
            template = os.path.join(base_dir, template)
        return {"arch": self.arch, "chat_template": template, "reward": self.reward, "seed": self.seed,
                "hidden_size": self.hidden, "num_layers": self.layers, "num_heads": self.heads,
                "vocab_size": self.vocab, "intermediate_size": self.intermediate,
                "tokenizer_data": [f if os.path.isabs(f) else os.path.join(base_dir, f) for f in self.tokenizer_data]}


class RayReplicas(BaseModel):
    """Run the model as replicas on a Ray cluster (datamix/models/ray.py)."""

    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=1, description="copies of the model; a step's prompts are split among them")
    address: str | None = Field(default=None, description="auto: a running cluster; ray://host:port; none: local")
    gpus_per_replica: float | None = Field(default=None, ge=0, description="default: what the backend needs")
    cpus_per_replica: float = Field(default=1.0, ge=0)


class TransformersModel(_LocalModel):
    backend: Literal["transformers"]
    tiny: TinyModel | None = None
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"
    batch_size: int = Field(default=16, ge=1)
    ray: RayReplicas | None = None


class VLLMModel(_LocalModel):
    backend: Literal["vllm"]
    tensor_parallel_size: int = Field(default=1, ge=1)
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_model_len: int | None = None
    seed: int = 0
    ray: RayReplicas | None = None


class BatchOptions(BaseModel):
    """`batch:` of an openai model: how its calls go as batch files (datamix/models/openai_batch.py)."""

    model_config = ConfigDict(extra="forbid")
    runner: Literal["openai", "vllm"] = "openai"
    # vllm runner: the command given `-i IN.jsonl -o OUT.jsonl --model PATH`
    command: list[str] = Field(default_factory=lambda: ["vllm", "run-batch"])
    poll_s: float = Field(default=30.0, gt=0, description="seconds between status checks of a submitted batch")
    completion_window: str = "24h"
    max_lines: int = Field(default=50_000, ge=1, description="requests per batch file (OpenAI allows 50,000)")
    # what `plan` multiplies a model's `price:` by for calls sent as a hosted batch (OpenAI,
    # Anthropic and Google charge half the live price); vllm run-batch on this machine: not applied
    price_factor: float = Field(default=0.5, gt=0, le=1, description="batch price / live price (plan's USD)")

    def discount(self) -> float:
        """The factor on `price:` for calls sent this way (1.0 for a local vllm run-batch)."""
        return self.price_factor if self.runner == "openai" else 1.0


class OpenAIModel(_ModelBase):
    backend: Literal["openai"]
    base_url: str = "http://localhost:8000/v1"
    # The NAME of an environment variable holding the key; the key itself never
    # enters the YAML, the store, the fingerprint or the logs.
    api_key_env: str | None = None
    max_concurrency: int = Field(default=16, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    # Hosted models have no tokenizer here; name a local tokenizer folder when a
    # step needs one (e.g. pre-query templates through /v1/completions).
    tokenizer: str | None = None
    # Rate budgets: stay just under the provider's limits instead of bouncing off 429s. The
    # server's x-ratelimit-* headers are followed too; concurrency adapts within max_concurrency.
    rpm: int | None = Field(default=None, ge=1, description="requests per minute for this model")
    tpm: int | None = Field(default=None, ge=1, description="tokens (prompt + max_tokens) per minute")
    max_failures: int | None = Field(
        default=None, ge=0, description="failed attempts allowed in one step call over all its requests "
        "(default: twice the requests, at least 4 x max_retries); past it the step fails")
    # true: send the calls as an OpenAI Batch (about half the price, results within 24h);
    # {runner: vllm}: the same JSONL through `vllm run-batch` on this machine.
    batch: BatchOptions | None = None

    @field_validator("batch", mode="before")
    @classmethod
    def _batch_flag(cls, value):
        if value is True:
            return {}
        return None if value is False else value


ModelSpec = Annotated[TransformersModel | VLLMModel | OpenAIModel, Field(discriminator="backend")]


def resolve_model_path(spec, base_dir: str = ".") -> str:
    """The model's folder (relative paths resolve beside the YAML) or its hub id / served name.

    A transformers model declared with `tiny:` is built there first when missing."""
    import os

    local = spec.path if os.path.isabs(spec.path) else os.path.join(base_dir, spec.path)
    tiny = getattr(spec, "tiny", None)
    if tiny is not None:
        import json

        # what the folder was built from: a changed `tiny:` (size, tokenizer data) builds it again
        marker = os.path.join(local, "datamix_tiny_spec.json")
        wanted = tiny.model_dump(mode="json")
        built = None
        if os.path.exists(os.path.join(local, "config.json")):
            try:
                with open(marker) as f:
                    built = json.load(f)
            except (OSError, ValueError):
                built = wanted  # a folder from before the marker existed: kept as it is
        if built != wanted:
            from datamix.models.tiny import build_tiny_model

            build_tiny_model(local, **tiny.build_args(base_dir))
            with open(marker, "w") as f:
                json.dump(wanted, f, indent=2, sort_keys=True)
    return local if os.path.exists(local) else spec.path


def load_tokenizer(path: str, chat_template: str | None = None, model_name: str = ""):
    """A model's Hugging Face tokenizer, with the declared chat template (a bundled name or
    a .jinja file) in place of its own. One loader for every backend and scorer."""
    from transformers import AutoTokenizer

    from datamix.chat_templates import load_chat_template

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(
            f"model {model_name!r}: cannot load a tokenizer from {path!r} ({e}). "
            "Give a local model folder (datamix models tiny PATH builds one) or a cached hub id."
        ) from e
    if chat_template:
        tok.chat_template = load_chat_template(chat_template)
    return tok


def resolve_spec(spec, base_dir: str = "."):
    """The declared model with its folder and chat-template file resolved beside the YAML."""
    import os

    update = {"path": resolve_model_path(spec, base_dir)}
    if spec.chat_template and not os.path.isabs(spec.chat_template):
        beside = os.path.join(base_dir, spec.chat_template)
        if os.path.isfile(beside):
            update["chat_template"] = beside
    return spec.model_copy(update=update)


def load_backend(name: str, spec: TransformersModel | VLLMModel | OpenAIModel, base_dir: str = ".") -> Backend:
    """Instantiate the backend for a declared model (heavy imports happen here)."""
    spec = resolve_spec(spec, base_dir)
    if getattr(spec, "ray", None) is not None:
        from datamix.models.ray import RayBackend

        return RayBackend(name, spec, base_dir)
    if spec.backend == "transformers":
        from datamix.models.transformers import TransformersBackend

        return TransformersBackend(name, spec)
    if spec.backend == "vllm":
        from datamix.models.vllm import VLLMBackend

        return VLLMBackend(name, spec)
    from datamix.models.openai import OpenAIBackend

    return OpenAIBackend(name, spec)
