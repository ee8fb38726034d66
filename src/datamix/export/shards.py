"""Tokenized, packed training shards: what the FSDP2 recipe (datamix.train.recipe) reads.

Pipeline, per batch of rows:
  1. render the chat with the target model's chat template (the tokenizer's own,
     or a bundled/user template given as an override);
  2. find each assistant turn's character span by rendering prefixes: the text of
     messages[:i] with the generation prompt and of messages[:i+1] tell where the
     turn's content starts and which end-of-turn marker (e.g. "<|im_end|>", "</s>")
     follows it; the span is content + end-of-turn marker (the model must learn
     to stop), never the header or the whitespace after the marker. No
     template-specific code: it works for any template that writes the content
     verbatim (after an optional trim);
  3. tokenize the full text in one fast-tokenizer batch with offsets; a token is
     labelled when its characters overlap an assistant span (-100 elsewhere);
  4. pack documents into fixed-length sequences by best-fit-decreasing (at least
     as tight as first-fit-decreasing) within windows of a few shards' worth of
     tokens, so memory stays bounded while the input streams.

Files per shard: <name>.input_ids.npy (uint32), <name>.labels.npy (int32, -100 =
no loss), <name>.position_ids.npy (int32, restarting at 0 at every document and
at the padding tail, so attention that honours position-id restarts never
crosses documents) -- all [sequences, seq_len], memory-mappable with
np.load(mmap_mode="r"). manifest.json describes everything (see `write_shards`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

IGNORE = -100
MANIFEST_VERSION = 1


class ShardsConfig(BaseModel):
    """How rows become training shards."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: str = Field(description="model folder (or tokenizer folder) whose tokenizer and chat template are used")
    chat_template: str | None = Field(
        default=None, description="override: a bundled template name (chatml, llama-3-instruct, ...) or a .jinja path"
    )
    seq_len: int = Field(default=4096, ge=8)
    pack: Literal["ffd", "none"] = "ffd"
    # all: every token is labelled (user turns and headers too), as when pretraining a model that
    # must have an instruction distribution of its own (pre-query sampling needs one)
    train_on: Literal["all_assistant", "last_assistant", "all"] = "all_assistant"
    overlong: Literal["truncate", "drop"] = "truncate"
    shard_sequences: int = Field(default=1024, ge=1, description="packed sequences per shard file")
    workers: int = Field(default=1, ge=1, description="tokenizer processes (1 = in-process; the fast tokenizer is already multi-threaded)")
    batch_rows: int = Field(default=512, ge=1, description="rows rendered and tokenized together")


# --------------------------------------------------------------------------- tokenize


class _Tokenizer:
    """A loaded tokenizer + template; lives once per process (workers load their own)."""

    def __init__(self, tokenizer_path: str, chat_template: str | None):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer_path)
        if chat_template:
            from datamix.chat_templates import load_chat_template

            self.template = load_chat_template(chat_template)
        else:
            self.template = self.tok.chat_template
        if not self.template:
            raise ValueError(
                f"the tokenizer at {tokenizer_path!r} has no chat template: set `chat_template:` "
                "to a bundled name (chatml, llama-3-instruct, qwen2.5-instruct, ...) or a .jinja file"
            )
        if isinstance(self.template, dict):  # tokenizers with named templates: take the default one
            self.template = self.template.get("default") or next(iter(self.template.values()))

    def render(self, convs: list[list[dict]], generation_prompt: bool) -> list[str]:
        if not convs:
            return []
        return self.tok.apply_chat_template(
            convs, tokenize=False, add_generation_prompt=generation_prompt, chat_template=self.template
        )


_WORKER: _Tokenizer | None = None


def _init_worker(tokenizer_path: str, chat_template: str | None) -> None:
    global _WORKER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker process
    _WORKER = _Tokenizer(tokenizer_path, chat_template)


def _assistant_spans(full: str, prefixes: list[tuple[str, str, str]]) -> list[tuple[int, int]] | None:
    """Character spans (content + end-of-turn marker) of assistant turns inside `full`.

    `prefixes` holds, per assistant turn, (render of messages[:i] + generation
    prompt, render of messages[:i+1], content). None when a turn's content cannot
    be found verbatim (a template that rewrites content): the caller drops it.
    """
    spans = []
    cursor = 0
    for before, upto, content in prefixes:
        body = content.strip()
        # Where the turn's content starts in the prefix render, and what the template
        # writes right after it up to the next whitespace-free end: the end marker.
        at = upto.find(body, len(before) if upto.startswith(before) else 0)
        if at < 0:
            return None
        marker = upto[at + len(body):].rstrip()
        start = full.find(body + marker, cursor)
        if start < 0:
            return None
        end = start + len(body) + len(marker)
        spans.append((start, end))
        cursor = end
    return spans


