"""The capture worker process: snapshots over a pipe, status back, fallback when it dies."""

from __future__ import annotations

import json
import time
from pathlib import Path

from captures.reader import Capture
from proxy_addons.sink import Snapshot
from proxy_addons.worker import SinkConfig, WorkerClient


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


def _wait(pred: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_worker_records_and_reports_status(tmp_path: Path) -> None:
    fatal: list[str] = []
    client = WorkerClient(_config(tmp_path), on_fatal=fatal.append)
    client.start()
    client.stats.filtered = 3
    for i in range(20):
        assert client.offer(_snap(i))
    _wait(lambda: client.stats.records == 20)
    client.close()
    assert client.proc.returncode == 0 and not fatal
    rows = Capture(tmp_path / "cap").records()
    assert len(rows) == 20
    assert all("sk-abc" not in dict(r["req_headers"])["Authorization"] for r in rows)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["records"] == 20 and status["done"] and status["filtered"] == 3


def test_worker_death_falls_back_to_recording_in_process(tmp_path: Path) -> None:
    client = WorkerClient(_config(tmp_path), on_fatal=lambda reason: None)
    client.start()
    for i in range(10):
        client.offer(_snap(i))
    _wait(lambda: client.stats.records == 10)
    client.proc.kill()
    client.proc.wait()
    for i in range(10, 15):
        client.offer(_snap(i))
    _wait(lambda: client._fallback is not None)
    client.close()
    rows = Capture(tmp_path / "cap").records(["req_start_ns"])
    # The dead worker's journal (10 records) is recovered by the in-process sink, which then
    # records the 5 offered after the death.
    assert len(rows) == 15
