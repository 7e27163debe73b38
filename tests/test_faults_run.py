"""Whole replays against a target that misbehaves in every way the fault server knows: each run
ends within its timeouts, every shot is accounted for, and rows carry the right error kind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from faultserver import FaultServer

from captures.testing import T0_NS, http_record, write_capture
from replay.api import run_replay
from replay.workload.replaying import ReplayOptions

CLI = [sys.executable, "-c", "import cli; cli.main()"]
MS = 1_000_000


class ThreadedFaults:
    """The fault server on its own event loop in a thread (a replay runs its own loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.srv = FaultServer()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.srv.__aenter__(), self.loop).result(10)
        return self.srv

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.srv.__aexit__(None, None, None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    with ThreadedFaults() as srv:
        yield srv


def _cap(tmp_path: Path, path: str, n: int = 20, query: str | None = None) -> Path:
    recs = [http_record(start_ns=T0_NS + i * 10 * MS, path=path, query=query) for i in range(n)]
    return write_capture(tmp_path / "cap", recs)


# path, query, (status, error kind, outcome) wanted for every row
CASES = [
    ("/ok", None, (200, None, "ok")),
    ("/close", None, (None, "reset", "failed")),
    ("/reset-headers", None, (None, "reset", "failed")),
    ("/reset-body", None, (200, "reset", "failed")),
    ("/invalid", None, (None, "protocol", "failed")),
    ("/huge-headers", None, (200, None, "ok")),  # 1.6 MB of headers: read, not choked on
    ("/drip", "gap=0.005", (200, None, "ok")),
    ("/hang", None, (None, "timeout", "failed")),
    ("/sse-forever", None, (200, "timeout", "failed")),
    ("/sse-malformed", None, (200, None, "ok")),
    ("/503", None, (503, None, "expected")),  # with Retry-After, expected by --expect-status
    ("/429", None, (429, None, "failed")),  # not expected: a failure with its status
    ("/redirect", None, (302, None, "failed")),  # not followed
]


@pytest.mark.parametrize(("path", "query", "want"), CASES, ids=[c[0] for c in CASES])
def test_every_fault_ends_and_every_shot_is_accounted(
    faults: FaultServer, tmp_path: Path, path: str, query: str | None, want: tuple[object, ...]
) -> None:
    cap = _cap(tmp_path, path, query=query)
    t0 = time.monotonic()
    r = run_replay(
        ReplayOptions(
            capture=str(cap),
            target=faults.url,
            out=str(tmp_path / "run"),
            timeout_s=1.0,
            expect_status="503",
        ),
        install_signals=False,
    )
    assert time.monotonic() - t0 < 10  # 0.2 s of schedule + a 1 s timeout, with room
    c = r.run["counts"]
    assert c["planned"] == 20 == c["sent"] + sum(c["unsent"].values())
    assert c["sent"] == c["ok"] + c["expected"] + c["failed"]
    t = pq.read_table(tmp_path / "run" / "results.parquet").to_pydict()
    assert len(t["seq"]) == c["sent"] == 20
    status, kind, outcome = want
    assert set(zip(t["status"], t["error_kind"], t["outcome"], strict=True)) == {
        (status, kind, outcome)
    }
    for msg, k in zip(t["error_message"], t["error_kind"], strict=True):
        assert (msg is not None) == (k is not None)


def test_redirects_are_not_followed(faults: FaultServer, tmp_path: Path) -> None:
    """A 302 to another host is a result, and nothing reaches that host."""
    import socket

    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.settimeout(0.5)
    port = trap.getsockname()[1]
    cap = _cap(tmp_path, "/redirect", n=5, query=f"to=http://127.0.0.1:{port}/elsewhere")
    for client in ("fast", "aiohttp"):
        r = run_replay(
            ReplayOptions(
                capture=str(cap), target=faults.url, out=str(tmp_path / client), client=client
            ),
            install_signals=False,
        )
        assert r.run["counts"]["failed"] == 5
    with pytest.raises(TimeoutError):
        trap.accept()  # no connection ever came
    trap.close()


def test_refused_target_counts_every_shot(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cap = _cap(tmp_path, "/ok")
    r = run_replay(
        ReplayOptions(
            capture=str(cap), target=f"http://127.0.0.1:{port}", out=str(tmp_path / "run")
        ),
        install_signals=False,
    )
    assert r.run["counts"]["failed"] == 20 and r.run["counts"]["sent"] == 20
    assert {k for m in r.metrics.stats.values() for k in m.errors} == {"connect"}


def test_in_flight_bound_counts_waiting_as_lag(faults: FaultServer, tmp_path: Path) -> None:
    """A target that never answers and an in-flight bound of 5: the rest wait, their wait is
    lag, and when the run is over every shot is accounted for (timeouts)."""
    cap = _cap(tmp_path, "/hang", n=15)
    r = run_replay(
        ReplayOptions(
            capture=str(cap),
            target=faults.url,
            out=str(tmp_path / "run"),
            timeout_s=0.5,
            max_in_flight=5,
        ),
        install_signals=False,
    )
    c = r.run["counts"]
    assert c["sent"] == 15 and c["failed"] == 15
    lag = r.metrics.total()[0]["lag"]
    assert lag.get_value_at_percentile(100) >= 900_000  # the last batch waited two timeouts


def test_ctrl_c_mid_run_keeps_what_was_measured_and_reports(
    faults: FaultServer, tmp_path: Path
) -> None:
    recs = [http_record(start_ns=T0_NS + i * 20 * MS, path="/ok") for i in range(1000)]  # 20 s
    cap = write_capture(tmp_path / "cap", recs)
    base = faults.requests  # the server is the module's: count from here
    proc = subprocess.Popen(
        [*CLI, "replay", str(cap), "--target", faults.url, "--out", str(tmp_path / "run"), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30  # it plans ahead first, and a clean CI machine is slow
    while faults.requests < base + 60 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert faults.requests >= base + 60, "the replay never sent"
    os.kill(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    doc = json.loads((tmp_path / "run" / "run.json").read_text())
    assert doc["interrupted"] and 50 < doc["counts"]["sent"] < 1000
    assert pq.read_metadata(tmp_path / "run" / "results.parquet").num_rows == doc["counts"]["sent"]
    rep = subprocess.run(
        [*CLI, "report", str(tmp_path / "run"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rep.returncode == 0
    assert json.loads(rep.stdout)["total"]["count"] == doc["counts"]["sent"]
    assert (
        "interrupted"
        in subprocess.run(
            [*CLI, "report", str(tmp_path / "run")], capture_output=True, text=True, timeout=60
        ).stdout
    )


def _peak_rss_mb(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    import psutil

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    return peak / 2**20, subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_memory_stays_bounded_over_100k_requests(faults: FaultServer, tmp_path: Path) -> None:
    """Results are written in batches and in-flight work is bounded: 100k requests peak at
    about the memory of 20k (measured: within a few MB)."""
    cap = _cap(tmp_path, "/ok", n=1000)
    peaks = {}
    for n in (20_000, 100_000):
        peak, p = _peak_rss_mb(
            [
                *CLI,
                "replay",
                str(cap),
                "--target",
                faults.url,
                "--concurrency",
                "32",
                "--requests",
                str(n),
                "--out",
                str(tmp_path / f"r{n}"),
                "-q",
            ]
        )
        assert p.returncode == 0, p.stderr
        doc = json.loads((tmp_path / f"r{n}" / "run.json").read_text())
        assert doc["counts"]["sent"] == n and doc["counts"]["ok"] == n
        peaks[n] = peak
    assert peaks[100_000] < 400, peaks
    assert peaks[100_000] - peaks[20_000] < 50, peaks  # 5x the requests, not 5x the memory
