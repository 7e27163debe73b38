"""The results writer's cooperative mode (open loop): work in steps that fit the loop's idle
windows, and the same results as processing them at once."""

from __future__ import annotations

import collections
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from replay.measure.metrics import Metrics
from replay.measure.results import Expect
from replay.measure.writer import ResultWriter
from replay.plan import Shot
from replay.planrows import Request
from replay.rewrite import Rewriter
from replay.send.outcome import Outcome
from replay.targets import parse_target


class Clock:
    """Every reading advances time by `tick` ns: each step seems to take that long."""

    def __init__(self, tick: int) -> None:
        self.now, self.tick = 0, tick

    def __call__(self) -> int:
        self.now += self.tick
        return self.now


def _feed(w: ResultWriter, n: int, body: bytes | None = None) -> None:
    prepared = None
    if body is not None:  # each row holds its prepared request, as a run's do
        rw = Rewriter(parse_target("http://127.0.0.1:9"))
        prepared = rw.prepare(Request("POST", "/x", None, [], body))
    for i in range(n):
        shot = Shot(offset_ns=i * 1000, seq=i, request=Request("GET", "/x", None, [], None))
        out = Outcome(
            sent_ns=i * 1000 + 50,
            end_ns=i * 1000 + 90_000 + i,
            headers_ns=i * 1000 + 60_000,
            status=200 if i % 7 else 503,
            bytes_in=10,
            token_ns=[i * 1000 + 70_000, i * 1000 + 80_000],
        )
        w.add(shot, prepared, i * 1000, out)
    w.handover()


def _writer(
    tmp: Path,
    name: str,
    clock: Clock,
    *,
    cooperative: bool,
    slice_rows: int = ResultWriter.STEP_SLICE_ROWS,
) -> ResultWriter:
    return ResultWriter(
        tmp / name,
        expect=Expect(),
        metrics=Metrics(),
        epoch_offset=0,
        cooperative=cooperative,
        clock=clock,
        slice_rows=slice_rows,
    )


@pytest.mark.parametrize(
    ("rows", "slice_rows"),
    [(1000, ResultWriter.STEP_SLICE_ROWS), (9000, ResultWriter.TIMED_SLICE_ROWS)],
)
def test_steps_are_taken_only_where_they_fit_and_the_results_match(
    tmp_path: Path, rows: int, slice_rows: int
) -> None:
    clock = Clock(tick=30_000)  # each step takes 30 us
    coop = _writer(tmp_path, "coop", clock, cooperative=True, slice_rows=slice_rows)
    _feed(coop, rows)
    assert not coop.work(clock.now + 20_000)  # a 20 us window: no step fits, wait for more
    assert len(coop._backlog) == rows - slice_rows  # a slice's rows taken, the rest waiting
    assert coop._job is not None  # the work is still there
    assert not coop._cost  # no step was taken (none learnt)
    rounds = 0
    while coop._backlog or coop._job is not None:  # 200 us windows, until the backlog is done
        coop.work(clock.now + 200_000)
        rounds += 1
        assert rounds < 10_000
    coop.close()

    inline = _writer(tmp_path, "inline", Clock(tick=1), cooperative=False)
    _feed(inline, rows)
    inline.close()
    a = pq.read_table(tmp_path / "coop" / "results.parquet")
    b = pq.read_table(tmp_path / "inline" / "results.parquet")
    assert a.num_rows == b.num_rows == rows
    assert a.equals(b)
    for key, hists in inline.metrics.hists.items():
        for m, h in hists.items():
            assert coop.metrics.hists[key][m].total_count == h.total_count, (key, m)
    failed = sum(1 for i in range(rows) if i % 7 == 0)  # the 503s
    assert (coop.ok, coop.failed) == (inline.ok, inline.failed) == (rows - failed, failed)


