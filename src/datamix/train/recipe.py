"""Supervised fine-tuning on datamix shards with native PyTorch FSDP2. One file, top to bottom.

    python -m datamix.train.recipe CONFIG.yaml [KEY=VALUE ...]              # one process (CPU or one GPU)
    torchrun --nproc-per-node 8 -m datamix.train.recipe CONFIG.yaml ...    # many GPUs / nodes
    datamix train CONFIG.yaml [KEY=VALUE ...] [--nproc-per-node N]         # the same, through the CLI

It imports only torch, transformers, numpy and the standard library, so it runs
on a GPU machine that has nothing else installed (copy this file and go).

Data: the shards written by datamix.export.shards -- [sequences, seq_len] arrays
of input_ids, labels (-100 = no loss) and position_ids that restart at 0 at every
packed document. Attention never crosses documents (tests/train checks it):
- CPU (attn_implementation=documents, the default there): `document_attention`
  below runs causal SDPA on each document separately, so a packed row costs
  sum(doc_len^2) attention and no dense L x L mask is built;
- GPU: flash_attention_2 (varlen cu_seqlens from the position-id restarts) when
  flash_attn is installed, else flex_attention (a block mask that skips the
  blocks between documents);
- sdpa/eager: transformers turns the restarts into a dense block-diagonal
  [B, 1, L, L] mask (masking_utils.find_packed_sequence_indices): correct but
  it pays L^2 per row whatever the documents, so it is not the default.
Each micro-batch is trimmed to its longest row (trailing columns that are padding
in every row are dropped): dynamic padding, as Hugging Face collators do, which
is what an export of one sample per sequence (pack: none) needs to be a fair peer.

Units: `batch_tokens` is the global batch per optimizer step, in tokens
(= world_size * grad_accum * micro_batch sequences * seq_len). The loss of a step
is sum(token losses) / (label tokens in that step across all ranks and
micro-batches), so every label token weighs the same however the documents
were packed or sharded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE = -100


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass
class Config:
    model: str = ""  # HF model folder (weights + tokenizer), or a config-only folder with init=random
    shards: str = ""  # folder with manifest.json from the export step
    output_dir: str = "train-out"
    init: str = "pretrained"  # "pretrained" | "random" (random weights from the folder's config.json: benchmarks)
    batch_tokens: int = 65536  # global tokens per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step on each rank
    lr: float = 2e-5
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    seed: int = 0
    epochs: int = 1
    max_steps: int = -1  # -1: epochs * steps per epoch
    stop_after_steps: int = -1  # stop (with a checkpoint) after this step; the schedule still follows max_steps
    checkpoint_every: int = 0  # steps; 0 = only at the end
    resume: str = "auto"  # "auto" (latest checkpoint in output_dir if any) | "never" | a checkpoint folder
    activation_checkpointing: bool = False
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy (GPU only)
    attn_implementation: str = "auto"  # auto: GPU flash_attention_2 if installed else flex_attention; CPU documents
    trim_padding: bool = True  # drop trailing columns that are padding in every row of a micro-batch
    dtype: str = "auto"  # compute dtype: auto = bf16 on GPU, fp32 on CPU
    peak_flops: float = 790e12  # per device, for MFU (H200 dense bf16 as measured)
    log_every: int = 1
    save_model: bool = True  # write the final HF model to output_dir/model
    # Early stopping. eval_shards: a shards folder of held-out chats (labelled like the evaluate
    # step's nll: assistant tokens only; the train step writes it from `validation:`). Its loss is
    # measured every eval_every steps (0 = once per epoch) and at the end; after `patience`
    # measurements in a row without a new best the run stops (0 = never early), and with
    # restore_best the saved model is the best one, not the last. epochs/max_steps are then a cap
    # (the lr schedule still runs over them).
    eval_shards: str = ""
    eval_every: int = 0
    patience: int = 0
    restore_best: bool = True


def load_config(path: str | None, overrides: list[str]) -> Config:
    """Config from a YAML (if pyyaml is importable) or JSON file, then KEY=VALUE overrides."""
    raw: dict = {}
    if path:
        text = open(path).read()
        if path.endswith(".json"):
            raw = json.loads(text)
        else:
            try:
                import yaml

                raw = yaml.safe_load(text) or {}
            except ImportError:
                raw = json.loads(text)  # pyyaml absent: the file must be JSON
        raw = raw.get("train", raw)  # a pipeline-style file may nest the keys under `train:`
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"override {item!r}: expected KEY=VALUE (keys: {', '.join(fields)})")
        key, value = item.split("=", 1)
        raw[key.strip()] = value
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SystemExit(f"unknown config keys {unknown} in {path or 'overrides'}; valid keys: {', '.join(fields)}")
    cfg = Config()
    for key, value in raw.items():
        setattr(cfg, key, _coerce(value, type(getattr(cfg, key)), key))
    if not cfg.model or not cfg.shards:
        raise SystemExit("config needs `model` (HF model folder) and `shards` (export folder with manifest.json)")
    return cfg


def _coerce(value, kind, key):
    """Config values from YAML/JSON or command-line strings, typed like the dataclass default."""
    if isinstance(value, str) and kind is not str:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise SystemExit(f"config {key}={value!r}: expected true or false")
            return value.lower() in ("true", "1", "yes")
        if kind is tuple:
            return tuple(float(v) for v in value.strip("()[] ").split(","))
        try:
            return kind(float(value)) if kind is int else kind(value)
        except ValueError:
            raise SystemExit(f"config {key}={value!r}: expected {kind.__name__}") from None
    if kind is tuple:
        return tuple(value)
    if kind is float and isinstance(value, int):
        return float(value)
    return value


# ----------------------------------------------------------------------------- data


class PackedShards:
    """All shards of an export, memory-mapped; row i of the concatenation is packed sequence i."""

    def __init__(self, folder: str):
        path = os.path.join(folder, "manifest.json")
        if not os.path.isfile(path):
            raise SystemExit(f"no manifest.json in {folder!r}: point `shards` at the export step's shards folder")
        self.manifest = json.load(open(path))
        self.seq_len = int(self.manifest["seq_len"])
        self.arrays = []
        for shard in self.manifest["shards"]:
            load = lambda key: np.load(os.path.join(folder, shard["files"][key]["file"]), mmap_mode="r")  # noqa: E731
            self.arrays.append((load("input_ids"), load("labels"), load("position_ids")))
        self.starts = np.cumsum([0] + [a[0].shape[0] for a in self.arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def batch(self, indices) -> dict[str, torch.Tensor]:
        rows = []
        for i in indices:
            s = int(np.searchsorted(self.starts, i, side="right") - 1)
            r = int(i - self.starts[s])
            rows.append([a[r] for a in self.arrays[s]])
        ids, labels, pos = (np.stack([row[k] for row in rows]) for k in range(3))
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "position_ids": torch.from_numpy(pos.astype(np.int64)),
        }


class Sampler:
    """Which sequences each rank reads: a seeded permutation per epoch, consumed in global batches.

    The whole state is one integer (`consumed`, sequences handed out so far), so a
    checkpoint stores it and a resume continues with exactly the same batches.
    """

    def __init__(self, n: int, global_batch: int, seed: int):
        if n < global_batch:
            raise SystemExit(f"only {n} packed sequences but one step needs {global_batch}: lower batch_tokens or grad_accum")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.per_epoch = n // global_batch  # steps; the incomplete tail of an epoch is skipped
        self.consumed = 0

    def next_step(self, rank: int, world: int, grad_accum: int) -> list[list[int]]:
        """This rank's micro-batches for the next optimizer step (lists of global sequence indices)."""
        step = self.consumed // self.global_batch
        epoch, k = divmod(step, self.per_epoch)
        order = np.random.default_rng(self.seed + epoch).permutation(self.n)
        chunk = order[k * self.global_batch : (k + 1) * self.global_batch]
        micro = self.global_batch // (world * grad_accum)
        self.consumed += self.global_batch
        return [chunk[(m * world + rank) * micro : (m * world + rank + 1) * micro].tolist() for m in range(grad_accum)]


