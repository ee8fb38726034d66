"""Fixtures shared by the tests (helpers live in tests/helpers.py so tests can import them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_core, run_pipeline


@pytest.fixture
def core_pipeline(tmp_path: Path) -> Path:
    """A fresh core pipeline (see helpers.make_core), not run yet."""
    return make_core(tmp_path)


@pytest.fixture(scope="module")
def core_ran(tmp_path_factory) -> Path:
    """The core pipeline, run once per module: for tests that only read its store."""
    pipeline = make_core(tmp_path_factory.mktemp("core_ran"))
    result = run_pipeline(pipeline)
    assert result.ok, result.error
    return pipeline
