"""Sweeps: the ceiling and knee decisions by tables; a closed-loop sweep against a mock gateway
with a capacity limit finds a ceiling near that limit and the knee where its queue pushes p99
over the limit; an open-loop sweep over rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser import CHROMIUM, open_page

from captures.errors import UserError
from captures.testing import T0_NS, chat_record, write_capture
from replay.decide.sweep import SweepOptions, ceiling, knee, parse_levels
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]


@pytest.mark.parametrize(
    ("points", "tol", "want"),
    [
        (
            [(1, 30), (2, 60), (4, 120), (8, 125), (16, 124)],
            0.05,
            {"level": 4, "throughput": 120, "peak": 125, "peak_level": 8},
        ),
        ([(1, 30), (2, 60), (4, 120)], 0.05, None),  # still rising
        ([(1, 30), (2, 60), (4, 120), (8, 140)], 0.05, None),  # +17 % at the top: rising
        (
            [(1, 30), (2, 60), (4, 120), (8, 140)],
            0.20,
            {"level": 4, "throughput": 120, "peak": 140, "peak_level": 8},
        ),
        (  # collapse
            [(1, 100), (2, 90), (4, 50)],
            0.05,
            {"level": 1, "throughput": 100, "peak": 100, "peak_level": 1},
        ),
        ([(1, 100)], 0.05, None),  # one level shows nothing
        ([], 0.05, None),
    ],
)
def test_ceiling(points: list[tuple[float, float]], tol: float, want: object) -> None:
    assert ceiling(points, tol) == want


@pytest.mark.parametrize(
    ("points", "limit", "want"),
    [
        ([(1, 50.0), (2, 80.0), (4, 120.0), (8, 900.0)], 100.0, 4),
        ([(1, 50.0), (2, 80.0)], 100.0, None),
        ([(1, 100.0), (2, 100.001)], 100.0, 2),  # crossing means above, not at
        ([(1, None), (2, 150.0)], 100.0, 2),  # a level with no values does not count
    ],
)
def test_knee(points: list[tuple[float, float | None]], limit: float, want: float | None) -> None:
    assert knee(points, limit) == want


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"levels": (10, 5)}, "must rise"),
        ({"levels": (0, 5)}, "must be > 0"),
        ({"levels": (1.5, 3)}, "whole numbers"),
        ({"levels": ()}, "no levels"),
        ({"tolerance": 1.5}, "--tolerance"),
    ],
)
def test_bad_sweep_options(kwargs: dict[str, object], needle: str) -> None:
    base = {"kind": "concurrency", "levels": (1, 2), "out": Path("x")}
    with pytest.raises(UserError, match=needle):
        SweepOptions(**{**base, **kwargs}).validate()  # type: ignore[arg-type]
    with pytest.raises(UserError, match="want numbers"):
        parse_levels("1,x", "--rates")


def test_closed_loop_sweep_finds_the_ceiling_and_the_knee(tmp_path: Path) -> None:
    """Gateway: 4 requests in service at once, the rest queued; each takes about 31 ms
    (15 ms TTFT + 4 tokens x 4 ms), so its capacity is about 4 / 0.031 = 130 req/s. At
    concurrency 16 a request waits for three ahead of it: p99 about 4 x 31 = 125 ms."""
    recs = [
        chat_record(start_ns=T0_NS + i * 10_000_000, model="small", max_tokens=4, prompt="hi")
        for i in range(50)
    ]
    cap = write_capture(tmp_path / "cap", recs)
    with running_gateway(max_in_service=4, max_queue=10_000) as gw:
        p = subprocess.run(
            [
                *CLI,
                "sweep",
                str(cap),
                "--target",
                gw.url,
                "--concurrency",
                "1,2,4,8,16",
                "--requests",
                "150",
                "--p99-limit",
                "90ms",
                "--tolerance",
                "10%",
                "--out",
                str(tmp_path / "sw"),
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        assert gw.stats.max_in_service_seen == 4
    doc = json.loads(p.stdout)
    levels = {f["level"]: f for f in doc["levels"]}
    assert sorted(levels) == [1, 2, 4, 8, 16] and all(f["count"] == 150 for f in levels.values())
    service_s = levels[1]["latency_p50"] / 1000  # one at a time: the service time itself
    capacity = 4 / service_s
    assert doc["ceiling"] is not None and doc["ceiling"]["level"] in (4, 8)
    assert 0.75 * capacity < doc["ceiling"]["throughput"] < 1.15 * capacity, (doc, capacity)
    assert levels[2]["throughput"] == pytest.approx(2 * levels[1]["throughput"], rel=0.25)
    # the queue: p99 about 4 service times at 16 (~125 ms), 2 at 8 (~62 ms), 1 at 4: the knee
    # is 16 (8 on a machine slow enough to push 62 ms past 90), never at or below capacity
    assert doc["knee"] in (8, 16)
    assert levels[16]["latency_p99"] > 90 > levels[4]["latency_p99"]
    from replay.decide.report import build
    from replay.decide.report.text import machine_note
    from replay.measure.resultsdir import Results

    for lv in levels.values():
        assert (Path(lv["dir"]) / "results.parquet").exists()
        # each level's word on its machine is its own report's
        assert lv["machine"] == machine_note(build(Results.open(Path(lv["dir"])), by=[]))
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["knee"] == doc["knee"]
    if CHROMIUM is None and not os.environ.get("LOADTAPE_REQUIRE_CHROMIUM"):
        return
    page = open_page(tmp_path / "sw" / "sweep.html", tmp_path / "sweep.png")
    assert page.console_errors == [] and page.exceptions == [] and page.requests == []
    assert len(page.facts["svgs"]) == 3 and "throughput ceiling" in page.facts["text"]


def test_open_loop_rates_and_stop_on_error_rate(tmp_path: Path) -> None:
    """Rates over a gateway that sheds past 2 in service (503, no queue): the sweep ends at
    the first level whose error rate passes 5 %, and says so."""
    recs = [
        chat_record(start_ns=T0_NS + i * 10_000_000, model="small", max_tokens=4) for i in range(20)
    ]
    cap = write_capture(tmp_path / "cap", recs)
    with running_gateway(max_in_service=2, max_queue=0) as gw:
        p = subprocess.run(
            [
                *CLI,
                "sweep",
                str(cap),
                "--target",
                gw.url,
                "--rates",
                "10,40,200,400",
                "--level-duration",
                "1s",
                "--stop-on-error-rate",
                "5%",
                "--out",
                str(tmp_path / "sw"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert p.returncode == 0, p.stderr
    assert "stopped early: error rate" in p.stdout
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    # capacity about 2 / 31 ms = 64 req/s: 10 and 40 fit, 200 sheds, 400 never runs
    assert [f["level"] for f in doc["levels"]] == [10, 40, 200]
    assert doc["levels"][1]["error_rate"] == 0
    assert doc["levels"][0]["count"] == 10 and doc["levels"][0]["error_rate"] == 0
    assert doc["levels"][-1]["error_rate"] > 0.05
    bad = subprocess.run(
        [*CLI, "sweep", str(cap), "--target", gw.url, "--rates", "1", "--speeds", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "exactly one of" in bad.stderr


def test_the_user_count_where_a_gate_first_fails_is_one_command(tmp_path: Path) -> None:
    """The seed exercise: users (closed-loop concurrency) against a gateway that serves 4 at
    once, queues 8 and sheds the rest with 503 (expected shedding, not failure): the sweep
    names the first level at which the served requests' p95 < 50 ms fails (one service time
    is ~31 ms; past 4 users a served request waits in the queue), and prints a line as each
    level starts."""
    recs = [
        chat_record(start_ns=T0_NS + i * 10_000_000, model="small", max_tokens=4, prompt="hi")
        for i in range(50)
    ]
    cap = write_capture(tmp_path / "cap", recs)
    with running_gateway(max_in_service=4, max_queue=8) as gw:
        p = subprocess.run(
            [*CLI, "sweep", str(cap), "--target", gw.url, "--concurrency", "1,4,16,32",
             "--requests", "160", "--expect-status", "503", "--slo", "status=2xx:latency.p95<50ms",
             "--slo", "error_rate<1%", "--out", str(tmp_path / "sw"), "--format", "json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    levels = {f["level"]: f for f in doc["levels"]}
    assert levels[1]["slo_failed"] == [] and levels[4]["slo_failed"] == []
    assert doc["slo_knee"] is not None and doc["slo_knee"]["level"] in (16, 32), doc["slo_knee"]
    assert any("latency.p95<50ms" in f for f in doc["slo_knee"]["failed"])
    assert levels[32]["error_rate"] == 0  # 503s shed at 32 users are expected, not failures
    started = [ln for ln in p.stderr.splitlines() if "started" in ln]
    assert len(started) == 4 and "160 requests" in started[0], p.stderr
    text = subprocess.run(
        [*CLI, "sweep", str(cap), "--target", "http://127.0.0.1:1", "--concurrency", "1",
         "--requests", "1", "--slo", "nonsense", "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert text.returncode == 2 and "nonsense" in text.stderr, text.stderr


def test_one_metrics_endpoint_follows_the_whole_sweep(tmp_path: Path) -> None:
    """The counters are the whole sweep's (they carry on from level to level, as a Prometheus
    counter must), and `loadtape_stage{key="sweep_level"}` names the level running."""
    import time

    from scrape import Samples, free_port, scrape, total

    recs = [chat_record(start_ns=T0_NS + i * 10_000_000, model="small") for i in range(20)]
    cap = write_capture(tmp_path / "cap", recs)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"

    with running_gateway() as gw:
        proc = subprocess.Popen(
            [*CLI, "sweep", str(cap), "--target", gw.url, "--rates", "20,40",
             "--level-duration", "1.5s", "--out", str(tmp_path / "sw"),
             "--metrics-listen", f"127.0.0.1:{port}", "--metrics-linger", "30s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        levels_seen: list[str] = []
        sent_seen: list[float] = []
        final: Samples = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                final = scrape(url)
            except OSError:
                time.sleep(0.1)
                continue
            levels_seen += [lab["value"] for lab, _ in final.get("loadtape_stage", [])]
            sent_seen.append(total(final, "loadtape_sent_total"))
            if total(final, "loadtape_run_finished") == 1:
                break
            time.sleep(0.1)
        proc.terminate()  # the linger is cut short; the sweep itself is over
        _, err = proc.communicate(timeout=60)
    assert total(final, "loadtape_run_finished") == 1, err
    doc = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    counts = [f["count"] for f in doc["levels"]]
    assert [f["level"] for f in doc["levels"]] == [20, 40] and all(counts)
    assert "20" in levels_seen and levels_seen[-1] == "40", levels_seen
    assert total(final, "loadtape_requests_total") == sum(counts)
    assert total(final, "loadtape_sent_total") == sum(counts)  # both levels, not the last one
    assert total(final, "loadtape_scheduled_total") == sum(counts)
    assert sent_seen == sorted(sent_seen)  # a counter: it never went back at a new level


def test_a_level_on_a_busy_machine_is_said_in_the_verdicts() -> None:
    """A level whose report had a word on its machine (a busy one, a throttled cgroup): the
    sweep's verdicts repeat it for that level, and only for it."""
    from replay.decide.report.sweepview import verdicts

    note = "other work used 60% of this machine's 2 CPUs during the run"
    doc = {
        "kind": "concurrency",
        "levels": [
            {"level": 1.0, "machine": None},
            {"level": 50.0, "machine": note},
        ],
        "ceiling": None,
        "max_throughput": None,
        "p99_limit_ms": None,
        "slo": [],
        "stopped": None,
        "tolerance": 0.05,
    }
    said = [v for v in verdicts(doc) if "other work" in v]
    assert len(said) == 1 and said[0].endswith(f"50: {note}") and "1:" not in said[0]
