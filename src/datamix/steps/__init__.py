"""Step kinds: one module per kind; the module name is the YAML `kind`."""

import importlib
import pkgutil

from datamix.steps.base import REGISTRY


def load_registry() -> dict:
    """Import every step module so each registers its kind (cheap: heavy imports are lazy)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return REGISTRY
