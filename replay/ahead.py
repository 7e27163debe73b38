"""Dispatch ahead: the dispatcher for a client that times its own sends (the compiled sender,
send/wire.py). Each tick the loop hands the client every shot due within `ahead_ns`, with its
instant, and takes the results that came in since the last; between ticks it sleeps (or does
the results' idle work). The loop wakes once a tick, whatever the rate, instead of twice a
request.

What the Dispatcher does at the send (counting the shot sent, its lag) is done here when its
result comes back, from the engine's own stamp of its first write. Stateless runs only: a
session's state is applied at the send, which the engine's thread cannot do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from replay.priority import stepped_back
from replay.send.outcome import Outcome
from replay.send.router import Client

from .dispatch import AFTER_BURST_NS, Dispatcher
from .dispatchstats import DispatchStats
from .plan import Shot
from .rewrite import Prepared

# How far ahead shots go to the engine, and how often the loop takes its results. The tick
# bounds how late a result is counted (progress, the in-flight bound), not what it measures.
AHEAD_NS = 10_000_000
TICK_NS = 4_000_000
# So many shots due at one instant make a burst: the loop keeps off the CPU from AFTER_BURST_NS
# before it to AFTER_BURST_NS after (its tick, the results' work, the run's progress), leaving
# the cores to the engine's thread and the target. Measured (bench/replay_bursts.py), bursts
# whose instant fell in the loop's work went out whole milliseconds late.
BURST_MIN = 4
# With the in-flight bound reached and shots waiting for a slot, the loop ticks this often: a
# slot frees when a result is taken, and a 4 ms tick would cap a bound of N at N / 4 ms.
BOUND_TICK_NS = 500_000
# The loop's thread this much lower in the CPU's favour than the engine's while they run: its
# tick and results work no longer delay a send on a shared core (priority.stepped_back).
# Interleaved 4 s runs, lag p99 at 12k req/s: nice 0 0.18-0.84 ms, +2 0.06-0.10, +5 0.08-0.33
# (and 2.1 ms in one bench round: the loop, starved, handed shots over late); at 5k +2
# 0.05-0.15 ms, +5 0.06-0.35.
LOOP_NICENESS = 2


class TimedClient(Client, Protocol):
    def submit_at(
        self,
        req: Prepared,
        due_ns: int,
        tag: Any,
        done: Callable[[Any, Outcome], None],
        unsent: Callable[[Any], None] | None = None,
    ) -> None: ...

    def collect(self) -> int: ...

    def unsend(self) -> None: ...

    @property
    def outstanding(self) -> int: ...


class AheadDispatcher(Dispatcher):
    def __init__(
        self,
        *args: object,
        ahead_ns: int = AHEAD_NS,
        tick_ns: int = TICK_NS,
        **kw: object,
    ) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        if self.state is not None:
            raise ValueError("dispatch ahead cannot apply session state at the send")
        self.ahead_ns = ahead_ns
        self.tick_ns = tick_ns
        self._unsent_asked = False
        self.timed: TimedClient = self.client  # type: ignore[assignment]
        self._bursts: deque[int] = deque()  # instants of bursts handed over, in order
        self._last_due, self._run = -1, 0  # the last due handed over, and how many had it

    def _result(self, tag: tuple[Shot, Prepared, int], out: Outcome) -> None:
        """A shot's result (`tag`: the shot, its request, its due offset), counted sent at
        the engine's stamp: every result here was sent."""
        shot, prepared, due = tag
        intended = self.start + due
        self.stats.count(due, intended, out.sent_ns)
        self.scheduler.done(shot, self.clock() - self.start)
        self.stats.completed += 1
        self.sink.add(shot, prepared, intended, out)
        self._check_finished()

    def _unsent_one(self, tag: tuple[Shot, Prepared, int]) -> None:
        """A shot handed over and not sent (a stop): back to the scheduler."""
        shot, _, due = tag
        self.scheduler.untake(shot, due)
        fut = self._sending_done
        if fut is not None and fut.done():  # the plan's rest was counted already
            for _ in self.scheduler.drain():
                self.stats.unsent["stopped"] = self.stats.unsent.get("stopped", 0) + 1
        self._check_finished()

    def _check_finished(self) -> None:
        sch, fut = self.scheduler, self._all_done
        if sch.in_flight == 0 and (self._stopping or sch.exhausted):
            self._finish_sending()
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _pump(self) -> None:
        clock, sch, start, client = self.clock, self.scheduler, self.start, self.timed
        done, unsent = self._result, self._unsent_one
        if self._stopping and not self._unsent_asked:
            self._unsent_asked = True
            client.unsend()  # back at the collect below: counted as stopped
        client.collect()
        if not self._stopping:
            horizon = clock() - start + self.ahead_ns
            while (taken := sch.take(horizon)) is not None:
                shot, due = taken
                if due == self._last_due:
                    self._run += 1
                    if self._run == BURST_MIN:
                        self._bursts.append(start + due)
                else:
                    self._last_due, self._run = due, 1
                prepared = self.prepare(shot)
                # a tuple a shot, not two closures: 2.1 -> 1.7 us a shot through the pump
                client.submit_at(prepared, start + due, (shot, prepared, due), done, unsent)
        if self._stopping or sch.exhausted:
            self._finish_sending()
            if sch.in_flight == 0:
                self._check_finished()
                return
        now = clock()
        wake = now + self.tick_ns
        nd = sch.next_due()
        if nd is not None and sch.in_flight >= sch.max_in_flight:
            if start + nd <= now + self.ahead_ns:  # due soon, waiting for a slot
                wake = now + BOUND_TICK_NS
        elif client.outstanding == 0 and nd is not None:
            wake = max(wake, start + nd - self.ahead_ns // 2)  # nothing out: sleep till then
        wake = self._clear_of_bursts(now, wake)
        if self.idle is not None:
            until = wake if not self._bursts else min(wake, self._bursts[0] - AFTER_BURST_NS)
            self.idle(until - 100_000, now + self.tick_ns // 2)
        self._arm(wake)

    def _clear_of_bursts(self, now: int, t: int) -> int:
        """`t`, or the end of the moments around a burst it falls in."""
        bursts = self._bursts
        while bursts and bursts[0] + AFTER_BURST_NS < now:
            bursts.popleft()
        for b in bursts:
            if b - AFTER_BURST_NS <= t <= b + AFTER_BURST_NS:
                t = b + AFTER_BURST_NS
        return t

    async def run(self, start: int | None = None) -> DispatchStats:
        with stepped_back(LOOP_NICENESS):
            return await super().run(start)

    def _first_wake(self, start: int) -> int:
        """The first shots go to the client ahead of the start too: handed over at their
        instant, a burst due at the start went out 1.8-2.2 ms late (with --rt-priority the
        engine's thread, woken by each, took the CPU from the loop handing over the rest)."""
        return start - self.ahead_ns

    def _arm(self, deadline: int) -> None:
        if self._timer is None:  # not Linux: the event loop's timer
            super()._arm(deadline)
            return
        self._armed_for = deadline
        self._timer.arm(deadline)

    def hold_off_ns(self, need_ns: int) -> int:
        """How long other work on the loop should wait: not into the moments of a burst."""
        now = self.clock()
        for b in self._bursts:
            if now + need_ns >= b - AFTER_BURST_NS and now <= b + AFTER_BURST_NS:
                return b + AFTER_BURST_NS - now
        return 0
