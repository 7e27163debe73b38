"""The compiled sender's own ways, against real servers on loopback: each request written at
its instant and never before, the answer's reads stamped as they came (a stream's token gaps
survive the batch), the engine's framing (interim heads, a body cut by the close, trailers), a
stale keep-alive connection's request sent again, requests taken back unsent or abandoned in
flight, and a target that answers before it has read the body. The error kinds every sender
shares are in test_client.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import pytest
from faultserver import FaultServer
from rawserver import Peer, raw_server
from wired import needs_wire, resolve

from replay.mock.config import GatewayConfig
from replay.mock.gateway import MockGateway
from replay.planrows import Request
from replay.rewrite import Prepared, Rewriter
from replay.send.outcome import Outcome
from replay.send.wire import WireClient
from replay.targets import parse_target

MS = 1_000_000


@pytest.fixture(autouse=True)
def _built() -> None:
    needs_wire()


def prepared(url: str, path: str, method: str = "GET", body: bytes | None = None) -> Prepared:
    headers = [("Content-Type", "application/json")] if body else []
    return Rewriter(parse_target(url)).prepare(Request(method, path, None, headers, body))


async def gather(client: WireClient, futs: list[asyncio.Future[Outcome]], s: float = 10) -> None:
    """Take the engine's results until every future is done (the dispatcher's tick)."""
    end = time.monotonic() + s
    while not all(f.done() for f in futs):
        assert time.monotonic() < end, "results did not come"
        client.collect()
        await asyncio.sleep(0.002)


async def test_each_request_goes_at_its_instant_never_before() -> None:
    async with MockGateway(GatewayConfig(default_profile="instant")) as gw:
        c = WireClient(parse_target(gw.url), timeout=5)
        loop = asyncio.get_running_loop()
        start = time.monotonic_ns() + 20 * MS
        dues = [start + k * 7 * MS for k in (0, 1, 2, 2, 2, 5)]  # three due at one instant
        futs: list[asyncio.Future[Outcome]] = []
        try:
            for due in reversed(dues):  # handed over out of order: sent in order of instant
                fut: asyncio.Future[Outcome] = loop.create_future()
                futs.insert(0, fut)
                c.submit_at(prepared(gw.url, "/health"), due, fut, resolve)
            await gather(c, futs)
        finally:
            await c.close()
    outs = [f.result() for f in futs]
    assert [(o.error, o.status) for o in outs] == [(None, 200)] * len(dues)
    for o, due in zip(outs, dues, strict=True):
        assert due <= o.sent_ns <= o.headers_ns <= o.end_ns  # type: ignore[operator]
    sent = [o.sent_ns for o in outs]
    assert sent[0] < sent[1] < min(sent[2:5]) and max(sent[2:5]) < sent[5]


async def test_a_streams_token_gaps_are_the_reads_stamps_not_the_batchs() -> None:
    """Results are taken every 50 ms here, far slower than the tokens come (4 ms apart): the
    gaps measured are still the stream's, from the engine's stamps of each read."""
    async with MockGateway(GatewayConfig(default_profile="fast-local")) as gw:
        c = WireClient(parse_target(gw.url), timeout=5)
        body = (
            b'{"model":"small","messages":[{"role":"user","content":"hi"}],"stream":true,'
            b'"max_tokens":12,"stream_options":{"include_usage":true}}'
        )
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        try:
            c.submit_at(prepared(gw.url, "/v1/chat/completions", "POST", body), 0, fut, resolve)
            end = time.monotonic() + 10
            while not fut.done() and time.monotonic() < end:
                await asyncio.sleep(0.05)
                c.collect()
            o = fut.result()
        finally:
            await c.close()
    assert o.error is None and o.status == 200 and o.complete
    assert (o.completion_tokens, o.finish_reason) == (12, "length")
    assert o.events >= 12 and len(o.token_ns) >= 12
    ttft_ms = (o.first_token_ns - o.sent_ns) / 1e6  # type: ignore[operator]
    gaps_ms = [(b - a) / 1e6 for a, b in zip(o.token_ns, o.token_ns[1:], strict=False)]
    assert 14 <= ttft_ms < 60, ttft_ms  # fast-local: 15 ms + 0.01 ms/token
    assert 3 <= sorted(gaps_ms)[len(gaps_ms) // 2] < 10, gaps_ms  # 4 ms per token


def _framings(peer: Peer, n: int, head: bytes) -> bool:
    conn, path = peer.sock, head.split(b" ", 2)[1]
    if path == b"/interim":
        conn.sendall(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
    elif path == b"/trailers":
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n0\r\nX-Check: 1\r\n\r\n"
        )
    elif path == b"/no-content":
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    elif path == b"/head":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")  # HEAD: no body
    elif path == b"/extra":  # bytes past the response: the connection is not reused
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
    elif path == b"/upgrade":
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
    elif path == b"/drip":  # the head and the body in reads 30 ms apart, cut by the close
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        time.sleep(0.03)
        conn.sendall(b"x" * 1000)
        return False
    return True


async def test_the_engines_framing_of_every_shape_of_answer() -> None:
    paths = ["/interim", "/trailers", "/no-content", "/head", "/extra", "/trailers", "/drip"]
    with raw_server(_framings) as url:
        c = WireClient(parse_target(url), timeout=5)
        loop = asyncio.get_running_loop()
        outs = []
        try:
            for p in [*paths, "/upgrade"]:  # one at a time: each on the connection left
                fut: asyncio.Future[Outcome] = loop.create_future()
                c.submit_at(prepared(url, p, "HEAD" if p == "/head" else "GET"), 0, fut, resolve)
                await gather(c, [fut])
                outs.append(fut.result())
        finally:
            await c.close()
    ok = outs[: len(paths)]
    assert [(o.error, o.status) for o in ok] == [
        (None, 200), (None, 200), (None, 204), (None, 200), (None, 200), (None, 200), (None, 200)
    ]  # fmt: skip
    drip = ok[-1]
    assert drip.bytes_in > 1000 and drip.end_ns - drip.headers_ns >= 25 * MS  # type: ignore[operator]
    assert outs[-1].error == "protocol" and "upgrade" in (outs[-1].error_msg or "")
    # 204, HEAD and the trailers kept the connection; the extra bytes and the close did not
    assert c.connects == 3


async def test_a_stale_keep_alive_connection_takes_the_request_on_a_new_one() -> None:
    """The target closes a kept-alive connection as the next request goes out on it (no byte
    answered): that request is sent again on a new connection, timed from its first try."""

    def once_per_connection(peer: Peer, n: int, head: bytes) -> bool:
        if n > 0:
            return False  # closed: as if its FIN had crossed the request
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    with raw_server(once_per_connection) as url:
        c = WireClient(parse_target(url), timeout=5)
        loop = asyncio.get_running_loop()
        outs = []
        try:
            for _ in range(3):
                fut: asyncio.Future[Outcome] = loop.create_future()
                t0 = time.monotonic_ns()
                c.submit_at(prepared(url, "/ok"), t0, fut, resolve)
                await gather(c, [fut])
                outs.append(fut.result())
        finally:
            await c.close()
    assert [(o.error, o.status) for o in outs] == [(None, 200)] * 3
    assert c.resends == 2 and c.connects == 3


async def test_unsent_requests_come_back_and_in_flight_ones_are_abandoned() -> None:
    async with MockGateway(GatewayConfig(default_profile="instant")) as gw:
        c = WireClient(parse_target(gw.url), timeout=5)
        loop = asyncio.get_running_loop()
        unsent: list[int] = []
        later: asyncio.Future[Outcome] = loop.create_future()
        far = time.monotonic_ns() + 60 * 1_000_000_000
        for k in range(3):
            # the tag k comes back to unsent
            c.submit_at(
                prepared(gw.url, "/health"), far, k, lambda _, o: later.set_result(o), unsent.append
            )
        c.unsend()
        assert c.collect() == 3 and sorted(unsent) == [0, 1, 2] and not later.done()
        assert c.outstanding == 0
        await c.close()
    async with FaultServer() as srv:  # a request the target never answers, when closed
        c = WireClient(parse_target(srv.url), timeout=5)
        held: asyncio.Future[Outcome] = loop.create_future()
        c.submit_at(prepared(srv.url, "/hang"), 0, held, resolve)
        await asyncio.sleep(0.1)
        await c.close()
    o = held.result()
    assert o.error == "interrupted" and o.sent_ns > 0 and c.outstanding == 0


async def test_a_body_answered_early_does_not_become_the_next_request() -> None:
    """The target answers on the head and reads the body after (nginx's `return`, an early
    413): the next request must not follow a body cut short on that connection."""
    seen: list[tuple[bytes, int]] = []

    def early(peer: Peer, n: int, head: bytes) -> bool:
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b": ")
            if k.lower() == b"content-length":
                length = int(v)
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # before the body
        got = peer.body(length)
        seen.append((head.split(b"\r\n")[0], got))
        return got == length

    sizes = [4096, 300_000, 10, 0]
    with raw_server(early) as url:
        c = WireClient(parse_target(url), timeout=10)
        loop = asyncio.get_running_loop()
        outs = []
        try:
            for i, n in enumerate(sizes):
                fut: asyncio.Future[Outcome] = loop.create_future()
                c.submit_at(prepared(url, f"/r{i}", "POST", b"x" * n), 0, fut, resolve)
                await gather(c, [fut])
                outs.append(fut.result())
        finally:
            await c.close()
    assert [(o.error, o.status) for o in outs] == [(None, 200)] * len(sizes)
    # every request line the target read was a request's own; a body cut short (the engine
    # closes a connection whose answer came before its body was all written) ends that
    # connection, never runs into the next request
    assert [line for line, _ in seen] == [f"POST /r{i} HTTP/1.1".encode() for i in range(4)]
    whole = [got == sizes[i] for i, (_, got) in enumerate(seen)]
    assert whole[0] and whole[2] and whole[3]


async def test_of_several_addresses_the_one_that_takes_a_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """localhost may resolve to ::1 first while the target listens on 127.0.0.1 only: the
    engine dials the address that answers, as asyncio's connection would."""
    import replay.send.wire as wire_mod

    real = socket.getaddrinfo

    def both(host: str, port: int, *a: object, **kw: object) -> list:  # type: ignore[type-arg]
        if host == "localhost":
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]
        return real(host, port, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(wire_mod.socket, "getaddrinfo", both)
    async with FaultServer() as srv:  # 127.0.0.1 only
        url = srv.url.replace("127.0.0.1", "localhost")
        c = WireClient(parse_target(url), timeout=5)
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        try:
            c.submit_at(prepared(url, "/ok"), 0, fut, resolve)
            await gather(c, [fut])
        finally:
            await c.close()
    assert (fut.result().error, fut.result().status) == (None, 200)


def _thread_names() -> set[str]:
    names = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as f:
            names.add(f.read().strip())
    return names


async def test_the_engines_thread_is_named_in_the_os() -> None:
    """`loadtape-wire` in top -H, perf and /proc (bench/replay_threads.py counts its CPU so)."""
    async with MockGateway(GatewayConfig(default_profile="instant")) as gw:
        before = _thread_names()
        c = WireClient(parse_target(gw.url), timeout=5)
        try:
            await c.warm(1, 5.0)  # the engine's thread is running
            assert "loadtape-wire" in _thread_names() - before
        finally:
            await c.close()
