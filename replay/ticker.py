"""The run's tick, every 100 ms: it hands results over to the results' work (each tick while
the run is watched live, else by count and time) and every half second it reports progress,
out of the way of the sends (Dispatcher.hold_off_ns)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from captures import hdr
from replay.measure.metrics import Metrics
from replay.measure.writer import ResultWriter

from .dispatch import Dispatcher
from .planahead import DueCount
from .settings import Progress

TICK_WORK_NS = 1_000_000  # what a tick may take: the progress line's percentiles, ~0.4 ms
# Unwatched (no live page or /metrics), the results go to the results' work when there are
# this many (or a slice of the writer's, if more), or this long after the last handover: each
# slice has fixed costs, and handed over every tick (100 ms) at 2k req/s they cost about 10 us
# a request (docs/performance.md). The writer seals a second's histograms SEAL_LAG_S behind
# the clock.
HANDOVER_ROWS = 1024
HANDOVER_S = 1.0


def handover_due(watched: bool, collected: int, since_s: float, slice_rows: int = 0) -> bool:
    """Whether this tick hands the collected results over to the results' work."""
    rows = max(HANDOVER_ROWS, slice_rows)
    return watched or collected >= rows or since_s >= HANDOVER_S


async def tick(
    disp: Dispatcher,
    writer: ResultWriter,
    metrics: Metrics,
    on_progress: Callable[[Progress], None] | None,
    should_stop: Callable[[], bool] | None = None,
    interrupted: dict[str, bool] | None = None,
    plan_size: tuple[int | None, bool, float | None] = (None, False, None),
    due: DueCount | None = None,
) -> None:
    """Every 100 ms: hand results to the results writer (its backlog) if the run is watched
    live (its page, /metrics), else by rows (HANDOVER_ROWS, or the writer's slice if more) and
    by HANDOVER_S (the progress line's percentiles then trail by up to a second; its counts do
    not); every half second: report progress. Not in the moments before a burst
    (Dispatcher.hold_off_ns)."""
    last_sent, last_t = 0, time.monotonic()
    handed = last_t
    ticks = 0
    watched = writer.observer is not None
    while True:
        await asyncio.sleep(0.1)
        if wait := disp.hold_off_ns(TICK_WORK_NS):
            await asyncio.sleep(wait / 1e9)
        if handover_due(watched, writer.collected, time.monotonic() - handed, writer.slice_rows):
            writer.handover()
            handed = time.monotonic()
        if should_stop is not None and should_stop():
            if interrupted is not None:
                interrupted["flag"] = True
            disp.stop()
        ticks += 1
        if ticks % 5 or on_progress is None:
            continue
        t = time.monotonic()
        rate = (disp.stats.sent - last_sent) / max(t - last_t, 1e-9)
        on_progress(progress_now(disp, writer, metrics, plan_size, rate, due))
        last_sent, last_t = disp.stats.sent, t


def progress_now(
    disp: Dispatcher,
    writer: ResultWriter,
    metrics: Metrics,
    plan_size: tuple[int | None, bool, float | None],
    rate: float,
    due: DueCount | None = None,
    *,
    final: bool = False,
) -> Progress:
    """final: the run is over; the schedule's count takes in the current 10 ms bucket."""
    st = disp.stats
    now = time.monotonic_ns() - disp.start + (DueCount.BUCKET_NS if final else 0)
    lat, lag = metrics.overall["latency"], metrics.overall["lag"]
    return Progress(
        elapsed_s=(time.monotonic_ns() - disp.start) / 1e9,
        scheduled_s=st.last_due_ns / 1e9,
        planned=plan_size[0],
        planned_approx=plan_size[1],
        planned_end_s=plan_size[2],
        sent=st.sent,
        ok=writer.ok,
        expected=writer.expected,
        failed=writer.failed,
        in_flight=disp.scheduler.in_flight,
        rate=rate,
        p99_ms=hdr.value_at_percentile(lat, 99) / 1000 if lat.total_count else None,
        lag_p99_ms=hdr.value_at_percentile(lag, 99) / 1000 if lag.total_count else None,
        behind_s=disp.behind_ns() / 1e9,
        scheduled=due.by(now) if due is not None else None,
    )