def test_a_step_longer_than_the_window_waits_however_long_the_turn(tmp_path: Path) -> None:
    """A turn (stop) bounds when steps begin; the window (until: the next shot) bounds what
    a step may take. A step expected to overrun the window is not taken in a long turn."""
    clock = Clock(tick=30_000)
    w = _writer(tmp_path, "w", clock, cooperative=True)
    _feed(w, 1000)
    first = ResultWriter.FIRST_STEP_NS
    assert not w.work(clock.now + first - 1, clock.now + 10 * first)  # the shot comes first
    assert not w._cost
    assert w.work(None, clock.now + 200_000)  # no shot waiting: steps until the turn ends
    assert w._cost and w._backlog  # some taken, more left for the next turn
    w.close()


def test_a_backlog_under_pressure_takes_steps_in_windows_too_short_for_them(
    tmp_path: Path,
) -> None:
    clock = Clock(tick=30_000)
    w = _writer(tmp_path, "w", clock, cooperative=True)
    _feed(w, ResultWriter.PRESSURE_ROWS + 500)
    before = len(w._backlog)
    for _ in range(50):  # windows of 60 us: under the first step's guess, not with the overrun
        w.work(clock.now + 60_000)
    assert len(w._backlog) < before
    w.close()
    assert pq.read_table(tmp_path / "w" / "results.parquet").num_rows == before


class JumpClock(Clock):
    """As Clock, and once, at reading `at`, time jumps by `jump` ns (one step seems long)."""

    def __init__(self, tick: int, at: int, jump: int) -> None:
        super().__init__(tick)
        self.readings, self.at, self.jump = 0, at, jump

    def __call__(self) -> int:
        self.readings += 1
        if self.readings == self.at:
            self.now += self.jump
        return super().__call__()


def _drain_in_windows(w: ResultWriter, clock: Clock, window_ns: int) -> int:
    rounds = 0
    while w._backlog or w._job is not None:
        w.work(clock.now + window_ns)
        rounds += 1
        assert rounds < 20_000, "stuck: a step expected to take longer than any window"
    return rounds


def test_one_long_step_does_not_keep_its_kind_out_of_every_window_after(tmp_path: Path) -> None:
    """A step taking 2 ms once (cold, a collection in it, the VM away) must not make the
    writer expect 2 ms of its kind for good: it would never be taken in a short window again,
    never be seen to be short again, and the backlog would wait for the tick."""
    clock = JumpClock(tick=30_000, at=41, jump=2_000_000)
    w = _writer(tmp_path, "w", clock, cooperative=True)
    _feed(w, 1000)
    _drain_in_windows(w, clock, 200_000)  # steps take 30 us, one 2 ms: windows of 200 us
    assert clock.readings > clock.at
    assert max(w._cost.values()) <= ResultWriter.FIRST_STEP_NS
    w.close()
    assert pq.read_table(tmp_path / "w" / "results.parquet").num_rows == 1000


def test_under_pressure_steps_long_twice_in_a_row_are_tried_again(tmp_path: Path) -> None:
    """Every step seeming to take 2 ms for a while (the VM away): with a backlog over
    PRESSURE_ROWS their estimates come down as they wait, and the backlog is done in windows
    of 200 us once they take 30 us again."""
    clock = Clock(tick=2_000_000)
    w = _writer(tmp_path, "w", clock, cooperative=True)
    _feed(w, ResultWriter.PRESSURE_ROWS + 1000)
    w.work(None, clock.now + 100_000_000)  # each kind of step twice or more at 2 ms
    assert max(w._cost.values()) >= 2_000_000
    clock.tick = 30_000
    _drain_in_windows(w, clock, 200_000)
    w.close()


