"""Request bodies through a real mitmdump with the capture addon: passed on as they arrive, and
recorded whole (loopback only)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web
from aioserve import serving
from proxies import start_proxy

from captures.reader import Capture

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def _body() -> bytes:
    """A chat request whose history is long enough to matter, with a key pasted into it."""
    history = [{"role": "user", "content": f"turn {i} " + "x" * 200} for i in range(40)]
    history.append({"role": "user", "content": f"my key is {SECRET}"})
    return json.dumps({"model": "small", "messages": history, "max_tokens": 4}).encode()


async def _send_in_two_parts(
    url: str, body: bytes, first_seen: asyncio.Event, wait_for_upstream: float
) -> tuple[bool, bytes]:
    """Send the headers and half the body, wait up to `wait_for_upstream` s for the upstream to
    have read that half, then send the rest. Returns whether it had, and the response."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    half = len(body) // 2
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body[:half])
    await writer.drain()
    try:
        await asyncio.wait_for(first_seen.wait(), wait_for_upstream)
        seen = True
    except TimeoutError:
        seen = False
    writer.write(body[half:])
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return seen, answer


def _upstream(first_seen: asyncio.Event, got: list[bytes]) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        part = await request.content.readany()
        first_seen.set()
        got.append(part + await request.content.read())
        return web.json_response({"id": "c1", "choices": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_a_request_body_goes_upstream_as_it_arrives_and_is_recorded_whole(
    tmp_path: Path,
) -> None:
    """The upstream reads the first half before the client has sent the second: the proxy did
    not hold the request for mitmproxy's request hook. The record has the whole body, with the
    key in it redacted, as a buffered one would."""
    body, first_seen, got = _body(), asyncio.Event(), []
    async with serving(_upstream(first_seen, got)) as upstream:
        proc = start_proxy(tmp_path, upstream)
        try:
            seen, answer = await _send_in_two_parts(proc.url, body, first_seen, 10)
            final = proc.stop()
        finally:
            proc.kill()
    assert seen, "the upstream saw nothing of the body until the client had sent all of it"
    assert answer.startswith(b"HTTP/1.1 200") and got == [body]
    assert final is not None and final["records"] == 1
    (row,) = Capture(tmp_path / "cap").records()
    assert row["req_body_size"] == len(body) and not row["req_body_truncated"]
    assert SECRET.encode() not in row["req_body"] and b"[REDACTED:" in row["req_body"]
    sent = json.loads(body)["messages"]
    kept = json.loads(row["req_body"])["messages"]
    assert kept[:-1] == sent[:-1] and row["message_count"] == len(sent)


async def test_request_streaming_off_buffers_the_body_first(tmp_path: Path) -> None:
    """capture_stream_requests=false (for an addon that must see whole request bodies): the
    upstream gets nothing until the whole body is in, and the record is the same."""
    body, first_seen, got = _body(), asyncio.Event(), []
    async with serving(_upstream(first_seen, got)) as upstream:
        proc = start_proxy(tmp_path, upstream, capture_stream_requests="false")
        try:
            seen, answer = await _send_in_two_parts(proc.url, body, first_seen, 0.5)
            final = proc.stop()
        finally:
            proc.kill()
    assert not seen and answer.startswith(b"HTTP/1.1 200") and got == [body]
    assert final is not None and final["records"] == 1
    (row,) = Capture(tmp_path / "cap").records()
    assert row["req_body_size"] == len(body) and SECRET.encode() not in row["req_body"]
