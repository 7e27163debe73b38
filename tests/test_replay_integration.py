"""Whole replays against real servers on loopback (mock gateway, fault server)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from faultserver import FaultServer

from captures import hdr
from captures.testing import T0_NS, chat_record, http_record, write_capture
from replay.api import run_replay
from replay.measure.resultsdir import Results
from replay.mock.config import Faults
from replay.mock.threaded import running_gateway
from replay.workload.replaying import ReplayOptions

S = 1_000_000_000


def spaced(n: int, rate: float, **kw: object) -> list[dict[str, object]]:
    return [chat_record(start_ns=T0_NS + round(i * S / rate), **kw) for i in range(n)]  # type: ignore[arg-type]


def results(out: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(out / "results.parquet").to_pydict()
    return {k: np.array(v, dtype=object) for k, v in t.items()}


def test_a_10s_capture_at_5x_takes_2s_and_keeps_its_order(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "cap", spaced(50, 5.0, max_tokens=2, model="x"))  # 0 .. 9.8 s
    with running_gateway(default_profile="instant") as gw:
        r = run_replay(
            ReplayOptions(capture=str(cap), target=gw.url, out=str(tmp_path / "run"), speed=5),
            install_signals=False,
        )
    assert r.run["counts"]["ok"] == 50 and r.run["counts"]["failed"] == 0
    res = results(tmp_path / "run")
    order = np.argsort(res["seq"].astype(np.int64))
    intended = res["intended_ns"][order].astype(np.int64)
    sent = res["sent_ns"][order].astype(np.int64)
    offsets_ms = (intended - intended[0]) / 1e6
    assert offsets_ms == pytest.approx([i * 200 / 5 for i in range(50)], abs=0.01)  # 200 ms / 5
    span_s = (sent[-1] - sent[0]) / 1e9
    assert 1.9 < span_s < 2.1, span_s
    assert list(np.argsort(sent, kind="stable")) == list(range(50))  # sent in recorded order
    assert (sent - intended).max() / 1e6 < 50  # no runaway lag


def test_stall_shows_in_latency_from_intended_while_service_time_hides_it(tmp_path: Path) -> None:
    """The coordinated-omission case: the gateway stalls 1 s every 3 s at 100 req/s. Requests
    that could not be sent during a stall (in-flight bound) are late: latency from the intended
    time counts that, service time from the actual send does not."""
    cap = write_capture(tmp_path / "cap", spaced(650, 100.0, max_tokens=1, model="x"))
    faults = Faults(stall_ms=1000, stall_every_s=3.0)
    with running_gateway(default_profile="instant", faults=faults) as gw:
        r = run_replay(
            ReplayOptions(
                capture=str(cap), target=gw.url, out=str(tmp_path / "run"), max_in_flight=4
            ),
            install_signals=False,
        )
    assert r.run["counts"]["ok"] == 650
    hs, _ = r.metrics.total()
    lat = {p: hdr.value_at_percentile(hs["latency"], p) / 1000 for p in (50, 90, 99)}
    svc = {p: hdr.value_at_percentile(hs["service"], p) / 1000 for p in (50, 90, 99)}
    lag99 = hdr.value_at_percentile(hs["lag"], 99) / 1000
    assert lat[99] > 800, lat  # the stall is in the tail of latency-from-intended
    assert lat[90] > 300, lat  # a third of the time is stalled: the p90 sees it
    assert svc[90] < 50, svc  # ...service time from the actual send mostly hides it
    assert lag99 > 800  # the schedule lag says why


def test_streamed_ttft_and_itl_match_the_mock_gateway(tmp_path: Path) -> None:
    # fast-local: TTFT 15 ms + 0.01 ms/prompt token, 4 ms per output token
    cap = write_capture(
        tmp_path / "cap", spaced(40, 20.0, stream=True, max_tokens=20, model="llama-3.1-8b")
    )
    with running_gateway() as gw:
        r = run_replay(
            ReplayOptions(capture=str(cap), target=gw.url, out=str(tmp_path / "run")),
            install_signals=False,
        )
    hs, st = r.metrics.total()
    ttft50 = hdr.value_at_percentile(hs["ttft"], 50) / 1000
    itl50 = hdr.value_at_percentile(hs["itl"], 50) / 1000
    tpot50 = hdr.value_at_percentile(hs["tpot"], 50) / 1000
    assert 14 <= ttft50 <= 30, ttft50
    assert 3 <= itl50 <= 6, itl50
    assert 3 <= tpot50 <= 7, tpot50
    assert st.completion_tokens == 40 * 20
    assert hs["itl"].total_count == 40 * 19  # one gap between each pair of token events


def test_failures_are_rows_and_the_run_ends(tmp_path: Path) -> None:
    recs = [
        http_record(start_ns=T0_NS + i * S // 20, path=p)
        for i, p in enumerate(["/ok", "/close", "/reset-body", "/hang", "/invalid", "/503", "/ok"])
    ]
    cap = write_capture(tmp_path / "cap", recs)
    out = tmp_path / "run"

    async def serve(stop: threading.Event, ready: threading.Event, holder: dict[str, str]) -> None:
        async with FaultServer() as srv:
            holder["url"] = srv.url
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    stop, ready, holder = threading.Event(), threading.Event(), {}
    th = threading.Thread(target=lambda: asyncio.run(serve(stop, ready, holder)))
    th.start()
    try:
        assert ready.wait(10)
        r = run_replay(
            ReplayOptions(
                capture=str(cap),
                target=holder["url"],
                out=str(out),
                timeout_s=1.0,
                expect_status="503",
            ),
            install_signals=False,
        )
    finally:
        stop.set()
        th.join(10)
    res = results(out)
    by_path = {
        p: (o, k, s)
        for p, o, k, s in zip(
            res["endpoint"], res["outcome"], res["error_kind"], res["status"], strict=True
        )
    }
    assert by_path["/close"][:2] == ("failed", "reset")
    assert by_path["/reset-body"][:2] == ("failed", "reset")
    assert by_path["/hang"][:2] == ("failed", "timeout")
    assert by_path["/invalid"][:2] == ("failed", "protocol")
    assert by_path["/503"] == ("expected", None, 503)
    assert r.run["counts"] == {
        **r.run["counts"],
        "sent": 7,
        "ok": 2,
        "expected": 1,
        "failed": 4,
    }
    _, st = r.metrics.total()
    assert st.errors == {"reset": 2, "timeout": 1, "protocol": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_target_gives_connect_errors_and_ends(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "cap", spaced(5, 50.0))
    r = run_replay(
        ReplayOptions(
            capture=str(cap), target=f"http://127.0.0.1:{free_port()}", out=str(tmp_path / "run")
        ),
        install_signals=False,
    )
    assert r.run["counts"]["failed"] == 5
    assert r.metrics.total()[1].errors == {"connect": 5}


def _session_overlaps(out: Path) -> int:
    """How many times a session's request was sent before its previous one finished."""
    res = results(out)
    n = 0
    for sess in set(res["session"]):
        rows = sorted(
            (int(a), int(b), int(c))
            for a, b, c, ss in zip(
                res["seq"], res["sent_ns"], res["end_ns"], res["session"], strict=True
            )
            if ss == sess
        )
        n += sum(
            1
            for (_, _, end_prev), (_, sent_next, _) in itertools.pairwise(rows)
            if sent_next < end_prev
        )
    return n


