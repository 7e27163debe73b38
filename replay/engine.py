"""A run, wired from its stages: streams of shots -> one timeline -> scheduler -> clients ->
results. `run_replay` (the `replay` command), `scenario.run_scenario` (`run`), sweeps and the
demo all come down to `run_streams`; the stages know nothing of each other."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import os
import platform
import signal
import socket
import sys
import time
import zlib
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
from .metrics import Metrics, series_name
from .outcome import Outcome
from .prefetch import Prefetch
from .results import Expect, ResultWriter, warm_up, write_histograms, write_run_json
from .rewrite import (
    Prepared,
    Rewriter,
    Target,
    parse_header_args,
    parse_model_map,
    parse_target,
    parse_targets,
    scoped,
)
from .schedule import Scheduler

PREFILL = 32_768  # shots planned before the start instant (the plan buffer's size)
SWITCH_INTERVAL_S = 0.0005  # GIL switch interval during an open-loop run (default 5 ms)


@dataclass
class StreamPlan:
    """One stream of a run: its shots (in offset order), how to rewrite them, what is expected."""

    name: str
    shots: Iterable[planmod.Shot]
    rewriter: Rewriter
    expect: Expect = field(default_factory=Expect)
    stats: planmod.PlanStats | None = None
    describe: dict[str, Any] = field(default_factory=dict)  # for run.json


@dataclass
class RunSettings:
    out: str | None = None
    concurrency: int | None = None  # closed loop
    max_in_flight: int = 1000
    sessions: str = "none"
    requests: int | None = None  # stop after this many shots
    timeout_s: float = 60.0
    client: str = "fast"
    insecure: bool = False
    spin_ms: float = 1.5
    workers: int = 1  # local worker processes (replay/workers.py shards the plan)
    ray: str | None = None  # a Ray cluster's address ("auto", "local", host:port): actors
    # set by the worker runner for one shard: (index, count), the result part, the start instant
    shard: tuple[int, int] | None = None
    part: str | None = None
    start_wall_ns: int | None = None

    @property
    def sharded(self) -> bool:
        return self.workers > 1 or bool(self.ray)

    @property
    def closed(self) -> bool:
        return self.concurrency is not None

    def validate(self) -> None:
        if self.sessions not in ("none", "ordered"):
            raise UserError(f"--sessions {self.sessions!r}: want ordered or none")
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError("--concurrency must be >= 1")
        if self.max_in_flight < 1:
            raise UserError("--max-in-flight must be >= 1")
        if self.requests is not None and self.requests < 1:
            raise UserError("--requests must be >= 1")
        if self.timeout_s <= 0:
            raise UserError("--timeout must be > 0")
        if self.client not in ("fast", "aiohttp"):
            raise UserError(f"--client {self.client!r}: want fast or aiohttp")
        if self.workers < 1:
            raise UserError("--workers must be >= 1")


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
        if shot.source is None or shot.extra.get("salt"):
            return rewriter.prepare(shot.request, shot.extra)
        key = (shot.source, shot.copy)
        p = cache.get(key)
        if p is None:
            p = rewriter.prepare(shot.request, shot.extra)
            if len(cache) >= maxsize:
                del cache[next(iter(cache))]
            cache[key] = p
        return p

    return prepare


def _for_target(shots: Iterable[planmod.Shot], name: str) -> Iterator[planmod.Shot]:
    """Tag a stream's shots with its target's name; sessions become per target, so ordered
    sessions against one target do not wait for another's."""
    for s in shots:
        s.target = name
        if s.session is not None:
            s.session = f"{s.session}@{name}"
        yield s


def merged(streams: list[StreamPlan]) -> Iterator[planmod.Shot]:
    """One timeline: the streams' shots merged by intended offset, numbered in that order.
    On a tie, streams keep their order (so several targets get the same shot in turn)."""
    plans = [
        _for_target(s.shots, s.rewriter.target.name) if s.rewriter.target.name else s.shots
        for s in streams
    ]
    it = heapq.merge(*plans, key=lambda shot: shot.offset_ns) if len(plans) > 1 else iter(plans[0])
    for seq, shot in enumerate(it):
        shot.seq = seq
        yield shot


def session_shard(session: str, count: int) -> int:
    """The shard of a session: a stable hash (the same in every process, unlike hash())."""
    return zlib.crc32(session.encode()) % count


def sharded(shots: Iterable[planmod.Shot], index: int, count: int) -> Iterator[planmod.Shot]:
    """Shard `index` of `count`: whole sessions by session_shard; sessionless shots in turn
    (every worker walks the same timeline, so the turn is the same in each)."""
    free = 0
    for s in shots:
        if s.session is not None:
            k = session_shard(s.session, count)
        else:
            k = free % count
            free += 1
        if k == index:
            yield s