def tokenize_rows(messages: list[list[dict]], train_on: str, tk: _Tokenizer | None = None) -> list[tuple[Any, Any] | None]:
    """(input_ids uint32, labels int32) per conversation, None when it has no trainable assistant text."""
    import numpy as np

    tk = tk or _WORKER
    assert tk is not None, "tokenize_rows needs a tokenizer (or _init_worker in this process)"
    convs = [[{"role": m["role"], "content": m["content"] or ""} for m in conv] for conv in messages]
    # Every assistant turn needs two prefix renders; batch them across rows.
    turn_index: list[list[int]] = []
    for conv in convs:
        turns = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
        turn_index.append(turns[-1:] if train_on == "last_assistant" else [] if train_on == "all" else turns)
    before = tk.render([conv[:i] for conv, turns in zip(convs, turn_index) for i in turns], True)
    upto = tk.render([conv[: i + 1] for conv, turns in zip(convs, turn_index) for i in turns], False)
    full = tk.render(convs, False)
    enc = tk.tok(full, add_special_tokens=False, return_offsets_mapping=True)

    out: list[tuple[Any, Any] | None] = []
    k = 0
    for row, (conv, turns) in enumerate(zip(convs, turn_index)):
        if train_on == "all":
            ids = np.asarray(enc["input_ids"][row], dtype=np.uint32)
            labels = ids.astype(np.int32)
            if len(labels):
                labels[0] = IGNORE  # the first token of a document is never predicted from it
            out.append((ids, labels) if (labels != IGNORE).any() else None)
            continue
        triples = [(before[k + j], upto[k + j], conv[i]["content"]) for j, i in enumerate(turns)]
        k += len(turns)
        spans = _assistant_spans(full[row], triples) if turns else None
        if not spans:
            out.append(None)
            continue
        ids = np.asarray(enc["input_ids"][row], dtype=np.uint32)
        offsets = np.asarray(enc["offset_mapping"][row], dtype=np.int64).reshape(-1, 2)
        labelled = np.zeros(len(ids), dtype=bool)
        for start, end in spans:
            labelled |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
        labels = np.where(labelled, ids.astype(np.int32), IGNORE).astype(np.int32)
        if len(labels):
            labels[0] = IGNORE  # the first token of a document is never predicted from it
        out.append((ids, labels) if (labels != IGNORE).any() else None)
    return out


def _tokenize_in_worker(args: tuple[list[list[dict]], str]) -> list:
    return tokenize_rows(args[0], args[1])


# --------------------------------------------------------------------------- pack


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) holding `lengths`, each summing to <= capacity.

    Items are placed longest first into the bin whose free space is the smallest
    that still fits (best fit); this never uses more bins than first-fit-decreasing
    and keeps padding low when the length spread is wide.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # (free space, bin id), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, b = free.pop(at)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, b))
    return bins


