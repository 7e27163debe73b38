"""Requests due together on the compiled sender: their first writes go in one io_uring system
call (wire_c/uring.h) where the kernel has it, by send() one a request where it has not (or
LOADTAPE_WIRE_URING=0). Both ways against a real server on loopback: every request's bytes
whole and its own on its connection (a large body's rest after every head), the send stamps
(the kernel's, batched: never after the target read the request), a stale keep-alive
connection in the middle of a burst, and a whole replay's count of them in run.json."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rawserver import Peer, raw_server
from wired import needs_wire, resolve

from captures.testing import T0_NS, http_record, write_capture
from replay.mock.threaded import running_gateway
from replay.planrows import Request
from replay.rewrite import Prepared, Rewriter
from replay.send.outcome import Outcome
from replay.send.wire import WireClient
from replay.targets import parse_target

MS = 1_000_000
CLI = [sys.executable, "-c", "import cli; cli.main()"]
SIZES = [10, 2_000, 2_100, 300_000, 0, 65_536, 9, 120_000]  # around the 2 KB first write


@pytest.fixture(autouse=True, params=["uring", "send"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    needs_wire()
    if request.param == "send":
        monkeypatch.setenv("LOADTAPE_WIRE_URING", "0")
    else:
        monkeypatch.delenv("LOADTAPE_WIRE_URING", raising=False)
    return str(request.param)


def post(url: str, path: str, n: int) -> Prepared:
    body = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    headers = [("Content-Type", "application/octet-stream")]
    return Rewriter(parse_target(url)).prepare(Request("POST", path, None, headers, body))


def length_of(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b": ")
        if k.lower() == b"content-length":
            return int(v)
    return 0


async def burst(c: WireClient, url: str, sizes: list[int], due: int) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[Outcome]] = []
    for i, n in enumerate(sizes):
        fut: asyncio.Future[Outcome] = loop.create_future()
        futs.append(fut)
        c.submit_at(post(url, f"/r{i}", n), due, fut, resolve)
    end = time.monotonic() + 10
    while not all(f.done() for f in futs):
        assert time.monotonic() < end, "results did not come"
        c.collect()
        await asyncio.sleep(0.002)
    return [f.result() for f in futs]


def check_way(c: WireClient, way: str) -> None:
    if way == "send":
        assert not c.uring
    elif os.environ.get("LOADTAPE_REQUIRE_WIRE"):  # CI's kernel has io_uring
        assert c.uring, "io_uring was not taken up"
    elif not c.uring:
        pytest.skip("no io_uring here: requests due together go by send()")


async def test_a_bursts_requests_go_whole_and_their_own(way: str) -> None:
    """Eight requests due at one instant on warm connections: the target reads each request
    line, then exactly the body that request carries, and answers with what it read."""
    lock = threading.Lock()
    heads: list[bytes] = []
    arrived: dict[bytes, int] = {}  # the first burst's: when the target had read each head

    def echo(peer: Peer, n: int, head: bytes) -> bool:
        now = time.monotonic_ns()
        want = length_of(head)
        data = peer.buf[:want]
        peer.buf = peer.buf[want:]
        while len(data) < want:
            chunk = peer.sock.recv(min(65536, want - len(data)))
            if not chunk:
                return False
            data += chunk
        with lock:
            heads.append(head.split(b"\r\n")[0])
            arrived.setdefault(head.split(b" ")[1], now)
        ok = data == bytes(range(256)) * (want // 256) + bytes(range(want % 256))
        answer = b"whole" if ok else b"mixed"
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + answer)
        return True

    with raw_server(echo) as url:
        c = WireClient(parse_target(url), timeout=10)
        try:
            assert await c.warm(len(SIZES), 5.0) == len(SIZES)
            check_way(c, way)
            due = time.monotonic_ns() + 30 * MS
            outs = await burst(c, url, SIZES, due)
            again = await burst(c, url, SIZES, time.monotonic_ns() + 10 * MS)  # reused ones
        finally:
            await c.close()
        assert c.connects == len(SIZES)  # no request needed a connection of its own
        assert c.batched == (2 * len(SIZES) if way == "uring" else 0)
    for out in outs + again:
        assert (out.error, out.status, out.bytes_in) == (None, 200, 43)
        assert out.sent_ns <= out.headers_ns <= out.end_ns  # type: ignore[operator]
    assert all(due <= o.sent_ns < due + 500 * MS for o in outs)
    # a request is stamped before the target can have read it: the kernel's stamp of its
    # write, or the clock before its send(); never after (a clock read after a batched call
    # is after the first heads were read)
    for i, o in enumerate(outs):
        assert o.sent_ns <= arrived[f"/r{i}".encode()]
    if way == "uring":  # the kernel's stamps, one per write, in the order written
        sent = [o.sent_ns for o in outs]
        assert sent == sorted(sent) and len(set(sent)) == len(sent)
    assert sorted(heads) == sorted([f"POST /r{i} HTTP/1.1".encode() for i in range(len(SIZES))] * 2)


async def test_a_stale_connection_in_a_burst_takes_its_request_on_a_new_one(way: str) -> None:
    """The target closes every connection as its second request arrives (no byte answered):
    each request of the second burst goes again on a new connection, timed from its first
    try, and every answer is the target's."""

    def once(peer: Peer, n: int, head: bytes) -> bool:
        if n > 0:
            return False
        peer.body(length_of(head))
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    sizes = [100, 3_000, 50_000, 10]
    with raw_server(once) as url:
        c = WireClient(parse_target(url), timeout=10)
        try:
            await c.warm(len(sizes), 5.0)
            check_way(c, way)
            first = await burst(c, url, sizes, time.monotonic_ns() + 10 * MS)
            due = time.monotonic_ns() + 10 * MS
            second = await burst(c, url, sizes, due)
        finally:
            await c.close()
    assert [(o.error, o.status) for o in first + second] == [(None, 200)] * 8
    assert c.resends == len(sizes) and c.connects == 2 * len(sizes)
    assert all(due <= o.sent_ns for o in second)


def test_a_replays_burst_is_counted_in_run_json(way: str, tmp_path: Path) -> None:
    """A whole replay (the CLI: the compiled sender by default): 16 GETs due at one instant on
    connections opened before the start, then one alone. run.json says how many went in a
    batch."""
    records = [http_record(start_ns=T0_NS, path=f"/echo/{i}") for i in range(16)]
    records.append(http_record(start_ns=T0_NS + 50 * MS, path="/echo/last"))
    cap = write_capture(tmp_path / "cap", records)
    out = tmp_path / "run"
    with running_gateway(default_profile="instant") as gw:
        p = subprocess.run(
            [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(out), "-q"],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),  # LOADTAPE_WIRE_URING as the way sets it
        )
    assert p.returncode == 0, p.stderr
    doc = json.loads((out / "run.json").read_text())
    assert doc["client"] == "wire" and doc["counts"]["ok"] == 17
    conns = doc["connections"]
    assert conns["warmed"] == 16
    uring = way == "uring" and _has_uring()
    assert conns["batched"] == (16 if uring else 0)


def _has_uring() -> bool:
    from replay.send import _wire  # type: ignore[attr-defined]

    engine = _wire.Engine("127.0.0.1", 9, 0)
    try:
        return bool(engine.uring())
    finally:
        engine.close()