# ----------------------------------------------------------------------------- helpers


def lr_at(step: int, cfg: Config, total: int) -> float:
    """Linear warmup to cfg.lr, then cosine down to lr * min_lr_ratio at `total` steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def transformer_blocks(model) -> list[torch.nn.Module]:
    """The repeated decoder layers (Llama, Qwen2, Mistral, Gemma, ... all keep them in model.model.layers)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, torch.nn.ModuleList):
            return list(mod)
    raise SystemExit(f"cannot find the transformer blocks of {type(model).__name__} to shard")


def flops_per_token_and_attention(model_config, n_params_dense: int):
    """6*N per token (fwd+bwd matmuls), plus causal attention 6*L*d*len^2 per document (fwd+bwd, halved by the mask)."""
    layers = model_config.num_hidden_layers
    width = model_config.num_attention_heads * (getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads)
    return 6 * n_params_dense, 6 * layers * width


def document_segments(batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The documents of a micro-batch, rows end to end: (lengths, is_padding).

    Positions restart at 0 at every document, at every row start and at a row's
    padding tail; a padding segment is one made only of pad tokens with no labels.
    """
    pos, ids, labels = (batch[k].flatten() for k in ("position_ids", "input_ids", "labels"))
    starts = (pos == 0).nonzero().flatten()
    ends = torch.cat([starts[1:], torch.tensor([pos.numel()])])
    segment = torch.repeat_interleave(torch.arange(len(starts)), ends - starts)
    is_pad = (ids == pad_id) & (labels == IGNORE)
    pad_segment = torch.zeros(len(starts), dtype=torch.long).index_add_(0, segment, (~is_pad).long()) == 0
    return ends - starts, pad_segment


def trim_padding(batch: dict, pad_id: int) -> dict:
    """Drop the trailing columns that are padding in every row (pad to the longest row, as HF collators do)."""
    seq_len = batch["position_ids"].shape[1]
    lengths, is_pad = document_segments(batch, pad_id)
    ends = lengths.cumsum(0)
    row_last = ends % seq_len == 0  # the last segment of each row ends on a row boundary
    tails = torch.where(row_last & is_pad, lengths, 0)[row_last]
    keep = seq_len - int(tails.min())
    return batch if keep == seq_len else {k: v[:, :keep] for k, v in batch.items()}


def with_targets(b: dict) -> dict:
    """The next-token targets of a micro-batch; a label at a document start is never predicted
    from inside its document."""
    b["targets"] = torch.where(b["position_ids"][:, 1:] == 0, IGNORE, b["labels"][:, 1:])
    return b


def summed_loss(model, b: dict, device, pad_id: int, attn: str):
    """(sum of token losses over the micro-batch's targets, document lengths, is_padding)."""
    ids, pos = b["input_ids"].to(device), b["position_ids"].to(device)
    lengths, is_pad = document_segments(b, pad_id)
    extra = {"doc_segments": (lengths.tolist(), is_pad.tolist())} if attn == DOCUMENT_ATTENTION else {}
    # use_cache=False matters: with a KV cache transformers skips the packed-sequence mask.
    logits = model(input_ids=ids, position_ids=pos, use_cache=False, **extra).logits[:, :-1]
    loss = F.cross_entropy(logits.float().flatten(0, 1), b["targets"].to(device).flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, lengths, is_pad


def heldout_loss(model, data: PackedShards, rows_per_batch: int, rank: int, world: int, device, attn: str) -> float:
    """Mean loss per label token over every sequence of `data`, all ranks together. With the
    evaluate step's labels (assistant tokens) this is its `nll` metric of the current weights."""
    pad_id = int(data.manifest["pad_token_id"])
    mine = list(range(rank, len(data), world))
    batches = [mine[i : i + rows_per_batch] for i in range(0, len(mine), rows_per_batch)]
    # FSDP gathers parameters collectively: every rank must run as many forwards as the busiest one
    count = torch.tensor(float(len(batches)), device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, label tokens
    model.eval()
    with torch.no_grad():
        for k in range(int(count.item())):
            real = k < len(batches)
            b = with_targets(trim_padding(data.batch(batches[k] if real else [0]), pad_id))
            loss, _, _ = summed_loss(model, b, device, pad_id, attn)
            if real:
                totals += torch.stack([loss.double(), (b["targets"] != IGNORE).sum().double().to(device)])
    model.train()
    dist.all_reduce(totals)
    return float(totals[0] / totals[1].clamp(min=1))


# ----------------------------------------------------------------------------- attention inside documents

DOCUMENT_ATTENTION = "datamix_documents"  # the name registered with transformers' AttentionInterface


def document_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       doc_segments=None, position_ids=None, **kwargs):
    """Causal attention inside each packed document: one SDPA call (is_causal) per document.

    query [B, Hq, L, D], key/value [B, Hkv, L, D] -> ([B, L, Hq, D], None), the
    transformers attention-interface contract. `doc_segments` = (lengths, is_padding)
    of the documents of all rows end to end (from the recipe, once per micro-batch);
    without it the documents come from the position-id restarts. Padding segments
    are not attended at all (zeros: they carry no labels). On CPU the per-document
    SDPA with is_causal takes the flash kernel and skips the blocks above the
    diagonal, where transformers' sdpa path would pass a dense [B, 1, L, L] mask.
    """
    b, hq, seq, d = query.shape
    hkv = key.shape[1]
    if doc_segments is None:
        restarts = (position_ids.expand(b, seq).flatten() == 0).nonzero().flatten().tolist() + [b * seq]
        doc_segments = ([e - s for s, e in zip(restarts, restarts[1:])], [False] * (len(restarts) - 1))
    lengths, is_pad = doc_segments
    # Rows end to end as one token axis (documents never span rows: positions restart at each row start).
    q = query.transpose(0, 1).reshape(hq, b * seq, d)
    k = key.transpose(0, 1).reshape(hkv, b * seq, d)
    v = value.transpose(0, 1).reshape(hkv, b * seq, d)
    outs = []
    for qs, ks, vs, pad in zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1), is_pad):
        if pad:
            outs.append(torch.zeros_like(qs))
        else:
            outs.append(F.scaled_dot_product_attention(qs[None], ks[None], vs[None], is_causal=True, scale=scaling,
                                                       dropout_p=dropout if module.training else 0.0,
                                                       enable_gqa=hq != hkv)[0])
    out = torch.cat(outs, 1).view(hq, b, seq, d)
    return out.permute(1, 2, 0, 3), None


def register_document_attention() -> str:
    """Make `document_attention` selectable as attn_implementation (its mask is no mask: it reads the segments)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(DOCUMENT_ATTENTION, document_attention)
    AttentionMaskInterface.register(DOCUMENT_ATTENTION, lambda *args, **kwargs: None)
    return DOCUMENT_ATTENTION


def attention_for(name: str, on_gpu: bool) -> str:
    """The attn_implementation to load the model with (see the module docstring for why)."""
    if name == "auto":
        import importlib.util

        if on_gpu:
            name = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "flex_attention"
        else:
            name = "documents"
    return register_document_attention() if name == "documents" else name


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- run identity
# A checkpoint may only continue the run that wrote it. These keys say where a run goes,
# how it is logged and when this process stops; every other key (and the shards' and the
# model's content) changes what is trained, so it is part of the run's identity.
NOT_IDENTITY = ("output_dir", "resume", "stop_after_steps", "checkpoint_every", "log_every", "peak_flops", "save_model")


def run_identity(cfg: Config) -> dict:
    """What the trained model depends on: the config, the shards' manifest hash, the model folder's files."""
    import hashlib

    identity = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IDENTITY}
    identity["betas"] = list(identity["betas"])
    with open(os.path.join(cfg.shards, "manifest.json"), "rb") as f:
        identity["shards_manifest_sha256"] = hashlib.sha256(f.read()).hexdigest()
    if cfg.eval_shards:  # the held-out set decides where training stops and which model is kept
        with open(os.path.join(cfg.eval_shards, "manifest.json"), "rb") as f:
            identity["eval_shards_manifest_sha256"] = hashlib.sha256(f.read()).hexdigest()
    # names, sizes and mtimes, not contents: hashing a 7B model's weights would take minutes
    identity["model_files"] = sorted(
        [name, st.st_size, st.st_mtime_ns] for name in os.listdir(cfg.model)
        if os.path.isfile(path := os.path.join(cfg.model, name)) and (st := os.stat(path))
    ) if os.path.isdir(cfg.model) else cfg.model
    return identity


def identity_changes(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two run identities ("lr: 0.001 -> 0.002")."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "model_files":
                out.append("the model folder's files")
            elif key == "shards_manifest_sha256":
                out.append("the shards (manifest.json)")
            elif key == "eval_shards_manifest_sha256":
                out.append("the held-out shards (eval_shards manifest.json)")
            else:
                out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def move_aside(output_dir: str) -> str | None:
    """Move an earlier run's outputs into output_dir/previous-<time>/, so a fresh run starts clean
    and nothing is lost; returns that folder, or None when there was nothing to move."""
    names = [n for n in ("checkpoints", "model", "metrics.jsonl", "run.json") if os.path.exists(os.path.join(output_dir, n))]
    if not names:
        return None
    dest = os.path.join(output_dir, time.strftime("previous-%Y%m%d-%H%M%S", time.gmtime()))
    while os.path.exists(dest):
        dest += "-1"
    os.makedirs(dest)
    for name in names:
        os.replace(os.path.join(output_dir, name), os.path.join(dest, name))
    return dest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = argv.pop(0) if argv and "=" not in argv[0] else None
    cfg = load_config(config_path, argv)
    if cfg.output_dir == Config.output_dir and os.environ.get("RANK", "0") == "0":
        # the default is relative to the working folder: say where the model will land
        print(f"output_dir not given: writing to {os.path.abspath(cfg.output_dir)} (set output_dir=...)", flush=True)

    # ------------------------------------------------------------------ distributed setup
    # Under torchrun the env has RANK/WORLD_SIZE; alone we make a 1-rank group in memory
    # (FSDP2 needs a process group even for one rank). NCCL on GPUs, gloo on CPU.
    on_gpu = torch.cuda.is_available()
    backend = "nccl" if on_gpu else "gloo"
    if "RANK" in os.environ:
        rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
        if on_gpu:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    else:
        rank, world, local_rank = 0, 1, 0
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        return train(cfg, rank, world, torch.device("cuda", local_rank) if on_gpu else torch.device("cpu"))
    finally:  # also on errors, so a caller in the same process can start again
        dist.destroy_process_group()


def train(cfg: Config, rank: int, world: int, device: torch.device) -> int:
    on_gpu = device.type == "cuda"
    main_rank = rank == 0
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    # ------------------------------------------------------------------ data
    data = PackedShards(cfg.shards)
    seq_len, pad_id = data.seq_len, int(data.manifest["pad_token_id"])
    per_micro_tokens = world * cfg.grad_accum * seq_len
    if cfg.batch_tokens % per_micro_tokens:
        raise SystemExit(
            f"batch_tokens={cfg.batch_tokens} must be a multiple of world_size*grad_accum*seq_len = "
            f"{world}*{cfg.grad_accum}*{seq_len} = {per_micro_tokens}"
        )
    global_batch = cfg.batch_tokens // seq_len  # sequences per optimizer step
    sampler = Sampler(len(data), global_batch, cfg.seed)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * sampler.per_epoch
    heldout = PackedShards(cfg.eval_shards) if cfg.eval_shards else None
    eval_every = cfg.eval_every if cfg.eval_every > 0 else sampler.per_epoch
    if (cfg.eval_every or cfg.patience) and heldout is None:
        raise SystemExit("eval_every and patience need eval_shards (a shards folder of held-out chats)")
    if cfg.eval_every < 0 or cfg.patience < 0:
        raise SystemExit(f"eval_every={cfg.eval_every} and patience={cfg.patience} must be >= 0")
    # where early stopping stands: every held-out measurement, the best one, measurements since it
    early = {"evals": [], "best_loss": None, "best_step": None, "since_best": 0, "stopped_early": False}

    # ------------------------------------------------------------------ model
    from transformers import AutoConfig, AutoModelForCausalLM

    compute_dtype = {"auto": torch.bfloat16 if on_gpu else torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.dtype]
    attn = attention_for(cfg.attn_implementation, on_gpu)
    # Master weights stay fp32; FSDP2's MixedPrecisionPolicy casts to bf16 for compute.
    if cfg.init == "random":
        model_config = AutoConfig.from_pretrained(cfg.model)
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32, attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, attn_implementation=attn)
        model_config = model.config
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 names it so
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    embed = model.get_input_embeddings().weight
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token, attn_flops_per_len2 = flops_per_token_and_attention(model_config, n_params - embed.numel() * (not model_config.tie_word_embeddings))

    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype != torch.float32 else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy() if (cfg.cpu_offload and on_gpu) else OffloadPolicy()
    mesh = dist.device_mesh.init_device_mesh(device.type, (world,))
    # One FSDP unit per block (its params are gathered just before it runs and freed
    # after), then the root for embeddings, final norm and head.
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
    if not cfg.cpu_offload:
        model.to(device)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms and biases
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=tuple(cfg.betas), fused=on_gpu,
    )

    # ------------------------------------------------------------------ resume
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)

    ckpt_root = os.path.join(cfg.output_dir, "checkpoints")
    step = 0
    resume_dir = None
    identity = run_identity(cfg)
    run_file = os.path.join(cfg.output_dir, "run.json")
    if cfg.resume == "auto" and os.path.isfile(os.path.join(ckpt_root, "latest")):
        resume_dir = os.path.join(ckpt_root, open(os.path.join(ckpt_root, "latest")).read().strip())
        previous = json.load(open(run_file))["identity"] if os.path.isfile(run_file) else {}
        if previous != identity:  # a changed config or changed shards must not continue the old run
            changed = identity_changes(previous, identity) if previous else ["(no run.json: unknown)"]
            raise SystemExit(
                f"{cfg.output_dir} holds checkpoints of another training run; changed: {'; '.join(changed)}. "
                "A checkpoint only continues the run that wrote it. Use another output_dir, or pass "
                "resume=never to start over here (the old run is moved to a previous-<time> folder inside it).")
    elif cfg.resume not in ("auto", "never"):
        resume_dir = cfg.resume
    if not resume_dir:  # a fresh run: whatever an earlier run left here is moved aside, not mixed in
        if main_rank and (moved := move_aside(cfg.output_dir)):
            print(f"an earlier run's outputs in {cfg.output_dir} were moved to {moved}", flush=True)
        if main_rank:
            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(run_file + ".tmp", "w") as f:
                json.dump({"identity": identity}, f, indent=1)
            os.replace(run_file + ".tmp", run_file)
        dist.barrier()
    if resume_dir:
        model_sd, optim_sd = get_state_dict(model, optimizer)  # sharded (DTensor) views to load into
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=resume_dir)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        extra = torch.load(os.path.join(resume_dir, f"extra-rank{rank}.pt"), weights_only=False)
        step, sampler.consumed = extra["step"], extra["consumed"]
        early = extra.get("early", early)
        set_rng_state(extra["rng"])
        if main_rank:
            print(f"resumed from {resume_dir} at step {step}", flush=True)

    def save_checkpoint(step: int) -> None:
        path = os.path.join(ckpt_root, f"step-{step:07d}")
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)  # each rank writes its shards
        # What DCP does not hold: the loop position, the sampler, every RNG (per rank).
        torch.save({"step": step, "consumed": sampler.consumed, "rng": rng_state(), "config": dataclasses.asdict(cfg),
                    "early": early},
                   os.path.join(path, f"extra-rank{rank}.pt"))
        dist.barrier()
        if main_rank:  # written last: a checkpoint is complete once `latest` names it
            with open(os.path.join(ckpt_root, "latest.tmp"), "w") as f:
                f.write(os.path.basename(path))
            os.replace(os.path.join(ckpt_root, "latest.tmp"), os.path.join(ckpt_root, "latest"))

    best_dir = os.path.join(ckpt_root, "best")

    def save_best() -> None:
        """The weights of the best held-out loss so far (model only: training never continues from it)."""
        tmp = best_dir + "-tmp"
        if main_rank and os.path.isdir(tmp):
            shutil.rmtree(tmp)
        dist.barrier()
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=tmp)
        dist.barrier()
        if main_rank:
            if os.path.isdir(best_dir):
                shutil.rmtree(best_dir)
            os.replace(tmp, best_dir)
        dist.barrier()

    def measure(step: int) -> float:
        """The held-out loss now; keeps the best weights and counts measurements since the best."""
        rows = max(1, cfg.batch_tokens // (world * cfg.grad_accum * heldout.seq_len))
        value = heldout_loss(model, heldout, rows, rank, world, device, attn)
        early["evals"].append({"step": step, "loss": value})
        if early["best_loss"] is None or value < early["best_loss"]:
            early.update(best_loss=value, best_step=step, since_best=0)
            if cfg.restore_best:
                save_best()
        else:
            early["since_best"] += 1
            if cfg.patience and early["since_best"] >= cfg.patience:
                early["stopped_early"] = True
        return value

    # ------------------------------------------------------------------ train
    os.makedirs(cfg.output_dir, exist_ok=True)
    metrics = open(os.path.join(cfg.output_dir, "metrics.jsonl"), "a") if main_rank else None
    tty = sys.stderr.isatty()
    stop_at = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps > 0 else total_steps
    model.train()
    while step < stop_at and not early["stopped_early"]:
        t0, cpu0 = time.perf_counter(), time.process_time()
        lr = lr_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [data.batch(idx) for idx in sampler.next_step(rank, world, cfg.grad_accum)]
        if cfg.trim_padding:
            micro_batches = [trim_padding(b, pad_id) for b in micro_batches]
        micro_batches = [with_targets(b) for b in micro_batches]
        # Sync point: the loss is normalised by the label tokens of the whole step on all ranks.
        counts = torch.tensor(float(sum(int((b["targets"] != IGNORE).sum()) for b in micro_batches)), device=device)
        dist.all_reduce(counts)
        label_tokens = max(counts.item(), 1.0)
        loss_sum = torch.zeros((), device=device)
        real_tokens = attn_len2 = positions = 0
        for m, b in enumerate(micro_batches):
            last = m == len(micro_batches) - 1
            model.set_requires_gradient_sync(last)  # reduce-scatter grads once per step, not per micro-batch
            loss, lengths, is_pad = summed_loss(model, b, device, pad_id, attn)
            # FSDP averages gradients over ranks; * world undoes that so the result is sum / global label tokens.
            (loss * world / label_tokens).backward()
            loss_sum += loss.detach()
            docs = lengths[~is_pad]
            real_tokens += int(docs.sum())
            attn_len2 += int((docs**2).sum())
            positions += b["input_ids"].numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(loss_sum)
        step += 1

        # ------------------------------------------------------------ metrics
        if on_gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        stats = torch.tensor([float(real_tokens), float(attn_len2), float(positions)], device=device)
        dist.all_reduce(stats)
        # tokens: real (non-padding) tokens; positions: what the model ran on after trimming (padding = 1 - ratio).
        row = {"step": step, "loss": loss_sum.item() / label_tokens, "lr": lr, "grad_norm": float(grad_norm),
               "label_tokens": int(label_tokens), "tokens": int(stats[0]), "positions": int(stats[2]),
               "tokens_per_s": stats[0].item() / dt, "step_s": dt,
               "cpu_s": time.process_time() - cpu0}  # this process's CPU time: on a shared CPU box, steadier than step_s
        if on_gpu:
            flops = flops_per_token * stats[0].item() + attn_flops_per_len2 * stats[1].item()
            row["mfu"] = flops / (dt * cfg.peak_flops * world)
        if heldout is not None and (step % eval_every == 0 or step == total_steps):
            row["eval_loss"] = measure(step)
            row["best_step"] = early["best_step"]
        if main_rank:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            if step % cfg.log_every == 0 or step == stop_at:
                line = (f"step {step}/{total_steps} loss {row['loss']:.4f} lr {lr:.2e} gnorm {row['grad_norm']:.3f} "
                        f"tok/s {row['tokens_per_s']:,.0f}" + (f" mfu {row['mfu']:.1%}" if "mfu" in row else ""))
                print(line, end="\r" if tty else "\n", file=sys.stderr, flush=True)
            if "eval_loss" in row:  # always its own line: the held-out curve is what a reader looks for
                print(f"{chr(10) if tty else ''}step {step}: held-out loss {row['eval_loss']:.4f} (best {early['best_loss']:.4f} "
                      f"at step {early['best_step']}" + (f"; {early['since_best']}/{cfg.patience} without a new best"
                      if cfg.patience else "") + (", stopping early" if early["stopped_early"] else "") + ")",
                      file=sys.stderr, flush=True)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == stop_at or early["stopped_early"]:
            save_checkpoint(step)
    if main_rank and tty:
        print(file=sys.stderr)

    # ------------------------------------------------------------------ final HF model
    finished = step >= total_steps or early["stopped_early"]
    restored = False
    if finished and heldout is not None and cfg.restore_best and early["best_step"] not in (None, step):
        # the weights of the best held-out loss, not the last step's
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=best_dir)
        set_model_state_dict(model, state["model"])
        restored = True
    if finished and heldout is not None and main_rank:
        summary = {k: early[k] for k in ("best_step", "best_loss", "stopped_early")}
        summary.update(last_step=step, restored_best=restored, eval_every=eval_every, patience=cfg.patience,
                       evals=early["evals"])
        with open(run_file) as f:
            record = json.load(f)
        record["early_stopping"] = summary
        with open(run_file + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(run_file + ".tmp", run_file)
        print(f"held-out loss: best {early['best_loss']:.4f} at step {early['best_step']} of {step}"
              + (" (stopped early)" if early["stopped_early"] else "")
              + ("; the saved model is that step's" if restored else ""), file=sys.stderr, flush=True)
    if cfg.save_model and finished:
        # Every rank takes part in gathering the full (unsharded) weights; rank 0 writes them.
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if main_rank:
            save_hf_model(full, model_config, cfg.model, os.path.join(cfg.output_dir, "model"))
        dist.barrier()
    if metrics:
        metrics.close()
    return 0


def save_hf_model(state_dict: dict, model_config, source: str, out: str) -> None:
    """Write a plain transformers folder (weights, config, tokenizer, chat template) that from_pretrained and vLLM load."""
    from transformers import AutoModelForCausalLM

    # A fresh, un-wrapped model so config.architectures names the real class (not FSDP's subclass).
    with torch.device("meta"):  # sdpa: the saved model must not depend on this file's attention function
        plain = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32, attn_implementation="sdpa")
    plain.load_state_dict(state_dict, assign=True, strict=False)
    plain.tie_weights()
    plain.config.use_cache = True
    plain.save_pretrained(out)
    keep = ("tokenizer", "special_tokens_map", "chat_template", "vocab", "merges", "added_tokens", "generation_config")
    for name in os.listdir(source):
        if name.startswith(keep) and not os.path.exists(os.path.join(out, name)):
            shutil.copy(os.path.join(source, name), os.path.join(out, name))


if __name__ == "__main__":
    sys.exit(main())
