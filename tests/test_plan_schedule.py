"""Plan and scheduler as tables on virtual time: no clock, no sockets, no sleeping."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeloop import FakeLoop, FakeTimer

from captures.filters import RowFilter
from captures.reader import Capture
from captures.rows import Chunk, chunk_of, column_rows
from captures.schema import Record
from captures.testing import T0_NS, http_record, write_capture
from replay import plan as planmod
from replay import planrows
from replay.dispatch import (
    AFTER_BURST_NS,
    DIAL_BATCH,
    EARLY_AFTER_NS,
    EARLY_NS,
    IDLE_MARGIN_NS,
    IDLE_TURN_NS,
    POLL_NS,
    REST_MARGIN_NS,
    SEND_BATCH,
    Dispatcher,
)
from replay.plan import PlanOptions, PlanStats, Shot, plan_replay
from replay.planrows import Request
from replay.schedule import Scheduler, simulate
from replay.send.outcome import Outcome

MS = 1_000_000
S = 1_000_000_000
T0 = 10**18


def rows(starts_ms: Iterable[float], **extra: Any) -> list[Record]:
    out = []
    for i, t in enumerate(starts_ms):
        r: Record = {
            "writer_id": "w",
            "seq": i,
            "req_start_ns": T0 + round(t * MS),
            "method": "GET",
            "path": f"/r{i}",
            "replayable": True,
        }
        for k, v in extra.items():
            r[k] = v(i) if callable(v) else v
        out.append(r)
    return out


def source(data: list[Record]) -> Any:
    def src(lo: int, hi: int | None) -> list[Chunk]:
        rows = [
            r for r in data if r["req_start_ns"] >= lo and (hi is None or r["req_start_ns"] < hi)
        ]
        return [chunk_of(rows)] if rows else []

    return src


def offsets(data: list[Record], **opts: Any) -> list[float]:
    return [s.offset_ns / MS for s in plan_replay(source(data), T0, PlanOptions(**opts))]


@pytest.mark.parametrize(
    ("starts", "opts", "want"),
    [
        ([0, 100, 250, 1000], {}, [0, 100, 250, 1000]),
        ([0, 100, 250, 1000], {"speed": 5}, [0, 20, 50, 200]),
        ([0, 100, 250, 1000], {"speed": 0.5}, [0, 200, 500, 2000]),
        ([0, 100, 250, 1000], {"speed": 10}, [0, 10, 25, 100]),
        ([0, 0, 0, 0.001], {}, [0, 0, 0, 0.001]),  # many requests in the same instant keep it
        # window: from/to relative to the capture's first request; offsets from the first inside
        ([0, 100, 250, 1000, 1500], {"start_s": 0.2, "end_s": 1.2}, [0, 750]),
        ([0, 100, 250, 1000, 1500], {"start_s": 0.1, "duration_s": 0.2}, [0, 150]),
        # loops: the next loop starts one period later (span + mean gap without a window end)
        ([0, 100, 200], {"loops": 3}, [0, 100, 200, 300, 400, 500, 600, 700, 800]),
        ([0, 100, 200], {"loops": 2, "speed": 2}, [0, 50, 100, 150, 200, 250]),
        # with a window end the period is the window's length
        ([0, 100, 200], {"loops": 2, "end_s": 0.5}, [0, 100, 200, 500, 600, 700]),
        ([], {"loops": 3}, []),
    ],
)
def test_plan_offsets(starts: list[float], opts: dict[str, Any], want: list[float]) -> None:
    assert offsets(rows(starts), **opts) == pytest.approx(want)


def test_plan_skips_what_cannot_be_replayed_and_says_why() -> None:
    data = rows([0, 10, 20, 30], replayable=lambda i: i != 1, req_body_truncated=lambda i: i == 2)
    stats = PlanStats()
    shots = list(plan_replay(source(data), T0, PlanOptions(), stats))
    assert [s.request.path for s in shots] == ["/r0", "/r3"]
    assert stats.planned == 2
    assert stats.skipped == {
        "not replayable (websocket or tunnel)": 1,
        "request body was cut by the capture's body limit": 1,
    }


def test_plan_keeps_tags_sessions_and_sources() -> None:
    data = rows([0, 5], session_key=lambda i: f"s{i}")
    shots = list(plan_replay(source(data), T0, PlanOptions(stream="prod", loops=2)))
    assert [(s.stream, s.session, s.source, s.loop, s.seq) for s in shots] == [
        ("prod", "s0", ("w", 0), 0, 0),
        ("prod", "s1", ("w", 1), 0, 1),
        ("prod", "s0", ("w", 0), 1, 2),
        ("prod", "s1", ("w", 1), 1, 3),
    ]


@pytest.mark.parametrize(
    "opts",
    [
        {"speed": 0},
        {"speed": -1},
        {"loops": 0},
        {"start_s": -1},
        {"end_s": 1, "duration_s": 1},
        {"start_s": 2, "end_s": 1},
        {"duration_s": 0},
    ],
)
def test_plan_rejects_bad_options(opts: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        list(plan_replay(source(rows([0])), T0, PlanOptions(**opts)))


@pytest.mark.parametrize(("keep_bytes", "reads"), [(300, 1), (250, 3)])
def test_a_looped_window_is_kept_for_the_next_loops_only_while_its_bodies_fit(
    monkeypatch: pytest.MonkeyPatch, keep_bytes: int, reads: int
) -> None:
    """Loops after the first reuse the first loop's requests while their bodies fit in
    TEMPLATE_BYTES; past that the capture is read again each loop (50k LLM requests of 50 KB
    kept held 2.5 GB), with the same shots either way."""
    monkeypatch.setattr(planmod, "TEMPLATE_BYTES", keep_bytes)
    data = rows([0, 10, 20], req_body=lambda i: bytes([65 + i]) * 100)
    calls = {"n": 0}

    def src(lo: int, hi: int | None) -> list[Chunk]:
        calls["n"] += 1
        return source(data)(lo, hi)  # type: ignore[no-any-return]

    shots = list(plan_replay(src, T0, PlanOptions(loops=3)))
    assert [(s.loop, s.request.path, s.request.body) for s in shots] == [
        (loop, f"/r{i}", bytes([65 + i]) * 100) for loop in range(3) for i in range(3)
    ]
    assert calls["n"] == reads


def row_chunks(data: list[Record]) -> Any:
    """A source of a chunk a row: what the plan holds past the chunk it is in is seen."""

    def src(lo: int, hi: int | None) -> Iterator[Chunk]:
        for chunk in source(data)(lo, hi):
            for row in column_rows(*chunk):
                yield chunk_of([row])

    return src


def test_a_single_pass_keeps_no_request_it_has_planned() -> None:
    """A chunk's requests are made together and held while it is planned; none after it."""
    it = plan_replay(row_chunks(rows(range(5), req_body=b"x" * 1000)), T0, PlanOptions())
    shot = next(it)
    next(it)
    assert gc.get_referrers(shot.request) == [shot]  # the loop templates are for loops
    it = plan_replay(row_chunks(rows(range(5))), T0, PlanOptions(loops=2))
    looped = next(it)
    next(it)
    assert len(gc.get_referrers(looped.request)) == 2  # and its template for the next loop


