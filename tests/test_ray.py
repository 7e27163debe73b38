"""--ray: the shards as Ray actors, on a Ray cluster started on 127.0.0.1 inside the test
(skipped when ray is not installed: `pip install '.[ray]'`; CI installs it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from captures.testing import T0_NS, chat_record, http_record, write_capture
from replay.measure.resultsdir import Results
from replay.mock.threaded import running_gateway
from replay.scale.ray_backend import skew_warnings

if not os.environ.get("LOADTAPE_REQUIRE_RAY"):
    pytest.importorskip("ray", reason="ray not installed (pip install 'loadtape[ray]')")

CLI = [sys.executable, "-c", "import cli; cli.main()"]
MS = 1_000_000
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_skew_warnings_by_table() -> None:
    assert skew_warnings([(0.1, 0.3)], rate=100) == []  # 0.3 ms against 10 ms gaps
    assert len(skew_warnings([(0.1, 0.8)], rate=1000)) == 1  # 0.8 ms against 1 ms gaps
    assert len(skew_warnings([(40.0, 6.0)], rate=None)) == 1  # over 5 ms at any rate


def _free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 20000:  # Ray's worker ports are 10002-19999
            return port


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    ray_bin = str(Path(sys.executable).parent / "ray")
    with open(log, "wb") as fh:
        head = subprocess.Popen(
            [
                ray_bin,
                "start",
                "--head",
                "--block",
                f"--port={port}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while b"Ray runtime started" not in log.read_bytes():
            assert head.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "ray did not start"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # ray start --block stops what it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # and anything left in its session
        head.wait(10)


def _scrape_when_finished(
    url: str, proc: subprocess.Popen[str], timeout: float
) -> dict[str, float]:
    """Totals by metric name from the endpoint, once the run says it has finished."""
    from scrape import scrape

    deadline = time.monotonic() + timeout
    totals: dict[str, float] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            samples = scrape(url)
        except OSError:
            time.sleep(0.5)
            continue
        totals = {name: sum(v for _, v in got) for name, got in samples.items()}
        if totals.get("loadtape_run_finished") == 1:
            break
        time.sleep(0.5)
    return totals


def test_a_run_on_ray_actors_matches_one_process(ray_cluster: str, tmp_path: Path) -> None:
    recs = []
    for i in range(200):
        t = T0_NS + i * 10 * MS
        if i % 2:
            recs.append(http_record(start_ns=t, path="/echo", query="delay_ms=10"))
        else:
            recs.append(chat_record(start_ns=t, stream=True, max_tokens=3, session_key=f"s{i % 5}"))
    cap = write_capture(tmp_path / "cap", recs)
    with running_gateway() as gw:
        base = [
            *CLI,
            "replay",
            str(cap),
            "--target",
            gw.url,
            "--speed",
            "2",
            "--sessions",
            "ordered",
            "-q",
        ]
        one = subprocess.run(
            [*base, "--out", str(tmp_path / "one")],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert one.returncode == 0, one.stderr
        port = _free_port()  # the driver's endpoint shows the whole run (the actors' sum)
        proc = subprocess.Popen(
            [*base, "--out", str(tmp_path / "ray"), "--ray", ray_cluster, "--workers", "2",
             "--metrics-listen", f"127.0.0.1:{port}", "--metrics-linger", "60s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )  # fmt: skip
        final = _scrape_when_finished(f"http://127.0.0.1:{port}/metrics", proc, 300)
        proc.terminate()  # the linger is cut short; the run itself is over
        _, err = proc.communicate(timeout=60)
        assert final.get("loadtape_run_finished") == 1, err[-3000:]
        assert final.get("loadtape_requests_total") == final.get("loadtape_sent_total") == 200
        assert gw.stats.requests == 400
    doc = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert doc["workers"]["backend"] == "ray" and doc["workers"]["count"] == 2
    assert all(w["exitcode"] == 0 and w["sent"] > 0 for w in doc["workers"]["per_worker"])
    assert len(doc["ray"]["clock_offsets_ms"]) == 2
    a, b = Results.open(tmp_path / "one"), Results.open(tmp_path / "ray")
    for key in ("sent", "ok", "failed"):
        assert a.run["counts"][key] == b.run["counts"][key] == (200 if key != "failed" else 0)
    assert {k: a.metrics.stats[k].count for k in a.metrics.hists} == {
        k: b.metrics.stats[k].count for k in b.metrics.hists
    }
    assert sorted(b.table(["seq"]).column("seq").to_pylist()) == list(range(200))
    report = subprocess.run(
        [*CLI, "report", str(tmp_path / "ray")], capture_output=True, text=True, timeout=60
    )
    assert report.returncode == 0 and "200 requests" in report.stdout
