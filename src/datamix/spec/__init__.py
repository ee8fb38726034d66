"""The pipeline spec: YAML -> vars and overrides applied -> pydantic models.

pipeline.py: the models; source.py: the YAML, vars and overrides; checks.py: what validate
checks and how a problem names its place; loading.py: load() that puts them together.

Every error names its place: the YAML path (`steps[3] (name: dedup).threshold`)
and, where the YAML has it, file:line. All errors are collected, not just the
first, so one `datamix validate` shows everything to fix.
"""

from datamix.spec.loading import load, store_path_of
from datamix.spec.pipeline import Pipeline, SpecError, models_used

__all__ = ["Pipeline", "SpecError", "load", "models_used", "store_path_of"]
