"""The `openai` backend: any OpenAI-compatible server (vllm serve, SGLang, TGI, llama.cpp, hosted APIs).

Raw prompts (text or token ids) go to `/completions` (what pre-query sampling
needs: the exact prefix, no template applied by the server); chat prompts go to
`/chat/completions`. Requests run concurrently on asyncio, at most
`spec.max_concurrency` in flight, each over the standard library's HTTP client in
a worker thread (no extra dependency). Connections are kept alive and reused (a TLS
handshake per request would cost a hosted API's round trips); one that the server
closed while idle is replaced at once, without counting as a failed attempt. Through
a proxy (HTTPS_PROXY, ...) requests go through urllib, one connection each.

Retries: 429, 5xx, connection errors and timeouts are retried up to
`spec.max_retries` times with exponential backoff and full jitter
(sleep ~ U(0, min(cap, base * 2^attempt))), never less than a server's
Retry-After. Other 4xx fail at once with the server's message. `spec.timeout_s`
bounds each attempt as a whole.

The API key: read from `os.environ[spec.api_key_env]` when a request is built and
kept only in that request's headers; it is on no object, in no log line, and
removed from any error text that might echo it.

`n`: asked of the server in one request; a server that returns fewer choices
(some ignore `n`) gets the missing ones as further single requests, seeded
seed+1, seed+2, ... so that they differ.

Token counts come from the server's `usage`. A response with several choices
reports one completion total; it is split over the choices in proportion to
their text length (exact when n = 1).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from datamix.models import Completion, OpenAIModel, Prompt, SamplingParams

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class _Pool:
    """Idle keep-alive connections to one server, shared by the worker threads."""

    def __init__(self, url: str, timeout_s: float):
        import urllib.parse

        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port
        self.timeout_s = timeout_s
        self._idle: list = []
        self._lock = threading.Lock()
        self.opened = 0  # connections made, for tests and debugging

    def get(self):
        """(connection, whether it was used before)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
            self.opened += 1
        if self.https:
            import ssl

            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                               context=ssl.create_default_context()), False
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s), False

    def put(self, conn) -> None:
        with self._lock:
            self._idle.append(conn)


# What a kept-alive connection raises when the server closed it while it was idle.
_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError, BrokenPipeError)


class OpenAIBackendError(RuntimeError):
    """A request that failed for good (non-retryable status, or retries exhausted)."""


@dataclass
class _Response:
    status: int
    body: bytes
    retry_after_s: float | None


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


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


