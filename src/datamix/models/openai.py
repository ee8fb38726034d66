"""The `openai` backend: any OpenAI-compatible server (vllm serve, SGLang, TGI, llama.cpp, hosted APIs).

Transport is the official `openai` SDK: one AsyncOpenAI client per backend, over the
SDK's aiohttp transport (`openai.DefaultAioHttpClient`: pooled keep-alive
connections, proxies from the environment, TLS), with the SDK's own retries off
(`max_retries=0`): datamix keeps one retry layer, here. Generation requests go
straight to the SDK's HTTP client with the SDK's headers (see _post: the SDK's
request() builds typed options per request, which cost more CPU than the HTTP);
batch files use the SDK's typed files/batches calls. Raw prompts (text or token
ids) go to `/completions` (what pre-query sampling needs: the exact prefix, no
template applied by the server); chat prompts go to `/chat/completions`. Requests
run concurrently on one event loop per backend (a daemon thread, so connections and
rate budgets last from one call to the next), at most `spec.max_concurrency` in
flight, fewer while the server throttles (datamix/models/ratelimit.py: rpm/tpm
budgets and the server's x-ratelimit-* headers).

Retries: 429, 5xx, connection errors, timeouts and replies that cannot be used
(no choices, a body that is not JSON, empty text where text is required, a
choice that is not a JSON object where JSON is required) are failed attempts,
retried with exponential backoff and full jitter (sleep ~ U(0, min(cap, base *
2^attempt))), never less than a server's Retry-After. Attempts are bounded per
request (`spec.max_retries`) and per call (`spec.max_failures` failed attempts
over all of one step call's requests), so a server that keeps answering badly
fails the step with its reply quoted instead of looping. Other 4xx (401/403 a
wrong key) fail at once with the server's message. `spec.timeout_s` bounds each
attempt as a whole.

The API key: read from `os.environ[spec.api_key_env]` when a request is sent and
given to the SDK as that request's Authorization header only (the client holds a
placeholder); it is on no object, in no log line, and removed from any error
text that might echo it.

`n`: asked of the server in one request; a server that returns fewer choices
(some ignore `n`) gets the missing ones as further single requests, seeded
seed+1, seed+2, ... so that they differ.

Token counts come from the server's `usage`. A response with several choices
reports one completion total; it is split over the choices in proportion to
their text length (exact when n = 1). `Completion.retries` is the request's
failed attempts, on its first completion.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import threading
import time
import weakref
from typing import Any

from datamix.models import Completion, OpenAIModel, Prompt, SamplingParams, report_progress
# requests and replies on the wire (importable from here as before)
from datamix.models.openai_wire import (_NO_KEY_HERE, RETRYABLE_STATUS, OpenAIBackendError, _Retryable,  # noqa: F401
                                        _shown, backoff_delay, parse_choices, parse_retry_after, request_body, unusable)

logger = logging.getLogger(__name__)

async def _within(coro, timeout_s: float):
    """`await coro`, at most `timeout_s` (asyncio.TimeoutError past it). asyncio.timeout where there
    is one (3.11): wait_for wraps every attempt in a task of its own, measurable per request."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(timeout_s):
            return await coro
    return await asyncio.wait_for(coro, timeout_s)


@dataclasses.dataclass
class _CallBudget:
    """Failed attempts allowed over one generate() call, across all its requests."""

    allowed: int
    failures: int = 0


