"""The live line: planned total, share done and ETA, from what each stream plans."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from captures.testing import T0_NS, chat_record, write_capture
from replay.planahead import planned
from replay.progress import describe
from replay.rewrite import Rewriter
from replay.settings import Progress, RunSettings
from replay.targets import parse_target
from replay.ticker import HANDOVER_ROWS, HANDOVER_S, handover_due
from replay.workload.replaying import replay_stream

S = 1_000_000_000


def _p(**kw: object) -> Progress:
    base: dict[str, object] = dict(
        elapsed_s=30.0, scheduled_s=30.0, planned=None, planned_approx=False,
        planned_end_s=None, sent=300, ok=300, expected=0, failed=0, in_flight=2, rate=10.0,
        p99_ms=12.0, lag_p99_ms=0.4,
    )  # fmt: skip
    base.update(kw)
    return Progress(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "want", "absent"),
    [
        ({"planned": 1200, "planned_end_s": 120.0}, ["sent 300/1200", "25%", "ETA 1m30s"], []),
        ({"planned": 1200, "planned_approx": True}, ["sent 300/~1200", "25%", "ETA 1m30s"], []),
        ({"planned": 400, "rate": 0.0}, ["sent 300/400", "75%"], ["ETA"]),
        ({}, ["sent 300 "], ["%", "ETA"]),  # an endless plan: no share, no ETA
        ({"planned": 10**6, "planned_end_s": 7300.0}, ["ETA 2h01m"], []),
    ],
)
def test_the_line(kw: dict[str, object], want: list[str], absent: list[str]) -> None:
    line = describe(_p(**kw)) + " "
    assert all(w in line for w in want), line
    assert not any(a in line for a in absent), line


def test_a_replay_plans_its_window_times_its_copies(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "cap", [chat_record(start_ns=T0_NS + i * S // 10)
                                           for i in range(100)])  # fmt: skip
    rw = Rewriter(parse_target("http://127.0.0.1:9"))
    whole = replay_stream("r", str(cap), rw, speed=2.0)
    assert (whole.planned, whole.planned_approx) == (100, False)
    assert whole.planned_end_s == pytest.approx(9.9 / 2)
    window = replay_stream("r", str(cap), rw, from_s=2.0, to_s=5.0, loops=3)
    assert window.planned == 30 * 3 and window.planned_end_s == pytest.approx(2.9 * 3)
    amp = replay_stream("r", str(cap), rw, amplify=2.5)
    assert amp.planned == 250 and amp.planned_approx
    total, approx, end = planned([whole, window], RunSettings(), targets=2)
    assert (total, approx, end) == (2 * (100 + 90), False, pytest.approx(8.7))
    assert planned([whole], RunSettings(requests=40), targets=1)[:2] == (40, False)


def test_a_long_plan_ahead_says_how_far_it_has_got_until_the_plan_is_made() -> None:
    """Planning wholly before the start can take seconds: the live line says so, every half
    second, and the wait ends when the plan does (not at its time limit)."""
    import time

    from replay.planahead import plan_whole
    from replay.prefetch import Prefetch

    def slow() -> Iterator[int]:
        for i in range(30):
            time.sleep(0.05)
            yield i

    seen: list[Progress] = []
    buffer: Prefetch[int] = Prefetch(slow(), high=1000)
    t0 = time.monotonic()
    plan_whole(buffer, 30.0, (30, False, 3.0), seen.append)
    assert buffer.done and time.monotonic() - t0 < 10
    assert len(seen) >= 2 and all(p.planning is not None for p in seen)
    counts = [p.planning for p in seen]
    assert counts == sorted(counts) and 0 < counts[-1] < 30
    assert describe(seen[0]).startswith(f"planning ahead: {seen[0].planning}/30 shots")
    buffer.close()


@pytest.mark.parametrize(
    ("watched", "collected", "since_s", "slice_rows", "due"),
    [
        (True, 0, 0.1, 0, True),  # a live page or /metrics: every tick
        (True, 5, 0.1, 4096, True),
        (False, 5, 0.1, 0, False),  # unwatched, few rows, recent: wait
        (False, HANDOVER_ROWS - 1, HANDOVER_S - 0.01, 0, False),
        (False, HANDOVER_ROWS, 0.1, 0, True),  # enough rows
        (False, HANDOVER_ROWS, 0.1, 512, True),  # a smaller slice: HANDOVER_ROWS rule
        (False, HANDOVER_ROWS, 0.1, 4096, False),  # a larger slice: a whole one is waited for
        (False, 4096, 0.1, 4096, True),
        (False, 0, HANDOVER_S, 4096, True),  # long enough (a second's rows join it before sealing)
    ],
)
def test_results_are_handed_over_every_tick_only_when_watched(
    watched: bool, collected: int, since_s: float, slice_rows: int, due: bool
) -> None:
    assert handover_due(watched, collected, since_s, slice_rows) is due
