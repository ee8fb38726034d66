"""nll and bpb: how well a model predicts the assistant text of a set.

Labels are the training shards' own (datamix.export.shards.tokenize_rows with the
model's tokenizer and chat template): every assistant turn's content plus its
end-of-turn marker, nothing of the user turns or headers. So a set evaluated here
and the same chats trained on are scored on exactly the same tokens.

- nll: total negative log-likelihood (nats) of the labelled tokens / their number.
  Its standard error treats chats, not tokens, as the sampling unit.
- bpb: the same total in bits / the UTF-8 bytes of the assistant spans (content +
  end-of-turn marker, the characters the labels cover). The bytes do not depend on
  the tokenizer, so models with different vocabularies compare: a model's bpb is
  what it would pay to encode the assistant text, whatever its token boundaries.
"""

from __future__ import annotations

import math

from datamix.eval import Value
from datamix.eval.lm import EvalModel, sequence_logprobs
from datamix.eval.stats import ratio_value


def assistant_bytes(full: str, spans: list[tuple[int, int]]) -> int:
    return sum(len(full[a:b].encode("utf-8")) for a, b in spans)


def labelled(model: EvalModel, chats: list[list[dict]]) -> list[tuple[list[int], list[bool], int] | None]:
    """Per chat: (token ids, labelled mask, assistant bytes), or None when nothing is labelled."""
    from datamix.export.shards import IGNORE, _assistant_spans, tokenize_rows

    tk = model.shards_tokenizer()
    rows = tokenize_rows(chats, "all_assistant", tk)
    out: list[tuple[list[int], list[bool], int] | None] = []
    for conv, row in zip(chats, rows):
        if row is None:
            out.append(None)
            continue
        ids, labels = row
        conv = [{"role": m["role"], "content": m["content"] or ""} for m in conv]
        turns = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
        full = tk.render([conv], False)[0]
        triples = [(tk.render([conv[:i]], True)[0], tk.render([conv[: i + 1]], False)[0], conv[i]["content"])
                   for i in turns]
        spans = _assistant_spans(full, triples) or []
        out.append((ids.tolist(), (labels != IGNORE).tolist(), assistant_bytes(full, spans)))
    return out


def evaluate(model: EvalModel, chats: list[list[dict]]) -> list[Value]:
    """[nll, bpb] of the chats' assistant tokens (chats without an assistant reply are skipped)."""
    tok, lm, device = model.load()
    rows = [r for r in labelled(model, chats) if r is not None]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    logps = sequence_logprobs(lm, device, [(ids, mask) for ids, mask, _ in rows], model.batch_size, pad)
    losses = [-math.fsum(lp) for lp in logps]
    tokens = [float(len(lp)) for lp in logps]
    nbytes = [float(b) for _, _, b in rows]
    return [
        ratio_value("nll", losses, tokens, higher_is_better=False),
        ratio_value("bpb", losses, nbytes, higher_is_better=False, scale=1 / math.log(2)),
    ]