def with_prepared(
    shots: Iterable[planmod.Shot], prepare: Callable[[planmod.Shot], Prepared]
) -> Iterator[planmod.Shot]:
    """Rewrite each shot's request ahead of time (on the plan thread, off the event loop)."""
    for shot in shots:
        shot.prepared = prepare(shot)
        yield shot


def make_client(
    kind: str, target: Target, *, max_in_flight: int, timeout: float, insecure: bool
) -> Client:
    if kind == "fast":
        from .client import FastClient

        return FastClient(target, timeout=timeout, insecure=insecure)
    from .client_aiohttp import AiohttpClient

    return AiohttpClient(target, workers=max_in_flight, timeout=timeout, insecure=insecure)


class Router:
    """One client per target; a prepared request goes to its target's client."""

    def __init__(self, clients: dict[Target, Client]) -> None:
        self.clients = clients

    def submit(self, req: Prepared, done: Callable[[Outcome], None]) -> None:
        self.clients[req.target].submit(req, done)

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()

    @property
    def connects(self) -> int:
        return sum(getattr(c, "connects", 0) for c in self.clients.values())

    @property
    def resends(self) -> int:
        return sum(getattr(c, "resends", 0) for c in self.clients.values())


def run_streams(
    streams: list[StreamPlan],
    settings: RunSettings,
    *,
    run_info: dict[str, Any] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> RunSummary:
    """Run the streams on one timeline and write a results directory. should_stop: polled
    every 100 ms (a Ray actor's stop request; signals cover the command line)."""
    settings.validate()
    if not streams:
        raise UserError("nothing to run: no streams")
    closed = settings.closed
    out_dir = Path(settings.out) if settings.out else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
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
    plan_buffer: Prefetch[planmod.Shot] | None = None
    if not closed:
        plan_buffer = Prefetch(with_prepared(shots, prepare))
        plan_buffer.prefill(PREFILL)  # before the start instant: the first shots are ready
    max_in_flight = settings.concurrency if closed else settings.max_in_flight
    assert max_in_flight is not None
    scheduler = Scheduler(
        plan_buffer if plan_buffer is not None else shots,
        max_in_flight=max_in_flight * len(targets),
        ordered_sessions=settings.sessions == "ordered",
        closed_loop=closed,
    )
    warm_up()
    wall_start = settings.start_wall_ns or time.time_ns()
    metrics = Metrics(run_start_ns=wall_start)
    writer = ResultWriter(
        out_dir,
        part=settings.part,
        expect=Expect(),
        expect_by_stream={s.name: s.expect for s in streams},
        metrics=metrics,
        threaded=not closed,
    )
    interrupted = {"flag": False}
    rates: dict[str, float | None] = {}
    client_stats: dict[str, int | None] = {}

    async def main() -> tuple[DispatchStats, int]:
        router = Router(
            {
                t: make_client(
                    settings.client,
                    t,
                    max_in_flight=max_in_flight,
                    timeout=settings.timeout_s,
                    insecure=settings.insecure,
                )
                for t in targets
            }
        )
        disp = Dispatcher(scheduler, prepare, router, writer, spin_ns=int(settings.spin_ms * 1e6))
        loop = asyncio.get_running_loop()
        presses = {"n": 0}
        closing: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            presses["n"] += 1
            interrupted["flag"] = True
            disp.stop()
            if presses["n"] >= 2:  # second Ctrl-C: abandon in-flight requests
                closing.append(loop.create_task(router.close()))

        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal)
        ticker = loop.create_task(
            _tick(disp, writer, metrics, on_progress, should_stop, interrupted)
        )
        t0 = time.monotonic_ns()
        switch = sys.getswitchinterval()
        if not closed:
            # Open loop keeps a schedule: the loop waits at most this for the GIL. (Closed loop
            # has no schedule to keep; there the extra GIL handoffs only cost CPU.)
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        start = None
        if settings.start_wall_ns is not None:  # the shared start instant, on this clock
            start = time.monotonic_ns() + (settings.start_wall_ns - time.time_ns())
        try:
            stats = await disp.run(start)
            rates["scheduled"], rates["achieved"] = disp.rates()
            client_stats.update(connects=router.connects, resends=router.resends)
        finally:
            sys.setswitchinterval(switch)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await router.close()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        return stats, time.monotonic_ns() - max(t0, start or t0)

    try:
        with quiet_gc():
            stats, duration_ns = run_async(main())
    finally:
        if plan_buffer is not None:
            plan_buffer.close()
        writer.close()
        write_histograms(out_dir, metrics, settings.part)
    skipped: dict[str, int] = {}
    for s in streams:
        for reason, n in (s.stats.skipped if s.stats else {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    run_doc = {
        "loadtape_version": LOADTAPE_VERSION,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "start_ns": wall_start,
        "start": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall_start / 1e9)),
        "duration_s": duration_ns / 1e9,
        "mode": "closed" if closed else "open",
        "streams": {
            series_name(s.name, s.rewriter.target.name): {
                **s.describe,
                "target": mask_url(s.rewriter.target.url),
            }
            for s in streams
        },
        "target": mask_url(targets[0].url) if len(targets) == 1 else None,
        "targets": {t.name: mask_url(t.url) for t in targets if t.name},
        "settings": asdict(settings),
        "counts": {
            "planned": stats.sent + sum(stats.unsent.values()),
            "sent": stats.sent,
            "ok": writer.ok,
            "expected": writer.expected,
            "failed": writer.failed,
            "unsent": stats.unsent,
            "skipped": skipped,
            "redacted_values_dropped": sum(s.rewriter.dropped_redacted for s in streams),
        },
        "scheduled_rate": rates.get("scheduled"),
        "achieved_rate": rates.get("achieved"),
        "scheduled_s": stats.last_due_ns / 1e9,
        "max_lag_ms": stats.max_lag_ns / 1e6,
        "interrupted": interrupted["flag"],
        "client": settings.client,
        "connections": client_stats,
        "uvloop": _uvloop_factory() is not None,
        **(run_info or {}),
    }
    if settings.part is None:  # a worker's run.json is its runner's to write
        write_run_json(out_dir, run_doc)
    return RunSummary(out_dir, metrics, run_doc, stats, interrupted["flag"])


