"""The runner: one process's run, wired from its stages. Streams of shots -> one timeline ->
scheduler -> dispatcher -> clients -> results and histograms -> run.json. It runs what it is
given (one shard of a sharded run included) and knows nothing of where the streams came from or
of scale-out backends; `replay.api` chooses those."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from captures.errors import UserError
from captures.store import mkdir_private, seal_private
from replay.measure.metrics import Metrics
from replay.measure.results import Expect, ResultObserver, warm_up
from replay.measure.resultsdir import write_histograms, write_run_json
from replay.measure.writer import ResultWriter
from replay.send.router import Router, make_client, pick_client

from . import hostcpu
from . import plan as planmod
from .ahead import AheadDispatcher
from .dispatch import Dispatcher
from .dispatchstats import DispatchStats
from .planahead import (
    PLAN_BUFFER_BYTES,
    PLAN_BUFFER_SHOTS,
    PREFILL,
    PREFILL_WAIT_S,
    WARM_MOST,
    DueCount,
    due_counted,
    first_needs,
    plan_ahead_s,
    plan_whole,
    planned,
    start_instant,
    warm_timeout_s,
)
from .prefetch import Prefetch
from .priority import realtime
from .rewrite import Prepared, cached_prepare
from .rundoc import run_document
from .schedule import Scheduler
from .settings import Progress, RunSettings, RunSummary, StreamPlan, default_out_dir
from .state import SessionState
from .ticker import progress_now, tick
from .timeline import merged, sharded, with_prepared

STOP_GRACE_S = 0.3  # after a stop signal, requests in flight have this long to finish
OPEN_FILES = 1 << 20  # the soft open-file limit a run asks for (up to the hard limit)
SWITCH_INTERVAL_S = 0.0005  # GIL switch interval during an open-loop run (default 5 ms)


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("LOADTAPE_LOOP") == "asyncio":  # the stdlib loop, e.g. for its debug mode
        return None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_async(main: Any) -> Any:
    """Run a coroutine on uvloop when the platform has it."""
    factory = _uvloop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


MIDDLE_GC_THRESHOLD = 1  # young collections between two of the middle generation, during a run


def more_open_files() -> None:
    """The soft open-file limit raised to the hard one (as Go's runtime does for every program):
    each request in flight holds a connection, and the usual soft limit of 1024 failed runs
    with more in flight for want of descriptors (error kind `client`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No full garbage collections during a run. A full collection walks every long-lived object
    (the prefetched plan holds tens of thousands): measured, five of them in a 6 s run at 5k
    req/s were the whole lag p99 (55 ms -> 4.8 ms without them). Objects from before the run are
    frozen out of the collector; young collections go on, so short-lived cycles are still freed;
    the settings are restored afterwards.
    The middle generation is collected after every second young collection (not every eleventh):
    it holds what survived the young ones (result rows waiting for the results' steps, responses
    in flight), and at 10k req/s collecting it stopped the loop for 2.5-3.2 ms at the median
    (max 4.8) a dozen times in a 4 s run, the shots due meanwhile going late. Collected this
    often it takes 0.7-0.8 ms (max 1.1-1.8), and the collections' total time went down too."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(thresholds[0], MIDDLE_GC_THRESHOLD, 1_000_000_000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _with_machine(
    on_progress: Callable[[Progress], None],
    cpu_at: dict[str, hostcpu.CpuSample | None],
    senders: list[int],
) -> Callable[[Progress], None]:
    """Progress with the sending threads' wait and the cgroup's throttled time since the start
    (the live metrics'; two small /proc reads a half second)."""

    def progress(p: Progress) -> None:
        wait, throttled = hostcpu.since(cpu_at.get("start"), senders)
        on_progress(dataclasses.replace(p, sender_wait_s=wait, throttled_s=throttled))

    return progress


def run_streams(
    streams: list[StreamPlan],
    settings: RunSettings,
    *,
    run_info: dict[str, Any] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
    should_stop: Callable[[], bool] | None = None,
    observer: ResultObserver | None = None,
) -> RunSummary:
    """Run the streams on one timeline and write a results directory. should_stop: polled
    every 100 ms (a Ray actor's stop request; signals cover the command line)."""
    more_open_files()
    # From the plan on, not only the run: the full collections walked the plan as it grew
    # (planning 50k GETs ahead, in-process: 23.6-26 us a shot with them, 16.7-21.7 without).
    with quiet_gc():
        return _run_streams(
            streams,
            settings,
            run_info=run_info,
            on_progress=on_progress,
            install_signals=install_signals,
            should_stop=should_stop,
            observer=observer,
        )


def _run_streams(
    streams: list[StreamPlan],
    settings: RunSettings,
    *,
    run_info: dict[str, Any] | None,
    on_progress: Callable[[Progress], None] | None,
    install_signals: bool,
    should_stop: Callable[[], bool] | None,
    observer: ResultObserver | None,
) -> RunSummary:
    settings.validate()
    if not streams:
        raise UserError("nothing to run: no streams")
    closed = settings.closed
    out_dir = Path(settings.out) if settings.out else default_out_dir()
    mkdir_private(out_dir)
    keys = [(s.name, s.rewriter.target.name) for s in streams]
    if len(set(keys)) != len(keys):
        raise UserError("two streams have the same name (and target)")
    preparers = {k: cached_prepare(s.rewriter) for k, s in zip(keys, streams, strict=True)}

    def prepare(shot: planmod.Shot) -> Prepared:
        return shot.prepared or preparers[(shot.stream, shot.target)](shot)

    targets = list(dict.fromkeys(s.rewriter.target for s in streams))
    shots: Iterable[planmod.Shot] = merged(streams)
    if settings.requests is not None:  # N per target: the targets take each shot in turn
        shots = itertools.islice(shots, settings.requests * len(targets))
    if settings.shard is not None:  # after the cut: every worker plans the same timeline
        shots = sharded(shots, *settings.shard)
    # Open loop plans ahead on a thread (reading the capture on the loop stalled the schedule);
    # closed loop has no schedule to protect and plans inline (the thread only costs CPU there).
    plan_size = planned(streams, settings, len(targets))
    due: DueCount | None = None  # the schedule, as it is planned (open loop)
    plan_buffer: Prefetch[planmod.Shot] | None = None
    if not closed:
        due = DueCount()
        shots = due_counted(shots, due)
        plan_buffer = Prefetch(
            with_prepared(shots, prepare),
            high=PLAN_BUFFER_SHOTS,
            max_bytes=PLAN_BUFFER_BYTES,
            size=planmod.shot_bytes,
        )
        known = plan_size[0] is not None and plan_size[0] <= PLAN_BUFFER_SHOTS
        if known:
            wait = plan_ahead_s(plan_size[0], plan_size[2], settings)
            plan_whole(plan_buffer, wait, plan_size, on_progress)
        else:
            plan_buffer.prefill(PREFILL_WAIT_S, PREFILL)
    max_in_flight = settings.concurrency if closed else settings.max_in_flight
    assert max_in_flight is not None
    scheduler = Scheduler(
        plan_buffer if plan_buffer is not None else shots,
        max_in_flight=max_in_flight * len(targets),
        ordered_sessions=settings.sessions == "ordered",
        closed_loop=closed,
    )
    state = (
        SessionState(live_history=settings.history == "live")
        if settings.sessions == "ordered"
        else None
    )
    client = pick_client(
        settings.client,
        open_loop=not closed,
        stateful=state is not None,
        slack=settings.send_slack_s > 0,
        targets=targets,
    )
    # the engine's thread times the sends (wire): the loop's steps need not fit between shots
    slice_rows = ResultWriter.TIMED_SLICE_ROWS if client == "wire" else ResultWriter.STEP_SLICE_ROWS
    warm_up()
    wall_start = settings.start_wall_ns or time.time_ns()
    metrics = Metrics(run_start_ns=wall_start)
    writer = ResultWriter(
        out_dir,
        part=settings.part,
        expect=Expect(),
        expect_by_stream={s.name: s.expect for s in streams},
        target_by_stream={s.name: s.rewriter.target.url for s in streams},
        observer=observer,
        metrics=metrics,
        cooperative=not closed,
        slice_rows=slice_rows,
    )
    interrupted = {"flag": False}
    rates: dict[str, float | None] = {}
    client_stats: dict[str, int | None] = {}
    cpu_at: dict[str, hostcpu.CpuSample | None] = {}  # the machine's CPUs at the start and end

    async def main() -> tuple[DispatchStats, int]:
        router = Router(
            {
                t: make_client(
                    client,
                    t,
                    max_in_flight=max_in_flight,
                    timeout=settings.timeout_s,
                    insecure=settings.insecure,
                )
                for t in targets
            }
        )
        disp = (AheadDispatcher if client == "wire" else Dispatcher)(
            scheduler,
            prepare,
            router,
            writer,
            spin_ns=int(settings.spin_ms * 1e6),
            send_slack_ns=round(settings.send_slack_s * 1e9),
            state=state,
            idle=writer.work if writer.cooperative else None,
        )
        loop = asyncio.get_running_loop()
        handler = loop.get_exception_handler()

        def on_bug(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, Exception):
                disp.abort(exc)  # the run stops; the error ends the command (exit 3)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(on_bug)
        presses = {"n": 0}
        closing: list[asyncio.Task[None]] = []
        grace: list[asyncio.TimerHandle] = []

        def abandon() -> None:
            if not closing:
                closing.append(loop.create_task(router.close()))

        def on_signal() -> None:
            presses["n"] += 1
            interrupted["flag"] = True
            disp.stop()
            if presses["n"] >= 2:  # second Ctrl-C: abandon in-flight requests now
                abandon()
            else:  # the first: they have STOP_GRACE_S to finish, then they are abandoned
                grace.append(loop.call_later(STOP_GRACE_S, abandon))

        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal)
        warmed = 0
        if not closed and settings.warm_up:
            needs = first_needs(scheduler, prepare, min(WARM_MOST, max_in_flight))
            warmed = await router.warm_up(needs, warm_timeout_s(settings.start_wall_ns))
        senders = router.sender_threads or [threading.get_native_id()]
        progress = None if on_progress is None else _with_machine(on_progress, cpu_at, senders)
        ticker = loop.create_task(
            tick(disp, writer, metrics, progress, should_stop, interrupted, plan_size, due)
        )
        t0 = time.monotonic_ns()
        cpu_at["start"] = hostcpu.sample(senders)
        switch = sys.getswitchinterval()
        if not closed:
            # Open loop keeps a schedule: the loop waits at most this for the GIL. (Closed loop
            # has no schedule to keep; there the extra GIL handoffs only cost CPU.)
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        start = start_instant(settings.start_wall_ns, closed, time.monotonic_ns(), time.time_ns())
        try:
            with contextlib.ExitStack() as raised:  # the sending threads only, while they send
                for tid in senders:
                    raised.enter_context(realtime(settings.rt_priority, tid))
                stats = await disp.run(start)
            cpu_at["end"] = hostcpu.sample(senders)
            rates["scheduled"], rates["achieved"] = disp.rates()
            client_stats.update(
                connects=router.connects,
                resends=router.resends,
                warmed=warmed,
                batched=router.batched,
            )
            if progress is not None:  # the last word: every request counted
                progress(progress_now(disp, writer, metrics, plan_size, 0.0, due, final=True))
        finally:
            loop.set_exception_handler(handler)
            sys.setswitchinterval(switch)
            for handle in grace:
                handle.cancel()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await router.close()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        return stats, time.monotonic_ns() - max(t0, start or t0)

    try:
        stats, duration_ns = run_async(main())
    finally:
        if plan_buffer is not None:
            plan_buffer.close()
        writer.close()
        write_histograms(out_dir, metrics, settings.part)
    run_doc = run_document(
        streams,
        settings,
        stats,
        (writer.ok, writer.expected, writer.failed),
        start_ns=wall_start,
        duration_ns=duration_ns,
        rates=(rates.get("scheduled"), rates.get("achieved")),
        interrupted=interrupted["flag"],
        connections=client_stats,
        uvloop=_uvloop_factory() is not None,
        run_info=run_info,
        state=state,
        client=client,
        machine=hostcpu.machine_use(cpu_at.get("start"), cpu_at.get("end")),
    )
    if settings.part is None:  # a worker's run.json is its runner's to write
        write_run_json(out_dir, run_doc)
    seal_private(out_dir)
    return RunSummary(out_dir, metrics, run_doc, stats, interrupted["flag"])
