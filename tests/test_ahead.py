"""Dispatch ahead (replay/ahead.py), by tables on virtual time: what goes to a timed client and
when, what the loop sleeps for, how sends are counted from the client's stamps, and a stop that
takes back what was handed over but not sent. No sleeping, no sockets: the client is a
stand-in that records and answers on command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fakeloop import FakeLoop, FakeTimer

from replay.ahead import BOUND_TICK_NS, AheadDispatcher
from replay.dispatch import AFTER_BURST_NS
from replay.plan import Shot
from replay.planrows import Request
from replay.schedule import Scheduler
from replay.send.outcome import Outcome

MS = 1_000_000
START = 1_000 * MS


class TimedStandIn:
    """Records submit_at; `answer(i, sent)` completes the i-th request at the next collect."""

    def __init__(self) -> None:
        self.handed: list[tuple[int, Any, Callable[[Any, Outcome], None], Any]] = []
        self.ready: list[Callable[[], None]] = []
        self.unsent_asked = 0
        self.gone: set[int] = set()

    def submit_at(
        self, req: Any, due_ns: int, tag: Any, done: Callable[[Any, Outcome], None], unsent: Any
    ) -> None:
        self.handed.append((due_ns, tag, done, unsent))

    def answer(self, i: int, sent: int) -> None:
        _, tag, done, _ = self.handed[i]
        self.gone.add(i)
        out = Outcome(sent_ns=sent, end_ns=sent + 50_000, status=200)
        self.ready.append(lambda: done(tag, out))

    def collect(self) -> int:
        ready, self.ready = self.ready, []
        for r in ready:
            r()
        return len(ready)

    def unsend(self) -> None:
        self.unsent_asked += 1
        for i, (_, tag, _, unsent) in enumerate(self.handed):
            if i not in self.gone and unsent is not None:
                self.gone.add(i)
                self.ready.append(lambda tag=tag, unsent=unsent: unsent(tag))

    @property
    def outstanding(self) -> int:
        return len(self.handed) - len(self.gone)


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int]] = []  # (seq, intended, sent)

    def add(self, shot: Shot, prepared: Any, intended: int, out: Outcome) -> None:
        self.rows.append((shot.seq, intended, out.sent_ns))


def setup(
    offsets_ms: list[float], clock: list[int], **kw: Any
) -> tuple[AheadDispatcher, TimedStandIn, Rows, FakeTimer]:
    plan = [
        Shot(offset_ns=round(o * MS), seq=i, request=Request("GET", "/", None, [], None))
        for i, o in enumerate(offsets_ms)
    ]
    client, rows = TimedStandIn(), Rows()
    disp = AheadDispatcher(
        Scheduler(plan, max_in_flight=100),
        lambda s: s,  # the shot stands for its prepared request
        client,
        rows,
        clock=lambda: clock[0],
        ahead_ns=10 * MS,
        tick_ns=4 * MS,
        **kw,
    )
    timer = FakeTimer()
    disp._loop, disp._timer, disp.start = FakeLoop(), timer, START  # type: ignore[assignment]
    return disp, client, rows, timer


def test_shots_go_to_the_client_ahead_with_their_instants_and_the_loop_ticks() -> None:
    clock = [START]
    disp, client, _, timer = setup([0, 3, 9.9, 10.1, 40], clock)
    assert disp._first_wake(START) == START - 10 * MS  # the first shots handed ahead too
    disp._pump()
    assert [h[0] for h in client.handed] == [START, START + 3 * MS, START + round(9.9 * MS)]
    assert timer.armed == [START + 4 * MS]  # requests out: back at the next tick
    clock[0] = START + 4 * MS
    disp._pump()
    assert len(client.handed) == 4  # 10.1 ms is within 10 ms of 4 ms now
    assert timer.armed[-1] == START + 8 * MS


def test_nothing_out_the_loop_sleeps_until_the_next_shot_is_near() -> None:
    clock = [START]
    disp, client, _, timer = setup([0, 100], clock)
    disp._pump()
    client.answer(0, START + 20_000)
    clock[0] = START + 4 * MS
    disp._pump()  # its result taken; the next shot is 96 ms off
    assert timer.armed[-1] == START + 100 * MS - 5 * MS  # half the lead before it
    assert len(client.handed) == 1


def test_sends_are_counted_from_the_clients_stamps_in_any_order() -> None:
    clock = [START]
    disp, client, rows, _ = setup([0, 1, 2], clock)
    disp._pump()
    client.answer(2, START + 2 * MS + 70_000)  # results come back in any order
    client.answer(0, START + 30_000)
    client.answer(1, START + 1 * MS + 10_000)
    clock[0] = START + 4 * MS
    disp._pump()
    st = disp.stats
    assert (st.sent, st.completed, st.max_lag_ns) == (3, 3, 70_000)
    assert (st.first_sent_ns, st.last_sent_ns) == (START + 30_000, START + 2 * MS + 70_000)
    assert (st.first_due_ns, st.last_due_ns) == (0, 2 * MS)
    assert sorted(rows.rows) == [
        (0, START, START + 30_000),
        (1, START + MS, START + MS + 10_000),
        (2, START + 2 * MS, START + 2 * MS + 70_000),
    ]
    assert disp.scheduler.in_flight == 0 and disp.scheduler.exhausted


def test_a_stop_takes_back_what_was_handed_over_and_not_sent() -> None:
    clock = [START]
    disp, client, _, _ = setup([0, 5, 8, 30], clock)
    disp._pump()
    assert len(client.handed) == 3
    client.answer(0, START + 10_000)
    disp._stopping = True
    disp._pump()
    assert client.unsent_asked == 1 and disp.scheduler.in_flight == 0
    assert sorted(s.seq for s in disp.scheduler.drain()) == [1, 2, 3]  # counted as stopped
    assert disp.stats.sent == 1
    disp._pump()
    assert client.unsent_asked == 1  # asked once


def test_the_loop_keeps_off_the_cpu_in_the_moments_of_a_burst() -> None:
    """Four or more shots due at one instant: the loop's tick, its idle work and the run's
    other work (hold_off_ns) stay out of the millisecond either side of it."""
    clock = [START]
    offered: list[int] = []

    def idle(until: int | None, stop: int) -> bool:
        offered.append(until or 0)
        return False

    disp, client, _, timer = setup([4.5] * 5 + [9], clock, idle=idle)
    disp._pump()
    burst = START + round(4.5 * MS)
    assert len(client.handed) == 6
    assert timer.armed == [burst + AFTER_BURST_NS]  # not at the tick (4 ms): after the burst
    assert offered == [burst - AFTER_BURST_NS - 100_000]  # idle work ends before it
    assert disp.hold_off_ns(MS) == 0  # work of 1 ms now ends before the burst's moments
    clock[0] = START + 3 * MS
    assert disp.hold_off_ns(MS) == burst + AFTER_BURST_NS - clock[0]
    clock[0] = burst + AFTER_BURST_NS + 1
    assert disp.hold_off_ns(MS) == 0


def test_shots_due_apart_are_no_burst() -> None:
    clock = [START]
    disp, _, _, timer = setup([4.5, 4.5, 4.5, 4.6, 9], clock)
    disp._pump()
    assert timer.armed == [START + 4 * MS]  # three at one instant: the tick as usual


def test_at_the_in_flight_bound_the_loop_ticks_sooner_for_the_freed_slots() -> None:
    clock = [START]
    plan = [Shot(offset_ns=0, seq=i, request=Request("GET", "/", None, [], None)) for i in range(3)]
    client, rows = TimedStandIn(), Rows()
    disp = AheadDispatcher(
        Scheduler(plan, max_in_flight=1), lambda s: s, client, rows, clock=lambda: clock[0]
    )
    timer = FakeTimer()
    disp._loop, disp._timer, disp.start = FakeLoop(), timer, START  # type: ignore[assignment]
    disp._pump()
    assert len(client.handed) == 1 and timer.armed == [START + BOUND_TICK_NS]
    client.answer(0, START + 10_000)
    clock[0] = START + BOUND_TICK_NS
    disp._pump()
    assert len(client.handed) == 2  # the freed slot taken half a millisecond on