def test_plan_is_lazy() -> None:
    calls = {"rows": 0}

    def src(lo: int, hi: int | None) -> Any:
        for r in rows(range(10**6)):
            calls["rows"] += 1
            yield chunk_of([r])  # a chunk a row: the plan reads no further than it must

    it = plan_replay(src, T0, PlanOptions())
    assert [next(it).seq for _ in range(3)] == [0, 1, 2]
    assert calls["rows"] == 3


# -- scheduler ---------------------------------------------------------------------------------
def shots(offsets_ms: Iterable[float], sessions: Iterable[str | None] | None = None) -> list[Shot]:
    sess = list(sessions) if sessions is not None else None
    return [
        Shot(
            offset_ns=round(o * MS),
            seq=i,
            request=Request("GET", "/", None, [], None),
            session=sess[i] if sess else None,
        )
        for i, o in enumerate(offsets_ms)
    ]


def run(
    sched: Scheduler, service_ms: float | list[float], **kw: Any
) -> list[tuple[float, float, float]]:
    """(due, sent, done) in ms per shot, in seq order."""

    def service(s: Shot) -> int:
        return round((service_ms[s.seq] if isinstance(service_ms, list) else service_ms) * MS)

    out = simulate(sched, service, **kw)
    return [
        (d / MS, sent / MS, done / MS) for _, d, sent, done in sorted(out, key=lambda x: x[0].seq)
    ]


def test_open_loop_sends_on_time_regardless_of_what_is_in_flight() -> None:
    got = run(Scheduler(shots([0, 10, 20, 30]), max_in_flight=100), service_ms=1000)
    assert [sent for _, sent, _ in got] == [0, 10, 20, 30]  # slow responses hold nothing back


