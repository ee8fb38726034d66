"""What goes over the wire to an OpenAI-compatible server: request bodies, the checks that
make a reply usable or a failed attempt, and retry timing (Retry-After, jittered backoff).
The transport and the retry loop are in models/openai.py."""

from __future__ import annotations

import email.utils
import json
import random
import time
from typing import Any

from datamix.models import Completion, Prompt, SamplingParams


RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# What the client is built with instead of the key (the key goes per request, see _auth).
_NO_KEY_HERE = "datamix-sends-the-key-per-request"


class OpenAIBackendError(RuntimeError):
    """A request that failed for good (non-retryable status, or attempts exhausted)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None, throttled: bool = False, headers=None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.throttled = throttled  # a 429: fewer requests in flight
        self.headers = headers


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base_s: float, cap_s: float, retry_after_s: float | None, rng: random.Random) -> float:
    """Full jitter (AWS architecture blog): U(0, min(cap, base*2^attempt)), at least Retry-After."""
    delay = rng.uniform(0.0, min(cap_s, base_s * (2**attempt)))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cap_s * 4))
    return delay


def request_body(model: str, prompt: Prompt, params: SamplingParams, n: int, seed: int | None,
                 response_format: dict | None = None) -> tuple[str, dict]:
    """(endpoint path, JSON body) for one prompt; non-standard fields only when set."""
    body: dict = {
        "model": model,
        "n": n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if seed is not None:
        body["seed"] = seed
    # vLLM / SGLang extensions: sending them to a server that does not know them
    # may be rejected, so only when asked for.
    if params.top_k > 0:
        body["top_k"] = params.top_k
    if params.stop_token_ids:
        body["stop_token_ids"] = list(params.stop_token_ids)
    if prompt.messages is not None:
        if response_format is not None:
            body["response_format"] = response_format
        return "/chat/completions", {**body, "messages": prompt.messages}
    if response_format is not None:
        raise ValueError("response_format needs a chat prompt")
    if prompt.token_ids is not None:
        return "/completions", {**body, "prompt": list(prompt.token_ids)}
    if prompt.text is not None:
        return "/completions", {**body, "prompt": prompt.text}
    raise ValueError("a Prompt needs text, token_ids or messages")


def _choice_text(choice: dict, chat: bool) -> str:
    if chat:
        return (choice.get("message") or {}).get("content") or ""
    return choice.get("text") or ""


def unusable(payload: Any, chat: bool, require: str | None) -> str | None:
    """Why a 200 reply cannot be used (None when it can). `require`: None, "text" or "json"."""
    if not isinstance(payload, dict):
        return "a reply that is not a JSON object"
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        return "a reply with no choices"
    if not all(isinstance(c, dict) for c in choices):
        return "a reply whose choices are not objects"
    for c in choices:
        text = _choice_text(c, chat)
        if require in ("text", "json") and not text.strip():
            return "a choice with empty text"
        if require == "json":
            try:
                ok = isinstance(json.loads(text), dict)
            except ValueError:
                ok = False
            if not ok:
                return "a choice that is not a JSON object"
    return None


def parse_choices(payload: dict, chat: bool, latency_s: float, retries: int = 0) -> list[Completion]:
    """Completions from a /completions or /chat/completions response, in choice index order."""
    choices = sorted(payload.get("choices") or [], key=lambda c: c.get("index", 0))
    texts = [_choice_text(c, chat) for c in choices]
    usage = payload.get("usage") or {}
    tokens_in = int(usage.get("prompt_tokens") or 0)
    out_counts = _split_total(int(usage.get("completion_tokens") or 0), [len(t) for t in texts])
    return [
        Completion(
            text=text,
            # vLLM reports "stop" for both eos and stop strings; a missing reason means it ended normally
            finish_reason=c.get("finish_reason") or "stop",
            tokens_in=tokens_in,
            tokens_out=k,
            latency_s=latency_s,
            retries=retries if i == 0 else 0,
        )
        for i, (c, text, k) in enumerate(zip(choices, texts, out_counts))
    ]


def _split_total(total: int, weights: list[int]) -> list[int]:
    """Integers summing to `total`, proportional to `weights` (equal shares when all are 0)."""
    if not weights:
        return []
    w = weights if sum(weights) else [1] * len(weights)
    whole = sum(w)
    shares = [total * x // whole for x in w]
    for i in range(total - sum(shares)):
        shares[i % len(shares)] += 1
    return shares


def _shown(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
