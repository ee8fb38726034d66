"""A real OpenAI-compatible HTTP server on 127.0.0.1 that misbehaves on demand (tests only).

/completions and /chat/completions: answers 429 / 500 / 503 / too slow at random
(`fail_rate`), or as a `script` of outcomes says first, else echoes the prompt.
Extra outcomes: "empty" (200 with no choices), "blank" (200, a choice with empty
text), "notjson" (200 with a body that is not JSON). `rate_limit=(requests,
window_s)` counts requests per fixed window, sends x-ratelimit-* headers and
answers 429 past the limit. `answer_text(body) -> str` replaces the echo.

A fake Batch API: POST /files (multipart upload), POST /batches, GET /batches,
GET /batches/{id} (validating -> in_progress -> completed over `polls_to_finish`
status checks), GET /files/{id}/content. Lines whose position is in
`batch_fail_lines` end in the error file.
"""

from __future__ import annotations

import email.parser
import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT_S = 0.4


class _Server(ThreadingHTTPServer):
    # a listen backlog of 5 (the default) overflows when a client opens its connections at once:
    # connects stall for a second or are reset, failures of the test server, not of the client
    request_queue_size = 128


class FlakyServer:
    """`served` counts, per prompt, the 200 answers the client could actually read
    (slow answers are written only after the client's timeout, so they do not count)."""

    def __init__(self, fail_rate=0.6, honour_n=True, seed=0, keep_alive=False, close_after=None, script=None,
                 rate_limit=None, answer_text=None, polls_to_finish=2, batch_fail_lines=()):
        """keep_alive: HTTP/1.1 (connections stay open between requests, as real servers do);
        close_after: then close a connection after that many answers, without saying so."""
        self.rng = random.Random(seed)
        self.connections = 0
        self.lock = threading.Lock()
        self.fail_rate = fail_rate
        self.honour_n = honour_n
        self.script = list(script or [])
        self.rate_limit = rate_limit
        self.answer_text = answer_text
        self.served = Counter()
        self.outcomes = Counter()
        self.auth_headers = set()
        self.bodies = []
        self.times = []  # arrival of every generation request (time.monotonic)
        self.window = [0.0, 0]  # start, count (rate_limit)
        # batch API state
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.calls = Counter()  # "upload", "submit", "retrieve", "list", "content"
        self.polls_to_finish = polls_to_finish
        self.batch_fail_lines = set(batch_fail_lines)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
            # headers and body go in two sends: with Nagle on, a kept-alive connection waited
            # ~40 ms a request for a delayed ACK
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output quiet
                pass

            def setup(self):
                super().setup()
                self.answered = 0
                with server.lock:
                    server.connections += 1

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    server.auth_headers.add(self.headers.get("Authorization"))
                if path.endswith("/batches"):
                    with server.lock:
                        server.calls["list"] += 1
                        data = [dict(b) for b in server.batches.values()]
                    return self.reply(200, {"object": "list", "data": data, "has_more": False})
                if "/batches/" in path:
                    return self.reply(200, server.poll(path.rsplit("/", 1)[1]))
                if path.endswith("/content"):
                    file_id = path.split("/")[-2]
                    with server.lock:
                        server.calls["content"] += 1
                        data = server.files[file_id]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                return self.reply(404, {"error": f"no route {path}"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.split("?")[0]
                if path.endswith("/files"):
                    return self.reply(200, server.upload(self.headers["Content-Type"], raw))
                if path.endswith("/batches"):
                    return self.reply(200, server.submit(json.loads(raw)))
                body = json.loads(raw)
                with server.lock:
                    server.auth_headers.add(self.headers.get("Authorization"))
                    server.bodies.append(body)
                    server.times.append(time.monotonic())
                    roll = server.rng.random()
                    outcome = server.script.pop(0) if server.script else server.pick(roll)
                    limit_headers, over = server.count_in_window()
                if over:
                    outcome = "429"
                with server.lock:
                    server.outcomes[outcome] += 1
                if outcome == "429":
                    return self.reply(429, {"error": "rate limited"}, {"Retry-After": "0", **(limit_headers or {})})
                if outcome in ("500", "503"):
                    return self.reply(int(outcome), {"error": "boom"})
                if outcome == "slow":
                    time.sleep(TIMEOUT_S * 2)
                    try:
                        self.reply(200, server.answer(body))
                    except OSError:
                        pass
                    return None
                if outcome == "empty":
                    return self.reply(200, {"id": "x", "object": "chat.completion", "choices": []})
                if outcome == "notjson":
                    return self.reply(200, None, raw_body=b"<html>gateway hiccup</html>")
                payload = server.answer(body)
                if outcome == "blank":
                    for c in payload["choices"]:
                        c.update({"message": {"role": "assistant", "content": ""}} if "message" in c else {"text": ""})
                key = json.dumps(body.get("prompt", body.get("messages")))
                with server.lock:
                    server.served[key] += 1
                return self.reply(200, payload, limit_headers)

            def reply(self, status, payload, headers=None, raw_body=None):
                data = raw_body if raw_body is not None else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.answered += 1
                if close_after is not None and self.answered >= close_after:
                    self.close_connection = True  # no "Connection: close" header: the client finds out later

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def pick(self, roll):
        if roll >= self.fail_rate:
            return "ok"
        return ["429", "500", "503", "slow"][int(roll / self.fail_rate * 4)]

    def count_in_window(self):
        """(x-ratelimit-* headers for this request, whether it is over the limit), under the lock."""
        if self.rate_limit is None:
            return {}, False
        limit, window_s = self.rate_limit
        now = time.monotonic()
        if now - self.window[0] >= window_s:
            self.window = [now, 0]
        self.window[1] += 1
        reset = max(0.0, self.window[0] + window_s - now)
        headers = {"x-ratelimit-limit-requests": str(limit),
                   "x-ratelimit-remaining-requests": str(max(0, limit - self.window[1])),
                   "x-ratelimit-reset-requests": f"{int(reset * 1000)}ms"}
        return headers, self.window[1] > limit

    def answer(self, body):
        n = body.get("n", 1) if self.honour_n else 1
        chat = "messages" in body
        src = body["messages"][-1]["content"] if chat else body["prompt"]
        choices = []
        for i in range(n):
            text = self.answer_text(body) if self.answer_text else f"echo:{src}:{body.get('seed')}:{i}"
            choice = {"index": i, "finish_reason": "length" if body["max_tokens"] <= 3 else "stop"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            choices.append(choice)
        return {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 4 * n, "total_tokens": 5 + 4 * n}}

    # -- the fake Batch API ---------------------------------------------------------

    def upload(self, content_type: str, raw: bytes) -> dict:
        msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        data = next(part.get_payload(decode=True) for part in msg.get_payload() if part.get_filename())
        with self.lock:
            self.calls["upload"] += 1
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": 0, "filename": "batch.jsonl",
                "purpose": "batch", "status": "processed"}

    def submit(self, body: dict) -> dict:
        with self.lock:
            self.calls["submit"] += 1
            batch_id = f"batch-{len(self.batches)}"
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"], "status": "validating", "created_at": 0,
                "metadata": body.get("metadata"), "output_file_id": None, "error_file_id": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_polls": 0,
            }
            return self.public(batch_id)

    def public(self, batch_id):
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}

    def poll(self, batch_id: str) -> dict:
        with self.lock:
            self.calls["retrieve"] += 1
            b = self.batches[batch_id]
            b["_polls"] += 1
            if b["status"] in ("validating", "in_progress") and b["_polls"] >= self.polls_to_finish:
                self.finish(b)
            elif b["status"] == "validating":
                b["status"] = "in_progress"
            return self.public(batch_id)

    def finish(self, b: dict) -> None:
        """Run every line (under the lock): answers to the output file, the failing positions to the error file."""
        lines = [json.loads(x) for x in self.files[b["input_file_id"]].decode().splitlines() if x.strip()]
        out, err = [], []
        for i, line in enumerate(lines):
            self.bodies.append(line["body"])
            if i in self.batch_fail_lines:
                err.append({"id": f"r{i}", "custom_id": line["custom_id"], "response": None,
                            "error": {"code": "server_error", "message": "line failed"}})
                continue
            out.append({"id": f"r{i}", "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": 200, "request_id": f"q{i}", "body": self.answer(line["body"])}})
        for kind, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{len(self.files)}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                b[kind] = file_id
        b["status"] = "completed"
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
