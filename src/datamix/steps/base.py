"""The contract between the runner and a step kind.

A step kind is a pydantic config model plus a `run` function registered under
its YAML `kind` (module name = kind = registry key, e.g. steps/mix.py registers
"mix"). The runner owns everything around it: reading inputs from the store,
writing outputs, chunking commits, lineage edges, decisions, counts, progress
and the response cache. A step never opens the store and never reads YAML.

Output rows are Arrow/Polars frames with these conventions:

- `sample_id` (str): stable id, minted with `datamix.ids.mint` from the step
  name and the row's parents (plus a sub-key when one parent has many
  children), so the same inputs and config give the same ids on a rerun.
- `messages` (list of struct{role, content}): the chat, OpenAI style.
- `parent_ids` (list of str): lineage. The runner moves it into the store's
  edges table and drops it from the step's table. A source row (load) has no
  parents and carries `origin_file` and `origin_line` instead.
- anything else the step wants to add (model, score, params, tokens, ...).

Decisions (filters, dedup, select, mix) are a frame with `sample_id` (the
*input* sample decided on), `kept` (bool), `reason` (str or null), `score`
(float or null) and `related_id` (str or null: the sample it duplicates, the
reference it matched, the winner it lost to).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from datamix.errors import BadInput, StepError  # noqa: F401 - re-exported for the step modules
from datamix.store import quote

if TYPE_CHECKING:  # heavy imports stay out of start-up
    import polars as pl
    import pyarrow as pa


# Step names become table names, folder names (outputs/<step>) and SQL values; mix labels
# become `source` values. One safe shape for both: no path separators, no quotes, no dots.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


def _safe_name(value: str) -> str:
    import re

    if not re.fullmatch(NAME_PATTERN, value):
        shown = value if len(value) <= 70 else value[:67] + "..."
        raise ValueError(f"{shown!r} is not a valid name: start with a letter, then letters, digits, _ or -, "
                         "at most 64 characters (it becomes a table name and a folder name)")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]


@dataclasses.dataclass(frozen=True)
class ColumnUse:
    """A column a step reads from one of its inputs. `validate` checks it against the columns the
    input step declares (StepConfig.columns_out), so a misspelt column fails before any work."""

    input: str  # the input's label: "input", a mix label, "reference"
    option: tuple  # where the YAML names it, inside the step: ("group_by",), ("rules", 1, "field")
    column: str
    chat_field: bool = False  # a chat field name (datamix.fields.CHAT_FIELDS) is accepted too
    hint: str = ""  # what to do when it is missing, if the default message does not say it


@dataclasses.dataclass(frozen=True)
class Resource:
    """Something outside the store a step's options name. `validate` checks it beside the YAML:
    "file": a file, glob or folder that must exist (a step name is accepted where the kind
    reads steps too); "tokenizer" or "model": a model declared under `models:`, a folder, or a
    hub id; "chat_template": a bundled template name or a .jinja file."""

    option: tuple
    value: str
    what: str


class StepConfig(BaseModel):
    """Fields every step has; a kind subclasses this and adds its options."""

    model_config = ConfigDict(extra="forbid")

    name: SafeName
    kind: str
    input: str | None = None
    inputs: dict[SafeName, str] | None = None
    chunk_size: int = Field(default=10_000, ge=1, description="rows per committed chunk")
    # True for a kind whose output depends on its chunking (samples seeded per chunk): then a
    # changed chunk_size reruns it; for the others it is a run setting (datamix.runner.run_settings)
    chunk_size_changes_output: ClassVar[bool] = False
    # The options whose values name models declared under `models:` (a name or a list of names);
    # `validate` checks them and fingerprints include those models. A kind that names models in
    # nested places overrides model_refs().
    model_options: ClassVar[tuple[str, ...]] = ()
    # A kind whose YAML keeps a union's options flat beside its own (dedup's method options)
    # gathers them under this field; error locations leave it out, as the YAML does.
    flat_options: ClassVar[str | None] = None

    # Step kinds that read files set this to the config fields holding paths, so
    # `validate` can check they exist (relative paths resolve beside the YAML).
    path_fields: ClassVar[tuple[str, ...]] = ()

    def parent_steps(self) -> dict[str, str]:
        """label -> upstream step name. A single `input` gets the label 'input'."""
        if self.inputs:
            return dict(self.inputs)
        return {"input": self.input} if self.input else {}

    def model_calls(self, rows_in: int | None) -> int | None:
        """Estimated model calls for `datamix plan`; None when the kind calls no model."""
        return None

    # ---- what `validate` checks before any work (datamix.spec) ----

    def model_refs(self) -> list[tuple[str, str]]:
        """(option, model name) for every declared model this step names (see model_options)."""
        refs = []
        for option in type(self).model_options:
            value = getattr(self, option, None)
            values = value if isinstance(value, list) else [value]
            refs += [(option, v) for v in values if isinstance(v, str)]
        return refs

    def columns_read(self) -> list[ColumnUse]:
        """Every column this step's options name in its inputs (a kind's fixed columns, such as
        `messages`, need not be listed)."""
        return []

    def columns_out(self, inputs: dict[str, frozenset[str] | None]) -> frozenset[str] | None:
        """The columns of this step's output, given its inputs' (label -> columns, None when
        unknown); None when they cannot be told before running."""
        return None

    def resources(self) -> list[Resource]:
        """Files, tokenizers, models and templates the options name (default: `path_fields` as files)."""
        return [Resource((f,), v, "file") for f in type(self).path_fields
                if isinstance(v := getattr(self, f, None), str) and v]


@dataclasses.dataclass
class Output:
    """What a `batch` or `whole` step returns for its input, or a `source` step for one unit: rows,
    decisions, quarantined input, files written, metrics. The runner keys it, counts it and commits it."""

    rows: pa.Table | pl.DataFrame | None = None
    decisions: pl.DataFrame | None = None
    quarantine: pl.DataFrame | None = None  # columns: file, line, reason, raw
    # Files a sink step wrote (export, train); recorded in dm.chunks.
    files: list[str] = dataclasses.field(default_factory=list)
    # Metric values an evaluate step measured (columns: datamix.eval.ROW_COLUMNS).
    metrics: pl.DataFrame | None = None
    # input rows it stands for; None: the runner counts them (the batch, or all inputs)
    rows_in: int | None = None


@dataclasses.dataclass
class Chunk:
    """One unit of work the runner commits atomically with its completion marker.

    `key` is stable across reruns (e.g. "rows-0-10000" or a file path plus batch
    index): on resume the runner passes the keys already committed in
    `Context.done_keys` and the loop does not make them again. The loop
    (datamix.loop) makes every chunk from an Output: per slice of a `batch` step,
    per Unit of a `source` step, once for a `whole` step.
    """

    key: str
    rows: pa.Table | pl.DataFrame | None = None
    decisions: pl.DataFrame | None = None
    quarantine: pl.DataFrame | None = None  # columns: file, line, reason, raw
    rows_in: int = 0
    # Files a sink step wrote for this chunk (export, train); recorded in dm.chunks.
    files: list[str] = dataclasses.field(default_factory=list)
    # Metric values an evaluate step measured (columns: datamix.eval.ROW_COLUMNS); written to
    # dm.metrics with the chunk, in the same transaction.
    metrics: pl.DataFrame | None = None


@dataclasses.dataclass(frozen=True)
class Unit:
    """One keyed unit of a `source` step's work (a part of a file, a range of samples, a model).
    `key` is its chunk key: stable across reruns, so a resumed run skips the committed ones."""

    key: str
    item: Any = None  # what the step's unit function needs to do it


@dataclasses.dataclass
class Source:
    """What a `source` step's run(config, inputs, ctx) returns: its units and the function doing one.

    The loop (datamix.loop) owns the rest: it walks `units` in order (lazily: load reads a file
    when its first part is reached), skips the keys an earlier run committed, calls `run` on the
    others, shows progress and yields each Output as the unit's chunk. State that spans units
    (load's bad-row count, the records of the file being read) lives in an object the step passes
    to these functions, not in globals; `committed` sees each skipped unit (load still counts its
    bad rows) and `finish` runs after the last (load's max_bad_fraction check)."""

    units: Iterable[Unit]
    run: Callable[[Unit], Output]
    committed: Callable[[Unit], None] = lambda unit: None
    finish: Callable[[], None] = lambda: None


class InputTable:
    """A read-only handle on an upstream step's output, given by the runner."""

    def __init__(self, name: str, reader: Callable[[str | None], pa.Table], count: int):
        self.name = name  # the upstream step's name (= its table)
        self._reader = reader
        self._count = count

    def __len__(self) -> int:
        return self._count

    def arrow(self, columns: str | None = None) -> pa.Table:
        """All rows, in the order the upstream step wrote them (stable across reruns).

        `columns` is an optional SQL select list, e.g. "sample_id, messages"."""
        return self._reader(columns)

    def polars(self, columns: str | None = None) -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.arrow(columns))

    def take(self, indexes, columns: str | None = None) -> pa.Table:
        """The rows at these positions of the stable order (repeats allowed), as one Arrow chunk.

        The runner's version gathers once from the stored table, without first copying
        the upstream step's kept rows."""
        import pyarrow as pa

        return self.arrow(columns).combine_chunks().take(pa.array(indexes, pa.int64()))

    def column_names(self) -> list[str]:
        return self.arrow().column_names

    def write(self, path: str, fmt: str, columns: list[str]) -> None:
        """Write `columns` of every row, in the stable order, to a JSON-lines (`fmt` "jsonl")
        or zstd Parquet ("parquet") file. The runner's version copies straight from the store."""
        write_arrow(self.arrow(", ".join(quote(c) for c in columns)), path, fmt)

    def slices(self, size: int, columns: str | None = None) -> Iterator[tuple[int, pa.Table]]:
        """(offset, table) pairs of `size` rows (the last may have fewer), in the stable order.
        The runner's version reads them from the store as they are used."""
        table = self.arrow(columns)
        for start in range(0, table.num_rows, size):
            yield start, table.slice(start, size)

    def stream(self, size: int, columns: str | None = None) -> Iterator[tuple[int, pa.Table]]:
        """(offset, table) pairs of about `size` rows, in the stable order, read as they are
        used: a step that sees its whole input (out-of-core dedup) never holds all of it.
        The runner's version streams from the store."""
        yield from self.slices(size, columns)


def exact_slices(pieces: Iterable[tuple[int, pa.Table]], size: int) -> Iterator[tuple[int, pa.Table]]:
    """(offset, table) pairs of exactly `size` rows (the last may have fewer) cut from `pieces`,
    consecutive tables of any sizes (a stream): InputTable.slices from InputTable.stream."""
    import pyarrow as pa

    held: list = []
    count = offset = 0
    for _, piece in pieces:
        held.append(piece)
        count += piece.num_rows
        while count >= size:
            table = pa.concat_tables(held) if len(held) > 1 else held[0]
            yield offset, table.slice(0, size)
            offset += size
            rest = table.slice(size)
            held, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield offset, pa.concat_tables(held) if len(held) > 1 else held[0]


def copy_sql(columns: list[str], source: str, fmt: str) -> str:
    """DuckDB's COPY of `columns` of `source` ("FROM ...") as JSON lines or zstd Parquet, to the
    path given as its last parameter (after `source`'s own)."""
    options = {"jsonl": "(FORMAT JSON)", "parquet": "(FORMAT PARQUET, COMPRESSION ZSTD)"}[fmt]
    select = ", ".join(quote(c) for c in columns)
    return f"COPY (SELECT {select} {source}) TO ? {options}"


def write_arrow(table: pa.Table, path: str, fmt: str) -> None:
    """Every column of `table` to `path` with DuckDB's writer (see copy_sql)."""
    from datamix import scratch

    with scratch.cursor() as con:
        con.register("_rows", table)
        con.execute(copy_sql(table.column_names, "FROM _rows", fmt), [path])


@dataclasses.dataclass
class Context:
    """What the runner gives a step besides its config and inputs."""

    step: str  # this step's name
    pipeline_dir: str  # relative paths in the config resolve against this folder
    output_dir: str  # where sink steps write files (exports, shards, checkpoints)
    seed: int
    done_keys: frozenset[str] = frozenset()
    # name -> resolved model declaration (spec.ModelSpec) from the YAML `models:` section
    models: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The models this run has loaded (datamix.llm.get_model): the runner gives every step of a
    # run the same pool, so a model used by two steps loads once; nothing outlives the run.
    pool: dict[Any, Any] = dataclasses.field(default_factory=dict)
    # progress(rows, tokens=0): advance the progress bar; the runner shows rows/s and tokens/s
    progress: Callable[..., None] = lambda rows, tokens=0: None
    # The response cache in the store: get(keys) -> {key: value}, put({key: value}).
    cache_get: Callable[[list[str]], dict[str, Any]] = lambda keys: {}
    cache_put: Callable[[dict[str, Any]], None] = lambda items: None
    log: Callable[[str], None] = lambda msg: None
    # calls(record): one model call's (or one batch of cache hits') cost, for dm.calls and the
    # progress of model calls; record keys are the columns of sql/calls.sql
    calls: Callable[[dict[str, Any]], None] = lambda record: None
    # calls_progress(n): n more completions of a call still in flight (progress only, not stored)
    calls_progress: Callable[[int], None] = lambda n: None
    # query(sql, params) -> list of row dicts: SQL on the store, for steps that look at the
    # whole run (report); other steps get their rows through `inputs`
    query: Callable[..., Any] | None = None
    # probe: `datamix plan` runs the step to count what it would ask its models; the shared
    # generation path answers from the cache and records the rest without calling a model
    probe: bool = False
    # The run's memory budget (bytes, None: none given) and where DuckDB may spill
    # (Pipeline.memory_settings): steps that can work out of core (MinHash dedup) size
    # their work from it. Run settings: they change no output.
    memory_limit: int | None = None
    temp_directory: str | None = None
    # The step's executor (datamix.executors; None: local). A `whole` step that can spread its
    # work over a cluster (MinHash dedup's signing and band shuffle) looks here; a run setting too.
    executor: Any = None
    # `datamix run -q`: a step that would print its own progress (the trainer's loss lines)
    # writes it to a log file in its output folder instead
    quiet: bool = False

    def resolve(self, path: str) -> str:
        import os

        return path if os.path.isabs(path) else os.path.normpath(os.path.join(self.pipeline_dir, path))

    def resolve_model(self, value: str) -> str:
        """A tokenizer or model option (Resource "tokenizer"/"model"): a model declared under
        `models:` (built first if it is a tiny one), a folder beside the YAML (a declared tiny
        model's folder is built first), or else the value as given (a hub id)."""
        import os

        from datamix.models import resolve_model_path

        if value in self.models:
            return resolve_model_path(self.models[value], self.pipeline_dir)
        full = self.resolve(value)
        for spec in self.models.values():
            if getattr(spec, "tiny", None) is not None and self.resolve(spec.path) == full:
                return resolve_model_path(spec, self.pipeline_dir)
        return full if os.path.exists(full) else value


@dataclasses.dataclass
class StepKind:
    """A registered step kind. Its `shape` says how the runner drives `run`:

    - "batch": run(config, batch: pa.Table, ctx) -> Output, a pure function of one slice of
      its single input (`chunk_size` rows, only the `columns` it reads). The runner slices,
      keys ("rows-<start>-<end>"), skips committed slices, shows progress and commits; any
      executor that can map a function over Arrow batches can run it (filter, generate, judge, map);
    - "whole": run(config, inputs, ctx) -> Output | None, over all of its inputs at once,
      committed as one chunk (dedup, select, mix, export, train, report);
    - "source": run(config, inputs, ctx) -> Source, for kinds whose units come from outside and
      carry their own keys (load: parts of files; reconstruct: sample ranges; evaluate: one
      model on every set): the Source lists the units and the function doing one; the runner
      skips committed units, shows progress and commits each one's Output.
    """

    kind: str
    config: type[StepConfig]
    run: Callable[..., Any]
    shape: str = "source"
    # batch kinds: the SQL select list of the input columns a batch needs (None: all)
    columns: Callable[[StepConfig], str | None] | None = None
    # Bump when the step's behaviour changes: it is part of the fingerprint, so
    # stores built by the old code are recomputed.
    version: str = "1"
    # A pass-through step (filter, dedup) only decides: its output is its input's
    # rows minus the ones it dropped, with the same sample ids. It yields chunks
    # with decisions and no rows; the runner exposes its output as a view.
    passthrough: bool = False
    # A step whose every output row keeps its (single) parent's sample id, e.g. export's
    # placement rows. Its rows are stored, but it writes no lineage edges: the walk steps
    # to the parent step with the same sample_id, as for a pass-through step. The runner
    # checks the claim on every chunk (parent_ids == [sample_id]).
    keeps_ids: bool = False


REGISTRY: dict[str, StepKind] = {}


def register(kind: str, config: type[StepConfig], version: str = "1", passthrough: bool = False,
             keeps_ids: bool = False, shape: str = "source", columns: Callable[[StepConfig], str | None] | None = None):
    """Decorator: register `run` as the step kind `kind` with its config model (see StepKind)."""
    if shape not in ("source", "batch", "whole"):
        raise ValueError(f"step kind {kind}: shape must be source, batch or whole, not {shape!r}")

    def wrap(run):
        REGISTRY[kind] = StepKind(kind=kind, config=config, run=run, version=version, passthrough=passthrough,
                                  keeps_ids=keeps_ids, shape=shape, columns=columns)
        return run

    return wrap
