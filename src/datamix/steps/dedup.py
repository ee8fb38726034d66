"""dedup: remove duplicates (exact), near-duplicates (minhash) or paraphrases (semantic).

The step chooses the text (`fields`), the keep policy and the reference set;
the method module (datamix/dedup/<method>.py) finds the duplicates. Every
removed sample records the kept sample it duplicates (or the reference row it
matched) and the similarity. Pass-through: kept rows keep their sample ids.

    - name: dedup
      kind: dedup
      input: clean
      method: minhash          # exact | minhash | semantic
      fields: [instruction]
      threshold: 0.8           # method options sit beside the common ones
      keep: highest            # first | longest | highest
      keep_column: score
      reference: benchmarks/gsm8k_test.jsonl   # or a step name: decontamination

With `reference:` the step decontaminates: it removes only the samples that match a
reference row (reason `contamination`), and leaves near-duplicates within its own input
alone, unless `within_input: true` asks for both (those are counted apart, with the
method's reason, e.g. `near_duplicate`). Without a reference it deduplicates its input.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, model_validator

from datamix.dedup.options import ExactConfig, MinHashConfig, SemanticConfig
from datamix.steps.base import BadInput, ColumnUse, Context, Output, Resource, StepConfig, register

# method -> (its options, the module that finds the duplicates: imported when the step runs)
_METHODS: dict[str, tuple[type, str]] = {"exact": (ExactConfig, "datamix.dedup.exact"),
                                         "minhash": (MinHashConfig, "datamix.dedup.minhash"),
                                         "semantic": (SemanticConfig, "datamix.dedup.semantic")}

MethodConfig = Annotated[Union[tuple(c for c, _ in _METHODS.values())], Field(discriminator="method")]  # noqa: UP007

REASONS = {"exact": "duplicate", "minhash": "near_duplicate", "semantic": "semantic_duplicate"}
# Options of the step itself; every other key belongs to the method. (`chunk_size` is the
# method's: dedup decides over the whole input at once, MinHash signs it in chunks.)
COMMON = {"name", "kind", "input", "inputs", "fields", "keep", "keep_column", "reference",
          "reference_field", "within_input", "options"}


class DedupConfig(StepConfig):
    kind: Literal["dedup"]
    flat_options: ClassVar[str | None] = "options"  # the method's options sit beside the step's own
    fields: list[str] = Field(default_factory=lambda: ["conversation"], min_length=1)
    keep: Literal["first", "longest", "highest"] = "first"
    keep_column: str | None = Field(default=None, description="with keep: highest, the column to maximise")
    # decontamination: a step name, or a file (JSONL/JSON/Parquet/CSV) of reference records
    reference: str | None = None
    reference_field: str | None = Field(
        default=None, description="the text of a reference row (default: the same `fields` as the input's)")
    within_input: bool | None = Field(
        default=None, description="also remove duplicates within the input; default: true without a "
        "reference, false with one (decontamination removes only what matches the reference)")
    options: MethodConfig

    @model_validator(mode="before")
    @classmethod
    def _method_options(cls, data: Any):
        """Method options sit flat in the YAML; gather them under `options`."""
        if isinstance(data, dict) and "options" not in data:
            data = dict(data)
            method = data.pop("method", "exact")
            opts = {k: data.pop(k) for k in list(data) if k not in COMMON}
            data["options"] = {"method": method, **opts}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.keep == "highest" and not self.keep_column:
            raise ValueError("keep: highest needs keep_column (e.g. score)")
        if not self.input:
            raise ValueError("dedup needs `input: <step>`")
        return self

    @property
    def method(self) -> str:
        return self.options.method

    @property
    def dedups_input(self) -> bool:
        return self.within_input if self.within_input is not None else self.reference is None

    @property
    def reference_fields(self) -> list[str]:
        return [self.reference_field] if self.reference_field else list(self.fields)

    def parent_steps(self) -> dict[str, str]:
        parents = super().parent_steps()
        if self.reference and not _looks_like_file(self.reference):
            parents["reference"] = self.reference
        return parents

    def columns_read(self) -> list[ColumnUse]:
        used = [ColumnUse("input", ("fields", i), f, chat_field=True) for i, f in enumerate(self.fields)]
        if self.keep == "highest" and self.keep_column:
            used.append(ColumnUse("input", ("keep_column",), self.keep_column))
        if "reference" in self.parent_steps():  # a step's rows: their text must be there too
            option = ("reference_field",) if self.reference_field else ("fields",)
            used += [ColumnUse("reference", option, f, chat_field=True,
                               hint="set reference_field to the reference rows' text")
                     for f in self.reference_fields]
        return used

    def columns_out(self, inputs):
        return inputs.get("input")  # pass-through: its input's rows and columns

    def check_pipeline(self, pipeline, check_files: bool = True) -> list[tuple[tuple, str]]:
        """A reference file must be one the step can read (a missing one is reported with the files)."""
        if not check_files or not self.reference or "reference" in self.parent_steps():
            return []
        from datamix.steps.load import files_problem

        problem = files_problem(self.reference, "auto", pipeline.base_dir)
        return [] if problem is None else [(("reference",), problem.replace("; set `format:` (jsonl, json, parquet, csv)",
                                                                          ": use .jsonl, .json, .parquet or .csv"))]

    def resources(self) -> list[Resource]:
        found = super().resources()
        model = getattr(self.options, "model", None)
        if model and model not in _OFFLINE_MODELS:  # semantic: a local sentence-transformers folder
            found.append(Resource(("model",), model, "file"))
        return found


# semantic dedup's default model, installed as a package (datamix.dedup.semantic.resolve_model_path)
_OFFLINE_MODELS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _looks_like_file(ref: str) -> bool:
    return "/" in ref or "." in ref or "*" in ref


DedupConfig.path_fields = ("reference",)


def _priority(df, cfg: DedupConfig, texts):
    """Lower is kept first."""
    import numpy as np
    import polars as pl

    if cfg.keep == "first":
        return np.arange(len(df), dtype=np.float64)
    if cfg.keep == "longest":
        return -texts.str.len_chars().cast(pl.Float64).to_numpy()
    values = df[KEEP].cast(pl.Float64).fill_null(float("-inf")).to_numpy()
    return -values


KEEP = "__keep"  # the keep_column, as read


def _read(cfg: DedupConfig, table):
    """(sample ids, texts, the frame read) for the input `table`: only the fields' text and the
    keep column are read. DuckDB extracts chat fields during the read, so the chats themselves
    never reach Python (reading 1M of them through a filter: 0.75 s, their instructions: 0.2 s)."""
    df = table.polars(_select(cfg, table))
    return df["sample_id"], _texts(cfg, df), df


def _select(cfg: DedupConfig, table) -> str:
    """The SQL select list of what dedup reads of its input: ids, the fields' text, the keep column."""
    from datamix.fields import check_field, sql_select

    columns = table.column_names()
    for f in cfg.fields:
        if problem := check_field(f, columns):
            raise BadInput(f"step {cfg.name}.fields: {problem}")
    if cfg.keep == "highest" and cfg.keep_column not in columns:
        raise BadInput(f"step {cfg.name}: keep_column {cfg.keep_column!r} is not a column ({', '.join(columns)})")
    select = ["sample_id", *(sql_select(f, f"__field{i}") for i, f in enumerate(cfg.fields))]
    if cfg.keep == "highest":
        select.append(sql_select(cfg.keep_column, KEEP))
    return ", ".join(select)


