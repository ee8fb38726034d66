"""The pipeline as pydantic models (Pipeline, its steps and models), and what a step refers to."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from datamix.executors import Executor, LocalExecutor
from datamix.models import ModelSpec
from datamix.steps.base import StepConfig


class SpecError(Exception):
    """The spec is wrong. `problems` lists every error with its place."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    store: str | None = None
    seed: int = 0
    vars: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    steps: list[StepConfig]
    # Where steps run (datamix.executors): a run setting, never part of a fingerprint
    executor: Executor = Field(default_factory=LocalExecutor)
    # The process's memory budget ("4GB") and where DuckDB spills past it: run settings
    # (outside fingerprints), overridden by DATAMIX_MEMORY_LIMIT / DATAMIX_TEMP_DIRECTORY
    # (memory_settings). Out-of-core steps (MinHash dedup) size their work from it.
    memory_limit: str | None = None
    temp_directory: str | None = None
    # Set by load(): where the YAML lives (relative paths resolve against it).
    spec_path: str = ""
    # Set by load(): a step's own `executor:`, kept out of its config so no fingerprint sees it
    _step_executors: dict = PrivateAttr(default_factory=dict)

    def executor_of(self, step: str):
        """The executor a step runs under: its own `executor:`, else the pipeline's."""
        return self._step_executors.get(step, self.executor)

    @field_validator("memory_limit")
    @classmethod
    def _a_size(cls, v: str | None) -> str | None:
        if v is not None:
            from datamix.dedup.budget import parse_size

            parse_size(v, "memory_limit")  # "4GB", "512MB", "2GiB": a plain message, not pydantic's
        return v

    @model_validator(mode="after")
    def _trained_model_paths(self):
        """A model declared `from_step:` lives in that step's output folder beside the store:
        its path follows the store (a `--store` elsewhere included)."""
        root = os.path.join(os.path.dirname(self.store_path()), "outputs")
        for spec in self.models.values():
            if getattr(spec, "from_step", None):
                spec.path = os.path.join(root, spec.from_step, "model")
        return self

    @model_validator(mode="after")
    def _memory_settings_read(self):
        self.memory_settings()  # a bad DATAMIX_MEMORY_LIMIT is bad input, found when the YAML is read
        return self

    def memory_settings(self) -> tuple[int | None, str | None]:
        """(memory limit in bytes, temp directory) for this run: the environment's
        DATAMIX_MEMORY_LIMIT / DATAMIX_TEMP_DIRECTORY over the YAML's (a machine with less
        memory runs a shared pipeline without editing it); a relative folder is the YAML's."""
        from datamix.dedup.budget import parse_size

        limit = os.environ.get("DATAMIX_MEMORY_LIMIT") or self.memory_limit
        temp = os.environ.get("DATAMIX_TEMP_DIRECTORY") or self.temp_directory
        if temp and not os.path.isabs(temp):
            temp = os.path.join(self.base_dir, temp)
        where = "DATAMIX_MEMORY_LIMIT" if os.environ.get("DATAMIX_MEMORY_LIMIT") else "memory_limit"
        return parse_size(limit, where), temp

    @property
    def base_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.spec_path)) if self.spec_path else os.getcwd()

    def store_path(self, override: str | None = None) -> str:
        path = override or self.store or os.path.join(".datamix", f"{self.name}.duckdb")
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def step(self, name: str) -> StepConfig:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def order(self) -> list[StepConfig]:
        """Steps in dependency order (stable: YAML order among independent steps)."""
        done: set[str] = set()
        out: list[StepConfig] = []
        pending = list(self.steps)
        while pending:
            for s in pending:
                if all(p in done for p in s.parent_steps().values()):
                    out.append(s)
                    done.add(s.name)
                    pending.remove(s)
                    break
            else:  # validated against cycles in load(); kept as a guard
                raise SpecError([f"steps: cycle among {', '.join(s.name for s in pending)}"])
        return out


def _model_refs(step: StepConfig) -> list[tuple[str, str]]:
    """(option, model name) for every model a step refers to, as its kind declares them
    (StepConfig.model_options, or the kind's own model_refs for nested places)."""
    return step.model_refs()


def models_used(step: StepConfig) -> list[str]:
    """Model names a step refers to, and the tokenizer/model options that may name one (a
    value that is a folder is no declared model: callers keep the declared ones)."""
    named = {res.value for res in step.resources() if res.what in ("tokenizer", "model")}
    return sorted({name for _, name in _model_refs(step)} | named)
