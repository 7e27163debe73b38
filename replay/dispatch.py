"""Dispatch: the event-driven shell around the pure Scheduler. One start instant; every shot is
due at start + offset on the monotonic clock, computed absolutely, so a late wakeup never pushes
later shots back.

`_pump()` sends every shot that is due, then arranges to be called again when the next one is:
on Linux by a timerfd armed at that absolute instant (see timer.py: the loop sleeps in epoll and
wakes on time, without spinning); elsewhere by an event-loop timer until `spin_ns` before it
(epoll's timeouts have millisecond granularity and round up) and then by `call_soon` until the
instant comes. Completions call `_pump()` too (a slot or a session may have freed up). Sends go
straight to the client, which completes each by callback: no task, no future, no coroutine step
per shot (measured: those cost more CPU per shot than the send itself).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Protocol

from replay.send.outcome import Outcome
from replay.send.router import Client, Staged

from .dispatchstats import DispatchStats
from .plan import Shot
from .rewrite import Prepared
from .schedule import Scheduler
from .state import SessionState
from .timer import PreciseTimer


class Sink(Protocol):
    def add(
        self,
        shot: Shot,
        prepared: Prepared | None,
        intended_mono: int,
        out: Outcome,
    ) -> None: ...


# A timerfd wakeup measured 45-55 us late at p50 and cost ~50 us of CPU on the development VM
# (bench/replay_lag.py prints it): a shot due sooner than this is polled for, not slept for.
POLL_NS = 50_000
# Idle work (the results, in steps) is offered the time until IDLE_MARGIN_NS before the next
# shot is due, or before the early wakeup for it (it takes a step only if the step is expected
# to end by then); no step begins after IDLE_TURN_NS, then the loop polls its sockets (a
# response's end is stamped when the loop reads it) and goes on.
# At most this many shots are sent in one go; when more are due (the run is behind), the rest
# go once the loop has read what has come in. Sending every due shot first left the responses
# of the connections unread, so each shot took a new connection: measured, a new connection
# costs ~80 us of CPU more than reusing one, and behind at 10k req/s the run opened 1000 of them
# in a spiral (stalls of 80-130 ms). A burst of 32 due at once still goes in one go.
SEND_BATCH = 64
# Likewise at most this many new connections: opening one is ~80 us of the loop's CPU, so 32
# cost the same split into turns, and between them the loop reads the responses that free
# connections for the rest.
DIAL_BATCH = 8
# After a long sleep a timerfd wakeup comes later: measured on the development VM, 40-50 us
# late at p50 after 0.5 ms, 180 us after 10 ms, 250-290 us after 50-100 ms (the vCPU idles
# deeper). So a sleep of more than EARLY_AFTER_NS ends a tenth of it (at most EARLY_NS) before
# the instant, and the loop polls its sockets from then until it (the poll path above; with a
# burst readied, from REST_MARGIN_NS before it): the spin is never more than a tenth of the
# gap. The first shot of a burst after a quiet spell was the latest: p50 200 us late on the
# wire before the first byte. At most 2 ms: the wakeup can come 0.3 ms late or more, and
# readying a burst of 32 takes 0.15-0.35 ms; with 0.8 ms (before), some bursts were readied
# only in part, or not at all, and went the slow way.
EARLY_AFTER_NS = 4_000_000
EARLY_NS = 2_000_000
# Woken early, the shots due at the instant are made ready on warm connections (a send's work
# but its write), until STAGE_MARGIN_NS before it; at the instant the writes follow each other
# alone. A burst of 32 took ~20 us a send, ~6 us of it the write.
STAGE_MARGIN_NS = 30_000
# A burst readied, the loop sleeps again until this long before its instant, then polls: it
# polled the whole early window before (up to 2 ms), and beside a CPU-bound process that used
# up the loop's turn on the CPU, and when the instant fell in the other process's turn the whole
# burst waited for it (1.1-2.1 ms). A sleeper is back on the CPU at once when it wakes. The
# margin covers the wakeup, which comes later after a sleep of a millisecond or more (the vCPU
# idles deeper). docs/performance.md has the figures.
REST_MARGIN_NS = 400_000
IDLE_MARGIN_NS = 10_000
# Other work on the loop (the run's tick: the results' handover, the progress line, ~0.4 ms)
# waits until this long after a burst readied or about to be: measured, the tick's progress
# landing in the early window held a burst's writes back 0.3-0.45 ms (every half second).
AFTER_BURST_NS = 1_000_000
IDLE_TURN_NS = 300_000
DRAIN_BUDGET_S = 0.2  # how long a stopped run may spend counting the plan it did not send


class Dispatcher:
    def __init__(
        self,
        scheduler: Scheduler,
        prepare: Callable[[Shot], Prepared],
        client: Client,
        sink: Sink,
        *,
        spin_ns: int = 1_500_000,
        poll_ns: int = POLL_NS,
        early_after_ns: int = EARLY_AFTER_NS,
        early_ns: int = EARLY_NS,
        rest_margin_ns: int = REST_MARGIN_NS,
        send_batch: int = SEND_BATCH,
        dial_batch: int = DIAL_BATCH,
        send_slack_ns: int = 0,
        clock: Callable[[], int] = time.monotonic_ns,
        state: SessionState | None = None,
        idle: Callable[[int | None, int], bool] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.state = state  # ordered sessions of a stateful API: ids mapped, live history
        self.prepare = prepare
        self.client = client
        self.sink = sink
        self.spin_ns = spin_ns
        self.poll_ns = poll_ns
        self.early_after_ns = early_after_ns
        self.early_ns = early_ns
        self.rest_margin_ns = rest_margin_ns
        self.send_batch = send_batch
        self.dial_batch = dial_batch
        self.send_slack_ns = send_slack_ns
        self.clock = clock
        # work(until_ns, stop_ns) -> more left for the next turn: the loop's idle time between
        # shots (ResultWriter.work)
        self.idle = idle
        self._pump_soon = False  # a pump is asked for on the loop's next turn
        self.stats = DispatchStats()
        self.start = 0
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: PreciseTimer | None = None
        self._handle: asyncio.Handle | None = None  # the fallback timer / spin callback
        self._sending_done: asyncio.Future[None] | None = None
        self._all_done: asyncio.Future[None] | None = None
        self._armed_for = -1
        self._early_for = -1  # the instant the timer was set to wake early for
        self._early_at = -1  # and when it wakes
        self._staged: list[tuple[Shot, int, Staged]] = []  # readied for _staged_for
        self._staged_for = -1
        self._bug: BaseException | None = None  # raised in one of the run's callbacks
        self._gc_held = False  # collections held off while a burst is readied (_stage)

    def abort(self, exc: BaseException) -> None:
        """A bug raised in one of the run's loop callbacks (the runner's exception handler):
        stop now, requests in flight abandoned; run() raises it, after what was recorded is
        kept. A callback that raised left the pump's chain broken: without this the run
        never ended."""
        if self._bug is None:
            self._bug = exc
        self._stopping = True
        for fut in (self._sending_done, self._all_done):
            if fut is not None and not fut.done():
                fut.set_result(None)

    def stop(self) -> None:
        """Stop sending new shots (in-flight requests finish or time out)."""
        self._stopping = True
        if self._loop is not None:
            self._loop.call_soon(self._pump)

    # -- completions -----------------------------------------------------------------------------
    def _completion(
        self, shot: Shot, prepared: Prepared, intended: int
    ) -> Callable[[Outcome], None]:
        return lambda out: self._done(shot, prepared, intended, out)

    def _done(self, shot: Shot, prepared: Prepared, intended: int, out: Outcome) -> None:
        if self.state is not None:  # before the session's next request can be released
            self.state.learn(shot, out)
        self.scheduler.done(shot, self.clock() - self.start)
        self.stats.completed += 1
        self.sink.add(shot, prepared, intended, out)
        # Pumped once the loop has read all that came in with this response: the connections
        # freed by the other responses can then take what is due (see SEND_BATCH).
        self._next_turn()

    def _next_turn(self) -> None:
        """Pump once the loop has gone round (polled its sockets): after a response, or when
        idle work is left. One call however many ask for it."""
        if not self._pump_soon:
            self._pump_soon = True
            assert self._loop is not None
            self._loop.call_soon(self._soon)

    def _soon(self) -> None:
        self._pump_soon = False
        self._pump()

    # -- the pump --------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Send what is due; then arrange the next call. Never blocks."""
        clock, sch, start = self.clock, self.scheduler, self.start
        if self._staged:
            if self._stopping:
                self._unstage()
            elif clock() >= self._staged_for:
                self._fire_staged()
        if not self._stopping:
            now = clock()
            budget, dials = self.send_batch, self.dial_batch
            while budget and dials and (taken := sch.take(now - start)) is not None:
                budget -= 1
                shot, due = taken
                intended = now if sch.closed else start + due
                self.stats.count(due, intended, now)
                prepared = self.prepare(shot)
                if self.state is not None:
                    prepared = self.state.apply(shot, prepared)
                if self.client.submit(prepared, self._completion(shot, prepared, intended)):
                    dials -= 1  # a new connection: read what came in before opening more
                now = clock()
        if self._stopping or (sch.exhausted and not self._staged):
            self._finish_sending()
            if sch.in_flight == 0 and self._all_done is not None and not self._all_done.done():
                self._all_done.set_result(None)
            return
        nd = sch.next_due()
        if self._staged:  # nothing else until they go (no idle work: it could overrun)
            self._arm(self._staged_for if nd is None else min(self._staged_for, start + nd))
            return
        if nd is None or sch.in_flight >= sch.max_in_flight:
            # a completion will pump again; until then the loop is idle
            if self.idle is not None and self.idle(None, clock() + IDLE_TURN_NS):
                self._next_turn()  # more idle work is left
            return
        deadline = start + nd
        wake = self._wake_at(nd, deadline)
        if self.idle is not None:
            now = clock()
            until = self._free_by(wake, now) - IDLE_MARGIN_NS
            if self.idle(until, now + IDLE_TURN_NS):
                self._next_turn()  # more fits before the shot (else the next gap: no spin)
        # woken early for it (not a pump before the early wakeup): ready its shots
        if deadline == self._early_for and deadline - clock() <= self.early_ns:
            self._stage(nd, deadline)
        self._arm(wake)

    def _wake_at(self, nd: int, deadline: int) -> int:
        """When to wake for the next shot, due at `deadline` (offset `nd`): at its instant,
        or with a send slack, at the last shot due within the slack after it, so that one
        wakeup sends them all (none later than the slack). A shot alone is never held back.
        Not before a long sleep: that wakes early for a burst (_arm)."""
        slack = self.send_slack_ns
        if not slack or deadline + slack - self.clock() > self.early_after_ns:
            return deadline
        last = self.scheduler.last_due_by(nd + slack)
        return deadline if last is None else self.start + last

    def _free_by(self, deadline: int, now: int) -> int:
        """When the loop must be free for the shot due at `deadline`: the instant, or the early
        wakeup before it (_arm), from which a burst is readied and the sockets polled."""
        if self._timer is None:
            return deadline
        if deadline == self._early_for:
            return self._early_at
        lead = deadline - now
        return self._early_wake(deadline, lead) if lead > self.early_after_ns else deadline

    def _early_wake(self, deadline: int, lead: int) -> int:
        """When a sleep of `lead` before `deadline` ends: a tenth early, at most early_ns."""
        return deadline - min(self.early_ns, lead // 10)

    def hold_off_ns(self, need_ns: int) -> int:
        """How long other work of `need_ns` on the loop should wait so as not to run into a
        burst readied, or about to be (0: go now). A steady stream has no such wait."""
        now = self.clock()
        if self._staged:
            return max(self._staged_for - now, 0) + AFTER_BURST_NS
        if self._early_for > now and now + need_ns >= self._early_at:
            return self._early_for - now + AFTER_BURST_NS
        return 0

    # -- a burst made ready before its instant ---------------------------------------------------
    def _stage(self, nd: int, deadline: int) -> None:
        """Woken early for `deadline`: ready its shots on warm connections while there is time
        (stateless runs only: a session's state is applied at the send)."""
        if self.state is not None:
            return
        sch, clock, staged = self.scheduler, self.clock, self._staged
        stop_at = deadline - STAGE_MARGIN_NS
        while len(staged) < self.send_batch and clock() < stop_at:
            taken = sch.take(nd)
            if taken is None:
                break
            shot, due = taken
            prepared = self.prepare(shot)
            done = self._completion(shot, prepared, self.start + due)
            handle = self.client.stage(prepared, done)
            if handle is None:  # no warm connection left: it goes at the instant, as usual
                sch.untake(shot, due)
                break
            staged.append((shot, due, handle))
        if staged:
            self._staged_for = deadline
            # no collection until the last write: one amid them held the rest 0.1-0.15 ms
            self._gc_held = self._gc_held or gc.isenabled()
            gc.disable()

    def _release_gc(self) -> None:
        if self._gc_held:
            self._gc_held = False
            gc.enable()

    def _fire_staged(self) -> None:
        staged, self._staged, self._staged_for = self._staged, [], -1
        for _, _, handle in staged:
            handle.fire()
        now, start, stats = self.clock(), self.start, self.stats
        for _, due, _ in staged:
            stats.count(due, start + due, now)
        stats.staged += len(staged)
        self._release_gc()

    def _unstage(self) -> None:
        """Stopped before the instant: the readied shots were never sent."""
        staged, self._staged, self._staged_for = self._staged, [], -1
        for shot, due, handle in staged:
            handle.cancel()
            self.scheduler.untake(shot, due)
        self._release_gc()

    def _arm(self, deadline: int) -> None:
        if deadline == self._armed_for:
            return
        self._armed_for = deadline
        loop = self._loop
        assert loop is not None
        if self._timer is not None:
            lead = deadline - self.clock()
            if lead <= self.poll_ns or (deadline == self._early_for and lead <= self.early_ns):
                if self._staged and lead > self.rest_margin_ns + self.poll_ns:
                    # a burst readied: sleep until the margin before it (REST_MARGIN_NS)
                    self._timer.arm(deadline - self.rest_margin_ns)
                    return
                # Sooner than a sleep could wake us (a wakeup costs about as long as this), or
                # woken early for it: go round the loop until then, picking up socket events
                # as they come.
                loop.call_soon(self._fire)
            elif lead > self.early_after_ns:
                self._early_for = deadline
                self._early_at = self._early_wake(deadline, lead)
                self._timer.arm(self._early_at)
            else:
                self._timer.arm(deadline)
            return
        if self._handle is not None:
            self._handle.cancel()
        delay = deadline - self.clock()
        if delay > self.spin_ns:
            self._handle = loop.call_later((delay - self.spin_ns) / 1e9, self._fire)
        else:
            self._handle = loop.call_soon(self._fire)  # spin through the loop until the instant

    def _first_wake(self, start: int) -> int:
        """When to pump first, for a run that starts at `start`."""
        return start

    def _fire(self) -> None:
        self._armed_for = -1
        self._handle = None
        self._pump()

    def _finish_sending(self) -> None:
        fut = self._sending_done
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- running ---------------------------------------------------------------------------------
    async def run(self, start: int | None = None) -> DispatchStats:
        """Send every shot (or until stop()), then wait for the in-flight ones."""
        loop = self._loop = asyncio.get_running_loop()
        if self.clock is time.monotonic_ns:
            self._timer = PreciseTimer.create(loop, self._fire)
        self._sending_done = loop.create_future()
        self._all_done = loop.create_future()
        try:
            self.start = start = self.clock() if start is None else start
            if self.clock() < start:  # a synchronized start across workers: wait for it
                self._arm(self._first_wake(start))
            else:
                loop.call_soon(self._pump)
            await self._sending_done
            if self._bug is not None:
                raise self._bug
            st = self.stats
            # The plan's rest is counted as unsent, for as long as counting is cheap: a plan
            # can be endless (a synthetic stream of 100000 h), and a stop must not wait on it.
            counted, budget = 0, time.monotonic() + DRAIN_BUDGET_S
            for _ in self.scheduler.drain():
                counted += 1  # (checked each shot: a slow plan blocks in its next one)
                if time.monotonic() > budget:
                    st.unsent_counted = False
                    break
            if counted:
                st.unsent["stopped"] = st.unsent.get("stopped", 0) + counted
            if self.scheduler.in_flight > 0:
                await self._all_done
            if self._bug is not None:
                raise self._bug
            return st
        finally:
            self._release_gc()
            if self._handle is not None:
                self._handle.cancel()
            if self._timer is not None:
                self._timer.close()
                self._timer = None

    def behind_ns(self) -> int:
        """How late the oldest shot that is due and not yet sent is (0 when on schedule)."""
        sch = self.scheduler
        if sch.closed or self._stopping:
            return 0
        nd = sch.next_due()
        return 0 if nd is None else max(0, self.clock() - self.start - nd)

    def rates(self) -> tuple[float | None, float | None]:
        """(scheduled, achieved) send rates per second over the sends' span."""
        return self.stats.rates(closed=self.scheduler.closed)
