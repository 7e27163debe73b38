"""A replay run, wired from its stages: capture -> plan -> rewrite -> scheduler -> client ->
results. `cli.py` and the demo call `run_replay`; the stages know nothing of each other."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from captures import hdr
from captures.errors import CaptureError, UserError
from captures.reader import Capture, RowFilter
from captures.schema import LOADTAPE_VERSION, Record

from . import plan as planmod
from .dispatch import Client, Dispatcher, DispatchStats
from .metrics import Metrics
from .prefetch import Prefetch
from .results import Expect, ResultWriter, warm_up, write_histograms, write_run_json
from .rewrite import Prepared, Rewriter, parse_header_args, parse_model_map, parse_target
from .schedule import Scheduler

PREFILL = 32_768  # shots planned before the start instant (the plan buffer's size)
SWITCH_INTERVAL_S = 0.0005  # GIL switch interval during a run (default 5 ms)


@dataclass
class ReplayOptions:
    capture: str
    target: str
    out: str | None = None
    speed: float = 1.0
    from_s: float = 0.0
    to_s: float | None = None
    duration_s: float | None = None
    loops: int = 1
    sessions: str = "none"  # none | ordered
    concurrency: int | None = None  # closed loop with N workers
    requests: int | None = None  # stop after this many shots (loops the capture as needed)
    max_in_flight: int = 1000
    timeout_s: float = 60.0
    headers: list[str] = field(default_factory=list)
    model_map: list[str] = field(default_factory=list)
    expect_status: str = ""
    filt: RowFilter | None = None
    client: str = "fast"  # fast | aiohttp
    insecure: bool = False
    keep_host: bool = False
    spin_ms: float = 1.5
    stream: str = "replay"
    env: dict[str, str] | None = None


@dataclass
class Progress:
    """A snapshot for the live line."""

    elapsed_s: float
    scheduled_s: float
    planned: int | None
    sent: int
    ok: int
    expected: int
    failed: int
    in_flight: int
    rate: float
    p99_ms: float | None
    lag_p99_ms: float | None


@dataclass
class RunSummary:
    out_dir: Path
    metrics: Metrics
    run: dict[str, Any]
    dispatch: DispatchStats
    interrupted: bool


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def mask_url(url: str) -> str:
    """A URL with any user:password@ part replaced (run.json never holds credentials)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=f"***@{host}"))
    return url


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


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No full garbage collections during a run. A full collection walks every long-lived object
    (the prefetched plan holds tens of thousands): measured, five of them in a 6 s run at 5k
    req/s were the whole lag p99 (55 ms -> 4.8 ms without them). Objects from before the run are
    frozen out of the collector; young collections go on, so short-lived cycles are still freed;
    the settings are restored afterwards."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(thresholds[0], thresholds[1], 1_000_000_000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def capture_source(
    cap: Capture, filt: RowFilter | None
) -> Callable[[int, int | None], Iterable[Record]]:
    base = filt or RowFilter()

    def source(lo: int, hi: int | None) -> Iterator[Record]:
        start = lo if base.start_ns is None else max(lo, base.start_ns)
        if base.end_ns is None or hi is None:
            end = hi if base.end_ns is None else base.end_ns
        else:
            end = min(hi, base.end_ns)
        f = RowFilter(
            methods=base.methods,
            path_globs=base.path_globs,
            models=base.models,
            statuses=base.statuses,
            start_ns=start,
            end_ns=end,
        )
        # small batches: building a batch's Python rows holds the GIL for the whole batch
        return cap.rows(planmod.PLAN_COLUMNS, f, batch_size=128)

    return source


def cached_prepare(rewriter: Rewriter, maxsize: int = 16_384) -> Callable[[planmod.Shot], Prepared]:
    """Prepare each distinct recorded request once (loops and repeats reuse it)."""
    cache: dict[tuple[tuple[str, int], int], Prepared] = {}

    def prepare(shot: planmod.Shot) -> Prepared:
        if shot.source is None or shot.extra:
            return rewriter.prepare(shot.request)
        key = (shot.source, shot.copy)
        p = cache.get(key)
        if p is None:
            p = rewriter.prepare(shot.request)
            if len(cache) >= maxsize:
                del cache[next(iter(cache))]
            cache[key] = p
        return p

    return prepare


