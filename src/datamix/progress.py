"""Live progress of a run: bars on the terminal and a progress file beside the store.

DuckDB lets no other process open a store while a run writes it, so `datamix status`
cannot ask the store how far a run is. The runner therefore keeps a small JSON file
beside the store (`<store>.progress.json`, replaced atomically, rewritten every
couple of seconds by a heartbeat thread) saying which run, which step, how far, how
fast and since when; status reads it when the store is busy. The file is removed
when the run ends, so one left behind belongs to a process that was killed (its pid
is in the file; `read_progress` reports whether it is alive).

Units: a step counts rows; a model-calling step also counts model calls (done /
total, cached, retried, failed) as the backend finishes them, between chunks; a
train step counts training steps (the trainer's metrics.jsonl lines).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

HEARTBEAT_S = 2.0


def progress_path(store_path: str) -> str:
    return os.path.abspath(store_path) + ".progress.json"


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def write_json_atomic(path: str, payload: dict) -> None:
    """Write then rename: a reader sees the old file or the new one, never half of one."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, default=str)
    os.replace(tmp, path)


def read_progress(store_path: str) -> dict | None:
    """The progress file of a run on this store, or None; `alive` says whether its process runs."""
    path = progress_path(store_path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    pid = data.get("pid")
    try:
        os.kill(int(pid), 0)
        data["alive"] = True
    except (OSError, TypeError, ValueError):
        data["alive"] = False
    return data


class _Counter:
    """One thing being counted (rows, model calls, training steps) with its rate and ETA."""

    def __init__(self, unit: str, total: int | None):
        self.unit, self.total, self.done = unit, total, 0
        self.t0 = time.perf_counter()

    def snapshot(self) -> dict:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / dt
        eta = (self.total - self.done) / rate if self.total and rate > 0 and self.done < self.total else None
        return {"unit": self.unit, "done": self.done, "total": self.total, "rate_per_s": round(rate, 3),
                "eta_s": None if eta is None else round(eta, 1)}


class StepProgress:
    """What the runner hands a step (ctx.progress, ctx.calls, ctx.calls_progress) for one step."""

    def __init__(self, owner: "Progress", name: str, kind: str, total: int | None, unit: str,
                 calls_total: int | None, poll: Callable[[], int] | None = None):
        self.owner, self.name, self.kind = owner, name, kind
        self.started_at = _now()
        self.rows = _Counter(unit, total)
        self.tokens = 0
        self.calls = _Counter("model calls", calls_total) if calls_total is not None else None
        self.cached = self.retried = self.failed = 0
        self._in_flight = 0  # completions of the current backend call not yet recorded
        self.poll = poll
        bar = owner._bar
        self._row_task = bar.add_task(name, total=total, info="") if bar else None
        self._call_task = (bar.add_task("  model calls", total=calls_total, info="")
                           if bar and self.calls is not None else None)

    # ctx.progress(rows, tokens=0)
    def advance(self, rows: int, tokens: int = 0) -> None:
        with self.owner.lock:
            self.rows.done += rows
            self.tokens += tokens
        self._refresh()

    # ctx.calls(record): a finished backend call or a batch of cache hits
    def record_call(self, record: dict[str, Any]) -> None:
        with self.owner.lock:
            if self.calls is None:
                self.calls = _Counter("model calls", None)
            self.calls.done += int(record.get("completions") or 0) + int(record.get("failed") or 0)
            self.cached += int(record.get("completions") or 0) if record.get("cached") else 0
            self.retried += int(record.get("retries") or 0)
            self.failed += int(record.get("failed") or 0)
            if not record.get("cached"):
                self._in_flight = 0
        self._refresh()

    # ctx.calls_progress(n): completions of the call in flight
    def call_progress(self, n: int) -> None:
        with self.owner.lock:
            self._in_flight += n
        self._refresh()

    def snapshot(self) -> dict:
        with self.owner.lock:
            if self.poll is not None:
                try:
                    self.rows.done = max(self.rows.done, int(self.poll()))
                except (OSError, ValueError):
                    pass
            out = {"name": self.name, "kind": self.kind, "started_at": self.started_at, **self.rows.snapshot(),
                   "tokens": self.tokens}
            if self.calls is not None:
                calls = self.calls.snapshot()
                calls["done"] += self._in_flight
                # the rate of calls a model answered: cache hits come in thousands a second and
                # would make the ETA of the calls left to a model far too short
                dt = max(time.perf_counter() - self.calls.t0, 1e-9)
                rate = (calls["done"] - self.cached) / dt
                calls["rate_per_s"] = round(rate, 3)
                left = (calls["total"] or 0) - calls["done"]
                calls["eta_s"] = round(left / rate, 1) if rate > 0 and left > 0 else None
                out["calls"] = {**calls, "cached": self.cached, "retried": self.retried, "failed": self.failed}
            return out

    def _refresh(self) -> None:
        bar = self.owner._bar
        if bar is None:
            return
        snap = self.snapshot()
        rate = f"{snap['rate_per_s']:,.1f} {snap['unit']}/s"
        elapsed = max(time.perf_counter() - self.rows.t0, 1e-9)
        if self.tokens:
            rate += f"  {self.tokens / elapsed:,.0f} tok/s"
        bar.update(self._row_task, completed=snap["done"], info=f"{snap['unit']}  {rate}  ETA {_duration(snap['eta_s'])}")
        if self._call_task is not None and "calls" in snap:
            c = snap["calls"]
            bar.update(self._call_task, completed=c["done"],
                       info=f"calls  {c['rate_per_s']:,.1f}/s  cached {c['cached']:,}  retried {c['retried']:,}  "
                            f"failed {c['failed']:,}  ETA {_duration(c['eta_s'])}")

    def finish(self) -> None:
        if self.owner._bar is not None:
            snap = self.snapshot()
            if snap["total"] is None or snap["done"] >= (snap["total"] or 0):
                self.owner._bar.update(self._row_task, total=snap["done"], completed=snap["done"])
        self._refresh()


class Progress:
    """Rich bars (unit, done / total, rate, ETA; refreshed by rich several times a second)
    when `enabled`, and the progress file beside the store when `store_path` is given."""

    def __init__(self, enabled: bool, store_path: str | None = None, run: dict | None = None):
        self.enabled = enabled
        self.lock = threading.RLock()
        self._bar = None
        self._path = progress_path(store_path) if store_path else None
        self._run = {"pid": os.getpid(), "started_at": _now(), **(run or {})}
        self._steps: dict[str, str] = {}  # name -> pending | running | done | skipped | failed
        self._current: StepProgress | None = None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(
                TextColumn("{task.description:<18}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=False,
                refresh_per_second=4,
            )
            self._bar.__enter__()
        if self._path:
            self.write()
            self._thread = threading.Thread(target=self._heartbeat, name="datamix-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._path:
            try:
                os.remove(self._path)
            except OSError:
                pass
        if self._bar:
            self._bar.__exit__(*exc)

    def plan(self, names: list[str]) -> None:
        """The run's steps in order, all pending."""
        self._steps = {n: "pending" for n in names}

    def mark(self, name: str, state: str) -> None:
        with self.lock:
            self._steps[name] = state
            if state != "running" and self._current is not None and self._current.name == name:
                self._current.finish()
                self._current = None
        self.write()

    def step(self, name: str, kind: str, total: int | None, unit: str = "rows", calls_total: int | None = None,
             poll: Callable[[], int] | None = None) -> StepProgress:
        sp = StepProgress(self, name, kind, total, unit, calls_total, poll)
        with self.lock:
            self._current = sp
            self._steps[name] = "running"
        self.write()
        return sp

    def task(self, name: str, total: int | None):
        """The old interface: an advance(rows, tokens=0) function."""
        return self.step(name, "", total).advance

    def write(self) -> None:
        if not self._path:
            return
        current = self._current
        payload = {**self._run, "updated_at": _now(),
                   "steps": [{"name": n, "state": s} for n, s in self._steps.items()],
                   "step": current.snapshot() if current is not None else None}
        try:
            write_json_atomic(self._path, payload)
        except OSError:  # a full or read-only disk must not fail the run over a progress file
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self._current is not None and self._current.poll is not None:
                self._current._refresh()
            self.write()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(progress: dict) -> list[str]:
    """A progress file as the lines `datamix status` prints for a busy store."""
    lines = [f"run {progress.get('run_id', '?')} of pipeline {progress.get('pipeline', '?')} is in progress "
             f"(process {progress.get('pid')}, since {progress.get('started_at')}; "
             f"updated {progress.get('updated_at')})"]
    if not progress.get("alive", True):
        lines[0] = lines[0].replace("is in progress", "was in progress, but its process is gone")
    step = progress.get("step")
    if step:
        total = f"/{step['total']:,}" if step.get("total") else ""
        lines.append(f"step {step['name']} ({step['kind']}), running since {step['started_at']}: "
                     f"{step['done']:,}{total} {step['unit']}, {step['rate_per_s']:,.1f} {step['unit']}/s, "
                     f"ETA {_duration(step.get('eta_s'))}")
        calls = step.get("calls")
        if calls:
            total = f"/{calls['total']:,}" if calls.get("total") else ""
            lines.append(f"  model calls {calls['done']:,}{total} ({calls['cached']:,} cached, {calls['retried']:,} "
                         f"retried, {calls['failed']:,} failed), {calls['rate_per_s']:,.1f}/s, "
                         f"ETA {_duration(calls.get('eta_s'))}")
    states = progress.get("steps") or []
    if states:
        lines.append("steps: " + ", ".join(f"{s['name']} {s['state']}" for s in states))
    lines.append("the store is locked while the run writes it; `datamix status` shows the full table when it ends")
    return lines
