"""A streamed response's head through a real mitmdump with the capture addon: held back until the
first body bytes (one segment to the client), never past `capture_hold_headers`, and the record's
timing the upstream's (loopback only)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web
from aioserve import serving
from mitmproxy.test import tflow
from proxies import start_proxy

from captures.reader import Capture
from proxy_addons import coalesce

pytestmark = pytest.mark.skipif(coalesce.CORK is None, reason="TCP_CORK is Linux's")

EVENT = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'


def _upstream(gap_s: float) -> web.Application:
    """An SSE stream whose head goes out at once and whose first event `gap_s` later."""

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(gap_s)
        await resp.write(EVENT)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _timed_exchange(url: str) -> tuple[float, bytes, float]:
    """POST one request; returns when the head had arrived (s after sending), what had arrived
    with it, and when the first event had."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: up\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
    t0 = time.monotonic()
    got = b""
    while b"\r\n\r\n" not in got:
        got += await asyncio.wait_for(reader.read(65536), 10)
    head_s, with_head = time.monotonic() - t0, got
    event_s = head_s
    while b"data: {" not in got:
        got += await asyncio.wait_for(reader.read(65536), 10)
        event_s = time.monotonic() - t0
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return head_s, with_head, event_s


async def _through_proxy(tmp: Path, gap_s: float, hold: str) -> tuple[float, bytes, float]:
    async with serving(_upstream(gap_s)) as upstream:
        proc = start_proxy(tmp, upstream, capture_hold_headers=hold)
        try:
            timed = await _timed_exchange(proc.url)
            final = proc.stop()
        finally:
            proc.kill()
    assert final is not None and final["records"] == 1
    return timed


async def test_the_head_waits_for_the_first_bytes_and_goes_out_with_them(tmp_path: Path) -> None:
    """The first event comes 60 ms after the head; held (bound 150 ms), the head reaches the
    client with it, in one segment, and the record keeps the upstream's 60 ms."""
    head_s, with_head, event_s = await _through_proxy(tmp_path, 0.06, "150ms")
    assert b"data: {" in with_head, "the head reached the client before the first event"
    assert head_s >= 0.05 and event_s == head_s
    (row,) = Capture(tmp_path / "cap").records()
    first_event_us = row["chunk_offsets_us"][0] - (row["resp_start_ns"] - row["req_start_ns"]) / 1e3
    assert first_event_us >= 50_000, "the record's time to the first event is not the upstream's"


async def test_a_slow_first_token_holds_the_head_back_no_longer_than_the_bound(
    tmp_path: Path,
) -> None:
    """The first event comes 400 ms after the head; the head does not wait for it (bound 5 ms)."""
    head_s, with_head, event_s = await _through_proxy(tmp_path, 0.4, "5ms")
    assert b"data: {" not in with_head
    assert head_s < 0.2 and event_s >= 0.35


async def test_hold_zero_sends_the_head_at_once(tmp_path: Path) -> None:
    head_s, with_head, event_s = await _through_proxy(tmp_path, 0.06, "0")
    assert b"data: {" not in with_head
    assert event_s - head_s >= 0.04


def test_only_http1_responses_with_a_body_to_come_are_held() -> None:
    """An HTTP/2 connection carries other streams, which a cork would hold back too; a response
    without a body is its head alone."""
    flow = tflow.tflow(resp=True)
    del flow.response.headers["content-length"]  # type: ignore[union-attr]
    assert coalesce.holdable(flow)
    flow.request.http_version = "HTTP/2.0"
    assert not coalesce.holdable(flow)
    for method, status in (("GET", 204), ("GET", 304), ("GET", 101), ("HEAD", 200)):
        flow = tflow.tflow(resp=True)
        flow.request.method, flow.response.status_code = method, status  # type: ignore[union-attr]
        del flow.response.headers["content-length"]  # type: ignore[union-attr]
        assert not coalesce.holdable(flow), (method, status)


async def test_a_response_without_a_body_is_not_held(tmp_path: Path) -> None:
    """A 204 has nothing to come after its head: it is not held for the bound (300 ms here)."""

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", empty)
    async with serving(app) as upstream:
        proc = start_proxy(tmp_path, upstream, capture_hold_headers="300ms")
        try:
            host, port = proc.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: up\r\nContent-Length: 0\r\n\r\n"
            )
            t0 = time.monotonic()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            took = time.monotonic() - t0
            writer.close()
            await writer.wait_closed()
            proc.stop()
        finally:
            proc.kill()
    assert head.startswith(b"HTTP/1.1 204") and took < 0.2