def test_oversleeping_never_pushes_later_shots_back() -> None:
    """Every wakeup is 3 ms late (a sleep that overshoots): each shot is 3 ms late, not 3 ms
    times its position, because due times are absolute (GoReplay drifts exactly this way)."""
    got = run(
        Scheduler(shots(range(0, 100, 10)), max_in_flight=100), service_ms=1, wake_late_ns=3 * MS
    )
    lags = [sent - due for due, sent, _ in got]
    assert lags == [0] + [3.0] * 9  # the first is sent at start, before any sleep


def test_in_flight_bound_makes_shots_wait_and_the_wait_is_lag() -> None:
    # 2 slots, 100 ms service, shots every 10 ms: shot 2 waits for shot 0 to finish at 100 ms.
    got = run(Scheduler(shots([0, 10, 20, 30]), max_in_flight=2), service_ms=100)
    assert got == [(0, 0, 100), (10, 10, 110), (20, 100, 200), (30, 110, 210)]
    assert [sent - due for due, sent, _ in got] == [0, 0, 80, 80]


def test_closed_loop_keeps_n_in_flight() -> None:
    sched = Scheduler(shots([0, 1000, 2000, 3000, 4000]), max_in_flight=2, closed_loop=True)
    got = run(sched, service_ms=[10, 30, 10, 10, 10])
    assert [sent for _, sent, _ in got] == [0, 0, 10, 20, 30]  # offsets are ignored
    assert all(due == 0 for due, _, _ in got)


def test_ordered_sessions_wait_for_the_previous_request_only_within_a_session() -> None:
    #        shot:  0    1    2    3
    #     session:  a    b    a    b
    sched = Scheduler(
        shots([0, 5, 10, 15], ["a", "b", "a", "b"]), max_in_flight=10, ordered_sessions=True
    )
    got = run(sched, service_ms=[50, 2, 2, 2])
    # a's second request waits for a's first (done at 50); b's go on time.
    assert got == [(0, 0, 50), (5, 5, 7), (10, 50, 52), (15, 15, 17)]


def test_ordered_sessions_keep_recorded_order_across_many_requests() -> None:
    sess = ["s"] * 5 + [None] * 3
    offs = [0, 1, 2, 3, 4, 2.5, 2.6, 2.7]
    order = sorted(range(8), key=lambda i: offs[i])
    plan = [shots(offs, sess)[i] for i in order]
    for n, s in enumerate(plan):
        s.seq = n
    got = simulate(Scheduler(plan, max_in_flight=10, ordered_sessions=True), lambda s: 10 * MS)
    s_sends = [(sent, done) for shot, _, sent, done in got if shot.session == "s"]
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(s_sends))
    assert [sent for shot, _, sent, _ in got if shot.session is None] == [
        round(x * MS) for x in (2.5, 2.6, 2.7)
    ]


def test_without_ordered_sessions_session_keys_are_ignored() -> None:
    sched = Scheduler(shots([0, 1], ["a", "a"]), max_in_flight=10)
    assert [sent for _, sent, _ in run(sched, 100)] == [0, 1]


def test_take_nothing_before_due_and_next_due() -> None:
    sched = Scheduler(shots([5, 10]), max_in_flight=1)
    assert sched.next_due() == 5 * MS
    assert sched.take(4 * MS) is None
    shot, due = sched.take(5 * MS) or (None, None)
    assert shot is not None and due == 5 * MS
    assert sched.take(20 * MS) is None  # bound reached
    sched.done(shot, 21 * MS)
    assert sched.take(21 * MS) is not None
    assert sched.exhausted and not sched.finished


def test_drain_counts_what_was_never_sent() -> None:
    sched = Scheduler(
        shots([0, 1, 2, 3], ["a", "a", None, None]), max_in_flight=10, ordered_sessions=True
    )
    assert sched.take(10 * MS) is not None  # shot 0 (session a busy now)
    assert sched.take(10 * MS) is not None  # shot 2: shot 1 is held behind a
    assert sorted(s.seq for s in sched.drain()) == [1, 3]
    assert sched.exhausted


def test_scheduler_memory_is_bounded_by_held_shots() -> None:
    """A plan of a million shots is consumed lazily: only one shot of lookahead."""
    consumed = {"n": 0}

    def plan() -> Any:
        for i in range(10**6):
            consumed["n"] += 1
            yield Shot(offset_ns=i * MS, seq=i, request=Request("GET", "/", None, [], None))

    sched = Scheduler(plan(), max_in_flight=4)
    for _ in range(3):
        assert sched.take(10**12) is not None
    assert consumed["n"] == 4


