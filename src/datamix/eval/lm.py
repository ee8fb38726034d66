"""A model to evaluate: its folder, loaded once per process by transformers for scoring and generation.

The tokenizer comes from datamix.models.load_tokenizer (with a declared chat template
in place of the folder's own), generation from the transformers backend, so a model
evaluates with the template and sampling semantics every other step uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class EvalModel:
    name: str  # the name in the pipeline (a model under `models:` or a train step), or the folder
    path: str  # a local model folder
    chat_template: str | None = None  # a bundled name or .jinja file overriding the folder's template
    device: str = "auto"
    batch_size: int = 8
    dtype: str = "auto"  # auto: the checkpoint's own (bf16 for most released models, fp32 for tiny ones)
    _loaded: Any = None
    _backend: Any = None
    _shards_tokenizer: Any = None

    def load(self):
        """(tokenizer, model, device), loaded on first use: the generation backend's own, so scoring
        and greedy answers share one copy of the weights."""
        if self._loaded is None:
            backend = self.backend()
            model = backend.model()
            self._loaded = (backend.tokenizer(), model, str(model.device))
        return self._loaded

    def shards_tokenizer(self):
        """The tokenizer + template object the shard writer labels with (datamix.export.shards)."""
        if self._shards_tokenizer is None:
            from datamix.export.shards import _Tokenizer

            self._shards_tokenizer = _Tokenizer(self.path, self.chat_template)
        return self._shards_tokenizer

    def backend(self):
        """The transformers generation backend over this folder (greedy answers for exact_match, judging)."""
        if self._backend is None:
            from datamix.models import TransformersModel
            from datamix.models.transformers import TransformersBackend

            spec = TransformersModel(backend="transformers", path=self.path, chat_template=self.chat_template,
                                     device=self.device, batch_size=self.batch_size, dtype=self.dtype)
            self._backend = TransformersBackend(self.name, spec)
        return self._backend

    def release(self) -> None:
        """Free the weights (an evaluate step goes through its models one at a time)."""
        self._loaded = self._backend = self._shards_tokenizer = None
        import gc

        gc.collect()


def sequence_logprobs(model, device: str, sequences: list[tuple[list[int], list[bool]]], batch_size: int,
                      pad_id: int = 0) -> list[list[float]]:
    """Per sequence, log p(token t | tokens < t) of every position marked True (t >= 1), in order.

    Right padding, so positions stay 0..len-1 as in training; one forward per batch."""
    import torch

    out: list[list[float]] = []
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))  # little padding per batch
    results: dict[int, list[float]] = {}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(sequences[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            scored = torch.zeros((len(idx), width), dtype=torch.bool)
            for row, i in enumerate(idx):
                toks, marks = sequences[i]
                ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                mask[row, : len(toks)] = 1
                scored[row, : len(toks)] = torch.tensor(marks, dtype=torch.bool)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(idx):
                # the token at t is predicted from position t-1; only the scored positions go to
                # float32 (a batch's full [rows, length, vocab] in float32 is gigabytes for a real vocabulary)
                at = torch.nonzero(scored[row, 1:]).squeeze(-1).to(device)
                picked = logits[row].index_select(0, at).float()
                targets = ids[row, 1:].to(device).index_select(0, at)
                logp = torch.log_softmax(picked, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                results[i] = logp.cpu().tolist()
    for i in range(len(sequences)):
        out.append(results[i])
    return out