async def _tick(
    disp: Dispatcher,
    writer: ResultWriter,
    metrics: Metrics,
    on_progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool] | None = None,
    interrupted: dict[str, bool] | None = None,
) -> None:
    """Every 100 ms: hand results to the results thread (ResultWriter); every half second:
    report progress."""
    last_sent, last_t = 0, time.monotonic()
    tick = 0
    while True:
        await asyncio.sleep(0.1)
        writer.handover()
        if should_stop is not None and should_stop():
            if interrupted is not None:
                interrupted["flag"] = True
            disp.stop()
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


# -- `loadtape replay`: one replay stream (+ amplification), plus synthetic streams -------------
@dataclass
class ReplayOptions:
    capture: str
    target: str | list[str]  # a URL, or NAME=URL items for several targets
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
    amplify: float = 1.0
    amplify_mode: str = "spread"
    salt_prompts: bool = False
    seed: int = 0
    synthetic: list[str] = field(default_factory=list)  # --synthetic specs
    env: dict[str, str] | None = None
    rate: float | None = None  # constant rate, recorded order (instead of recorded timing)
    workers: int = 1
    ray: str | None = None

    def settings(self) -> RunSettings:
        return RunSettings(
            out=self.out,
            concurrency=self.concurrency,
            max_in_flight=self.max_in_flight,
            sessions=self.sessions,
            requests=self.requests,
            timeout_s=self.timeout_s,
            client=self.client,
            insecure=self.insecure,
            spin_ms=self.spin_ms,
            workers=self.workers,
            ray=self.ray,
        )


def make_rewriter(
    target: str | Target,
    headers: list[str],
    model_map: list[str],
    keep_host: bool,
    env: dict[str, str] | None = None,
) -> Rewriter:
    set_headers, remove_headers = parse_header_args(headers, env)
    return Rewriter(
        parse_target(target) if isinstance(target, str) else target,
        set_headers=set_headers,
        remove_headers=remove_headers,
        model_map=parse_model_map(model_map),
        keep_host=keep_host,
    )


def replay_stream(
    name: str,
    capture: str,
    rewriter: Rewriter,
    *,
    speed: float = 1.0,
    from_s: float = 0.0,
    to_s: float | None = None,
    duration_s: float | None = None,
    loops: int = 1,
    filt: RowFilter | None = None,
    amplify: float = 1.0,
    amplify_mode: str = "spread",
    salt_prompts: bool = False,
    seed: int = 0,
    start_s: float = 0.0,
    expect: Expect | None = None,
    rate: float | None = None,
) -> StreamPlan:
    """A replay stream: the capture's window, scaled, looped, amplified, starting at start_s."""
    from .synthetic import amplify as amplify_shots

    popts = planmod.PlanOptions(
        speed=speed, start_s=from_s, end_s=to_s, duration_s=duration_s, loops=loops, stream=name
    )
    try:
        popts.validate()
        if amplify < 1:
            raise ValueError(f"--amplify must be >= 1, got {amplify}")
        if amplify_mode not in ("spread", "burst"):
            raise ValueError(f"--amplify-mode must be spread or burst, got {amplify_mode!r}")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cap = Capture(capture)
    span = cap.time_span()
    if span is None:
        raise CaptureError(f"{capture}: the capture holds no requests")
    stats = planmod.PlanStats()
    shots: Iterable[planmod.Shot] = planmod.plan_replay(
        capture_source(cap, filt), span[0], popts, stats
    )
    if rate is not None:
        if not rate > 0:
            raise UserError(f"--rate must be > 0, got {rate}")
        shots = planmod.paced(shots, rate)
    if amplify > 1:
        shots = amplify_shots(shots, amplify, mode=amplify_mode, seed=seed, salt=salt_prompts)
    if start_s:
        shots = _shifted(shots, round(start_s * 1e9))
    return StreamPlan(
        name,
        shots,
        rewriter,
        expect or Expect(),
        stats,
        describe={
            "kind": "replay",
            "capture": str(Path(capture).resolve()),
            "capture_id": cap.capture_id,
            "speed": speed,
            "rate": rate,
            "loops": loops,
            "amplify": amplify,
            "start_s": start_s,
        },
    )