def with_prepared(
    shots: Iterable[planmod.Shot], prepare: Callable[[planmod.Shot], Prepared]
) -> Iterator[planmod.Shot]:
    """Rewrite each shot's request ahead of time (on the plan thread, off the event loop)."""
    for shot in shots:
        shot.prepared = prepare(shot)
        yield shot


def make_client(
    kind: str, target: Any, *, max_in_flight: int, timeout: float, insecure: bool
) -> Client:
    if kind == "fast":
        from .client import FastClient

        return FastClient(target, timeout=timeout, insecure=insecure)
    if kind == "aiohttp":
        from .client_aiohttp import AiohttpClient

        return AiohttpClient(target, workers=max_in_flight, timeout=timeout, insecure=insecure)
    raise UserError(f"--client {kind!r}: want fast or aiohttp")


def run_replay(
    opts: ReplayOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
) -> RunSummary:
    """Replay a capture against a target and write a results directory."""
    target = parse_target(opts.target)
    set_headers, remove_headers = parse_header_args(opts.headers, opts.env)
    model_map = parse_model_map(opts.model_map)
    expect = Expect.parse(opts.expect_status)
    if opts.sessions not in ("none", "ordered"):
        raise UserError(f"--sessions {opts.sessions!r}: want ordered or none")
    closed = opts.concurrency is not None
    if closed and (opts.concurrency or 0) < 1:
        raise UserError("--concurrency must be >= 1")
    if opts.max_in_flight < 1:
        raise UserError("--max-in-flight must be >= 1")
    if opts.requests is not None and opts.requests < 1:
        raise UserError("--requests must be >= 1")
    if opts.timeout_s <= 0:
        raise UserError("--timeout must be > 0")
    popts = planmod.PlanOptions(
        speed=opts.speed, start_s=opts.from_s, end_s=opts.to_s, duration_s=opts.duration_s,
        loops=opts.loops if opts.requests is None else 10**9, stream=opts.stream,
    )  # fmt: skip
    try:
        popts.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cap = Capture(opts.capture)
    span = cap.time_span()
    if span is None:
        raise CaptureError(f"{opts.capture}: the capture holds no requests")
    out_dir = Path(opts.out) if opts.out else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_stats = planmod.PlanStats()
    shots: Iterable[planmod.Shot] = planmod.plan_replay(
        capture_source(cap, opts.filt), span[0], popts, plan_stats
    )
    if opts.requests is not None:
        shots = itertools.islice(shots, opts.requests)
    rewriter = Rewriter(target, set_headers=set_headers, remove_headers=remove_headers,
                        model_map=model_map, keep_host=opts.keep_host)  # fmt: skip
    prepare = cached_prepare(rewriter)
    # Open loop plans ahead on a thread (reading the capture on the loop stalled the schedule);
    # closed loop has no schedule to protect and plans inline (the thread only costs CPU there).
    plan_buffer: Prefetch[planmod.Shot] | None = None
    if not closed:
        plan_buffer = Prefetch(with_prepared(shots, prepare))
        plan_buffer.prefill(PREFILL)  # before the start instant: the first shots are ready
    max_in_flight = opts.concurrency if closed else opts.max_in_flight
    assert max_in_flight is not None
    scheduler = Scheduler(
        plan_buffer if plan_buffer is not None else shots,
        max_in_flight=max_in_flight,
        ordered_sessions=opts.sessions == "ordered",
        closed_loop=closed,
    )
    warm_up()
    wall_start = time.time_ns()
    metrics = Metrics(run_start_ns=wall_start)
    writer = ResultWriter(out_dir, expect=expect, metrics=metrics, threaded=not closed)
    interrupted = {"flag": False}

    rates: dict[str, float | None] = {}
    client_stats: dict[str, int | None] = {}

    async def main() -> tuple[DispatchStats, int]:
        client = make_client(opts.client, target, max_in_flight=max_in_flight,
                             timeout=opts.timeout_s, insecure=opts.insecure)  # fmt: skip
        disp = Dispatcher(
            scheduler, lambda s: s.prepared or prepare(s), client, writer,
            spin_ns=int(opts.spin_ms * 1e6),
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        presses = {"n": 0}
        closing: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            presses["n"] += 1
            interrupted["flag"] = True
            disp.stop()
            if presses["n"] >= 2:  # second Ctrl-C: abandon in-flight requests
                closing.append(loop.create_task(client.close()))

        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal)
        ticker = loop.create_task(_tick(disp, writer, metrics, on_progress))
        t0 = time.monotonic_ns()
        switch = sys.getswitchinterval()
        if not closed:
            # Open loop keeps a schedule: the loop waits at most this for the GIL. (Closed loop
            # has no schedule to keep; there the extra GIL handoffs only cost CPU.)
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            stats = await disp.run()
            rates["scheduled"], rates["achieved"] = disp.rates()
            client_stats.update(
                connects=getattr(client, "connects", None), resends=getattr(client, "resends", None)
            )
        finally:
            sys.setswitchinterval(switch)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await client.close()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        return stats, time.monotonic_ns() - t0

    try:
        with quiet_gc():
            stats, duration_ns = run_async(main())
    finally:
        if plan_buffer is not None:
            plan_buffer.close()
        writer.close()
        write_histograms(out_dir, metrics)
    planned = (
        plan_stats.planned if opts.requests is None else stats.sent + sum(stats.unsent.values())
    )
    scheduled_s = stats.last_due_ns / 1e9
    run_doc = {
        "loadtape_version": LOADTAPE_VERSION,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "start_ns": wall_start,
        "start": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall_start / 1e9)),
        "duration_s": duration_ns / 1e9,
        "mode": "closed" if closed else "open",
        "capture": {"path": str(Path(opts.capture).resolve()), "capture_id": cap.capture_id},
        "target": mask_url(opts.target),
        "options": _public_options(opts),
        "counts": {
            "planned": planned,
            "sent": stats.sent,
            "ok": writer.ok,
            "expected": writer.expected,
            "failed": writer.failed,
            "unsent": stats.unsent,
            "skipped": plan_stats.skipped,
            "redacted_values_dropped": rewriter.dropped_redacted,
        },
        "scheduled_rate": rates.get("scheduled"),
        "achieved_rate": rates.get("achieved"),
        "scheduled_s": scheduled_s,
        "max_lag_ms": stats.max_lag_ns / 1e6,
        "interrupted": interrupted["flag"],
        "client": opts.client,
        "connections": client_stats,
        "uvloop": _uvloop_factory() is not None,
    }
    write_run_json(out_dir, run_doc)
    return RunSummary(out_dir, metrics, run_doc, stats, interrupted["flag"])