@pytest.mark.parametrize("sessions", ["ordered", "none"])
def test_ordered_sessions_against_the_gateway(tmp_path: Path, sessions: str) -> None:
    # Two sessions, requests 10 ms apart, each taking ~250 ms (slow-cloud TTFT).
    recs = [
        chat_record(
            start_ns=T0_NS + i * 10_000_000, session_key=f"s{i % 2}", max_tokens=1, model="x"
        )
        for i in range(6)
    ]
    cap = write_capture(tmp_path / "cap", recs)
    with running_gateway(models={"x": "slow-cloud"}) as gw:
        run_replay(
            ReplayOptions(
                capture=str(cap), target=gw.url, out=str(tmp_path / "run"), sessions=sessions
            ),
            install_signals=False,
        )
    overlaps = _session_overlaps(tmp_path / "run")
    if sessions == "ordered":
        assert overlaps == 0  # each request after its session's previous one finished
    else:
        assert overlaps == 4  # open loop: all six go within 50 ms, sessions or not


def test_results_directory_reads_back(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "cap", spaced(20, 50.0, max_tokens=3, model="x"))
    with running_gateway(default_profile="instant") as gw:
        r = run_replay(
            ReplayOptions(
                capture=str(cap),
                target=gw.url,
                out=str(tmp_path / "run"),
                headers=["Authorization: Bearer ${SECRET_FOR_TEST}"],
                env={"SECRET_FOR_TEST": "sk-injected-credential-0123456789"},
            ),
            install_signals=False,
        )
    back = Results.open(tmp_path / "run")
    assert back.metrics.total()[1].ok == 20 == r.metrics.total()[1].ok
    assert back.table(["seq"]).num_rows == 20
    assert back.run["counts"]["ok"] == 20
    for f in (tmp_path / "run").iterdir():
        assert b"sk-injected-credential" not in f.read_bytes(), f
    assert back.run["options"]["headers"] == ["Authorization: <set>"]


