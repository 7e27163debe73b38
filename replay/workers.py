"""`--workers N`: one run on N local processes, each with its own event loop and connections.

Every worker builds the same plan (the same capture, options and seeds give the same timeline)
and keeps its shard: whole sessions by a stable hash of the session key, sessionless shots by
sequence number (`engine.shard_key`), cut after `--requests`, so the workers together send
exactly what one process would. They share one start instant, fixed in wall-clock time a moment
ahead and mapped by each worker onto its own monotonic clock. Each writes its own parts of the
results directory (`results-w<k>.parquet`, `histograms-w<k>.msgpack`); histograms merge exactly
(`Metrics.add`) and the runner writes the one run.json. Progress comes back over a queue and is
summed for the live line. A worker that dies is reported with what it had sent, and the run's
exit code says so.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from captures.errors import UserError

from .dispatch import DispatchStats
from .engine import Progress, RunSettings, RunSummary, StreamPlan, default_out_dir, run_streams
from .metrics import Metrics
from .results import write_run_json

START_LEAD_S = 2.5  # time for the workers to start, plan ahead and connect before the start
SUM_COUNTS = ("planned", "sent", "ok", "expected", "failed", "redacted_values_dropped")


@dataclass(frozen=True)
class Job:
    """What every worker builds its streams from (picklable): a replay's options, or a
    scenario file and its default target."""

    kind: str  # "replay" | "scenario"
    spec: Any

    def build(self) -> tuple[list[StreamPlan], dict[str, Any]]:
        if self.kind == "replay":
            from .engine import build_replay

            return build_replay(self.spec)
        from .scenario import load

        path, target = self.spec
        return load(path, target=target), {"scenario": str(Path(path).resolve())}


def split(total: int, n: int, k: int) -> int:
    """Worker k's share of a total split n ways (the first ones take the remainder)."""
    return total // n + (1 if k < total % n else 0)


def shard_settings(settings: RunSettings, index: int, count: int, **more: Any) -> RunSettings:
    """One shard's settings: its part of the plan, of the concurrency and the in-flight bound."""
    conc = settings.concurrency
    return replace(
        settings,
        workers=1,
        shard=(index, count),
        part=f"w{index}",
        concurrency=None if conc is None else split(conc, count, index),
        max_in_flight=max(1, split(settings.max_in_flight, count, index)),
        **more,
    )


def clean_out_dir(settings: RunSettings) -> Path:
    """The results directory, without the parts of an earlier run (they would be merged in)."""
    out_dir = Path(settings.out) if settings.out else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("results*.parquet"), *out_dir.glob("histograms*.msgpack")]:
        old.unlink()
    return out_dir


def _worker(
    job: Job,
    settings: RunSettings,
    index: int,
    count: int,
    progress_q: Any,
    result_q: Any,
) -> None:
    try:
        streams, info = job.build()
        r = run_streams(
            streams,
            shard_settings(settings, index, count),
            run_info=info,
            on_progress=lambda p: progress_q.put((index, p)),
            install_signals=True,
        )
        result_q.put((index, r.run, asdict(r.dispatch), None))
    except UserError as exc:
        result_q.put((index, None, None, str(exc)))
        raise SystemExit(2) from None
    except BaseException as exc:  # reported by the runner with the worker's index
        result_q.put((index, None, None, f"{type(exc).__name__}: {exc}"))
        if os.environ.get("LOADTAPE_DEBUG"):
            traceback.print_exc()
        raise SystemExit(3) from None


def sum_progress(latest: dict[int, Progress], start: float) -> Progress:
    ps = list(latest.values())
    return Progress(
        elapsed_s=time.monotonic() - start,
        scheduled_s=max(p.scheduled_s for p in ps),
        planned=None,
        sent=sum(p.sent for p in ps),
        ok=sum(p.ok for p in ps),
        expected=sum(p.expected for p in ps),
        failed=sum(p.failed for p in ps),
        in_flight=sum(p.in_flight for p in ps),
        rate=sum(p.rate for p in ps),
        p99_ms=max((p.p99_ms for p in ps if p.p99_ms is not None), default=None),
        lag_p99_ms=max((p.lag_p99_ms for p in ps if p.lag_p99_ms is not None), default=None),
    )


def run_sharded(
    job: Job,
    settings: RunSettings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
    rate_hint: float | None = None,
) -> RunSummary:
    """A run split into shards: Ray actors with --ray, else local worker processes."""
    settings.validate()
    if settings.ray:
        from .ray_backend import run_on_ray

        return run_on_ray(
            job,
            settings,
            settings.ray,
            on_progress=on_progress,
            install_signals=install_signals,
            rate_hint=rate_hint,
        )
    return run_workers(job, settings, on_progress=on_progress, install_signals=install_signals)


