"""Batch files: an openai model's calls as one OpenAI Batch, or through `vllm run-batch`.

`batch: true` on an openai model (or on a generate, judge or reconstruct step,
overriding its models' own) sends the requests a step call has to make as
batch JSONL, one line per answer (`custom_id` = the answer's response-cache key,
n = 1, its own seed): write, upload, submit, poll, download, ingest. Hosted APIs
charge about half the price of live calls for it, and answer within the
completion window (24h) instead of at once.

Every stage is resumable, because a batch may run for hours and the run that
submitted it may be killed meanwhile. The uploaded file's id and the batch's id
go into the store's response cache the moment they are known (under keys derived
from the file's content, so the same requests find the same batch); a rerun
resumes polling that batch and never submits the same requests twice. A run
killed between the submission and that record finds its batch again by the
`datamix_batch` metadata it was submitted with. Lines that failed (an error line,
a status other than 200, a reply that cannot be used) are sent again as live
requests, with the same retry layer as any call.

`batch: {runner: vllm}` writes the same JSONL and runs
`vllm run-batch -i IN.jsonl -o OUT.jsonl --model PATH` (the `command:` option)
on this machine for an offline model, with the same ingest; an output file that
already answers every line is ingested without running it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from datamix.models import Completion, Prompt, SamplingParams
from datamix.models.openai_wire import OpenAIBackendError, parse_choices, request_body, unusable

logger = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclasses.dataclass
class BatchRequest:
    key: str  # the response-cache key of the answer: the line's custom_id
    prompt: Prompt
    seed: int | None


def batch_lines(model_path: str, requests: list[BatchRequest], params: SamplingParams,
                response_format: dict | None = None) -> list[dict]:
    """One JSONL line per request, in the OpenAI Batch input format."""
    lines = []
    for r in requests:
        path, body = request_body(model_path, r.prompt, params.model_copy(update={"n": 1}), 1, r.seed, response_format)
        lines.append({"custom_id": r.key, "method": "POST", "url": "/v1" + path, "body": body})
    return lines


def _digest(lines: list[dict]) -> str:
    blob = "\n".join(json.dumps(line, sort_keys=True, ensure_ascii=False) for line in lines)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def read_output(text: str, chat_by_key: dict[str, bool], require: str | None) -> tuple[dict[str, Completion], dict[str, str]]:
    """(answers by custom_id, why each other line failed) from batch output or error JSONL."""
    answers: dict[str, Completion] = {}
    failed: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            key = line["custom_id"]
        except (ValueError, KeyError, TypeError):
            logger.warning("batch output line %d is not a result line: %.200s", number, raw)
            continue
        if key not in chat_by_key:
            continue  # not one of ours
        response = line.get("response") or {}
        status = response.get("status_code")
        body = response.get("body")
        if line.get("error") or status != 200:
            failed[key] = f"status {status}: {json.dumps(line.get('error') or body)[:300]}"
            continue
        problem = unusable(body, chat_by_key[key], require)
        if problem:
            failed[key] = f"{problem}: {json.dumps(body)[:300]}"
            continue
        answers[key] = parse_choices(body, chat_by_key[key], 0.0)[0]
    return answers, failed


def generate_batched(
    name: str,
    backend: Any,
    requests: list[BatchRequest],
    params: SamplingParams,
    *,
    opts: Any = None,
    cache_get: Callable[[list[str]], dict],
    cache_put: Callable[[dict], None],
    work_dir: str,
    log: Callable[[str], None] = lambda msg: None,
    require: str | None = None,
    response_format: dict | None = None,
) -> dict[str, Completion]:
    """An answer for every request, by its key: through batch files, the failed lines live.
    `opts`: the BatchOptions (a step's `batch:`), else the model's own."""
    spec = backend.spec
    opts = opts if opts is not None else spec.batch
    os.makedirs(work_dir, exist_ok=True)
    if opts.runner == "openai" and len(requests) < 1000:
        # a batch holds one chunk of the step and the next chunk's waits for it (up to the window)
        log(f"model {name!r}: a batch of {len(requests)} requests; a larger chunk_size on the step puts more in "
            f"each batch (up to {opts.max_lines}), so fewer wait one after another")
    chat_by_key = {r.key: r.prompt.messages is not None for r in requests}
    answers: dict[str, Completion] = {}
    failed: dict[str, str] = {}
    # one batch has one endpoint; and at most max_lines lines
    for chat in (True, False):
        group = [r for r in requests if (r.prompt.messages is not None) == chat]
        for start in range(0, len(group), opts.max_lines):
            part = group[start : start + opts.max_lines]
            lines = batch_lines(spec.path, part, params, response_format)
            if opts.runner == "vllm":
                got, bad = _run_vllm(name, opts, spec.path, lines, chat_by_key, require, work_dir, log)
            else:
                got, bad = _run_openai(name, backend, opts, lines, chat_by_key, require, work_dir, log,
                                       cache_get, cache_put)
            answers.update(got)
            failed.update(bad)
    missing = [r for r in requests if r.key not in answers]
    if missing and opts.runner == "vllm":
        # no server to ask live: the failed lines go once more, as a second batch file
        lines = batch_lines(spec.path, missing, params, response_format)
        log(f"model {name!r}: {len(missing)} batch lines failed (first: {failed.get(missing[0].key, 'no result line')}); "
            "running them again as a second batch")
        got, failed = _run_vllm(name, opts, spec.path, lines, chat_by_key, require, work_dir, log)
        answers.update(got)
        missing = [r for r in missing if r.key not in answers]
        if missing:
            raise OpenAIBackendError(f"model {name!r}: {len(missing)} lines failed in two runs of the batch "
                                     f"(first: {failed.get(missing[0].key, 'no result line')}).")
    if missing:
        log(f"model {name!r}: {len(missing)} of {len(requests)} batch lines failed "
            f"(first: {failed.get(missing[0].key, 'no result line')}); sending them as live requests")
        answers.update(backend.run(_live(backend, missing, params, require, response_format)))
    return answers


async def _live(backend, requests: list[BatchRequest], params: SamplingParams, require, response_format):
    """The failed lines as live requests, each with its own seed, concurrently (the backend bounds them)."""
    import asyncio

    outs = await asyncio.gather(*(backend.agenerate([r.prompt], params.model_copy(update={"n": 1, "seed": r.seed}),
                                                    require=require, response_format=response_format)
                                  for r in requests))
    answers = {}
    for r, out in zip(requests, outs):
        completion = out[0][0]
        completion.retries += 1  # the failed line was an attempt too
        answers[r.key] = completion
    return answers


# ---------------------------------------------------------------- OpenAI Batch API


def _run_openai(name, backend, opts, lines, chat_by_key, require, work_dir, log, cache_get, cache_put):
    digest = _digest(lines)
    path = os.path.join(work_dir, f"batch-{digest[:16]}.jsonl")
    k_file, k_batch = f"datamix-batch\x1f{digest}\x1ffile", f"datamix-batch\x1f{digest}\x1fbatch"
    if not os.path.exists(path):
        _write_jsonl(path, lines)
    known = cache_get([k_file, k_batch])
    batch_id = (known.get(k_batch) or {}).get("id")
    if batch_id is None:
        batch_id = _find_submitted(backend, digest)
        if batch_id is not None:
            log(f"model {name!r}: batch {batch_id} was submitted before; resuming it")
    if batch_id is None:
        file_id = (known.get(k_file) or {}).get("id")
        if file_id is None:
            with open(path, "rb") as f:
                data = f.read()
            uploaded = backend.run(backend.call("upload of the batch file", lambda c, h: c.files.create(
                file=(os.path.basename(path), data), purpose="batch", extra_headers=h)))
            file_id = uploaded.id
            cache_put({k_file: {"id": file_id}})
        endpoint = "/v1/chat/completions" if lines[0]["url"].endswith("/chat/completions") else "/v1/completions"
        created = backend.run(backend.call("batch submission", lambda c, h: c.batches.create(
            input_file_id=file_id, endpoint=endpoint, completion_window=opts.completion_window,
            metadata={"datamix_batch": digest}, extra_headers=h)))
        batch_id = created.id
        cache_put({k_batch: {"id": batch_id}})
        log(f"model {name!r}: submitted batch {batch_id} ({len(lines)} requests)")
    else:
        log(f"model {name!r}: polling batch {batch_id}")
    batch = _poll(name, backend, opts, batch_id, log)
    answers: dict[str, Completion] = {}
    failed: dict[str, str] = {}
    for file_id in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
        if file_id:
            content = backend.run(backend.call("download of batch results", lambda c, h, i=file_id: c.files.content(
                i, extra_headers=h)))
            got, bad = read_output(content.text, chat_by_key, require)
            answers.update(got)
            failed.update(bad)
    if batch.status != "completed":
        errors = getattr(batch, "errors", None)
        log(f"model {name!r}: batch {batch_id} ended {batch.status}" + (f" ({errors})" if errors else ""))
    return answers, failed


def _find_submitted(backend, digest: str) -> str | None:
    """A batch submitted with these lines whose id was not recorded (a run killed in between)."""
    try:
        page = backend.run(backend.call("listing of batches", lambda c, h: c.batches.list(limit=100, extra_headers=h)))
    except OpenAIBackendError as e:
        if e.status in (404, 405, 501):  # a server without the listing: only the recorded id resumes
            return None
        raise
    for b in getattr(page, "data", None) or []:
        if (b.metadata or {}).get("datamix_batch") == digest and b.status not in ("failed", "expired", "cancelled"):
            return b.id
    return None


def _poll(name, backend, opts, batch_id, log):
    last = None
    while True:
        batch = backend.run(backend.call(f"status of batch {batch_id}", lambda c, h: c.batches.retrieve(
            batch_id, extra_headers=h)))
        if batch.status in TERMINAL:
            return batch
        counts = getattr(batch, "request_counts", None)
        shown = f"{batch.status}" + (f" {counts.completed}/{counts.total}" if counts is not None else "")
        if shown != last:
            log(f"model {name!r}: batch {batch_id} {shown}")
            last = shown
        time.sleep(opts.poll_s)


# ---------------------------------------------------------------- vllm run-batch


def _run_vllm(name, opts, model_path, lines, chat_by_key, require, work_dir, log):
    digest = _digest(lines)
    src = os.path.join(work_dir, f"batch-{digest[:16]}.jsonl")
    out = os.path.join(work_dir, f"batch-{digest[:16]}.out.jsonl")
    if not os.path.exists(src):
        _write_jsonl(src, lines)
    keys = {line["custom_id"] for line in lines}
    if os.path.exists(out):
        with open(out, encoding="utf-8") as f:
            answers, failed = read_output(f.read(), chat_by_key, require)
        if keys <= set(answers) | set(failed):
            log(f"model {name!r}: {out} already answers every line; ingesting it")
            return answers, failed
    command = [*opts.command, "-i", src, "-o", out + ".part", "--model", model_path]
    log(f"model {name!r}: {' '.join(command)}")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise OpenAIBackendError(f"model {name!r}: `{' '.join(command)}` exited with {done.returncode}: "
                                 f"{(done.stderr or done.stdout)[-1000:]}")
    os.replace(out + ".part", out)  # a killed runner leaves no half file that looks complete
    with open(out, encoding="utf-8") as f:
        return read_output(f.read(), chat_by_key, require)


def _write_jsonl(path: str, lines: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