def _proxied(url: str) -> bool:
    """True when the environment routes `url` through a proxy (urllib's rules)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")


def backoff_delay(attempt: int, base_s: float, cap_s: float, retry_after_s: float | None, rng: random.Random) -> float:
    """Full jitter (AWS architecture blog): U(0, min(cap, base*2^attempt)), at least Retry-After."""
    delay = rng.uniform(0.0, min(cap_s, base_s * (2**attempt)))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cap_s * 4))
    return delay


def request_body(model: str, prompt: Prompt, params: SamplingParams, n: int, seed: int | None) -> tuple[str, dict]:
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
        return "/chat/completions", {**body, "messages": prompt.messages}
    if prompt.token_ids is not None:
        return "/completions", {**body, "prompt": list(prompt.token_ids)}
    if prompt.text is not None:
        return "/completions", {**body, "prompt": prompt.text}
    raise ValueError("a Prompt needs text, token_ids or messages")


def parse_choices(payload: dict, chat: bool, latency_s: float) -> list[Completion]:
    """Completions from a /completions or /chat/completions response, in choice index order."""
    choices = sorted(payload.get("choices") or [], key=lambda c: c.get("index", 0))
    texts = [(c.get("message") or {}).get("content") or "" if chat else c.get("text") or "" for c in choices]
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
        )
        for c, text, k in zip(choices, texts, out_counts)
    ]


def _split_total(total: int, weights: list[int]) -> list[int]:
    """Integers summing to `total`, proportional to `weights` (equal shares when all are 0)."""
    if not weights:
        return []
    w = [x if sum(weights) else 1 for x in weights]
    shares = [total * x // sum(w) for x in w]
    for i in range(total - sum(shares)):
        shares[i % len(shares)] += 1
    return shares


def _in_own_thread(fn, *args) -> asyncio.Future:
    """Run a blocking call on a fresh daemon thread.

    Not a pool: an attempt abandoned at its deadline keeps its thread until the
    socket timeout ends it, and must not hold up the next attempt in a queue
    (where its own deadline would already be running). Concurrency is bounded by
    the caller's semaphore.
    """
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def work() -> None:
        try:
            result, ok = fn(*args), True
        except BaseException as e:  # handed to the awaiting task, not lost in the thread
            result, ok = e, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for this abandoned attempt any more

    threading.Thread(target=work, daemon=True, name="datamix-openai").start()
    return fut


class OpenAIBackend:
    """Backend over an OpenAI-compatible HTTP server."""

    def __init__(
        self,
        name: str,
        spec: OpenAIModel,
        *,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ):
        self.name = name
        self.spec = spec
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._tokenizer = None
        self._rng = random.Random()
        self._pool = _Pool(spec.base_url, spec.timeout_s)

    def __repr__(self) -> str:
        return f"OpenAIBackend(name={self.name!r}, base_url={self.spec.base_url!r}, model={self.spec.path!r})"

    def tokenizer(self):
        """The local tokenizer named by `spec.tokenizer`, else None (a hosted model has none here)."""
        if self.spec.tokenizer is None:
            return None
        if self._tokenizer is None:
            from datamix.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.spec.tokenizer, self.spec.chat_template, self.name)
        return self._tokenizer

    # -- public API -------------------------------------------------------------

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """Sync wrapper: runs the requests on an event loop (its own thread when one is already running)."""
        coro = self.agenerate(prompts, params)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()

    async def agenerate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        self._check_key_available()
        limit = asyncio.Semaphore(self.spec.max_concurrency)
        return list(await asyncio.gather(*(self._one_prompt(p, params, limit) for p in prompts)))

    # -- one prompt ---------------------------------------------------------------

    async def _one_prompt(self, prompt, params, limit) -> list[Completion]:
        chat = prompt.messages is not None
        got = await self._request(prompt, params, params.n, params.seed, chat, limit)
        # Servers that ignore n: ask for the rest one at a time, with distinct seeds.
        k = 0
        while len(got) < params.n:
            k += 1
            seed = None if params.seed is None else params.seed + k
            got += await self._request(prompt, params, 1, seed, chat, limit)
        return got[: params.n]

    async def _request(self, prompt, params, n, seed, chat, limit) -> list[Completion]:
        path, body = request_body(self.spec.path, prompt, params, n, seed)
        url = self.spec.base_url.rstrip("/") + path
        data = json.dumps(body).encode()
        started = time.perf_counter()
        attempt = 0
        while True:
            async with limit:
                try:
                    resp = await asyncio.wait_for(_in_own_thread(self._post, url, data), timeout=self.spec.timeout_s)
                    payload = self._check(resp, url)
                except _Retryable as e:
                    failure = e
                except asyncio.TimeoutError:
                    failure = _Retryable(f"no response within {self.spec.timeout_s}s")
                else:
                    return parse_choices(payload, chat, time.perf_counter() - started)
            if attempt >= self.spec.max_retries:
                raise OpenAIBackendError(
                    f"model {self.name!r}: {url} failed after {attempt + 1} attempts; last error: {failure.reason}. "
                    "Check that the server is up, or raise max_retries / timeout_s."
                )
            delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s, failure.retry_after_s, self._rng)
            logger.debug("model %r: %s (%s); retry %d in %.2fs", self.name, url, failure.reason, attempt + 1, delay)
            attempt += 1
            await asyncio.sleep(delay)

    def _check(self, resp: _Response, url: str) -> dict:
        if resp.status in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {resp.status}", resp.retry_after_s)
        text = self._redact(resp.body.decode("utf-8", "replace"))
        if resp.status != 200:
            hint = " Is the key in the environment variable right?" if resp.status in (401, 403) else ""
            raise OpenAIBackendError(f"model {self.name!r}: {url} answered HTTP {resp.status}: {text[:500]}{hint}")
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise _Retryable(f"response is not JSON ({e})") from None

    # -- HTTP, in a worker thread -------------------------------------------------

    def _post(self, url: str, data: bytes) -> _Response:
        if _proxied(url):
            return self._post_urllib(url, data)
        target = urllib.parse.urlsplit(url)
        path = target.path + (f"?{target.query}" if target.query else "")
        while True:
            conn, reused = self._pool.get()
            try:
                conn.request("POST", path, body=data, headers=self._headers())
                r = conn.getresponse()
                body = r.read()
            except _STALE as e:
                conn.close()
                if reused:
                    continue  # closed by the server while idle: not this request's failure
                raise _Retryable(self._redact(f"{type(e).__name__}: {e}")) from None
            except (OSError, http.client.HTTPException) as e:
                # connection refused, socket timeout, a broken response: all worth another try
                conn.close()
                raise _Retryable(self._redact(f"{type(e).__name__}: {e}")) from None
            if r.will_close:
                conn.close()
            else:
                self._pool.put(conn)
            return _Response(r.status, body, parse_retry_after(r.getheader("Retry-After")))

    def _post_urllib(self, url: str, data: bytes) -> _Response:
        """One request through urllib, which honours the proxy settings of the environment."""
        req = urllib.request.Request(url, data=data, method="POST", headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=self.spec.timeout_s) as r:
                return _Response(r.status, r.read(), parse_retry_after(r.headers.get("Retry-After")))
        except urllib.error.HTTPError as e:
            body = e.read() if e.fp is not None else b""
            return _Response(e.code, body, parse_retry_after(e.headers.get("Retry-After") if e.headers else None))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            # connection refused / reset, DNS, socket timeout: all worth another try
            raise _Retryable(self._redact(f"{type(e).__name__}: {getattr(e, 'reason', e)}")) from None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _key(self) -> str | None:
        return os.environ.get(self.spec.api_key_env) if self.spec.api_key_env else None

    def _check_key_available(self) -> None:
        if self.spec.api_key_env and not os.environ.get(self.spec.api_key_env):
            raise OpenAIBackendError(
                f"model {self.name!r}: api_key_env names {self.spec.api_key_env!r} but that environment "
                f"variable is not set; export {self.spec.api_key_env}=... before running."
            )

    def _redact(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text