def _texts(cfg: DedupConfig, df):
    """The text dedup compares: the fields joined with a blank line, as fields.text_of joins them."""
    import polars as pl

    from datamix.fields import CHAT_FIELDS, cast_text

    parts = [pl.col(f"__field{i}") if f in CHAT_FIELDS else cast_text(f"__field{i}") for i, f in enumerate(cfg.fields)]
    texts = df.select((parts[0] if len(parts) == 1 else pl.concat_str(parts, separator="\n\n")).alias("text"))
    return texts.to_series()


def _read_out_of_core(cfg: DedupConfig, table, folder: str, size: int):
    """(sample ids, priority, text source) with the input read in batches: the texts go to a
    Parquet file in `folder` as they are read (datamix.dedup.sources.SpilledTexts), so neither
    the chats nor their texts are ever whole in memory."""
    import numpy as np
    import polars as pl

    from datamix.dedup.sources import SpilledTexts

    spill = SpilledTexts(os.path.join(folder, "texts.parquet"))
    ids, priority = [], []
    for _, batch in table.stream(size, _select(cfg, table)):
        df = pl.from_arrow(batch)
        texts = _texts(cfg, df)
        spill.write(texts)
        ids.append(df["sample_id"])
        priority.append(_priority(df, cfg, texts))
    source = spill.close()
    if cfg.keep == "first":  # _priority numbered each batch from 0
        priority = [np.arange(len(source), dtype=np.float64)]
    ids = pl.concat(ids) if ids else pl.Series("sample_id", [], dtype=pl.String)
    return ids, np.concatenate(priority) if priority else np.zeros(0), source


