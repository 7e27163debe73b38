"""The plan made ahead of the run: how long to wait for it before the start, how big it is (for
the progress line), the schedule's count of shots due (the scheduled side of "sent vs
scheduled"), and the connections its first moments need, opened before the start."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from . import plan as planmod
from .prefetch import Prefetch
from .rewrite import Prepared
from .schedule import Scheduler
from .settings import Progress, RunSettings, StreamPlan
from .targets import Target

# The open loop plans ahead on a thread into a buffer of these many shots or about these many
# bytes of them. A plan known to fit is wholly planned before the start instant (for up to
# PLAN_AHEAD_WAIT_S): then the thread is done before the run begins, and its GIL handoffs (on
# the development VM every handoff is a thread wakeup of ~50 us of CPU) neither cost the run
# CPU nor delay its sends. Any other plan starts once PREFILL shots are ready (or
# PREFILL_WAIT_S has passed) and goes on planning while the run goes.
PLAN_BUFFER_SHOTS = 1_000_000
PLAN_BUFFER_BYTES = 256 << 20
PLAN_AHEAD_WAIT_S = 2.0
# A fast plan is planned wholly ahead however long that takes (up to PLAN_AHEAD_MAX_S): a plan
# thread beside the loop costs the loop the GIL for ~40 us a shot, which at 10k req/s is a
# third of what the loop has. Measured: a 5 s run at 10k planned for 2.2-2.5 s, past the 2 s
# wait, and had lag p99 133-202 ms; planned whole, 2.9-4.6 ms. Not for a shard: the workers
# start at one instant, set for the usual wait.
FAST_PLAN_PER_S = 5_000
PLAN_AHEAD_MAX_S = 60.0
PREFILL = 32_768
PREFILL_WAIT_S = 1.0
# Before the start, the open loop opens a connection for each shot due within WARM_WINDOW_NS of
# the first (a burst at the start), at most WARM_MOST, waiting at most WARM_TIMEOUT_S (and never
# past a shared start). Without them the first burst's shots each waited for a connect: 32 at
# once went out 2.3-2.4 ms late at p99 on the wire, warm bursts 0.37-0.59 ms.
WARM_WINDOW_NS = 1_000_000
WARM_MOST = 64
WARM_TIMEOUT_S = 1.0


def first_needs(
    scheduler: Scheduler, prepare: Callable[[planmod.Shot], Prepared], most: int = WARM_MOST
) -> dict[Target, int]:
    """How many connections each target needs for the shots due in the plan's first
    WARM_WINDOW_NS (at most `most` in all); the shots stay in the plan."""
    first = scheduler.next_due()
    if first is None:
        return {}
    shots = scheduler.upcoming(first + WARM_WINDOW_NS, most)
    return dict(collections.Counter(prepare(s).target for s in shots))


# An open loop starts this far ahead (a sharded one at the instant its workers share): woken
# early for its first shots, the dispatcher readies a burst at the start on the connections
# opened for it (Dispatcher._stage), instead of each shot taking a send's whole path.
START_LEAD_NS = 10_000_000


def start_instant(
    shared_wall_ns: int | None, closed: bool, mono_ns: int, wall_ns: int
) -> int | None:
    """The run's start on the monotonic clock, read at (mono_ns, wall_ns): the instant shared
    with other workers, START_LEAD_NS ahead for an open loop, None (now) for a closed one."""
    if shared_wall_ns is not None:
        return mono_ns + (shared_wall_ns - wall_ns)
    return None if closed else mono_ns + START_LEAD_NS


def warm_timeout_s(start_wall_ns: int | None) -> float:
    """How long opening connections may take: WARM_TIMEOUT_S, or until just before a start
    shared with other workers."""
    if start_wall_ns is None:
        return WARM_TIMEOUT_S
    return max(0.0, min(WARM_TIMEOUT_S, (start_wall_ns - time.time_ns()) / 1e9 - 0.05))


def plan_whole(
    buffer: Prefetch[planmod.Shot],
    wait_s: float,
    plan_size: tuple[int | None, bool, float | None],
    on_progress: Callable[[Progress], None] | None,
) -> None:
    """Wait up to wait_s for the whole plan, saying how far it has got every half second."""
    end = time.monotonic() + wait_s
    while not (buffer.done or buffer.full) and (left := end - time.monotonic()) > 0:
        buffer.prefill(min(left, 0.5))
        if on_progress is not None and not (buffer.done or buffer.full):
            on_progress(
                Progress(
                    elapsed_s=0.0,
                    scheduled_s=0.0,
                    planned=plan_size[0],
                    planned_approx=plan_size[1],
                    planned_end_s=plan_size[2],
                    sent=0,
                    ok=0,
                    expected=0,
                    failed=0,
                    in_flight=0,
                    rate=0.0,
                    p99_ms=None,
                    lag_p99_ms=None,
                    planning=buffer.produced,
                )
            )


def plan_ahead_s(shots: int | None, last_due_s: float | None, settings: RunSettings) -> float:
    """How long to wait for a plan known to fit the buffer to be planned before the start."""
    if shots is None or not last_due_s or settings.shard is not None:
        return PLAN_AHEAD_WAIT_S
    return PLAN_AHEAD_MAX_S if shots / last_due_s >= FAST_PLAN_PER_S else PLAN_AHEAD_WAIT_S


def planned(
    streams: Sequence[StreamPlan], settings: RunSettings, targets: int
) -> tuple[int | None, bool, float | None]:
    """(requests planned, whether that is an estimate, when the last is due) for the
    progress line; None where a stream cannot say."""
    counts = [s.planned for s in streams]
    total = sum(c for c in counts if c is not None) * targets if None not in counts else None
    approx = any(s.planned_approx for s in streams)
    if settings.requests is not None:
        cap = settings.requests * targets
        total = cap if total is None else min(total, cap)
        approx = approx and total != cap
    if total is not None and settings.shard is not None:
        total, approx = math.ceil(total / settings.shard[1]), True
    ends = [s.planned_end_s for s in streams]
    end = max(e for e in ends if e is not None) if ends and None not in ends else None
    return total, approx, end


class DueCount:
    """How many shots the plan makes due by each instant, counted in 10 ms buckets as the plan
    thread plans them (it plans ahead of the run, so the buckets before now are complete):
    the scheduled side of "sent vs scheduled"."""

    BUCKET_NS = 10_000_000

    def __init__(self) -> None:
        self._buckets: collections.Counter[int] = collections.Counter()
        self._upto = 0  # buckets below this are summed into _done
        self._done = 0

    def add(self, offset_ns: int) -> None:  # the plan thread
        self._buckets[offset_ns // self.BUCKET_NS] += 1

    def by(self, now_ns: int) -> int:
        """Shots due before the start of now's bucket (the loop thread, monotonic in now)."""
        upto = max(self._upto, now_ns // self.BUCKET_NS)
        for b in range(self._upto, upto):
            self._done += self._buckets.pop(b, 0)
        self._upto = upto
        return self._done


def due_counted(shots: Iterable[planmod.Shot], due: DueCount) -> Iterator[planmod.Shot]:
    for shot in shots:
        due.add(shot.offset_ns)
        yield shot
