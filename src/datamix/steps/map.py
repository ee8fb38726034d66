"""map: compute columns for every row, with DuckDB expressions or a Python function.

    - name: sized
      kind: map
      input: best
      columns:                       # name: a DuckDB expression over the row's columns
        response_chars: "length(messages[-1].content)"
        turns: "len(messages)"

    - name: tagged
      kind: map
      input: best
      function: my_tags:add_tags     # module:function, the module beside the YAML or installed

A function takes a pyarrow.Table (a slice of the input, `chunk_size` rows) and returns a
table with the same rows in the same order (the same `sample_id`s); it may add columns and
replace any but `sample_id`. Rows keep their ids, so lineage steps through to the input.
The function's module file is part of the step's fingerprint: editing it reruns the step.

A `batch` step (see steps/base.py): this module is the whole of the kind, a config class
and one function of a slice; the runner does the rest.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from datamix.steps.base import BadInput, Context, Output, StepConfig, StepError, register
from datamix.store import quote

_FUNCTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class MapConfig(StepConfig):
    kind: Literal["map"]
    columns: dict[str, str] | None = Field(default=None, description="new or replaced column -> DuckDB expression")
    function: str | None = Field(default=None, description="module:function over a pyarrow.Table slice")

    @model_validator(mode="after")
    def _one_of(self):
        if not self.input:
            raise ValueError("map needs `input: <step>`")
        if (self.columns is None) == (self.function is None):
            raise ValueError("give `columns:` (DuckDB expressions) or `function:` (module:function), one of them")
        return self

    @field_validator("columns")
    @classmethod
    def _expressions(cls, columns: dict[str, str] | None) -> dict[str, str] | None:
        """Each expression parsed by DuckDB now: a typo fails `validate`, and no second statement hides in one."""
        import duckdb

        for name, expr in (columns or {}).items():
            if name == "sample_id":
                raise ValueError("sample_id cannot be replaced: rows keep their ids through a map")
            try:
                statements = duckdb.extract_statements(f"SELECT ({expr}) AS x FROM rows")
            except duckdb.Error as e:
                raise ValueError(f"{name}: invalid expression {expr!r}: {str(e).splitlines()[0]}") from None
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise ValueError(f"{name}: write one expression over the row's columns, e.g. len(messages)")
        return columns

    @field_validator("function")
    @classmethod
    def _function_name(cls, function: str | None) -> str | None:
        if function is not None and not _FUNCTION.match(function):
            raise ValueError(f"{function!r}: give module:function, e.g. my_tags:add_tags (a dotted module name, "
                             "not a file path)")
        return function

    def columns_out(self, inputs):
        if self.columns is None or inputs.get("input") is None:
            return None  # a function's columns are known once it runs
        return inputs["input"] | set(self.columns)

    def fingerprint_files(self) -> list[str]:
        """The function's module file, so editing it reruns the step (found beside the YAML by the runner)."""
        if self.function is None:
            return []
        module = self.function.split(":")[0]
        return [module.replace(".", os.sep) + ".py"]


_LOADED: dict[str, int] = {}  # module -> mtime of its file when imported


def _function(cfg: MapConfig, ctx: Context):
    import importlib
    import sys

    module_name, name = cfg.function.split(":")
    sys.path.insert(0, ctx.pipeline_dir)  # a module beside the YAML first, then installed ones
    try:
        module = importlib.import_module(module_name)
        # a module edited since this process imported it (a second run in one process) is read anew:
        # the step reran because its fingerprint saw the edit
        path = getattr(module, "__file__", None)
        if path and os.path.isfile(path) and _LOADED.setdefault(module_name, os.stat(path).st_mtime_ns) != (
                mtime := os.stat(path).st_mtime_ns):
            module = importlib.reload(module)
            _LOADED[module_name] = mtime
    except ImportError as e:
        raise BadInput(f"step {cfg.name!r}.function: cannot import {module_name!r} ({e}); put {module_name}.py "
                       f"beside the pipeline YAML or install it") from None
    finally:
        sys.path.remove(ctx.pipeline_dir)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise BadInput(f"step {cfg.name!r}.function: {module_name} has no function {name!r}")
    return fn


_ROW = "__datamix_map_row"


def _with_expressions(batch, columns: dict[str, str]):
    import duckdb
    import numpy as np
    import pyarrow as pa

    from datamix import scratch

    # sandboxed: expressions compute; they read and write no file
    with scratch.cursor(sandboxed=True) as con:
        try:
            # a row number keeps the slice's order, whatever the expressions do (a window
            # function may reorder); only it and the computed columns go through the sort, the
            # rest of the row stays in Arrow (sorting whole chats was most of a map's time)
            con.register("rows", batch.append_column(_ROW, pa.array(np.arange(batch.num_rows, dtype=np.int64))))
            computed = ", ".join(f"({e}) AS {quote(c)}" for c, e in columns.items())
            values = con.sql(f"SELECT {computed} FROM rows ORDER BY {_ROW}").to_arrow_table()
        except duckdb.Error as e:
            raise BadInput(f"map: an expression failed: {str(e).splitlines()[0]}") from None
    out = batch
    for name, column in zip(values.column_names, values.columns):  # replaced in place, new ones at the end
        at = out.schema.get_field_index(name)
        out = out.set_column(at, name, column) if at >= 0 else out.append_column(name, column)
    return out


@register("map", MapConfig, keeps_ids=True, shape="batch")
def run(cfg: MapConfig, batch, ctx: Context) -> Output:
    import numpy as np
    import pyarrow as pa

    out = _with_expressions(batch, cfg.columns) if cfg.columns else _function(cfg, ctx)(batch)
    if not isinstance(out, pa.Table):
        raise StepError(f"step {cfg.name!r}: {cfg.function} returned {type(out).__name__}, not a pyarrow.Table")
    if "sample_id" not in out.column_names or out.num_rows != batch.num_rows or not out.column(
            "sample_id").equals(batch.column("sample_id")):
        raise StepError(f"step {cfg.name!r}: {cfg.function or 'the expressions'} must return the same rows in the "
                        f"same order (the same sample_id column); got {out.num_rows} rows for {batch.num_rows}")
    ids = out.column("sample_id").combine_chunks()
    offsets = pa.array(np.arange(out.num_rows + 1, dtype=np.int32))
    return Output(rows=out.append_column("parent_ids", pa.ListArray.from_arrays(offsets, ids)))