def _reference(cfg: DedupConfig, inputs, ctx: Context):
    """(texts, ids) of the reference rows: a step's samples, or file records as 'file:line'."""
    import polars as pl

    if cfg.reference is None:
        return None, None
    if "reference" in inputs:
        ref = inputs["reference"].polars()
        return _reference_text(cfg, ref, f"step {cfg.reference!r}"), ref["sample_id"]
    from datamix.steps.load import LoadConfig, format_of, list_files, normalize, read_raw_records
    import duckdb

    files = list_files(ctx.resolve(cfg.reference))
    if not files:
        raise BadInput(f"step {cfg.name}: reference {cfg.reference} matches no file")
    con = duckdb.connect()
    load_cfg = LoadConfig(name=cfg.name, kind="load", path=cfg.reference, prompt_field="question",
                          response_field="answer")
    frames = []
    for path in files:
        origin = _relpath(path, ctx)
        good, _bad = normalize(con, read_raw_records(path, format_of(path, "auto")), origin, load_cfg)
        frames.append(pl.from_arrow(good))
    ref = pl.concat(frames)
    ids = ref.select(pl.concat_str([pl.col("origin_file"), pl.col("origin_line").cast(pl.Utf8)], separator=":"))
    return _reference_text(cfg, ref, cfg.reference), ids.to_series()


def _reference_text(cfg: DedupConfig, ref, where: str):
    from datamix.fields import check_field, text_of

    for f in cfg.reference_fields:
        if problem := check_field(f, ref.columns):
            raise BadInput(f"step {cfg.name}.reference_field: {problem} (in the reference {where}); "
                           "set reference_field to the reference rows' text")
    return text_of(ref, cfg.reference_fields)


def _relpath(path: str, ctx: Context) -> str:
    import os

    return os.path.relpath(path, ctx.pipeline_dir)


class _StoreCache:
    """The store's response cache, offered to methods that keep what they compute (semantic's embeddings)."""

    def __init__(self, ctx: Context):
        self.get, self.put = ctx.cache_get, ctx.cache_put