# --------------------------------------------------------------------------- write


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tokenizer_hash(folder: str) -> str:
    """Hash of the tokenizer's files, so a trainer can check it trains with the same vocabulary."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            h.update(name.encode())
            h.update(open(path, "rb").read())
    return h.hexdigest()


class _ShardWriter:
    """Buffers packed sequences and writes a shard file set every `shard_sequences`."""

    def __init__(self, out_dir: str, seq_len: int, shard_sequences: int, pad_id: int):
        import numpy as np

        self.np = np
        self.out_dir, self.seq_len, self.per_shard, self.pad_id = out_dir, seq_len, shard_sequences, pad_id
        self.shards: list[dict] = []
        self._reset()

    def _reset(self) -> None:
        np = self.np
        self.ids = np.full((self.per_shard, self.seq_len), self.pad_id, dtype=np.uint32)
        self.labels = np.full((self.per_shard, self.seq_len), IGNORE, dtype=np.int32)
        self.pos = np.zeros((self.per_shard, self.seq_len), dtype=np.int32)
        self.samples: list[list[str]] = []
        self.tokens = 0
        self.label_tokens = 0

    @property
    def name(self) -> str:
        return f"shard-{len(self.shards):05d}"

    def add(self, docs: list[tuple[str, Any, Any]]) -> tuple[str, int]:
        """Put documents (sample_id, ids, labels) into the next sequence; returns (shard, sequence)."""
        np = self.np
        row = len(self.samples)
        at = 0
        for _, ids, labels in docs:
            n = len(ids)
            self.ids[row, at : at + n] = ids
            self.labels[row, at : at + n] = labels
            self.pos[row, at : at + n] = np.arange(n, dtype=np.int32)
            at += n
        # The padding tail is its own "document" (positions restart at 0) so that
        # position-id based masking never lets padding attend to real tokens.
        self.pos[row, at:] = np.arange(self.seq_len - at, dtype=np.int32)
        self.samples.append([d[0] for d in docs])
        self.tokens += at
        self.label_tokens += int(sum(int((d[2] != IGNORE).sum()) for d in docs))
        where = (self.name, row)
        if len(self.samples) == self.per_shard:
            self.flush()
        return where

    def flush(self) -> None:
        np = self.np
        n = len(self.samples)
        if n == 0:
            return
        files = {}
        for key, arr in (("input_ids", self.ids), ("labels", self.labels), ("position_ids", self.pos)):
            fname = f"{self.name}.{key}.npy"
            path = os.path.join(self.out_dir, fname)
            np.save(path, np.ascontiguousarray(arr[:n]))
            files[key] = {"file": fname, "sha256": _sha256(path), "dtype": str(arr.dtype)}
        self.shards.append(
            {
                "name": self.name,
                "files": files,
                "sequences": n,
                "tokens": self.tokens,
                "padding_tokens": n * self.seq_len - self.tokens,
                "label_tokens": self.label_tokens,
                "sample_ids": self.samples,
            }
        )
        self._reset()


def _batches(rows: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    for start in range(0, rows.height, size):
        yield rows.slice(start, size)


def write_shards(
    rows: pl.DataFrame, out_dir: str, cfg: ShardsConfig, progress: Callable[..., None] | None = None
) -> tuple[dict, pl.DataFrame]:
    """Tokenize, label, pack and write `rows` (sample_id, messages, source) as shards in `out_dir`.

    Returns (manifest, placement). The manifest (also written to
    out_dir/manifest.json) holds the tokenizer and chat-template hashes, seq_len,
    per shard its files + sha256, sequences, tokens, padding and label tokens and
    the sample_ids of every packed sequence; totals, label tokens per mix source,
    padding fraction, truncation and drop counts. `placement` has one row per
    input sample: sample_id, shard, sequence (row in that shard), status
    ("packed" | "truncated" | "dropped") and reason (why dropped, else null).
    `progress(rows, tokens=...)` is called after each tokenized batch.
    """
    import numpy as np
    import polars as pl

    for col in ("sample_id", "messages"):
        if col not in rows.columns:
            raise ValueError(f"write_shards: rows need a {col!r} column (have {rows.columns})")
    os.makedirs(out_dir, exist_ok=True)
    tk = _Tokenizer(cfg.tokenizer, cfg.chat_template)
    pad_id = tk.tok.pad_token_id if tk.tok.pad_token_id is not None else (tk.tok.eos_token_id or 0)
    writer = _ShardWriter(out_dir, cfg.seq_len, cfg.shard_sequences, int(pad_id))
    if "source" not in rows.columns:
        rows = rows.with_columns(pl.lit(None, dtype=pl.Utf8).alias("source"))

    placement: dict[str, list] = {"sample_id": [], "shard": [], "sequence": [], "status": [], "reason": []}
    label_by_source: dict[str, int] = {}
    counts = {"samples": 0, "packed": 0, "truncated": 0, "dropped_overlong": 0, "dropped_no_labels": 0}
    # A window of documents is packed together; a few shards' worth keeps bins tight.
    window_tokens = max(4, min(cfg.shard_sequences, 4096)) * cfg.seq_len
    window: list[tuple[str, Any, Any, str, bool]] = []  # sample_id, ids, labels, source, truncated
    window_size = 0

    def place(sample_id, shard, seq, status, reason=None):
        placement["sample_id"].append(sample_id)
        placement["shard"].append(shard)
        placement["sequence"].append(seq)
        placement["status"].append(status)
        placement["reason"].append(reason)

    def pack_window():
        nonlocal window, window_size
        if cfg.pack == "ffd":
            bins = best_fit_decreasing([len(d[1]) for d in window], cfg.seq_len)
        else:  # one document per sequence: the padded baseline
            bins = [[i] for i in range(len(window))]
        for b in bins:
            docs = [window[i] for i in b]
            shard, seq = writer.add([(d[0], d[1], d[2]) for d in docs])
            for d in docs:
                place(d[0], shard, seq, "truncated" if d[4] else "packed")
        window, window_size = [], 0

    def tokenized() -> Iterator[tuple[pl.DataFrame, list]]:
        batches = _batches(rows.select("sample_id", "messages", "source"), cfg.batch_rows)
        if cfg.workers <= 1:
            for batch in batches:
                yield batch, tokenize_rows(batch["messages"].to_list(), cfg.train_on, tk)
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")  # fork after the Rust tokenizer started threads can deadlock
        with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg.tokenizer, cfg.chat_template)) as pool:
            pending = []
            for batch in batches:
                pending.append((batch, pool.submit(_tokenize_in_worker, (batch["messages"].to_list(), cfg.train_on))))
                if len(pending) > 2 * cfg.workers:  # bounded in flight: streaming, not all in memory
                    b, fut = pending.pop(0)
                    yield b, fut.result()
            for b, fut in pending:
                yield b, fut.result()

    for batch, encoded in tokenized():
        batch_tokens = 0
        for sample_id, source, enc in zip(batch["sample_id"].to_list(), batch["source"].to_list(), encoded):
            counts["samples"] += 1
            if enc is None:
                counts["dropped_no_labels"] += 1
                place(sample_id, None, None, "dropped", "no_assistant_tokens")
                continue
            ids, labels = enc
            truncated = False
            if len(ids) > cfg.seq_len:
                if cfg.overlong == "drop":
                    counts["dropped_overlong"] += 1
                    place(sample_id, None, None, "dropped", "overlong")
                    continue
                ids, labels = ids[: cfg.seq_len], labels[: cfg.seq_len]
                if not (labels != IGNORE).any():  # the cut removed every assistant token
                    counts["dropped_no_labels"] += 1
                    place(sample_id, None, None, "dropped", "no_assistant_tokens_after_truncation")
                    continue
                truncated = True
                counts["truncated"] += 1
            key = source if source is not None else "(none)"
            label_by_source[key] = label_by_source.get(key, 0) + int((labels != IGNORE).sum())
            window.append((sample_id, ids, labels, key, truncated))
            window_size += len(ids)
            batch_tokens += len(ids)
            if window_size >= window_tokens:
                pack_window()
        if progress is not None:
            progress(batch.height, tokens=batch_tokens)
    if window:
        pack_window()
    writer.flush()

    counts["packed"] = sum(1 for s in placement["status"] if s in ("packed", "truncated"))
    tokens = sum(s["tokens"] for s in writer.shards)
    capacity = sum(s["sequences"] for s in writer.shards) * cfg.seq_len
    manifest = {
        "version": MANIFEST_VERSION,
        "format": "datamix-shards",
        "tokenizer": os.path.abspath(cfg.tokenizer),
        "tokenizer_sha256": _tokenizer_hash(cfg.tokenizer),
        "chat_template": cfg.chat_template,
        "chat_template_sha256": hashlib.sha256(tk.template.encode("utf-8")).hexdigest(),
        "seq_len": cfg.seq_len,
        "pack": cfg.pack,
        "train_on": cfg.train_on,
        "overlong": cfg.overlong,
        "pad_token_id": int(pad_id),
        "ignore_index": IGNORE,
        "sequences": sum(s["sequences"] for s in writer.shards),
        "tokens": tokens,
        "label_tokens": sum(s["label_tokens"] for s in writer.shards),
        "padding_fraction": (1 - tokens / capacity) if capacity else 0.0,
        "label_tokens_by_source": dict(sorted(label_by_source.items())),
        "counts": counts,
        "shards": writer.shards,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    frame = pl.DataFrame(
        placement,
        schema={"sample_id": pl.Utf8, "shard": pl.Utf8, "sequence": pl.Int64, "status": pl.Utf8, "reason": pl.Utf8},
    )
    return manifest, frame


def verify_shards(out_dir: str) -> dict:
    """Load manifest.json and check every file's sha256; raises ValueError naming the first bad file."""
    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    for shard in manifest["shards"]:
        for info in shard["files"].values():
            path = os.path.join(out_dir, info["file"])
            if not os.path.isfile(path):
                raise ValueError(f"shards in {out_dir}: {info['file']} is missing; re-run the export step")
            if _sha256(path) != info["sha256"]:
                raise ValueError(f"shards in {out_dir}: {info['file']} does not match its sha256 in manifest.json; re-run the export step")
    return manifest
