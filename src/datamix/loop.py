"""The loop every step runs in, whatever its shape (see steps.base.StepKind).

The runner feeds the chunks this makes to the store; `datamix plan` runs the same loop
against the response cache to count model calls; tests call `chunks_of` without a store.
`run_batch` is the one call a `batch` step needs per slice: the seam where another
executor (Ray Data's map_batches) would take over.
"""

from __future__ import annotations

from collections.abc import Iterator

from datamix.errors import BadInput, StepError
from datamix.steps.base import REGISTRY, Chunk, Context, InputTable, Output, Source, StepConfig, StepKind


WHOLE_KEY = "all"  # the one chunk of a `whole` step


def step_chunks(entry: StepKind, step: StepConfig, inputs: dict[str, InputTable], ctx: Context) -> Iterator[Chunk]:
    """The loop every step runs in, whatever its shape (see steps.base.StepKind)."""
    if entry.shape == "source":
        source = entry.run(step, inputs, ctx)
        if not isinstance(source, Source):  # a step kind written for the old protocol (yielding chunks)
            raise StepError(f"step kind {step.kind!r} has shape 'source', so its function must return a "
                            f"Source (see steps/base.py and docs/adding-a-step.md), not {type(source).__name__}")
        yield from _source_chunks(source, ctx)
    elif entry.shape == "whole":
        if WHOLE_KEY in ctx.done_keys:
            return
        out = entry.run(step, inputs, ctx)
        if out is not None:
            rows_in = out.rows_in if out.rows_in is not None else sum(len(t) for t in inputs.values())
            yield _chunk(WHOLE_KEY, out, rows_in)
    else:  # batch: slices of the single input, each a pure function call
        if "input" not in inputs:
            raise BadInput(f"step {step.name!r}: a {step.kind} step needs `input: <step>`")
        columns = entry.columns(step) if entry.columns else None
        for offset, batch in inputs["input"].slices(step.chunk_size, columns):
            key = f"rows-{offset}-{offset + batch.num_rows}"
            if key in ctx.done_keys:
                continue
            out = run_batch(entry, step, batch, ctx)
            ctx.progress(batch.num_rows)
            yield _chunk(key, out, out.rows_in if out.rows_in is not None else batch.num_rows)


def _source_chunks(source: Source, ctx: Context) -> Iterator[Chunk]:
    """A `source` step's units, in order: committed ones skipped (the step still sees them, see
    Source.committed), the others run, counted and yielded; then the step's check across units."""
    for unit in source.units:
        if unit.key in ctx.done_keys:
            source.committed(unit)
            continue
        out = source.run(unit)
        rows_in = out.rows_in or 0
        ctx.progress(rows_in)
        yield _chunk(unit.key, out, rows_in)
    source.finish()


def chunks_of(step: StepConfig, inputs: dict[str, InputTable], ctx: Context) -> list[Chunk]:
    """Every chunk a step makes of `inputs`, without a store: for tests and notebooks."""
    return list(step_chunks(REGISTRY[step.kind], step, inputs, ctx))


def run_batch(entry: StepKind, step: StepConfig, batch, ctx: Context) -> Output:
    """One `batch` step call: the seam another executor (Ray Data's map_batches) calls instead."""
    return entry.run(step, batch, ctx) or Output()


def _chunk(key: str, out: Output, rows_in: int) -> Chunk:
    return Chunk(key=key, rows=out.rows, decisions=out.decisions, quarantine=out.quarantine, rows_in=rows_in,
                 files=list(out.files), metrics=out.metrics)