def _shifted(shots: Iterable[planmod.Shot], by_ns: int) -> Iterator[planmod.Shot]:
    for s in shots:
        s.offset_ns += by_ns
        yield s


def run_replay(
    opts: ReplayOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
) -> RunSummary:
    """`loadtape replay`: a one-stream scenario (plus `--synthetic` stress streams), sent to
    one target or, the same plan, to each of several; on `--workers N` processes."""
    settings = opts.settings()
    if settings.sharded:
        from .workers import Job, run_sharded

        build_replay(opts)  # bad options fail here, once, before any worker starts
        return run_sharded(
            Job("replay", opts),
            settings,
            on_progress=on_progress,
            install_signals=install_signals,
            rate_hint=opts.rate,
        )
    streams, info = build_replay(opts)
    return run_streams(
        streams,
        settings,
        run_info=info,
        on_progress=on_progress,
        install_signals=install_signals,
    )


def build_replay(opts: ReplayOptions) -> tuple[list[StreamPlan], dict[str, Any]]:
    """The streams of a replay and what run.json says of it (no traffic, no clock)."""
    targets = parse_targets([opts.target] if isinstance(opts.target, str) else opts.target)
    names = [t.name for t in targets if t.name]
    headers, headers_for = scoped(opts.headers, names)
    model_map, model_map_for = scoped(opts.model_map, names)
    expect = Expect.parse(opts.expect_status)
    loops = opts.loops if opts.requests is None else 10**9
    window_s = _replay_window_s(opts) if opts.synthetic else 0.0
    streams = []
    for t in targets:
        rewriter = make_rewriter(
            t,
            headers + headers_for.get(t.name, []),
            model_map + model_map_for.get(t.name, []),
            opts.keep_host,
            opts.env,
        )
        streams.append(
            replay_stream(
                opts.stream,
                opts.capture,
                rewriter,
                speed=opts.speed,
                from_s=opts.from_s,
                to_s=opts.to_s,
                duration_s=opts.duration_s,
                loops=loops,
                filt=opts.filt,
                amplify=opts.amplify,
                amplify_mode=opts.amplify_mode,
                salt_prompts=opts.salt_prompts,
                seed=opts.seed,
                expect=expect,
                rate=opts.rate,
            )
        )
        if opts.synthetic:
            from .scenario import synthetic_from_flag

            for i, spec in enumerate(opts.synthetic):
                streams.append(
                    synthetic_from_flag(
                        spec, i, opts.capture, rewriter, expect, window_s, opts.seed
                    )
                )
    info = {
        "capture": {
            "path": str(Path(opts.capture).resolve()),
            "capture_id": Capture(opts.capture).capture_id,
        },
        "options": _public_options(opts),
    }
    return streams, info


def _replay_window_s(opts: ReplayOptions) -> float:
    """How long the replay stream runs (for a --synthetic stream without its own duration)."""
    span = Capture(opts.capture).time_span()
    length = (span[1] - span[0]) / 1e9 if span else 0.0
    if opts.to_s is not None:
        length = min(length, opts.to_s) - opts.from_s
    elif opts.duration_s is not None:
        length = opts.duration_s
    else:
        length -= opts.from_s
    return max(length, 1.0) * opts.loops / opts.speed


def _public_options(opts: ReplayOptions) -> dict[str, Any]:
    """The run's options as recorded in run.json: header values never, only their names."""
    d = asdict(opts)
    d.pop("env", None)
    d["target"] = (
        mask_url(opts.target)
        if isinstance(opts.target, str)
        else [
            f"{t.name}={mask_url(t.url)}" if t.name else mask_url(t.url)
            for t in parse_targets(opts.target)
        ]
    )
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
