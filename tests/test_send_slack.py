"""--send-slack: one wakeup for shots due close together, never a shot later than the slack.
Tables on virtual time (the scheduler's lookahead, the dispatcher's wakeup instant), and the
flag through the command line."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from clierrors import one_line
from fakeloop import FakeLoop, FakeTimer

from captures.testing import T0_NS, http_record, write_capture
from replay.decide.report import build
from replay.decide.report.text import render_text
from replay.dispatch import EARLY_NS, IDLE_MARGIN_NS, IDLE_TURN_NS, Dispatcher
from replay.measure.resultsdir import Results
from replay.mock.testing import make_results
from replay.mock.threaded import running_gateway
from replay.plan import Shot
from replay.planrows import Request
from replay.schedule import LOOKAHEAD, Scheduler

US = 1_000
MS = 1_000_000
CLI = [sys.executable, "-c", "import cli; cli.main()"]


def _shots(offsets_us: list[int], session: str | None = None) -> list[Shot]:
    return [
        Shot(offset_ns=o * US, seq=i, request=Request("GET", "/", None, [], None), session=session)
        for i, o in enumerate(offsets_us)
    ]


# -- the scheduler's lookahead --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("horizon_us", "last_us"),
    [
        (99, None),  # the next shot is later than the horizon: none
        (100, 100),  # just the next one
        (250, 200),  # the next three
        (599, 200),
        (600, 600),  # the horizon is inclusive
        (10**6, 600),  # the whole plan
    ],
)
def test_last_due_by_is_the_last_plan_shot_due_by_the_horizon(
    horizon_us: int, last_us: int | None
) -> None:
    sched = Scheduler(_shots([100, 150, 200, 600]), max_in_flight=10)
    assert sched.last_due_by(horizon_us * US) == (None if last_us is None else last_us * US)


def test_looking_ahead_changes_neither_order_nor_what_is_drained() -> None:
    sched = Scheduler(_shots([0, 10, 20, 30, 40]), max_in_flight=10)
    assert sched.last_due_by(25 * US) == 20 * US  # three shots read ahead of the head
    taken = [sched.take(10**12) for _ in range(2)]
    assert [t[0].seq for t in taken if t is not None] == [0, 1]
    assert sched.last_due_by(35 * US) == 30 * US
    assert [s.seq for s in sched.drain()] == [2, 3, 4]
    assert sched.exhausted


def test_the_lookahead_is_bounded() -> None:
    consumed = {"n": 0}

    def plan() -> Iterator[Shot]:
        for i in itertools.count():
            consumed["n"] += 1
            yield Shot(offset_ns=0, seq=i, request=Request("GET", "/", None, [], None))

    sched = Scheduler(plan(), max_in_flight=10)
    assert sched.last_due_by(0) == 0  # an endless burst: the head and LOOKAHEAD more, no hang
    assert consumed["n"] == 1 + LOOKAHEAD


def test_a_closed_loop_has_no_lookahead() -> None:
    sched = Scheduler(_shots([0, 0, 0]), max_in_flight=2, closed_loop=True)
    assert sched.last_due_by(10**9) is None


def test_ordered_sessions_still_wait_for_their_turn_after_a_lookahead() -> None:
    """Shots read ahead are still held behind their session's request in flight."""
    sched = Scheduler(_shots([0, 10, 20], session="s"), max_in_flight=10, ordered_sessions=True)
    assert sched.last_due_by(30 * US) == 20 * US
    first = sched.take(10**12)
    assert first is not None and sched.take(10**12) is None  # the session is busy
    sched.done(first[0], 1)
    second = sched.take(10**12)
    assert second is not None and second[0].seq == 1


# -- the dispatcher's wakeup ----------------------------------------------------------------------
def _dispatcher(
    offsets_us: list[int], slack_us: int, clock: list[int]
) -> tuple[Dispatcher, list[tuple[int | None, int]]]:
    offered: list[tuple[int | None, int]] = []

    def idle(until: int | None, stop: int) -> bool:
        offered.append((until, stop))
        return False

    disp = Dispatcher(
        Scheduler(_shots(offsets_us), max_in_flight=100),
        lambda s: None,  # type: ignore[arg-type,return-value]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        clock=lambda: clock[0],
        idle=idle,
        send_slack_ns=slack_us * US,
    )
    disp._loop, disp._timer = FakeLoop(), FakeTimer()  # type: ignore[assignment]
    return disp, offered


