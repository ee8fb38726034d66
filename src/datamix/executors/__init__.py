"""Where a step's work runs: `executor:` in the YAML (pipeline level, overridable per step).

    executor: local                    # the default: every step in this process
    executor: {type: ray, address: auto, num_cpus_per_task: 1}

Under `type: ray`, the `batch` steps that call no model (filter, map) run as Ray Data
`map_batches` over the same slices the local loop makes (datamix.executors.ray); their rows
are written by the workers as Parquet files that the store reads in place. Steps that call a
model (generate, judge) keep their loop in this process and reach the cluster through their
models' `ray:` replicas, which join the same Ray. `source` and `whole` steps run here.

An executor is a run setting, not part of what a step computes: it never enters a
fingerprint (the spec keeps it beside the steps, not in their configs), so a store built
locally is up to date under ray and the other way round.

Nothing here imports ray: `validate` checks an executor (installed, address reachable) from
the outside, in well under a second.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError


class LocalExecutor(BaseModel):
    """Every step in the datamix process (the default)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["local"] = "local"


class RayExecutor(BaseModel):
    """`batch` steps as Ray Data map_batches over a Ray cluster (datamix/executors/ray.py)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["ray"]
    address: str = Field(default="local", description="local: start Ray on this machine for the run; auto: the "
                                                      "cluster `ray start` made here; HOST:PORT or ray://HOST:PORT")
    num_cpus_per_task: float = Field(default=1.0, gt=0, description="CPUs Ray reserves for each slice's task")
    concurrency: int | None = Field(default=None, ge=1, description="most slices at once (default: as the CPUs allow)")
    num_cpus: int | None = Field(default=None, ge=1, description="address local only: CPUs the local Ray gets")
    max_retries: int = Field(default=3, ge=0, description="a slice whose worker died is run again this many times")


def _shorthand(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


Executor = Annotated[Union[LocalExecutor, RayExecutor], Field(discriminator="type"), BeforeValidator(_shorthand)]
_ADAPTER: TypeAdapter = TypeAdapter(Executor)


def parse(value: Any) -> tuple[LocalExecutor | RayExecutor | None, list[tuple[tuple, str]]]:
    """(the executor, []) or (None, [(place inside `executor:`, message), ...])."""
    if value is None:
        return LocalExecutor(), []
    try:
        return _ADAPTER.validate_python(value), []
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            if loc and loc[0] in ("local", "ray"):  # the union's tag is not in the YAML
                loc = loc[1:]
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                problems.append((("type",), "give `local` (the default) or `ray`, e.g. executor: {type: ray, "
                                            "address: auto}"))
            elif err["type"] == "model_attributes_type":
                problems.append(((), "give `local`, `ray` or a mapping such as {type: ray, address: auto}"))
            elif err["type"] == "extra_forbidden":
                known = ", ".join(RayExecutor.model_fields)
                problems.append((loc, f"unknown option; a ray executor takes {known}"))
            else:
                problems.append((loc, err["msg"]))
        return None, problems


def check(spec: LocalExecutor | RayExecutor) -> list[tuple[tuple, str]]:
    """What keeps this executor from running here, found before any work: ray not installed,
    or a cluster address nothing answers at. [(place inside `executor:`, message)]."""
    if not isinstance(spec, RayExecutor):
        return []
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return [(("type",), "ray is not installed in this environment: pip install 'datamix[ray]' (ray>=2.9), or "
                            "use executor: local")]
    if spec.address == "local":
        return []
    if spec.num_cpus is not None:
        return [(("num_cpus",), f"num_cpus sizes a Ray started for the run (address: local); the cluster at "
                                f"{spec.address} has its own CPUs: remove num_cpus")]
    address, problem = _bootstrap_address(spec.address)
    if problem:
        return [(("address",), problem)]
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return []
    except (OSError, ValueError) as e:
        return [(("address",), f"no Ray cluster answers at {address} ({getattr(e, 'strerror', None) or e}): start "
                               f"one there (ray start --head --port {port}), fix the address, or use address: local")]


def _bootstrap_address(address: str) -> tuple[str, str | None]:
    """(HOST:PORT to reach, problem) for `auto` (RAY_ADDRESS, else the cluster `ray start` last
    made on this machine, as Ray finds it), HOST:PORT or ray://HOST:PORT."""
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS")
        if env:
            address = env
        else:
            # where `ray start` records the head's address (ray._private.utils.read_ray_address)
            temp = os.environ.get("RAY_TMPDIR", "/tmp/ray")
            try:
                with open(os.path.join(temp, "ray_current_cluster"), encoding="utf-8") as f:
                    address = f.read().strip()
            except OSError:
                return "", ("address: auto, but no Ray cluster is running on this machine (none was started with "
                            "`ray start --head`, and RAY_ADDRESS is not set): start one, give HOST:PORT, or use "
                            "address: local to start Ray for the run")
    if address.startswith("ray://"):
        address = address[len("ray://"):]
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return "", f"{address!r} is not an address: give auto, local, HOST:PORT or ray://HOST:PORT"
    return address, None


def calls_models(step) -> bool:
    """A step that calls models (generate's models, judge's judges) keeps its loop in this
    process: its response cache and call records live in the store, and its models reach the
    cluster as `ray:` replicas instead."""
    return bool(step.model_refs())


def stores_parts(pipeline, step) -> bool:
    """Whether `step` stores its rows as Parquet parts beside the store (read through a view), not
    in a table: the `source` and `batch` steps under a Ray executor, whether their rows come from
    its tasks (filter, map) or from the driver's loop (load, generate, judge), so the steps after
    them on Ray read their input in their own tasks. A `whole` step's one chunk stays a table."""
    from datamix.steps.base import REGISTRY

    entry = REGISTRY[step.kind]
    on_ray = pipeline.executor_of(step.name).type == "ray"
    return on_ray and entry.shape in ("source", "batch") and not entry.passthrough


def stored_form_change(pipeline, store, step) -> str | None:
    """Why a partial step cannot resume under this run's executor, or None: the rows it committed
    are in the other executor's form (a table the local loop appends to, or Parquet parts the
    Ray executor's view reads), and mixing the two would lose the local loop's row order."""
    from datamix.steps.base import REGISTRY

    entry = REGISTRY[step.kind]
    if entry.passthrough or entry.shape == "whole" or not store.output_exists(step.name):
        return None  # a pass-through step stores decisions only, the same under both
    on_ray = stores_parts(pipeline, step)
    in_parts = store.con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'main' AND view_name = ?",
                                 [step.name]).fetchall()[0][0] > 0
    if on_ray and not in_parts:
        return "its committed rows were written by the local executor and this run's is ray"
    if in_parts and not on_ray:
        return "its committed rows are Parquet parts of a ray run and this run's executor is local"
    return None
