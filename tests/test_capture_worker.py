"""The capture worker process: snapshots over a pipe, status back, fallback when it dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from captures.reader import Capture
from proxy_addons.feed import WorkerClient
from proxy_addons.settings import SinkConfig
from proxy_addons.sink import Snapshot


def _config(tmp: Path) -> SinkConfig:
    return SinkConfig(
        directory=str(tmp / "cap"),
        key_file=str(tmp / "key"),
        redact=True,
        extra_headers=[],
        extra_query=[],
        extra_json_keys=[],
        session_sources=[["connection", ""]],
        body_limit=1 << 20,
        queue_records=1000,
        queue_bytes=1 << 24,
        flush_interval=0.1,
        on_error="continue",
        status_file=str(tmp / "status.json"),
    )


def _snap(i: int) -> Snapshot:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"n{i}"}]}).encode()
    return Snapshot(
        conn_id=f"c{i}",
        inflight=1,
        req_start=1000.0 + i,
        req_end=1000.0 + i,
        method=b"POST",
        scheme=b"http",
        host="127.0.0.1",
        port=1,
        path=b"/v1/chat/completions",
        http_version=b"HTTP/1.1",
        req_headers=((b"Authorization", b"Bearer sk-abcdefghijklmnopqrstu"),),
        req_body=body,
        status=200,
        reason=b"OK",
        resp_headers=((b"Content-Type", b"text/plain"),),
        resp_start=1000.1 + i,
        resp_end=1000.2 + i,
        resp_body=b"ok",
    )


async def _until(pred: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_worker_records_and_reports_status(tmp_path: Path) -> None:
    fatal: list[str] = []

    async def main() -> WorkerClient:
        client = WorkerClient(_config(tmp_path), on_fatal=fatal.append)
        client.start(asyncio.get_running_loop())
        client.stats.filtered = 3
        for i in range(20):
            assert client.offer(_snap(i))
        await _until(lambda: client.stats.records == 20)
        client.close()
        return client

    client = asyncio.run(main())
    assert client.proc.returncode == 0 and not fatal
    rows = Capture(tmp_path / "cap").records()
    assert len(rows) == 20
    assert all("sk-abc" not in dict(r["req_headers"])["Authorization"] for r in rows)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["records"] == 20 and status["done"] and status["filtered"] == 3


def test_a_stalled_worker_never_blocks_the_proxy_and_misses_nothing(tmp_path: Path) -> None:
    """The worker stopped (SIGSTOP) while 6 MB of snapshots queue: more than the 1 MB pipe.
    The loop keeps its timers, every offer returns at once, and all of it is recorded once
    the worker goes on."""
    big = b"x" * (120 << 10)

    async def main() -> WorkerClient:
        client = WorkerClient(_config(tmp_path), on_fatal=lambda reason: None)
        client.start(asyncio.get_running_loop())
        assert client.offer(_snap(0))
        await _until(lambda: client.stats.records == 1)
        os.kill(client.proc.pid, signal.SIGSTOP)
        try:
            for i in range(1, 51):
                t0 = time.monotonic()
                snap = _snap(i)
                snap.resp_body = big
                assert client.offer(snap)
                assert time.monotonic() - t0 < 0.5  # a bound against blocking, not a figure
                await asyncio.sleep(0.005)
            assert client._unsent  # the pipe is full: the rest waits on the loop
            t0 = time.monotonic()
            await asyncio.sleep(0.05)
            assert time.monotonic() - t0 < 2.0
        finally:
            os.kill(client.proc.pid, signal.SIGCONT)
        await _until(lambda: client.stats.records == 51)
        client.close()
        return client

    client = asyncio.run(main())
    assert client.proc.returncode == 0 and client.stats.dropped == 0
    assert len(Capture(tmp_path / "cap").records(["req_start_ns"])) == 51


def test_a_full_queue_behind_a_stalled_worker_drops_and_counts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.queue_records = 10

    async def main() -> WorkerClient:
        client = WorkerClient(config, on_fatal=lambda reason: None)
        client.start(asyncio.get_running_loop())
        os.kill(client.proc.pid, signal.SIGSTOP)
        try:
            big = b"x" * (300 << 10)
            offered = []
            for i in range(40):
                snap = _snap(i)
                snap.resp_body = big
                offered.append(client.offer(snap))
                await asyncio.sleep(0.03)  # past the feed interval: each goes to the pipe
        finally:
            os.kill(client.proc.pid, signal.SIGCONT)
        assert not all(offered) and client.stats.dropped == offered.count(False)
        await _until(lambda: client.stats.records == offered.count(True))
        client.close()
        return client

    client = asyncio.run(main())
    rows = Capture(tmp_path / "cap").records(["req_start_ns"])
    assert len(rows) == client.stats.records and client.stats.dropped > 0


def test_worker_death_falls_back_to_recording_in_process(tmp_path: Path) -> None:
    async def main() -> WorkerClient:
        client = WorkerClient(_config(tmp_path), on_fatal=lambda reason: None)
        client.start(asyncio.get_running_loop())
        for i in range(10):
            client.offer(_snap(i))
        await _until(lambda: client.stats.records == 10)
        client.proc.kill()
        client.proc.wait()
        for i in range(10, 15):
            client.offer(_snap(i))
        await _until(lambda: client._fallback is not None)
        client.close()
        return client

    asyncio.run(main())
    rows = Capture(tmp_path / "cap").records(["req_start_ns"])
    # The dead worker's journal (10 records) is recovered by the in-process sink, which then
    # records the 5 offered after the death.
    assert len(rows) == 15


def test_the_proxy_side_loads_none_of_the_record_building_modules() -> None:
    """mitmdump imports the addon: pyarrow, numpy and the redaction policy stay in the worker
    (they made the proxy's start 0.4 s longer and its full collections a fifth longer)."""
    code = (
        "import sys, mitmproxy.http, proxy_addons.capture\n"
        "heavy = ('pyarrow', 'numpy', 'detect_secrets', 'captures.exchange', 'captures.redact')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