def _timed(clock: Callable[[], int]) -> tuple[Dispatcher, FakeLoop, FakeTimer]:
    """A dispatcher with nothing to send, on this clock, with a fake loop and timerfd."""
    disp = Dispatcher(
        Scheduler([], max_in_flight=1),
        lambda s: None,  # type: ignore[arg-type,return-value]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        clock=clock,
    )
    loop, timer = FakeLoop(), FakeTimer()
    disp._loop, disp._timer = loop, timer  # type: ignore[assignment]
    return disp, loop, timer


@pytest.mark.parametrize(
    ("gap_ns", "polled"),
    [(-5_000, True), (0, True), (POLL_NS, True), (POLL_NS + 1, False), (2_000_000, False)],
)
def test_a_shot_due_sooner_than_a_wakeup_is_polled_for_not_slept_for(
    gap_ns: int, polled: bool
) -> None:
    now = 10_000_000
    disp, loop, timer = _timed(lambda: now)
    disp._arm(now + gap_ns)
    assert (len(loop.soon), timer.armed) == ((1, []) if polled else (0, [now + gap_ns]))


@pytest.mark.parametrize(
    ("gap_ns", "first_arm"),
    [
        (EARLY_AFTER_NS, 0),  # not long: slept for to the instant
        (EARLY_AFTER_NS + 10, (EARLY_AFTER_NS + 10) // 10),  # long: woken a tenth early
        (100_000_000, EARLY_NS),  # at most EARLY_NS early
    ],
)
def test_a_long_sleep_wakes_early_and_polls_until_the_instant(gap_ns: int, first_arm: int) -> None:
    clock = [10_000_000]
    disp, loop, timer = _timed(lambda: clock[0])
    due = clock[0] + gap_ns
    disp._arm(due)
    assert timer.armed == [due - first_arm] and loop.soon == []
    disp._arm(due)  # asked again before it fires (a completion's pump): nothing changes
    assert timer.armed == [due - first_arm] and loop.soon == []
    clock[0] = due - first_arm + 30_000  # the wakeup, a little late
    disp._armed_for = -1  # as _fire leaves it
    disp._arm(due)
    if first_arm:  # woken early for this instant: poll until it, no second sleep
        assert timer.armed == [due - first_arm] and len(loop.soon) == 1
    else:  # already due: polled at once
        assert len(loop.soon) == 1


def test_a_wakeup_for_an_earlier_shot_does_not_poll_all_the_way_to_a_later_early_one() -> None:
    """Set to wake early for a shot 100 ms off, then woken for one that came due sooner (a
    released shot): the later one is slept for again, not polled for 90 ms."""
    clock = [0]
    disp, loop, timer = _timed(lambda: clock[0])
    due = 100 * MS
    disp._arm(due)
    assert timer.armed == [due - EARLY_NS] and loop.soon == []
    clock[0] = 8 * MS
    disp._arm(10 * MS)  # one due sooner, 2 ms off: slept for to its instant
    assert timer.armed[-1] == 10 * MS
    clock[0] = 10 * MS
    disp._armed_for = -1  # it fired (as _fire leaves it)
    disp._arm(due)
    assert loop.soon == [] and timer.armed[-1] == due - EARLY_NS  # asleep, early again


def _idle_offers(due_ns: int, clock: list[int]) -> tuple[Dispatcher, list[tuple[int | None, int]]]:
    offered: list[tuple[int | None, int]] = []

    def idle(until: int | None, stop: int) -> bool:
        offered.append((until, stop))
        return False

    class NoWarmConnection:
        def stage(self, prepared: object, done: object) -> None:
            return None

    shot = Shot(offset_ns=due_ns, seq=0, request=Request("GET", "/", None, [], None))
    disp = Dispatcher(
        Scheduler([shot], max_in_flight=4),
        lambda s: None,  # type: ignore[arg-type,return-value]
        NoWarmConnection(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        clock=lambda: clock[0],
        idle=idle,
    )
    disp._loop, disp._timer = FakeLoop(), FakeTimer()  # type: ignore[assignment]
    return disp, offered


def test_idle_work_is_offered_up_to_the_early_wakeup_before_a_long_sleep() -> None:
    """After a quiet spell the loop must be free from the early wakeup on (a burst is readied
    from then): results work is offered until then, not until the instant."""
    clock = [0]
    disp, offered = _idle_offers(100 * MS, clock)
    disp._pump()
    early = 100 * MS - EARLY_NS
    assert offered == [(early - IDLE_MARGIN_NS, IDLE_TURN_NS)]
    assert disp._timer.armed == [early]  # type: ignore[union-attr]
    clock[0] = 50 * MS  # a completion's pump in between: the same edge
    disp._pump()
    assert offered[-1] == (early - IDLE_MARGIN_NS, 50 * MS + IDLE_TURN_NS)
    clock[0] = early + 100_000  # woken early: none at all (until is already past)
    disp._pump()
    assert offered[-1][0] is not None and offered[-1][0] < clock[0]


def test_idle_work_is_offered_up_to_the_instant_before_a_short_sleep() -> None:
    clock = [0]
    disp, offered = _idle_offers(2 * MS, clock)
    disp._pump()
    assert offered == [(2 * MS - IDLE_MARGIN_NS, IDLE_TURN_NS)]
    assert disp._timer.armed == [2 * MS]  # type: ignore[union-attr]


def test_the_runs_tick_holds_off_from_the_early_wakeup_until_after_the_burst() -> None:
    """The tick's work (~0.4 ms) landing in the early window held a burst's writes back: it
    waits until after the burst there, and never in a steady stream."""
    clock = [0]
    disp, _ = _idle_offers(100 * MS, clock)
    disp._pump()  # asleep until the early wakeup before the shot at 100 ms
    early = 100 * MS - EARLY_NS
    assert disp.hold_off_ns(MS) == 0  # long before it
    clock[0] = early - MS // 2  # the tick's work would run into the early wakeup
    assert disp.hold_off_ns(MS) == 100 * MS - clock[0] + AFTER_BURST_NS
    clock[0] = 100 * MS + 10  # the burst has gone
    assert disp.hold_off_ns(MS) == 0
    steady, _ = _idle_offers(2 * MS, [0])  # a short sleep: no early wakeup, no wait
    steady._pump()
    assert steady.hold_off_ns(MS) == 0


class _Client:
    def __init__(self, idle: int = 1_000_000) -> None:
        self.sent: list[tuple[object, Callable[[Outcome], None]]] = []
        self.idle = idle  # connections to reuse; after them each send opens one

    def submit(self, prepared: object, done: Callable[[Outcome], None]) -> bool:
        self.sent.append((prepared, done))
        self.idle -= 1
        return self.idle < 0


class _Sink:
    def __init__(self) -> None:
        self.rows = 0

    def add(self, *row: object) -> None:
        self.rows += 1


def test_a_run_behind_sends_in_batches_and_reads_between_them() -> None:
    """100 shots due at once go 64 now and 36 once the loop has come round (having read what
    came in); a completion pumps once per loop turn, not once per response."""
    now = 50 * MS
    shots = [
        Shot(offset_ns=i * 1000, seq=i, request=Request("GET", "/", None, [], None))
        for i in range(100)
    ]
    client, sink = _Client(), _Sink()
    disp = Dispatcher(
        Scheduler(shots, max_in_flight=1000),
        lambda s: None,  # type: ignore[arg-type,return-value]
        client,  # type: ignore[arg-type]
        sink,
        clock=lambda: now,
    )
    loop, timer = FakeLoop(), FakeTimer()
    disp._loop, disp._timer = loop, timer  # type: ignore[assignment]
    disp._pump()
    assert len(client.sent) == SEND_BATCH == 64
    assert len(loop.soon) == 1 and timer.armed == []  # behind: round the loop, no sleep
    loop.soon.pop()()  # type: ignore[operator]
    assert len(client.sent) == 100
    for _, done in client.sent[:3]:
        done(Outcome(sent_ns=now, end_ns=now, status=200))
    assert sink.rows == 3 and len(loop.soon) == 1  # three responses, one pump to come
    loop.soon.pop()()  # type: ignore[operator]
    assert disp.stats.completed == 3 and disp.stats.sent == 100


def test_a_run_behind_opens_new_connections_a_few_per_loop_turn() -> None:
    """With 5 idle connections, 40 due shots go 5 + DIAL_BATCH now and the rest in later turns
    (the loop reads the responses that free connections in between)."""
    now = 50 * MS
    shots = [
        Shot(offset_ns=i * 1000, seq=i, request=Request("GET", "/", None, [], None))
        for i in range(40)
    ]
    client = _Client(idle=5)
    disp = Dispatcher(
        Scheduler(shots, max_in_flight=1000),
        lambda s: None,  # type: ignore[arg-type,return-value]
        client,  # type: ignore[arg-type]
        _Sink(),
        clock=lambda: now,
    )
    loop = FakeLoop()
    disp._loop, disp._timer = loop, FakeTimer()  # type: ignore[assignment]
    disp._pump()
    assert len(client.sent) == 5 + DIAL_BATCH
    turns = 0
    while loop.soon:
        loop.soon.pop()()  # type: ignore[operator]
        turns += 1
    assert len(client.sent) == 40 and turns == -(-(40 - 5 - DIAL_BATCH) // DIAL_BATCH)


class _StagingClient(_Client):
    """Stages on its warm connections (each staged send is a handle fired at the instant)."""

    def __init__(self, warm: int, clock: list[int]) -> None:
        super().__init__()
        self.warm, self.clock = warm, clock
        self.fired: list[tuple[int, object]] = []
        self.cancelled = 0

    def stage(self, prepared: object, done: Callable[[Outcome], None]) -> object:
        if self.warm <= 0:
            return None
        self.warm -= 1
        client = self

        class Handle:
            def fire(self) -> None:
                client.fired.append((client.clock[0], prepared))

            def cancel(self) -> None:
                client.cancelled += 1
                client.warm += 1

        return Handle()


def _burst(clock: list[int], warm: int) -> tuple[Dispatcher, _StagingClient, FakeLoop]:
    """Five shots due at 100 ms, the dispatcher woken early for them at 99.6 ms."""
    shots = [
        Shot(offset_ns=100 * MS, seq=i, request=Request("GET", f"/{i}", None, [], None))
        for i in range(5)
    ]
    client = _StagingClient(warm, clock)
    disp = Dispatcher(
        Scheduler(shots, max_in_flight=100),
        lambda s: s.request.path,  # type: ignore[arg-type,return-value]
        client,  # type: ignore[arg-type]
        _Sink(),
        clock=lambda: clock[0],
    )
    loop = FakeLoop()
    disp._loop, disp._timer = loop, FakeTimer()  # type: ignore[assignment]
    disp._early_for = 100 * MS  # as _arm left it when it set the timer early
    clock[0] = 100 * MS - 400_000
    return disp, client, loop


def test_a_burst_woken_early_for_is_readied_and_written_at_its_instant() -> None:
    """Three warm connections: three shots are readied before the instant; at it they go
    first, then the two without a connection the ordinary way, in plan order."""
    clock = [0]
    disp, client, loop = _burst(clock, warm=3)
    disp._pump()
    assert client.fired == [] and client.sent == [] and len(disp._staged) == 3
    assert disp.scheduler.in_flight == 3 and len(loop.soon) == 1  # polls until the instant
    loop.soon.pop()()  # type: ignore[operator]  # still before it: nothing goes
    assert client.fired == [] and len(loop.soon) == 1
    clock[0] = 100 * MS + 2_000
    loop.soon.pop()()  # type: ignore[operator]
    assert client.fired == [(100 * MS + 2_000, p) for p in ("/0", "/1", "/2")]
    assert [p for p, _ in client.sent] == ["/3", "/4"]
    assert disp.stats.sent == 5 and disp.scheduler.in_flight == 5
    assert disp.stats.staged == 3  # run.json's count of sends on readied connections
    assert disp.stats.max_lag_ns == 2_000


def test_a_burst_readied_with_time_to_spare_sleeps_again_until_the_margin_before_it() -> None:
    """Woken 2 ms early (a long sleep before): the burst is readied, then the loop sleeps until
    REST_MARGIN_NS before the instant instead of polling the whole way (beside a CPU-bound
    process the polling used up the loop's turn on the CPU); from that wakeup it polls."""
    clock = [0]
    disp, client, loop = _burst(clock, warm=3)
    clock[0] = 100 * MS - EARLY_NS
    disp._pump()
    assert len(disp._staged) == 3 and loop.soon == []
    assert disp._timer.armed == [100 * MS - REST_MARGIN_NS]  # type: ignore[union-attr]
    disp._pump()  # a completion's pump meanwhile: the timer stands, no polling
    assert disp._timer.armed == [100 * MS - REST_MARGIN_NS] and loop.soon == []  # type: ignore[union-attr]
    clock[0] = 100 * MS - REST_MARGIN_NS + 60_000  # the wakeup, a little late
    disp._fire()
    assert client.fired == [] and len(loop.soon) == 1  # polls until the instant
    clock[0] = 100 * MS + 1_000
    loop.soon.pop()()  # type: ignore[operator]
    assert client.fired == [(100 * MS + 1_000, p) for p in ("/0", "/1", "/2")]


def test_a_stop_before_the_instant_sends_none_of_the_readied_shots() -> None:
    clock = [0]
    disp, client, loop = _burst(clock, warm=3)
    disp._pump()
    assert len(disp._staged) == 3
    disp.stop()
    loop.soon.pop()()  # type: ignore[operator]  # the spin's turn: stopping, nothing fired
    for cb in list(loop.soon):
        cb()  # type: ignore[operator]
    assert client.fired == [] and client.sent == [] and client.cancelled == 3
    assert disp.scheduler.in_flight == 0 and disp.stats.sent == 0 and disp.stats.staged == 0
    assert [s.request.path for s in disp.scheduler.drain()] == ["/0", "/1", "/2", "/3", "/4"]


@pytest.mark.parametrize("stop", [False, True], ids=["fired", "stopped"])
def test_no_collection_runs_between_a_burst_readied_and_its_writes(stop: bool) -> None:
    """The collector is off from the readying to the last staged write (or to the stop that
    gives the readied shots back), and on again after; a collector already off stays off."""
    assert gc.isenabled()
    clock = [0]
    disp, client, loop = _burst(clock, warm=3)
    try:
        disp._pump()
        assert len(disp._staged) == 3 and not gc.isenabled()
        if stop:
            disp.stop()
        else:
            clock[0] = 100 * MS
        loop.soon.pop()()  # type: ignore[operator]
        assert len(client.fired) == (0 if stop else 3) and gc.isenabled()
        gc.disable()
        disp2, _, _ = _burst([0], warm=3)
        disp2._pump()
        disp2._unstage()
        assert not gc.isenabled()  # it was off before the burst: left off
    finally:
        gc.enable()


@pytest.mark.parametrize(("now_ms", "behind_ms"), [(2, 0), (5, 0), (8, 3)])
def test_behind_is_how_late_the_oldest_due_shot_is(now_ms: int, behind_ms: int) -> None:
    shots = [Shot(offset_ns=5 * MS, seq=0, request=Request("GET", "/", None, [], None))]
    disp = Dispatcher(
        Scheduler(shots, max_in_flight=1),
        lambda s: None,
        None,
        None,
        clock=lambda: now_ms * MS,  # type: ignore[arg-type]
    )
    assert disp.behind_ns() == behind_ms * MS


def test_due_count_counts_the_plan_by_10_ms_buckets_before_now() -> None:
    from replay.planahead import DueCount

    due = DueCount()
    for ms in (0, 3, 9, 10, 25, 25, 70):
        due.add(ms * MS)
    assert [due.by(t * MS) for t in (0, 9, 10, 19, 30, 69, 80)] == [0, 0, 3, 3, 6, 6, 7]


@pytest.mark.parametrize(
    ("shots", "last_due_s", "shard", "wait_s"),
    [
        (50_000, 5.0, None, "max"),  # 10k req/s: planned wholly before the start
        (5_000, 1.0, None, "max"),
        (8_000, 4.0, None, "usual"),  # 2k req/s: the plan thread keeps up beside the loop
        (50_000, 5.0, (0, 2), "usual"),  # a shard starts at the instant the driver set
        (None, 5.0, None, "usual"),
        (50_000, None, None, "usual"),
    ],
)
def test_a_fast_plan_is_planned_wholly_before_the_start(
    shots: int | None, last_due_s: float | None, shard: tuple[int, int] | None, wait_s: str
) -> None:
    from replay.planahead import PLAN_AHEAD_MAX_S, PLAN_AHEAD_WAIT_S, plan_ahead_s
    from replay.settings import RunSettings

    settings = RunSettings(shard=shard)
    want = PLAN_AHEAD_MAX_S if wait_s == "max" else PLAN_AHEAD_WAIT_S
    assert plan_ahead_s(shots, last_due_s, settings) == want


def test_no_full_collection_from_the_plan_on_and_the_settings_restored_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan is made with full collections off (they walked it as it grew ahead of the
    start), as the run is; the collector's settings come back after."""
    import gc

    import replay.runner as runner
    from captures.testing import T0_NS, http_record, write_capture
    from replay.api import run_replay
    from replay.mock.threaded import running_gateway
    from replay.workload.replaying import ReplayOptions

    seen: list[tuple[int, int, int]] = []
    merged = runner.merged

    def watched(streams: Any) -> Any:
        for shot in merged(streams):
            seen.append(gc.get_threshold())
            yield shot

    monkeypatch.setattr(runner, "merged", watched)
    before = gc.get_threshold()
    cap = write_capture(
        tmp_path / "cap", [http_record(start_ns=T0_NS + i * MS, path="/x") for i in range(20)]
    )
    with running_gateway() as gw:
        run_replay(
            ReplayOptions(capture=str(cap), target=gw.url, out=str(tmp_path / "run")),
            install_signals=False,
        )
    assert len(seen) == 20 and all(th[2] >= 1_000_000 for th in seen), seen[:3]
    assert all(th[1] == runner.MIDDLE_GC_THRESHOLD for th in seen), seen[:3]
    assert gc.get_threshold() == before


def _varied_rows() -> list[Record]:
    """Rows with every field the plan reads, in the combinations that change what it makes."""
    out = rows(range(12))
    out[1].update(req_body_truncated=True)
    out[2].update(method="CONNECT")
    out[3].update(method="PRI", path="*")
    out[4].update(error_kind="client_abort", session_key="s1")
    out[5].update(replayable=False)
    out[6].update(replayable=None, writer_id=None)
    out[7].update(
        stream=True, chunk_offsets_us=[5, 9, 12], status=200, req_headers=[("a", "1")],
        resp_start_ns=T0 + 7 * MS + 3000, resp_end_ns=T0 + 7 * MS + 90_000,
        response_id="resp_1", tool_call_ids=["call_1", "call_2"], finish_reason="stop",
        completion_tokens=3, answer_hash="h", model="m", api="chat", query="q=1",
    )  # fmt: skip
    out[8].update(chunk_offsets_us=[4], first_token_us=None, tool_call_ids=["call_3"])
    out[9].update(chunk_offsets_us=[4, 8], first_token_us=6, stream=True, req_body=b"{}")
    out[10].update(req_content_encoding="gzip", req_headers=None, response_id="r2")
    return out


@pytest.mark.parametrize("junk", [False, True])
def test_a_chunk_is_planned_as_each_of_its_rows_is(junk: bool) -> None:
    data = _varied_rows()
    got = planrows.planned_rows(chunk_of(data)[0], junk)
    want = [
        (
            r["req_start_ns"],
            planrows.not_replayable(r, junk),
            planrows.request_of(r),
            r.get("session_key"),
            (r["writer_id"], r["seq"]) if r.get("writer_id") else None,
            planrows.recorded_info(r),
        )
        for r in data
    ]
    assert got == want
    assert [g[1] for g in got].count(None) == (8 if junk else 6)


def test_a_capture_read_as_chunks_plans_as_read_as_rows(tmp_path: Path) -> None:
    """Two writers interleaved (the merge hands out short ranges of each part's lists) and a
    window cutting both ends: the chunks give the rows `Capture.rows` gives, and the plan
    over them the same shots."""
    recs = [
        http_record(start_ns=T0_NS + i * 10, path=f"/{i}", session_key=f"s{i % 3}")
        for i in range(3000)
    ]
    cap = write_capture(tmp_path / "cap", recs[0::2], writer_id="wa")
    write_capture(cap, recs[1::2], writer_id="wb")
    write_capture(cap, [http_record(start_ns=T0_NS + 40_000 + i, path="/late") for i in range(5)])
    c = Capture(cap)
    f = RowFilter(start_ns=T0_NS + 55, end_ns=T0_NS + 29_995)
    by_rows = list(c.rows(planrows.PLAN_COLUMNS, f, batch_size=7))
    chunks = list(c.chunks(planrows.PLAN_COLUMNS, f, batch_size=7))
    assert max(j - i for _, i, j in chunks) <= 7 and min(j - i for _, i, j in chunks) == 1
    assert [r for chunk in chunks for r in column_rows(*chunk, planrows.PLAN_COLUMNS)] == by_rows
    assert [r["path"] for r in by_rows] == [f"/{i}" for i in range(6, 3000)]
    planned = list(plan_replay(lambda lo, hi: chunks, T0_NS, PlanOptions()))
    assert [(s.request, s.source, s.session, s.recorded) for s in planned] == [
        (
            planrows.request_of(r),
            (r["writer_id"], r["seq"]),
            r["session_key"],
            planrows.recorded_info(r),
        )
        for r in by_rows
    ]