@register("dedup", DedupConfig, passthrough=True, shape="whole")
def run(cfg: DedupConfig, inputs, ctx: Context) -> Output:
    import importlib

    import polars as pl

    model = getattr(cfg.options, "model", None)  # semantic: a model folder beside the YAML, whatever the working folder
    if model and os.path.isdir(ctx.resolve(model)):
        cfg = cfg.model_copy(update={"options": cfg.options.model_copy(update={"model": ctx.resolve(model)})})
    ref_texts, ref_ids = _reference(cfg, inputs, ctx)
    found = _minhash_out_of_core(cfg, inputs["input"], ref_texts, ctx) if cfg.method == "minhash" else None
    if found is not None:
        found, ids = found
        rows_in = len(ids)
    else:
        ids, texts, df = _read(cfg, inputs["input"])
        rows_in = len(df)
        module = importlib.import_module(_METHODS[cfg.method][1])
        # Embeddings (a model's forward pass) are worth keeping in the store; MinHash signatures
        # are not: signing a text from its raw bytes (~3 us for 200 words) costs less than looking
        # its signature up there, let alone writing it (issue 11: 2.5 s of keys + the writes per 50k).
        cache = _StoreCache(ctx) if cfg.method == "semantic" else None
        found = module.find_duplicates(texts, _priority(df, cfg, texts), cfg.options, reference=ref_texts,
                                       cache=cache)
    if not cfg.dedups_input:  # decontamination only: keep what matches no reference row
        found = found.filter(pl.col("ref_index").is_not_null())
    dup_ids = ids.gather(found["dup_of"].fill_null(0)).to_list()
    ref_match = ref_ids.gather(found["ref_index"].fill_null(0)).to_list() if ref_ids is not None else None
    related, reasons = [], []
    for i, (dup, ref) in enumerate(zip(found["dup_of"].to_list(), found["ref_index"].to_list())):
        if ref is not None:
            related.append(ref_match[i])
            reasons.append("contamination")
        else:
            related.append(dup_ids[i] if dup is not None else None)
            reasons.append(REASONS[cfg.method])
    decisions = pl.DataFrame({
        "sample_id": ids.gather(found["index"]),
        "kept": pl.Series([False] * len(found), dtype=pl.Boolean),
        "reason": pl.Series(reasons, dtype=pl.Utf8),
        "score": found["similarity"].cast(pl.Float64),
        "related_id": pl.Series(related, dtype=pl.Utf8),
    })
    ctx.progress(rows_in)
    return Output(decisions=decisions, rows_in=rows_in)


# What the out-of-core choice assumes a text weighs before reading any (~150 words).
ASSUMED_TEXT_BYTES = 1000


def _minhash_out_of_core(cfg: DedupConfig, table, ref_texts, ctx: Context):
    """(removal frame, sample ids) from the out-of-core MinHash path (datamix.dedup.ooc) when
    the method asks for it or (auto) the input is too large for the run's memory budget;
    None for the in-memory path. Its work files live in the step's output folder while it
    runs and are removed once it is done."""
    import shutil

    from datamix.dedup import ooc

    budget = ooc.Budget(ctx.memory_limit, ctx.temp_directory)
    n = len(table)
    # under a ray executor, signing and the band shuffle run on the cluster, which writes the
    # out-of-core layout: that path, unless the YAML asks for the in-memory one (out_of_core: false)
    on_ray = getattr(ctx.executor, "type", "local") == "ray" and cfg.options.out_of_core is not False
    if not on_ray and not ooc.choose_out_of_core(cfg.options, n, n * ASSUMED_TEXT_BYTES, budget):
        if budget.limit:
            ctx.log(f"dedup {cfg.name}: in memory, {n:,} texts within the {budget.describe()}")
        return None
    folder = os.path.join(ctx.output_dir, "minhash")
    shutil.rmtree(folder, ignore_errors=True)  # a killed run's files: the step starts over
    os.makedirs(folder)
    ctx.log(f"dedup {cfg.name}: out of core, {budget.describe()}")
    ids, priority, source = _read_out_of_core(cfg, table, folder, ooc.chunk_docs(cfg.options, budget, n))
    stages = {}
    if on_ray:
        from datamix.executors.ray_minhash import Stages

        ray_stages = Stages(ctx.executor)
        stages = {"sign": ray_stages.sign, "candidates": ray_stages.candidates}
        ctx.log(f"dedup {cfg.name}: MinHash signing and the band shuffle on Ray ({ctx.executor.address}); "
                "verification and clusters here")
    found = ooc.find_duplicates_ooc(source, priority, cfg.options, folder, reference=ref_texts, budget=budget,
                                    log=lambda m: ctx.log(f"dedup {cfg.name}: {m}"), **stages)
    if on_ray:
        ctx.log(f"dedup {cfg.name}: signed {ray_stages.tasks} chunks as Ray tasks")
    shutil.rmtree(folder, ignore_errors=True)
    return found, ids
