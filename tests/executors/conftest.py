"""One local Ray for every test of the executors that needs it (starting one costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def cluster():
    """A real local Ray with two CPUs, so two slices run at once; yields its address."""
    ray = pytest.importorskip("ray")
    from datamix.executors import RayExecutor
    from datamix.executors.ray import worker_env

    # its workers' environment is the one datamix.executors.ray gives a Ray it starts
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False, configure_logging=False,
             runtime_env=worker_env(RayExecutor(type="ray", address="local")))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