@pytest.fixture()
def small_capture(tmp_path: Path) -> Iterator[Path]:
    yield write_capture(tmp_path / "cap", spaced(10, 50.0, max_tokens=2, model="x"))


def test_replay_command(tmp_path: Path, small_capture: Path) -> None:
    run = [sys.executable, "-c", "import cli; cli.main()"]
    with running_gateway(default_profile="instant") as gw:
        p = subprocess.run(
            [
                *run,
                "replay",
                str(small_capture),
                "--target",
                gw.url,
                "--out",
                str(tmp_path / "run"),
                "--speed",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 0, p.stderr
    assert "10 requests" in p.stdout and "ok 10" in p.stdout
    assert json.loads((tmp_path / "run" / "run.json").read_text())["counts"]["ok"] == 10
    for args, needle in [
        (["replay", str(small_capture)], "--target"),
        (["replay", str(small_capture), "--target", "127.0.0.1:1"], "want an http"),
        (
            ["replay", str(small_capture), "--target", "http://127.0.0.1:1", "--speed", "0"],
            "speed must be a finite number > 0",
        ),
        (["replay", str(tmp_path / "nope"), "--target", "http://127.0.0.1:1"], "no such capture"),
        (
            ["replay", str(small_capture), "--target", "http://127.0.0.1:1", "--timeout", "soon"],
            "--timeout",
        ),
        (
            ["replay", str(small_capture), "--target", "http://127.0.0.1:1", "--header", "X"],
            "--header",
        ),
    ]:
        p = subprocess.run([*run, *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_several_targets_get_the_same_plan_side_by_side(tmp_path: Path) -> None:
    """`--target a=URL --target b=URL`: each target gets every shot, its own model map and
    headers, and its own groups in the histograms; run.json names both (masked)."""
    cap = write_capture(tmp_path / "cap", spaced(12, 40.0, max_tokens=2, model="x"))
    with (
        running_gateway(default_profile="instant") as fast,
        running_gateway(default_profile="instant") as other,
    ):
        r = run_replay(
            ReplayOptions(
                capture=str(cap),
                target=[f"fast={fast.url}", f"other={other.url}"],
                out=str(tmp_path / "run"),
                speed=4,
                model_map=["other:x=y"],
                headers=["other:X-Only-Other: 1"],
                sessions="ordered",
            ),
            install_signals=False,
        )
        assert fast.stats.requests == 12 and other.stats.requests == 12
    res = results(tmp_path / "run")
    by_target = {t: res["model"][res["target"] == t] for t in ("fast", "other")}
    assert sorted(set(by_target["fast"])) == ["x"] and len(by_target["fast"]) == 12
    assert sorted(set(by_target["other"])) == ["y"] and len(by_target["other"]) == 12
    assert {k[1] for k in r.metrics.hists} == {"fast", "other"}
    assert r.run["counts"]["ok"] == 24
    assert set(r.run["targets"]) == {"fast", "other"}
    assert set(r.run["streams"]) == {"replay@fast", "replay@other"}
    back = Results.open(tmp_path / "run")
    assert {k[1] for k in back.metrics.hists} == {"fast", "other"}


def test_several_targets_need_names(tmp_path: Path, small_capture: Path) -> None:
    run = [sys.executable, "-c", "import cli; cli.main()"]
    for targets, needle in [
        (["http://127.0.0.1:1", "http://127.0.0.1:2"], "name each"),
        (["a=http://127.0.0.1:1", "a=http://127.0.0.1:2"], "used twice"),
    ]:
        args = ["replay", str(small_capture), "--out", str(tmp_path / "r")]
        for t in targets:
            args += ["--target", t]
        p = subprocess.run([*run, *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
