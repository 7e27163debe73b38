"""The results writer's cooperative mode (open loop): work in steps that fit the loop's idle
windows, and the same results as processing them at once."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from replay.measure.metrics import Metrics
from replay.measure.results import Expect
from replay.measure.writer import ResultWriter
from replay.plan import Request, Shot
from replay.send.outcome import Outcome


class Clock:
    """Every reading advances time by `tick` ns: each step seems to take that long."""

    def __init__(self, tick: int) -> None:
        self.now, self.tick = 0, tick

    def __call__(self) -> int:
        self.now += self.tick
        return self.now


def _feed(w: ResultWriter, n: int) -> None:
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
        w.add(shot, None, i * 1000, out)
    w.handover()


def _writer(tmp: Path, name: str, clock: Clock, *, cooperative: bool) -> ResultWriter:
    return ResultWriter(
        tmp / name,
        expect=Expect(),
        metrics=Metrics(),
        epoch_offset=0,
        cooperative=cooperative,
        clock=clock,
    )


def test_steps_are_taken_only_where_they_fit_and_the_results_match(tmp_path: Path) -> None:
    clock = Clock(tick=30_000)  # each step takes 30 us
    coop = _writer(tmp_path, "coop", clock, cooperative=True)
    _feed(coop, 1000)
    assert coop.work(clock.now + 20_000)  # a 20 us window: no step fits, work is left
    assert not coop._cost  # no step was taken (none learnt)
    rounds = 0
    while coop.work(clock.now + 200_000):  # 200 us windows, until the backlog is done
        rounds += 1
        assert rounds < 10_000
    assert not coop._backlog and coop._job is None
    coop.close()

    inline = _writer(tmp_path, "inline", Clock(tick=1), cooperative=False)
    _feed(inline, 1000)
    inline.close()
    a = pq.read_table(tmp_path / "coop" / "results.parquet")
    b = pq.read_table(tmp_path / "inline" / "results.parquet")
    assert a.num_rows == b.num_rows == 1000
    assert a.equals(b)
    for key, hists in inline.metrics.hists.items():
        for m, h in hists.items():
            assert coop.metrics.hists[key][m].total_count == h.total_count, (key, m)
    assert (coop.ok, coop.failed) == (inline.ok, inline.failed) == (857, 143)


def test_a_backlog_under_pressure_takes_steps_in_windows_too_short_for_them(
    tmp_path: Path,
) -> None:
    clock = Clock(tick=30_000)
    w = _writer(tmp_path, "w", clock, cooperative=True)
    _feed(w, ResultWriter.PRESSURE_ROWS + 500)
    before = len(w._backlog)
    for _ in range(50):  # windows of 60 us: under the first step's guess, over MIN_WINDOW_NS
        w.work(clock.now + 60_000)
    assert len(w._backlog) < before
    w.close()
    assert pq.read_table(tmp_path / "w" / "results.parquet").num_rows == before