def test_the_overrun_a_step_may_take_grows_with_the_backlog(tmp_path: Path) -> None:
    w = _writer(tmp_path, "w", Clock(tick=1), cooperative=True)
    low, high = ResultWriter.MIN_OVERRUN_NS, ResultWriter.MAX_OVERRUN_NS
    pressure, full = ResultWriter.PRESSURE_ROWS, ResultWriter.BACKLOG_ROWS
    table = [
        (0, 0),
        (pressure, 0),
        (pressure + 1, low),
        ((pressure + full) // 2, (low + high) // 2),
        (full, high),
        (full * 2, high),
    ]
    for rows, want in table:
        w._backlog = collections.deque([None] * rows)  # type: ignore[list-item]
        assert abs(w.overrun_ns() - want) <= 16, rows
    w._backlog.clear()
    w.close()


def test_a_backlog_is_bounded_by_the_request_bytes_its_rows_hold_too(tmp_path: Path) -> None:
    """Rows of 100 KB requests: pressure from PRESSURE_BYTES of them, and the tick processes
    the backlog beyond BACKLOG_BYTES, long before the rows' own bounds (a backlog of 3.6k rows
    of 50 KB LLM requests held 360 MB)."""
    w = _writer(tmp_path, "w", Clock(tick=30_000), cooperative=True)
    each = 100_000
    _feed(w, ResultWriter.PRESSURE_BYTES // each + 10, b"x" * each)
    assert len(w._backlog) < ResultWriter.PRESSURE_ROWS and w.overrun_ns() > 0
    _feed(w, ResultWriter.BACKLOG_BYTES // each, b"x" * each)
    assert w._backlog_bytes <= ResultWriter.BACKLOG_BYTES  # drained to its bound in the tick
    assert ResultWriter.BACKLOG_BYTES - (each + 100) * ResultWriter.SLICE_ROWS < w._backlog_bytes
    w.close()
    rows = ResultWriter.PRESSURE_BYTES // each + 10 + ResultWriter.BACKLOG_BYTES // each
    assert pq.read_table(tmp_path / "w" / "results.parquet").num_rows == rows
    assert w._backlog_bytes == 0


def test_rows_collected_are_handed_over_by_the_request_bytes_they_hold(tmp_path: Path) -> None:
    """A writer with slices of 4096 (the compiled sender's) collects rows of 100 KB requests:
    they go to the backlog at HANDOVER_BYTES, not at the 4096th row (400 MB held)."""
    w = _writer(
        tmp_path, "w", Clock(tick=1), cooperative=True, slice_rows=ResultWriter.TIMED_SLICE_ROWS
    )
    each = 100_000
    rw = Rewriter(parse_target("http://127.0.0.1:9"))
    prepared = rw.prepare(Request("POST", "/x", None, [], b"x" * each))
    most = 0
    for i in range(ResultWriter.HANDOVER_BYTES // each * 3):
        shot = Shot(offset_ns=i, seq=i, request=Request("POST", "/x", None, [], None))
        w.add(shot, prepared, i, Outcome(sent_ns=i, end_ns=i + 1, status=200))
        most = max(most, w.collected)
    assert most <= ResultWriter.HANDOVER_BYTES // len(prepared.raw) + 1
    assert len(w._backlog) + w.collected == ResultWriter.HANDOVER_BYTES // each * 3
    assert w._backlog_bytes == len(w._backlog) * len(prepared.raw)
    w.close()


def test_under_pressure_a_step_once_long_still_goes_before_the_backlog_is_full(
    tmp_path: Path,
) -> None:
    """A step that took 3 ms twice (longer than any overrun) goes in a short window once the
    backlog is near full, rather than leaving it all to the tick."""
    clock = Clock(tick=3_000_000)
    w = _writer(tmp_path, "w", clock, cooperative=True)
    _feed(w, 600)
    w.work(None, clock.now + 200_000_000)  # each step twice at 3 ms: learnt
    assert w._job is not None and max(w._cost.values()) >= 3_000_000
    clock.tick = 10_000
    assert not w.work(clock.now + 20_000)  # no pressure: a 20 us window is not enough
    w._backlog.extend([w._backlog[0]] * (ResultWriter.BACKLOG_ROWS - len(w._backlog)))
    before = dict(w._cost)
    w.work(clock.now + 20_000)
    assert w._cost != before, "no step taken with the backlog at its limit"
    w._backlog.clear()
    w._job = None
    w.close()


def test_the_histograms_read_the_same_from_arrow_numbers_as_from_python_lists(
    tmp_path: Path,
) -> None:
    """The writer hands the numeric columns to the histograms as Arrow arrays; nulls (no
    headers, no tokens) must count as they do from the column lists."""
    import pyarrow as pa

    from replay.measure.results import COLUMNS, SCHEMA
    from replay.measure.writer import NUMERIC

    w = _writer(tmp_path, "w", Clock(tick=1), cooperative=False)
    for i in range(600):
        shot = Shot(offset_ns=i * 1000, seq=i, request=Request("GET", "/x", None, [], None))
        out = Outcome(
            sent_ns=i * 1000 + 50,
            end_ns=i * 1000 + 90_000 + 7 * i,
            headers_ns=None if i % 3 else i * 1000 + 60_000,
            status=None if i % 11 == 0 else 200,
            error="reset" if i % 11 == 0 else None,
            completion_tokens=None if i % 2 else i,
            token_ns=[] if i % 5 else [i * 1000 + 70_000, i * 1000 + 75_000 + i],
        )
        w.add(shot, None, i * 1000, out)
    cols = w._columns(w._rows)
    numbers = {c: pa.array(cols[c], SCHEMA.field(c).type) for c in COLUMNS if c in NUMERIC}
    assert any(a.null_count for a in numbers.values())
    lists, arrow = Metrics(), Metrics()
    lists.record_batch(cols)
    for _ in arrow.record_steps(cols, numbers):
        pass
    assert lists.hists.keys() == arrow.hists.keys() and len(lists.hists) == 2
    for key, hists in lists.hists.items():
        assert lists.stats[key] == arrow.stats[key]
        for m, h in hists.items():
            other = arrow.hists[key][m]
            assert (h.total_count, h.min_value, h.max_value) == (
                other.total_count,
                other.min_value,
                other.max_value,
            ), (key, m)
            assert h.get_value_at_percentile(90) == other.get_value_at_percentile(90)
    w.close()


def test_each_groups_counts_statuses_and_span_are_its_own_rows(tmp_path: Path) -> None:
    """Groups (here by endpoint and status class) are counted in whole-slice passes; each gets
    exactly its own rows' statuses, tokens and first/last instants."""
    w = _writer(tmp_path, "w", Clock(tick=1), cooperative=False)
    for i in range(900):
        path = f"/p{i % 7}"
        shot = Shot(offset_ns=i * 1000, seq=i, request=Request("GET", path, None, [], None))
        status = (200, 201, 404, 503)[i % 4]
        out = Outcome(
            sent_ns=i * 1000 + 5, end_ns=i * 1000 + 9000 + i, status=status, completion_tokens=i
        )
        w.add(shot, None, i * 1000, out)
    w.close()
    m = w.metrics
    for key, st in m.stats.items():
        path, cls = key[3], key[5]
        mine = [
            i
            for i in range(900)
            if f"/p{i % 7}" == path and f"{(200, 201, 404, 503)[i % 4] // 100}xx" == cls
        ]
        assert st.count == len(mine) > 0
        want: dict[int, int] = {}
        for i in mine:
            want[(200, 201, 404, 503)[i % 4]] = want.get((200, 201, 404, 503)[i % 4], 0) + 1
        assert st.statuses == want
        assert st.completion_tokens == sum(mine)
        assert (st.first_intended_ns, st.last_intended_ns) == (mine[0] * 1000, mine[-1] * 1000)
        assert (st.first_end_ns, st.last_end_ns) == (
            mine[0] * 1000 + 9000 + mine[0],
            mine[-1] * 1000 + 9000 + mine[-1],
        )
    assert len(m.stats) == 7 * 3


def test_rows_that_come_after_their_second_was_sealed_join_it(tmp_path: Path) -> None:
    """Handed over late (the runner hands results over up to a second apart), rows of a second
    already sealed are merged into its sealed histograms, not written over them."""
    from captures import hdr

    w = _writer(tmp_path, "w", Clock(tick=1), cooperative=False)
    m = Metrics()
    for part in (range(0, 300), range(300, 500)):  # all end in second 0
        for i in part:
            shot = Shot(offset_ns=i * 1000, seq=i, request=Request("GET", "/x", None, [], None))
            w.add(shot, None, i * 1000, Outcome(sent_ns=i * 1000, end_ns=i * 1000 + 5000 + i))
        rows, w._rows = w._rows, []
        m.record_batch(w._columns(rows))
        m.seal_intervals(before_sec=1)
    (stream,) = m.intervals
    assert list(m.intervals[stream]) == [0]
    assert hdr.decode(m.intervals[stream][0]["latency"]).total_count == 500
    w.close()
