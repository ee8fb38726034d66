"""Requests per second through the openai backend: the SDK path against the old hand-written client.

Both clients send the same chat requests to the same local OpenAI-compatible server
(HTTP/1.1 keep-alive, a thread per connection, in a process of its own) at the same
concurrency (`max_concurrency`), in the same process, interleaved. The old client is
src/datamix/models/openai.py as of commit b4b1767 (http.client in a thread per
request, its own keep-alive pool), loaded from git. Prints requests/s for both and
the ratio (target: the SDK path no slower, ratio >= 1.0), and each client's CPU per
request (time.process_time over all of the client process's threads; the server is
another process), the figure a loaded machine disturbs least. The best run of each
counts (the machine is shared; the best run is the least disturbed one).

    python benchmarks/openai_client.py [--requests 2000] [--concurrency 16] [--repeats 3] [--delay-ms 0]

--delay-ms makes the server wait before answering, as a real model server does
(the clients' own overhead then matters less and concurrency more).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OLD_COMMIT = "b4b1767"
ROOT = Path(__file__).resolve().parents[1]


def serve(delay_s: float):
    """The server in its own process (in the clients' process its threads would compete with
    them for the GIL and the figures would measure that). Returns (process, url)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve_forever, args=(delay_s, queue), daemon=True)
    proc.start()
    return proc, queue.get(timeout=60)


def _serve_forever(delay_s: float, queue) -> None:
    httpd, url = _server(delay_s)
    queue.put(url)
    httpd.serve_forever()


def _server(delay_s: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # one send per answer, sent at once: unbuffered headers then body with Nagle on made
        # every kept-alive request wait ~40 ms for a delayed ACK (the server, not a client, bound)
        disable_nagle_algorithm = True
        wbufsize = 1 << 16

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if delay_s:
                time.sleep(delay_s)
            text = "echo:" + body["messages"][-1]["content"]
            data = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        request_queue_size = 256
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def old_backend_class():
    """OpenAIBackend from the old module, loaded from git into a temporary file."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:src/datamix/models/openai.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "datamix_old_openai.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("datamix_old_openai", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module.OpenAIBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()

    from datamix.models import OpenAIModel, Prompt, SamplingParams
    from datamix.models.openai import OpenAIBackend

    os.environ["DATAMIX_BENCH_KEY"] = "sk-bench"
    server, url = serve(args.delay_ms / 1000)
    spec = OpenAIModel(backend="openai", path="m", base_url=url, api_key_env="DATAMIX_BENCH_KEY",
                       max_concurrency=args.concurrency, timeout_s=60, max_retries=3)
    clients = {"sdk": OpenAIBackend("bench", spec), "old": old_backend_class()("bench", spec)}
    prompts = [Prompt(messages=[{"role": "user", "content": f"question {i}"}]) for i in range(args.requests)]
    params = SamplingParams(max_tokens=16, seed=0)
    for client in clients.values():  # warm-up: imports, connections
        client.generate(prompts[: args.concurrency * 2], params)
    best = {name: 0.0 for name in clients}
    cpu = {name: float("inf") for name in clients}
    for _ in range(args.repeats):
        for name, client in clients.items():
            t, c = time.perf_counter(), time.process_time()
            out = client.generate(prompts, params)
            # process_time: this process's CPU, all its threads (the server is another process)
            rate, ms = len(out) / (time.perf_counter() - t), (time.process_time() - c) / len(out) * 1000
            assert out[-1][0].text == f"echo:question {args.requests - 1}"
            best[name], cpu[name] = max(best[name], rate), min(cpu[name], ms)
            print(f"  {name}: {rate:,.0f} requests/s, client CPU {ms:.2f} ms a request", flush=True)
    server.terminate()
    for client in clients.values():
        if hasattr(client, "close"):
            client.close()
    print(f"requests={args.requests} concurrency={args.concurrency} delay_ms={args.delay_ms} (best of {args.repeats})")
    print(f"sdk path: {best['sdk']:,.0f} requests/s, {cpu['sdk']:.2f} ms CPU a request; "
          f"old client: {best['old']:,.0f} requests/s, {cpu['old']:.2f} ms CPU a request")
    print(f"ratio sdk/old: requests/s {best['sdk'] / best['old']:.2f} (target >= 1.0), "
          f"CPU a request {cpu['sdk'] / cpu['old']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