@pytest.mark.parametrize(
    ("offsets_us", "slack_us", "wake_us"),
    [
        ([1000, 1100, 1200, 3000], 0, 1000),  # no slack: at the first shot's instant
        ([1000, 1100, 1200, 3000], 250, 1200),  # at the last shot due within the slack
        ([1000, 1100, 1200, 3000], 50, 1000),  # the next one is later than the slack
        ([1000, 3000], 250, 1000),  # a shot alone is never held back
        ([1000, 1000, 1000], 250, 1000),  # a burst: at its instant
        ([1000, 1250, 1251], 250, 1250),  # never later than the slack after the first
    ],
)
def test_the_wakeup_serves_every_shot_due_within_the_slack(
    offsets_us: list[int], slack_us: int, wake_us: int
) -> None:
    clock = [0]
    disp, offered = _dispatcher(offsets_us, slack_us, clock)
    disp._pump()
    assert disp._timer.armed == [wake_us * US]  # type: ignore[union-attr]
    assert offered == [(wake_us * US - IDLE_MARGIN_NS, IDLE_TURN_NS)]  # the loop is free until it


def test_a_long_sleep_keeps_its_early_wakeup_whatever_the_slack() -> None:
    """After a quiet spell the loop wakes early to ready a burst; a slack does not move it."""
    clock = [0]
    due = 100 * MS  # (more than EARLY_AFTER_NS off: woken EARLY_NS early)
    disp, _ = _dispatcher([due // US, due // US + 100], 250, clock)
    disp._pump()
    assert disp._timer.armed == [due - EARLY_NS]  # type: ignore[union-attr]


# -- the flag -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["20ms", "-1ms", "soon"])
def test_a_bad_send_slack_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    cap = write_capture(tmp_path / "cap", [http_record(start_ns=T0_NS)])
    p = subprocess.run(
        [*CLI, "replay", str(cap), "--target", "http://127.0.0.1:9", "--send-slack", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--send-slack" in one_line(p, 2)


def test_a_replay_with_a_send_slack_sends_every_shot_within_it(tmp_path: Path) -> None:
    """Against the mock gateway: 200 GETs 100 us apart at a 300 us slack all go, none of them
    sent before its instant, and run.json says the slack."""
    cap = write_capture(
        tmp_path / "cap",
        [http_record(start_ns=T0_NS + i * 100 * US, path="/echo/x") for i in range(200)],
    )
    out = tmp_path / "run"
    slack = ["--send-slack", "300us"]
    with running_gateway(default_profile="instant") as gw:
        p = subprocess.run(
            [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(out), "-q", *slack],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 0, p.stderr
    doc = json.loads((out / "run.json").read_text())
    assert doc["counts"]["sent"] == 200 and doc["counts"]["failed"] == 0
    assert doc["options"]["send_slack_s"] == pytest.approx(0.0003)
    t = pq.read_table(next(out.glob("results*.parquet")), columns=["intended_ns", "sent_ns"])
    lag = [
        s - i for s, i in zip(t["sent_ns"].to_pylist(), t["intended_ns"].to_pylist(), strict=True)
    ]
    assert min(lag) >= 0  # none early: the slack only ever makes a shot later


def test_the_report_says_when_shots_could_go_late_by_a_slack(tmp_path: Path) -> None:
    """A lag read without knowing the slack looks like the tool's imprecision: the report says
    it, in the text (and so the HTML and markdown notes), and not when there was none."""
    run = make_results(tmp_path / "r", n=50)

    def text() -> str:
        return render_text(build(Results.open(run)))

    assert "send slack" not in text()
    doc = json.loads((run / "run.json").read_text())
    doc.setdefault("settings", {})["send_slack_s"] = 0.0005
    (run / "run.json").write_text(json.dumps(doc))
    assert build(Results.open(run))["run"]["send_slack_s"] == 0.0005
    line = next(ln for ln in text().splitlines() if "send slack" in ln)
    assert "500 us" in line and "lag and latency count it" in line, line
