"""The senders against real servers on loopback: timings, SSE token events, usage, every
failure turned into an error kind (never an exception), keep-alive reuse. The compiled sender
(wire) is driven here as the dispatcher drives it: its results taken every millisecond."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import pytest
from aioserve import serving
from faultserver import FaultServer
from wired import needs_wire

from replay.mock.config import GatewayConfig
from replay.mock.gateway import MockGateway
from replay.planrows import Request
from replay.rewrite import Rewriter
from replay.send.client import FastClient
from replay.send.client_aiohttp import AiohttpClient
from replay.send.outcome import Outcome
from replay.send.wire import WireClient
from replay.targets import parse_target

CLIENTS = ["fast", "aiohttp", "wire"]


class Collected:
    """A compiled sender whose results are taken every millisecond (the dispatcher's tick)."""

    def __init__(self, client: WireClient) -> None:
        self.client = client
        self.task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        while True:
            self.client.collect()
            await asyncio.sleep(0.001)

    def submit(self, req: Any, done: Any) -> bool:
        return self.client.submit(req, done)

    async def close(self) -> None:
        self.task.cancel()
        await self.client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def make(kind: str, url: str, timeout: float = 5.0, insecure: bool = False) -> Any:
    t = parse_target(url)
    if kind == "fast":
        return FastClient(t, timeout=timeout, insecure=insecure)
    if kind == "wire":
        needs_wire()
        return Collected(WireClient(t, timeout=timeout))
    return AiohttpClient(t, workers=8, timeout=timeout, insecure=insecure)


async def send(
    client: Any,
    url: str,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Outcome:
    req = Rewriter(parse_target(url)).prepare(Request(method, path, None, headers or [], body))
    fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    client.submit(req, fut.set_result)
    return await asyncio.wait_for(fut, 30)


@pytest.mark.parametrize("kind", CLIENTS)
async def test_plain_request_and_keep_alive(kind: str) -> None:
    async with FaultServer() as srv:
        c = make(kind, srv.url)
        try:
            outs = [await send(c, srv.url, "/v1/chat/completions") for _ in range(3)]
        finally:
            await c.close()
    for o in outs:
        assert o.error is None and o.status == 200
        assert o.sent_ns <= o.headers_ns <= o.end_ns  # type: ignore[operator]
        assert (o.prompt_tokens, o.completion_tokens) == (3, 4)
    if kind in ("fast", "wire"):
        assert c.connects == 1  # one keep-alive connection for all three


@pytest.mark.parametrize("kind", CLIENTS)
async def test_streamed_chat_token_events_and_usage(kind: str) -> None:
    async with MockGateway(GatewayConfig(default_profile="fast-local")) as gw:
        c = make(kind, gw.url)
        body = (
            b'{"model":"small","messages":[{"role":"user","content":"hi"}],"stream":true,'
            b'"max_tokens":12,"stream_options":{"include_usage":true}}'
        )
        try:
            o = await send(
                c,
                gw.url,
                "/v1/chat/completions",
                "POST",
                body,
                [("Content-Type", "application/json")],
            )
        finally:
            await c.close()
    assert o.error is None and o.status == 200
    assert len(o.token_ns) == 12 and o.first_token_ns == o.token_ns[0]
    assert (o.completion_tokens, o.finish_reason) == (12, "length")
    ttft_ms = (o.first_token_ns - o.sent_ns) / 1e6  # type: ignore[operator]
    gaps_ms = [(b - a) / 1e6 for a, b in zip(o.token_ns, o.token_ns[1:], strict=False)]
    assert 14 <= ttft_ms < 60, ttft_ms  # fast-local: 15 ms + 0.01 ms/token
    assert 3 <= sorted(gaps_ms)[len(gaps_ms) // 2] < 10, gaps_ms  # 4 ms per token


@pytest.mark.parametrize(
    ("path", "kind_wanted"),
    [
        ("/close", "reset"),
        ("/reset-headers", "reset"),
        ("/reset-body", "reset"),
        ("/invalid", "protocol"),
        ("/hang", "timeout"),
    ],
)
@pytest.mark.parametrize("kind", CLIENTS)
async def test_failures_become_error_kinds(kind: str, path: str, kind_wanted: str) -> None:
    async with FaultServer() as srv:
        c = make(kind, srv.url, timeout=0.5)
        try:
            o = await send(c, srv.url, path)
        finally:
            await c.close()
    assert o.error == kind_wanted, (o.error, o.error_msg)
    assert o.error_msg and o.end_ns >= o.sent_ns


@pytest.mark.parametrize("kind", CLIENTS)
async def test_connection_refused_is_a_connect_error(kind: str) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"http://127.0.0.1:{port}"
    c = make(kind, url)
    try:
        o = await send(c, url, "/")
    finally:
        await c.close()
    assert o.error == "connect" and o.status is None


@pytest.mark.parametrize("kind", CLIENTS)
async def test_statuses_retry_after_and_framings(kind: str) -> None:
    async with FaultServer() as srv:
        c = make(kind, srv.url)
        try:
            busy = await send(c, srv.url, "/503")
            cd = await send(c, srv.url, "/close-delimited")
            ch = await send(c, srv.url, "/chunked")
            head = await send(c, srv.url, "/ok", "HEAD")
            drip = await send(c, srv.url, "/drip?gap=0.001")
        finally:
            await c.close()
    assert busy.error is None and busy.status == 503 and busy.retry_after == "2"
    assert cd.error is None and cd.status == 200 and cd.bytes_in > 0
    assert ch.error is None and ch.status == 200
    assert head.error is None and head.status == 200
    assert drip.error is None and drip.status == 200


async def test_stale_keep_alive_connection_is_retried_not_failed() -> None:
    """A reused connection the target had already closed fails before any response byte: the
    request goes again on a new connection instead of being reported as a failure."""
    async with FaultServer() as srv:
        c = FastClient(parse_target(srv.url), timeout=2)
        try:
            assert (await send(c, srv.url, "/ok")).status == 200
            (conn,) = c._idle
            req = Rewriter(parse_target(srv.url)).prepare(Request("GET", "/ok", None, [], None))
            fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            c.submit(req, fut.set_result)  # goes out on the idle (reused) connection
            assert conn.reused and conn.out is not None
            conn.connection_lost(None)  # as if the target's FIN had been in flight
            o = await asyncio.wait_for(fut, 5)
        finally:
            await c.close()
    assert o.error is None and o.status == 200
    assert c.resends == 1 and c.connects == 2


async def test_a_staged_request_is_sent_and_stamped_at_its_fire_only() -> None:
    """A burst's shot readied on a warm connection (stage): nothing is written and nothing
    stamped until fire(); a cancelled one gives its connection back; one whose connection
    closed while it waited goes on a new connection."""
    async with FaultServer() as srv:
        c = FastClient(parse_target(srv.url), timeout=2)
        rw = Rewriter(parse_target(srv.url))
        try:
            assert (await send(c, srv.url, "/ok")).status == 200
            req = rw.prepare(Request("GET", "/ok", None, [], None))
            fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            conn = c.stage(req, fut.set_result)
            assert conn is not None and conn.out is None and not c._idle
            await asyncio.sleep(0.05)  # waiting for its instant: nothing went
            assert not fut.done() and conn.out is None
            before = time.monotonic_ns()
            conn.fire()
            o = await asyncio.wait_for(fut, 5)
            assert o.error is None and o.status == 200 and before <= o.sent_ns <= o.end_ns
            conn2 = c.stage(req, lambda out: None)
            assert conn2 is conn  # the same warm connection, back in the pool
            conn2.cancel()
            assert c._idle == [conn]  # given back, unsent
            fut3: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            conn3 = c.stage(req, fut3.set_result)
            assert conn3 is not None
            conn3._close()  # the target closed it while the shot waited
            conn3.fire()
            o3 = await asyncio.wait_for(fut3, 5)
        finally:
            await c.close()
    assert o3.error is None and o3.status == 200 and c.connects == 2


async def test_https_verifies_unless_insecure(server_ssl: ssl.SSLContext) -> None:
    async with MockGateway(GatewayConfig(default_profile="instant"), ssl_context=server_ssl) as gw:
        strict = FastClient(parse_target(gw.url), timeout=5)
        loose = FastClient(parse_target(gw.url), timeout=5, insecure=True)
        try:
            refused = await send(strict, gw.url, "/health")
            ok = await send(loose, gw.url, "/health")
        finally:
            await strict.close()
            await loose.close()
    assert refused.error == "tls", refused.error_msg
    assert ok.error is None and ok.status == 200


async def test_bodies_of_every_size_arrive_whole_when_sent_together() -> None:
    """Requests over FIRST_WRITE go out in two writes (head, then the rest once every request
    due with them has begun): each body must still arrive whole, byte for byte."""
    from aiohttp import web

    from replay.send.client import FIRST_WRITE

    sizes = [1, 100, FIRST_WRITE - 200, FIRST_WRITE, FIRST_WRITE + 1, 300_000, 2_000_000]

    def body(n: int) -> bytes:
        return bytes(i % 251 for i in range(n))

    async def check(request: web.Request) -> web.Response:
        whole = await request.read() == body(sizes[int(request.match_info["i"])])
        return web.Response(status=200 if whole else 500)

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/{i}", check)
    async with serving(app) as url:
        client = FastClient(parse_target(url), timeout=10)
        try:
            loop = asyncio.get_running_loop()
            futs: list[asyncio.Future[Outcome]] = []
            for round_ in range(2):  # new connections, then the same ones kept alive
                for i, n in enumerate(sizes):  # submitted in one go: all in flight at once
                    req = Rewriter(parse_target(url)).prepare(
                        Request("POST", f"/{i}", None, [], body(n))
                    )
                    fut: asyncio.Future[Outcome] = loop.create_future()
                    futs.append(fut)
                    client.submit(req, fut.set_result)
                await asyncio.wait_for(asyncio.gather(*futs[round_ * len(sizes) :]), 30)
        finally:
            await client.close()
    outs = [f.result() for f in futs]
    assert [(o.error, o.status) for o in outs] == [(None, 200)] * 2 * len(sizes)
    assert client.connects == len(sizes)


def test_a_response_before_the_body_is_read_leaves_the_connection_sound() -> None:
    """A server may answer as soon as it has the head (nginx's `return`, an early 401 or 413)
    and read the body after. The client must still send the whole body before the next
    request on that connection: nginx read the next request as the body's rest and answered
    400 to an eighth of the replay_bursts bench's requests. The request is sent from a
    callback that then holds the loop until the answer is in, as a burst's pump does."""
    import uvloop  # the run's loop: it calls a socket's callbacks before the handles queued

    uvloop.run(_early_answer())


async def _early_answer() -> None:
    import threading
    import time

    from replay.send.client import FIRST_WRITE

    seen: list[tuple[str, int]] = []  # (request line, body bytes read)
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:  # a thread of its own: it answers while the client's loop is held
        conn, _ = lsock.accept()
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next(
                    (int(v) for k, _, v in (ln.partition(": ") for ln in lines)
                     if k.lower() == "content-length"), 0,
                )  # fmt: skip
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # at once
                while len(buf) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                seen.append((lines[0], length))
                buf = buf[length:]

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{lsock.getsockname()[1]}"
    client = FastClient(parse_target(url), timeout=10)
    loop = asyncio.get_running_loop()
    sizes = [FIRST_WRITE * 4, 200_000, 10, FIRST_WRITE + 1, 0]
    outs = []
    try:
        for i, n in enumerate(sizes):
            req = Rewriter(parse_target(url)).prepare(Request("POST", f"/r{i}", None, [], b"x" * n))
            fut: asyncio.Future[Outcome] = loop.create_future()

            def submit(req: Any = req, fut: asyncio.Future[Outcome] = fut) -> None:
                client.submit(req, fut.set_result)
                time.sleep(0.05)  # the answer comes in before the loop polls again

            loop.call_soon(submit)
            outs.append(await asyncio.wait_for(fut, 10))
    finally:
        await client.close()
        lsock.close()
    assert [(o.error, o.status) for o in outs] == [(None, 200)] * len(sizes)
    assert client.connects == 1  # one connection, kept alive throughout
    assert seen == [(f"POST /r{i} HTTP/1.1", n) for i, n in enumerate(sizes)]
