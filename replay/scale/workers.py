"""`--workers N`: one run on N local processes, each with its own event loop and connections,
running its shard (see shards.py). The workers share one start instant, fixed in wall-clock time
a moment ahead and mapped by each worker onto its own monotonic clock. Progress comes back over
a queue and is summed for the live line. A worker that dies is reported with what it had sent,
and the run's exit code says so.
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
from dataclasses import asdict, replace
from typing import Any

from captures.errors import UserError
from replay.measure.results import ShardedObserver
from replay.runner import run_streams
from replay.settings import Progress, RunSettings, RunSummary

from .shards import Job, clean_out_dir, merge, shard_settings, sum_progress

START_LEAD_S = 2.5  # time for the workers to start, plan ahead and connect before the start


def _worker(
    job: Job,
    settings: RunSettings,
    index: int,
    count: int,
    progress_q: Any,
    result_q: Any,
    observer_type: Callable[[], ShardedObserver] | None = None,
) -> None:
    try:
        streams, info = job.build()
        obs = observer_type() if observer_type is not None else None
        r = run_streams(
            streams,
            shard_settings(settings, index, count),
            run_info=info,
            on_progress=lambda p: progress_q.put(
                (index, p, obs.shard_state() if obs is not None else None)
            ),
            install_signals=True,
            observer=obs,
        )
        if obs is not None:  # the last rows: after the last progress tick
            progress_q.put((index, None, obs.shard_state()))
        result_q.put((index, r.run, asdict(r.dispatch), None))
    except UserError as exc:
        result_q.put((index, None, None, str(exc)))
        raise SystemExit(2) from None
    except BaseException as exc:  # reported by the runner with the worker's index
        result_q.put((index, None, None, f"{type(exc).__name__}: {exc}"))
        if os.environ.get("LOADTAPE_DEBUG"):
            traceback.print_exc()
        raise SystemExit(3) from None


def run_workers(
    job: Job,
    settings: RunSettings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
    observer: ShardedObserver | None = None,
) -> RunSummary:
    """observer: the driver's, showing the whole run (each worker feeds one of its type)."""
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
            args=(job, shared, k, n, progress_q, result_q, type(observer) if observer else None),
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
    states: dict[int, Any] = {}  # each worker's latest observer state
    results: dict[int, tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]] = {}
    t0 = time.monotonic()
    last_report = 0.0
    try:
        for p in procs:
            p.start()

        fresh = [False]  # a worker's observer state came since the driver's absorbed them

        def drain(block_s: float) -> None:
            deadline = time.monotonic() + block_s
            while True:
                try:
                    k, prog, state = progress_q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if prog is not None:
                    latest[k] = prog
                if state is not None:
                    states[k] = state
                    fresh[0] = True
            while True:
                try:
                    k, run, disp, err = result_q.get_nowait()
                except queue.Empty:
                    break
                results[k] = (run, disp, err)

        def absorb() -> None:
            if observer is not None and fresh[0]:
                observer.absorb(list(states.values()))
                fresh[0] = False

        while any(p.is_alive() for p in procs):
            drain(0.1)
            absorb()
            now = time.monotonic()
            if on_progress is not None and latest and now - last_report >= 0.5:
                on_progress(sum_progress(latest, t0))
                last_report = now
        for p in procs:
            p.join()
        drain(0.0)
        absorb()
        for _ in range(20):  # a result put just before exit may still be in the pipe
            if len(results) >= sum(1 for p in procs if p.exitcode == 0):
                break
            drain(0.05)
        absorb()
        if on_progress is not None and latest:  # the workers' last words, summed
            on_progress(sum_progress(latest, t0))
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