def _public_options(opts: ReplayOptions) -> dict[str, Any]:
    """The run's options as recorded in run.json: header values never, only their names."""
    d = asdict(opts)
    d.pop("env", None)
    d["target"] = mask_url(opts.target)
    d["headers"] = [
        h.partition(":")[0].strip() + (": <set>" if h.partition(":")[2].strip() else ": <removed>")
        for h in opts.headers
    ]
    d["filt"] = (
        {k: (sorted(v) if isinstance(v, frozenset) else v) for k, v in asdict(opts.filt).items()}
        if opts.filt
        else None
    )
    return d


async def _tick(
    disp: Dispatcher,
    writer: ResultWriter,
    metrics: Metrics,
    on_progress: Callable[[Progress], None] | None,
) -> None:
    """Every 100 ms: hand results to the results thread (ResultWriter); every half second:
    report progress."""
    last_sent, last_t = 0, time.monotonic()
    tick = 0
    while True:
        await asyncio.sleep(0.1)
        writer.handover()
        tick += 1
        if tick % 5 or on_progress is None:
            continue
        st = disp.stats
        t = time.monotonic()
        lat, lag = metrics.overall["latency"], metrics.overall["lag"]
        on_progress(
            Progress(
                elapsed_s=(time.monotonic_ns() - disp.start) / 1e9,
                scheduled_s=st.last_due_ns / 1e9,
                planned=None,
                sent=st.sent,
                ok=writer.ok,
                expected=writer.expected,
                failed=writer.failed,
                in_flight=disp.scheduler.in_flight,
                rate=(st.sent - last_sent) / max(t - last_t, 1e-9),
                p99_ms=hdr.value_at_percentile(lat, 99) / 1000 if lat.total_count else None,
                lag_p99_ms=hdr.value_at_percentile(lag, 99) / 1000 if lag.total_count else None,
            )
        )
        last_sent, last_t = st.sent, t
