"""Step kinds: one module per kind; the module name is the YAML `kind`."""

import importlib
import pkgutil
from collections.abc import Iterable

from datamix.steps.base import REGISTRY


def _kind_modules() -> set[str]:
    return {info.name for info in pkgutil.iter_modules(__path__)
            if info.name != "base" and not info.name.startswith("_")}


def kind_names() -> list[str]:
    """Every step kind, without importing a step module: the kind modules here, and any kind
    registered otherwise (a test's, a plugin's)."""
    return sorted(_kind_modules() | set(REGISTRY))


def load_registry(kinds: Iterable[str] | None = None) -> dict:
    """Import the step modules of `kinds` (default: every kind) so each registers its kind.

    spec.load asks only for the kinds its pipeline names: importing every kind module (the
    eval sets, the export shards, every kind's pydantic models) was ~55 ms of each `datamix
    run`. A name that is not a kind module is skipped; the caller reports it (`kind_names`)."""
    modules = _kind_modules()
    for name in sorted(modules if kinds is None else modules.intersection(k for k in kinds if isinstance(k, str))):
        importlib.import_module(f"{__name__}.{name}")
    return REGISTRY