def run_workers(
    job: Job,
    settings: RunSettings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
) -> RunSummary:
    n = settings.workers
    if settings.concurrency is not None:
        n = min(n, settings.concurrency)  # a closed-loop worker needs one slot at least
    out_dir = clean_out_dir(settings)
    start_wall = time.time_ns() + int(START_LEAD_S * 1e9)
    shared = replace(settings, out=str(out_dir), start_wall_ns=start_wall)
    ctx = mp.get_context("spawn")
    progress_q, result_q = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(job, shared, k, n, progress_q, result_q),
            name=f"loadtape-worker-{k}",
            daemon=True,
        )
        for k in range(n)
    ]
    interrupted = {"flag": False}
    old_handlers: dict[int, Any] = {}

    def forward(signum: int, _frame: Any) -> None:
        interrupted["flag"] = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)

    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, forward)
    latest: dict[int, Progress] = {}
    results: dict[int, tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]] = {}
    t0 = time.monotonic()
    last_report = 0.0
    try:
        for p in procs:
            p.start()

        def drain(block_s: float) -> None:
            deadline = time.monotonic() + block_s
            while True:
                try:
                    k, prog = progress_q.get(timeout=max(0.0, deadline - time.monotonic()))
                    latest[k] = prog
                except queue.Empty:
                    break
            while True:
                try:
                    k, run, disp, err = result_q.get_nowait()
                except queue.Empty:
                    break
                results[k] = (run, disp, err)

        while any(p.is_alive() for p in procs):
            drain(0.1)
            now = time.monotonic()
            if on_progress is not None and latest and now - last_report >= 0.5:
                on_progress(sum_progress(latest, t0))
                last_report = now
        for p in procs:
            p.join()
        drain(0.0)
        for _ in range(20):  # a result put just before exit may still be in the pipe
            if len(results) >= sum(1 for p in procs if p.exitcode == 0):
                break
            drain(0.05)
    finally:
        for signum, h in old_handlers.items():
            signal.signal(signum, h)
        for p in procs:
            if p.is_alive():
                p.kill()
    errors = [err for _, _, err in results.values() if err]
    if errors and all(p.exitcode == 2 for p in procs):
        raise UserError(errors[0])
    exits = [p.exitcode for p in procs]
    return merge(out_dir, shared, exits, results, latest, interrupted["flag"], "local")


def _achieved(runs: Any, sent: int) -> float | None:
    """All workers' sends over the longest worker's sending span (they share a start)."""
    spans = [
        r["counts"]["sent"] / r["achieved_rate"]
        for r in runs
        if r.get("achieved_rate") and r["counts"].get("sent")
    ]
    return sent / max(spans) if spans else None


def merge(
    out_dir: Path,
    settings: RunSettings,
    exits: list[int | None],
    results: dict[int, tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]],
    latest: dict[int, Progress],
    interrupted: bool,
    backend: str,
    extra: dict[str, Any] | None = None,
) -> RunSummary:
    """Merge the workers' parts into the run: histograms, counts, one run.json."""
    metrics = Metrics(run_start_ns=settings.start_wall_ns or 0)
    for f in sorted(out_dir.glob("histograms-w*.msgpack")):
        metrics.add(Metrics.decode(f.read_bytes()))
    runs = {k: r[0] for k, r in results.items() if r[0] is not None}
    per_worker = []
    failures = []
    for k, code in enumerate(exits):
        run = runs.get(k)
        err = results.get(k, (None, None, None))[2]
        sent = run["counts"]["sent"] if run else (latest[k].sent if k in latest else 0)
        per_worker.append({"index": k, "exitcode": code, "sent": sent, "error": err})
        if run is None:
            failures.append(
                f"worker {k} died (exit code {code}) after sending about {sent} requests"
                + (f": {err}" if err else "")
            )
    base = dict(runs[min(runs)]) if runs else {"streams": {}, "mode": None}
    counts: dict[str, Any] = dict(base.get("counts", {}))
    for key in SUM_COUNTS:
        counts[key] = sum(r["counts"].get(key, 0) or 0 for r in runs.values())
    unsent: dict[str, int] = {}
    for r in runs.values():
        for reason, v in (r["counts"].get("unsent") or {}).items():
            unsent[reason] = unsent.get(reason, 0) + v
    counts["unsent"] = unsent

    def total(key: str) -> float | None:
        vals = [float(r[key]) for r in runs.values() if r.get(key) is not None]
        return sum(vals) if vals else None

    def most(key: str) -> float | None:
        vals = [float(r[key]) for r in runs.values() if r.get(key) is not None]
        return max(vals) if vals else None

    run_doc = {
        **base,
        "start_ns": settings.start_wall_ns,
        "duration_s": most("duration_s"),
        "scheduled_s": most("scheduled_s"),
        "max_lag_ms": most("max_lag_ms"),
        "scheduled_rate": total("scheduled_rate"),
        "achieved_rate": _achieved(runs.values(), counts["sent"]),
        "counts": counts,
        "settings": asdict(replace(settings, start_wall_ns=None)),
        "interrupted": interrupted or any(r.get("interrupted") for r in runs.values()),
        "connections": {
            k: sum((r.get("connections") or {}).get(k) or 0 for r in runs.values())
            for k in ("connects", "resends")
        },
        "workers": {"count": len(exits), "backend": backend, "per_worker": per_worker},
        **(extra or {}),
    }
    if failures:
        run_doc["worker_failures"] = failures
    write_run_json(out_dir, run_doc)
    stats = DispatchStats(sent=counts["sent"], unsent=unsent)
    return RunSummary(out_dir, metrics, run_doc, stats, bool(run_doc["interrupted"]))
