"""Dispatch: the async shell around the pure Scheduler. One start instant; every shot is due at
start + offset on the monotonic clock, computed absolutely, so a late wakeup never pushes later
shots back.

Waiting for a due time: a timer until `spin_ns` before it (epoll's timeouts have millisecond
granularity and round up, which alone would cost up to 1 ms of lag), then event-loop iterations
(`sleep(0)`, which keeps serving responses) until the instant comes. Sends go straight to the
client, which completes each by callback; completions wake the loop. No task per shot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .outcome import Outcome
from .plan import Shot
from .rewrite import Prepared
from .schedule import Scheduler


class Client(Protocol):
    def submit(self, req: Prepared, done: Callable[[Outcome], None]) -> None: ...

    async def close(self) -> None: ...


class Sink(Protocol):
    def add(
        self,
        shot: Shot,
        prepared: Prepared | None,
        intended_mono: int,
        out: Outcome,
        target: str = "",
    ) -> None: ...


@dataclass
class DispatchStats:
    sent: int = 0
    completed: int = 0
    last_due_ns: int = 0  # scheduled offset of the latest shot sent
    first_due_ns: int | None = None
    first_sent_ns: int | None = None  # monotonic
    last_sent_ns: int = 0
    last_lag_ns: int = 0
    max_lag_ns: int = 0
    unsent: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    def __init__(
        self,
        scheduler: Scheduler,
        prepare: Callable[[Shot], Prepared],
        client: Client,
        sink: Sink,
        *,
        target_name: str = "",
        spin_ns: int = 1_500_000,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.scheduler = scheduler
        self.prepare = prepare
        self.client = client
        self.sink = sink
        self.target_name = target_name
        self.spin_ns = spin_ns
        self.clock = clock
        self.stats = DispatchStats()
        self.start = 0
        self._stopping = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Stop sending new shots (in-flight requests finish or time out)."""
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, timeout_ns: int | None) -> None:
        loop = self._loop
        assert loop is not None
        fut = loop.create_future()
        self._waiter = fut
        handle = loop.call_later(timeout_ns / 1e9, self._wake) if timeout_ns is not None else None
        try:
            await fut
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def _completion(
        self, shot: Shot, prepared: Prepared, intended: int
    ) -> Callable[[Outcome], None]:
        return lambda out: self._done(shot, prepared, intended, out)

    def _done(self, shot: Shot, prepared: Prepared, intended: int, out: Outcome) -> None:
        self.scheduler.done(shot, self.clock() - self.start)
        self.stats.completed += 1
        self.sink.add(shot, prepared, intended, out, self.target_name)
        self._wake()

    async def run(self, start: int | None = None) -> DispatchStats:
        """Send every shot (or until stop()), then wait for the in-flight ones."""
        self._loop = asyncio.get_running_loop()
        clock = self.clock
        sch = self.scheduler
        st = self.stats
        self.start = start = clock() if start is None else start
        spin = self.spin_ns
        # Before the start instant (a synchronized start across workers): wait for it.
        while clock() < start - spin and not self._stopping:
            await self._wait(start - spin - clock())
        while not self._stopping:
            now = clock()
            taken = sch.take(now - start)
            if taken is not None:
                shot, due = taken
                intended = now if sch.closed else start + due
                lag = now - intended
                st.sent += 1
                st.last_due_ns = due
                st.last_sent_ns = now
                if st.first_sent_ns is None:
                    st.first_sent_ns, st.first_due_ns = now, due
                st.last_lag_ns = lag
                if lag > st.max_lag_ns:
                    st.max_lag_ns = lag
                prepared = self.prepare(shot)
                self.client.submit(prepared, self._completion(shot, prepared, intended))
                continue
            if sch.finished:
                break
            nd = sch.next_due()
            if nd is None or sch.in_flight >= sch.max_in_flight:
                await self._wait(None)  # until a completion frees a slot or a session
                continue
            delay = start + nd - clock()
            if delay > spin:
                await self._wait(delay - spin)
            elif delay > 0:
                await asyncio.sleep(0)
        for shot in sch.drain():
            st.unsent["stopped"] = st.unsent.get("stopped", 0) + 1
            del shot
        while sch.in_flight > 0:
            await self._wait(None)
        return st

    def rates(self) -> tuple[float | None, float | None]:
        """(scheduled, achieved) send rates per second over the sends' span."""
        st = self.stats
        if st.sent < 2 or st.first_sent_ns is None or st.first_due_ns is None:
            return None, None
        sched_span = st.last_due_ns - st.first_due_ns
        sent_span = st.last_sent_ns - st.first_sent_ns
        scheduled = (st.sent - 1) / (sched_span / 1e9) if sched_span > 0 else None
        achieved = (st.sent - 1) / (sent_span / 1e9) if sent_span > 0 else None
        return (None if self.scheduler.closed else scheduled), achieved
