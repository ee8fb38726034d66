"""export: write the samples as JSONL or Parquet files (or packed training shards).

JSONL and Parquet files are read directly by
`datasets.load_dataset("json" | "parquet", data_files=...)`: one record per
sample with `sample_id`, `messages`, `source` and any `fields` asked for.
A `manifest.json` beside them gives counts per source and where the sample ids
are. The step's table records, for every exported sample, the file and row
(or shard and sequence) it went to, so lineage continues into the files.

    - name: export
      kind: export
      input: mix
      format: jsonl            # jsonl | parquet | shards
      path: out/mix            # default: beside the store, outputs/<step>
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import Field, field_serializer, model_validator

from datamix.export.shards import ShardsConfig
from datamix.steps.base import BadInput, ColumnUse, Context, Output, Resource, StepConfig, register, write_arrow


class ExportConfig(StepConfig):
    kind: Literal["export"]
    format: Literal["jsonl", "parquet", "shards"] = "jsonl"
    path: str | None = Field(default=None, description="output folder (relative to the YAML)")
    fields: list[str] = Field(default_factory=list, description="extra columns to write beside messages")
    shuffle: bool | None = Field(default=None, description="write the samples in a seeded random order (default: "
                                 "on for shards, off for jsonl and parquet, which keep the input's order)")
    # format: shards -> how rows become training shards (tokenizer, seq_len, ...); a typed field,
    # so a wrong option is reported at its place (steps[i].shards.seq_len) by `validate`
    shards: ShardsConfig | None = None

    @field_serializer("shards")
    def _shards_as_written(self, shards):
        # the options as the YAML gives them, without defaults: fingerprints (and stores) made
        # when this field was a plain mapping stay valid
        return None if shards is None else shards.model_dump(mode="json", exclude_unset=True)

    @model_validator(mode="after")
    def _check(self):
        if not self.input:
            raise ValueError("export needs `input: <step>`")
        if self.format == "shards" and not self.shards:
            raise ValueError("format: shards needs `shards:` options (at least tokenizer and seq_len)")
        return self

    def columns_read(self) -> list[ColumnUse]:
        return [ColumnUse("input", ("fields", i), f) for i, f in enumerate(self.fields)]

    def columns_out(self, inputs):
        # the placement of every exported sample: the file and row, or the shard and sequence
        if self.format == "shards":
            return frozenset({"sample_id", "shard", "sequence", "status", "reason", "folder"})
        return frozenset({"sample_id", "file", "row"})

    def resources(self) -> list[Resource]:
        if self.format != "shards" or self.shards is None:
            return []
        found = [Resource(("shards", "tokenizer"), self.shards.tokenizer, "tokenizer")]
        if self.shards.chat_template:
            found.append(Resource(("shards", "chat_template"), self.shards.chat_template, "chat_template"))
        return found


def _shards_options(shards: ShardsConfig, ctx: Context) -> ShardsConfig:
    """The shard options with the tokenizer and template resolved beside the YAML, whatever the
    working folder: a declared model's name means its folder (a tiny one is built first) and,
    unless `chat_template:` is given, its declared chat template."""
    import os

    update = {"tokenizer": ctx.resolve_model(shards.tokenizer)}
    template = shards.chat_template
    if template is None and shards.tokenizer in ctx.models:
        template = ctx.models[shards.tokenizer].chat_template
    if template and os.path.isfile(ctx.resolve(template)):  # a file wins over a bundled name, as in load_chat_template
        template = ctx.resolve(template)
    update["chat_template"] = template
    return shards.model_copy(update=update)


def _out_dir(cfg: ExportConfig, ctx: Context) -> str:
    return ctx.resolve(cfg.path) if cfg.path else ctx.output_dir


def _write_manifest(out: str, manifest: dict) -> None:
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, os.path.join(out, "manifest.json"))  # readers never see half a manifest


def _write_lines(path: str, ids) -> None:
    """One sample id per line. Arrow's CSV writer does 1M ids in 0.02 s (a Python join: 0.23 s);
    it refuses values that would need quoting, which minted (hex) ids never do."""
    import pyarrow as pa
    import pyarrow.csv as csv

    try:
        csv.write_csv(pa.table({"sample_id": ids}), path,
                      csv.WriteOptions(include_header=False, quoting_style="none"))
    except pa.ArrowInvalid:
        with open(path, "w") as f:
            f.write("".join(i + "\n" for i in ids.to_pylist()))


# Every placement row keeps the exported sample's id: no lineage edges (see StepKind.keeps_ids).
@register("export", ExportConfig, keeps_ids=True, shape="whole")
def run(cfg: ExportConfig, inputs, ctx: Context) -> Output:
    import numpy as np
    import pyarrow as pa

    source = inputs["input"]
    shuffle = cfg.shuffle if cfg.shuffle is not None else cfg.format == "shards"
    if cfg.format == "shards" or shuffle:
        table = source.arrow()  # the shard writer tokenizes every chat; a shuffled file is written from here
        columns = table.column_names
    else:  # the text goes from the store to the file in DuckDB; only ids and sources come here
        columns = source.column_names()
        table = source.arrow(", ".join(c for c in ("sample_id", "source") if c in columns))
    missing = [f for f in cfg.fields if f not in columns]
    if missing:
        raise BadInput(f"step {cfg.name}.fields: no column {', '.join(missing)} in {source.name} "
                       f"(columns: {', '.join(columns)})")
    if "source" not in table.column_names:
        table = table.append_column("source", pa.nulls(table.num_rows, pa.string()))
    if shuffle:  # a mix is grouped by source; training windows and file readers want them interleaved
        table = table.take(pa.array(np.random.default_rng(ctx.seed).permutation(table.num_rows)))
    n = table.num_rows
    out = _out_dir(cfg, ctx)
    os.makedirs(out, exist_ok=True)
    counts = table.group_by("source").aggregate([([], "count_all")])
    # sorted by source, a missing source first
    per_source = sorted(zip(counts.column("source").to_pylist(), counts.column("count_all").to_pylist()),
                        key=lambda sc: (sc[0] is not None, sc[0] or ""))
    manifest = {
        "step": cfg.name,
        "input": source.name,
        "format": cfg.format,
        "samples": n,
        "samples_per_source": {str(s): c for s, c in per_source},
        "sample_ids_file": "sample_ids.txt",
    }
    ids = table.column("sample_id").combine_chunks()
    if cfg.format == "shards":
        import polars as pl

        from datamix.export.shards import write_shards

        df = pl.from_arrow(table)
        shard_manifest, placement = write_shards(df, out, _shards_options(cfg.shards, ctx), progress=ctx.progress)
        # the trainer reads the shard manifest: keep its keys, add ours where they are free
        manifest = {**shard_manifest, **{k: v for k, v in manifest.items() if k not in shard_manifest}}
        # rows are the packed samples; one not packed is a decision with its reason (mark, don't
        # drop), and a truncated one a kept decision, so `status` counts both
        placed = placement.filter(pl.col("status") != "dropped")
        rows = placed.with_columns(pl.lit(out).alias("folder"), pl.concat_list("sample_id").alias("parent_ids"))
        noted = placement.filter(pl.col("status") != "packed")
        decisions = pl.DataFrame({
            "sample_id": noted["sample_id"],
            "kept": noted["status"] != "dropped",
            "reason": noted.select(pl.coalesce("reason", "status")).to_series(),
            "score": pl.Series([None] * noted.height, dtype=pl.Float64),
            "related_id": pl.Series([None] * noted.height, dtype=pl.Utf8),
        })
        # every file the shards are made of, as written (dm.chunks checks they are still there)
        files = [info["file"] for shard in shard_manifest["shards"] for info in shard["files"].values()]
    else:
        name = "data.jsonl" if cfg.format == "jsonl" else "data.parquet"
        written = ["sample_id", "messages", "source", *cfg.fields]
        if shuffle:
            write_arrow(table.select(written), os.path.join(out, name), cfg.format)
        elif "source" in columns:
            source.write(os.path.join(out, name), cfg.format, written)
        else:  # no mix upstream: the file still has the column, null, as the manifest counts
            samples = source.arrow()
            samples = samples.append_column("source", pa.nulls(samples.num_rows, pa.string()))
            write_arrow(samples.select(written), os.path.join(out, name), cfg.format)
        rows = pa.table({
            "sample_id": ids,
            "file": pa.repeat(pa.scalar(name, pa.string()), n),
            "row": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "parent_ids": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), ids),
        })
        files = [name]
        manifest["files"] = files
        decisions = None
    _write_lines(os.path.join(out, "sample_ids.txt"), ids)
    _write_manifest(out, manifest)
    ctx.progress(n)
    files = [*files, "manifest.json", "sample_ids.txt"]
    return Output(rows=rows, decisions=decisions, rows_in=n, files=[os.path.join(out, f) for f in files])