class _LoopThread:
    """One event loop on a daemon thread: the retry layer's limiter and budgets live on it from
    one call to the next (an asyncio.run per call would drop them), as do the SDK client's
    pooled connections."""

    def __init__(self):
        try:  # uvloop where installed (the openai extra): ~20% less client CPU a request than asyncio's loop
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="datamix-openai")
        self.thread.start()

    def run(self, coro):
        if threading.current_thread() is self.thread:
            raise RuntimeError("OpenAIBackend.generate called from its own event loop; await agenerate instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def _shut(loop_thread: _LoopThread, client) -> None:
    """Close the client's connections on its loop, then stop the loop: a backend closed, collected
    or left open at exit (a run does not close its backends; aiohttp complains of every session
    collected open). Safe from any thread, the loop's own included (the GC may run there)."""

    async def close():
        try:
            await client.close()
        except Exception as e:  # best effort: the connections die with the loop anyway
            logger.debug("closing the openai client: %s", e)

    try:
        done = asyncio.run_coroutine_threadsafe(close(), loop_thread.loop)
    except RuntimeError:  # the loop is closed already
        return
    if threading.current_thread() is loop_thread.thread:
        done.add_done_callback(lambda _: loop_thread.loop.stop())
        return
    try:
        done.result(5.0)
    except Exception as e:
        logger.debug("closing the openai client: %s", e)
    loop_thread.close()


def _closed_before_reply(exc: BaseException) -> bool:
    """True when the server closed the connection before a byte of reply: a kept-alive connection
    it closed while idle (it never saw the request), or one reset on the write. aiohttp resends
    no POST itself; these go again on a new connection without counting as a failed attempt."""
    import errno

    import aiohttp

    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    if not isinstance(exc, aiohttp.ClientOSError) or isinstance(exc, aiohttp.ClientConnectorError):
        return False
    # under uvloop the reset arrives as the cause of an errno-less "Can not write request body"
    return exc.errno in (errno.ECONNRESET, errno.EPIPE) or isinstance(exc.__cause__, (ConnectionResetError,
                                                                                      BrokenPipeError))


class OpenAIBackend:
    """Backend over an OpenAI-compatible HTTP server."""

    # generate() takes require= and response_format= (structured judges look for this)
    supports_response_format = True

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
        self._loop_thread: _LoopThread | None = None
        self._finalizer = None  # weakref.finalize(self, _shut, ...) once the client is made on the loop thread
        self._lock = threading.Lock()
        # made on the loop at first use (asyncio objects belong to one loop)
        self._client = None  # openai.AsyncOpenAI
        self._http = None  # its HTTP client (httpx2 API over the SDK's aiohttp transport)
        self.limit = None  # ratelimit.AdaptiveLimit
        self.budget = None  # ratelimit.RateBudget

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

    def generate(self, prompts: list[Prompt], params: SamplingParams, *, require: str | None = None,
                 response_format: dict | None = None) -> list[list[Completion]]:
        """For each prompt, `params.n` completions, in order (runs on the backend's event loop).

        require: "text" (a choice with empty text is a failed attempt) or "json" (a choice that
        is not a JSON object is); response_format: sent as is to /chat/completions."""
        return self.run(self.agenerate(prompts, params, require=require, response_format=response_format))

    def run(self, coro):
        """Run a coroutine on the backend's event loop and return its result (batch files use it too)."""
        with self._lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread()
        return self._loop_thread.run(coro)

    def close(self) -> None:
        """Close the connections and stop the loop thread (a later call starts them again)."""
        if self._finalizer is not None:
            self._finalizer()  # runs once: closes the client and stops the loop
        elif self._loop_thread is not None:
            self._loop_thread.close()
        self._loop_thread, self._finalizer = None, None
        self._client, self._http, self.limit, self.budget = None, None, None, None

    async def agenerate(self, prompts: list[Prompt], params: SamplingParams, *, require: str | None = None,
                        response_format: dict | None = None) -> list[list[Completion]]:
        self._check_key_available()
        self._ensure_client()
        allowed = self.spec.max_failures
        if allowed is None:
            allowed = max(4 * self.spec.max_retries, 2 * len(prompts))
        budget = _CallBudget(allowed)
        tasks = [asyncio.ensure_future(self._one_prompt(p, params, budget, require, response_format)) for p in prompts]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # the loop outlives this call: requests still in flight must not go on without a caller
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # -- one prompt ---------------------------------------------------------------

    async def _one_prompt(self, prompt, params, budget, require, response_format) -> list[Completion]:
        chat = prompt.messages is not None
        got = await self._request(prompt, params, params.n, params.seed, chat, budget, require, response_format)
        # Servers that ignore n: ask for the rest one at a time, with distinct seeds.
        k = 0
        while len(got) < params.n:
            k += 1
            seed = None if params.seed is None else params.seed + k
            got += await self._request(prompt, params, 1, seed, chat, budget, require, response_format)
        report_progress(params.n)  # the progress bar moves while a long call is in flight
        return got[: params.n]

    @staticmethod
    def estimate_tokens(prompt: Prompt, params: SamplingParams, n: int) -> int:
        """Tokens a request may use, for the tpm budget: about 4 characters a prompt token, plus max_tokens per choice."""
        if prompt.token_ids is not None:
            size = len(prompt.token_ids)
        elif prompt.text is not None:
            size = len(prompt.text) // 4 + 1
        else:
            size = sum(len(str(m.get("content") or "")) // 4 + 4 for m in prompt.messages or [])
        return size + params.max_tokens * n

    async def _request(self, prompt, params, n, seed, chat, budget, require, response_format) -> list[Completion]:
        path, body = request_body(self.spec.path, prompt, params, n, seed, response_format)
        url = self.spec.base_url.rstrip("/") + path
        # the tpm budget's estimate (none without one: a message walk per request for nothing)
        estimate = self.estimate_tokens(prompt, params, n) if self.budget.tokens is not None else 0
        started = time.perf_counter()
        attempt = 0
        while True:
            async with self.limit:
                # the budget after the slot: a request waiting for a slot must not count as sent
                ticket = await self.budget.acquire(estimate)
                try:
                    payload, headers = await _within(self._post(path, body), self.spec.timeout_s)
                    self.budget.observe(headers, ticket)
                    problem = unusable(payload, chat, require)
                    if problem:
                        raise _Retryable(f"{problem}: {_shown(self._redact(json.dumps(payload)))}")
                except _Retryable as e:
                    failure = e
                    self.budget.observe(e.headers, ticket)
                except asyncio.TimeoutError:
                    failure = _Retryable(f"no response within {self.spec.timeout_s}s")
                else:
                    self.limit.succeeded()
                    usage = payload.get("usage") or {}
                    used = usage.get("total_tokens")
                    self.budget.settle(estimate, int(used) if isinstance(used, (int, float)) else None)
                    return parse_choices(payload, chat, time.perf_counter() - started, retries=attempt)
            if failure.throttled:
                self.limit.throttled()
            budget.failures += 1
            if attempt >= self.spec.max_retries:
                raise OpenAIBackendError(
                    f"model {self.name!r}: {url} failed after {attempt + 1} attempts; last: {failure.reason}. "
                    "Check that the server is up and answers this request, or raise max_retries / timeout_s."
                )
            if budget.failures > budget.allowed:
                raise OpenAIBackendError(
                    f"model {self.name!r}: {url}: {budget.failures} failed attempts in this call, more than "
                    f"max_failures ({budget.allowed}); last: {failure.reason}. The server fails too often: "
                    "check it, or raise max_failures."
                )
            delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s, failure.retry_after_s, self._rng)
            logger.debug("model %r: %s (%s); retry %d in %.2fs", self.name, url, failure.reason, attempt + 1, delay)
            attempt += 1
            await asyncio.sleep(delay)

    # -- HTTP, through the SDK ----------------------------------------------------

    def _ensure_client(self) -> None:
        if self._client is not None:
            return
        try:
            import httpx2
            import openai
        except ImportError as e:
            raise OpenAIBackendError(f"model {self.name!r}: the openai backend needs the openai SDK ({e}); "
                                     "install it with pip install 'datamix[openai]'.") from None

        from datamix.models.ratelimit import AdaptiveLimit, RateBudget

        n = self.spec.max_concurrency
        limits = httpx2.Limits(max_connections=n, max_keepalive_connections=n)
        # AsyncOpenAI on the backend's own loop, over the SDK's aiohttp transport: aiohttp parses
        # HTTP in C; httpx's pure-Python stack cost about 1 ms of client CPU a request more
        # (benchmarks/openai_client.py). Proxies from the environment and TLS are the SDK's.
        self._http = openai.DefaultAioHttpClient(limits=limits, timeout=self.spec.timeout_s)
        self._client = openai.AsyncOpenAI(api_key=_NO_KEY_HERE, base_url=self.spec.base_url, max_retries=0,
                                          timeout=self.spec.timeout_s, http_client=self._http)
        # The SDK's own headers (user agent, platform), taken once: a chat or completion request
        # goes to the SDK's HTTP client with these and the key, not through the SDK's request()
        # (its options models, idempotency keys and header merging cost ~1.3 ms a request, more
        # than the HTTP itself), which has nothing to add to a plain JSON POST without retries.
        # as bytes: httpx takes them as they are instead of normalising each one per request
        self._headers = [(k.encode("ascii"), v.encode("ascii")) for k, v in self._client.default_headers.items()
                         if isinstance(v, str) and k.lower() != "authorization"]
        base = str(self._client.base_url).rstrip("/")
        self._urls = {p: httpx2.URL(base + p) for p in ("/chat/completions", "/completions")}
        self._extensions = {"timeout": httpx2.Timeout(self.spec.timeout_s).as_dict()}
        self.limit = AdaptiveLimit(n)
        self.budget = RateBudget(self.spec.rpm, self.spec.tpm)
        if self._loop_thread is not None and threading.current_thread() is self._loop_thread.thread:
            self._finalizer = weakref.finalize(self, _shut, self._loop_thread, self._client)

    async def call(self, what: str, fn):
        """`await fn(client, headers)` (an AsyncOpenAI call) with the retry layer (batch files:
        uploads, polls, downloads)."""
        self._check_key_available()
        self._ensure_client()
        attempt = 0
        while True:
            try:
                return await _within(self._sdk(fn), self.spec.timeout_s)
            except _Retryable as e:
                failure = e
            except asyncio.TimeoutError:
                failure = _Retryable(f"no response within {self.spec.timeout_s}s")
            if attempt >= self.spec.max_retries:
                raise OpenAIBackendError(f"model {self.name!r}: {what} failed after {attempt + 1} attempts; "
                                         f"last: {failure.reason}.")
            delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s, failure.retry_after_s, self._rng)
            logger.debug("model %r: %s (%s); retry %d in %.2fs", self.name, what, failure.reason, attempt + 1, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def _post(self, path: str, body: dict) -> tuple[Any, Any]:
        import httpx2

        key = self._key()
        headers = self._headers + [(b"Authorization", f"Bearer {key}".encode("latin-1"))] if key else self._headers
        # a Request of our own, not the client's build_request: merging the client's URL, headers
        # and cookies into every request is a third of httpx's cost and adds nothing here
        request = httpx2.Request("POST", self._urls[path], headers=headers, extensions=self._extensions,
                                 content=json.dumps(body, ensure_ascii=False).encode())
        for resends_left in (3, 2, 1, 0):  # one stale connection after another, at most the pool's few
            try:
                response = await self._http.send(request)
                break
            except (httpx2.TimeoutException, httpx2.TransportError) as e:
                cause = e.__cause__ or e
                if resends_left and _closed_before_reply(cause):
                    continue
                raise _Retryable(self._redact(f"{type(cause).__name__}: {cause}")) from None
        if response.status_code >= 400:
            self._raise_status(response.status_code, response.headers, response.text, request.url)
        try:  # the bytes: json finds their UTF encoding itself, no charset lookup and decode first
            return json.loads(response.content), response.headers
        except ValueError:
            raise _Retryable(f"a reply that is not JSON: {_shown(self._redact(response.text))!r}",
                             headers=response.headers) from None

    def _raise_status(self, status: int, headers, text: str, url) -> None:
        text = self._redact(text)
        if status in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {status}: {_shown(text, 200)}", parse_retry_after(headers.get("retry-after")),
                             throttled=status == 429, headers=headers)
        hint = " Is the key in the environment variable right?" if status in (401, 403) else ""
        raise OpenAIBackendError(f"model {self.name!r}: {url} answered HTTP {status}: "
                                 f"{_shown(text, 500)}{hint}", status=status)

    async def _sdk(self, fn):
        """One AsyncOpenAI call; its errors sorted into failed attempts and failures for good."""
        import openai

        try:
            return await fn(self._client, self._auth())
        except openai.APIStatusError as e:
            self._raise_status(e.status_code, e.response.headers, e.response.text, e.request.url)
        except openai.APITimeoutError:
            raise _Retryable(f"no response within {self.spec.timeout_s}s") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise _Retryable(self._redact(f"{type(cause).__name__}: {cause}")) from None

    def _auth(self) -> dict:
        import openai

        key = self._key()
        # Omit: no Authorization header at all (a local server without a key)
        return {"Authorization": f"Bearer {key}" if key else openai.Omit()}

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
