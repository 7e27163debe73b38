"""Long answers through the compiled sender: the engine hands their bytes over in parts as they
arrive (a connection holds about PART_BYTES of an answer, not the whole), and stops reading
when the parts not yet taken reach HOLD_BYTES, so a download or a long stream costs the same
memory as with the Python sender. Each answer read in parts must measure what the fast sender
measures of it, and a connection whose answer was partly handed over is never sent again."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from rawserver import Peer, raw_server
from test_wire import gather, prepared
from wired import needs_wire, resolve

from replay.send import wire
from replay.send.client import FastClient
from replay.send.outcome import Outcome
from replay.targets import parse_target

MB = 1 << 20
CHAT = "/v1/chat/completions"
BODY = bytes(range(251)) * (5 * MB // 251)  # 5 MB that no misplaced slice hashes the same


class Spy:
    """The engine with a record of what each take brought: (kind, bytes) per result."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.takes = engine, []  # type: ignore[var-annotated]

    def take(self) -> list[Any]:
        got = self.engine.take()
        self.takes.append([(kind, len(answer)) for _, kind, _, _, _, _, answer, _, _ in got])
        return got  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def _long(peer: Peer, n: int, head: bytes) -> bool:
    sock, path = peer.sock, head.split(b" ", 2)[1]
    if path == b"/length":  # in writes 1 ms apart: many reads, stamps across the parts' cuts
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
        for i in range(0, len(BODY), 400_000):
            sock.sendall(BODY[i : i + 400_000])
            time.sleep(0.001)
    elif path == b"/chunked":  # odd chunk sizes: chunk lines fall across the parts' cuts
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(BODY), 300_007):
            piece = BODY[i : i + 300_007]
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
    elif path == b"/close":  # no length: the body ends when the connection closes
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        sock.sendall(BODY)
        return False
    elif (
        path == b"/v1/chat/completions"
    ):  # a chat stream of 3 MB: every event counted, as the fast sender
        event = b'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for k in range(60):
            batch = event * 1000
            sock.sendall(b"%x\r\n" % len(batch) + batch + b"\r\n")
            if k % 20 == 0:
                time.sleep(0.002)
        end = (
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
        )
        sock.sendall(b"%x\r\n" % len(end) + end + b"\r\n0\r\n\r\n")
    elif path == b"/ok":
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    elif path == b"/cut":  # exactly a part's worth of a 5 MB answer, then the close
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        sock.sendall(head + BODY[: wire.PART_BYTES - len(head)])
        time.sleep(0.05)  # all read and handed over: the engine has none of it left
        return False
    return True


def _request(url: str, path: str) -> Any:
    if path != CHAT:
        return prepared(url, path)
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'
    return prepared(url, path, "POST", body)


async def _one(client: Any, url: str, path: str) -> Outcome:
    fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    if isinstance(client, wire.WireClient):
        client.submit_at(_request(url, path), 0, fut, resolve)
        await gather(client, [fut], 20)
    else:
        client.submit(_request(url, path), fut.set_result)
        await asyncio.wait_for(fut, 20)
    return fut.result()


async def test_a_long_answer_comes_in_parts_and_reads_as_the_fast_sender_reads_it() -> None:
    needs_wire()
    paths = ["/length", "/chunked", CHAT, "/close"]
    with raw_server(_long) as url:
        c = wire.WireClient(parse_target(url), timeout=20)
        spy = Spy(c._engine)
        c._engine = spy
        fast = FastClient(parse_target(url), timeout=20)
        try:
            outs = [await _one(c, url, p) for p in paths]
            peers = [await _one(fast, url, p) for p in paths]
        finally:
            await c.close()
            await fast.close()
    whole = hashlib.blake2b(BODY, digest_size=16).hexdigest()
    for p, o, f in zip(paths, outs, peers, strict=True):
        assert (o.error, o.status) == (None, 200), (p, o.error, o.error_msg)
        assert o.bytes_in == f.bytes_in and o.body_hash == f.body_hash, p
        assert (o.events, o.text_events, o.complete) == (f.events, f.text_events, f.complete), p
        assert len(o.token_ns) == len(f.token_ns), p
        assert o.sent_ns < o.headers_ns <= o.end_ns, p  # type: ignore[operator]
        assert list(o.token_ns) == sorted(o.token_ns), p
        if p != CHAT:
            assert o.body_hash == whole, p
    assert outs[2].text_events >= 60_000 and outs[2].complete
    parts = [size for take in spy.takes for kind, size in take if kind == wire.PART]
    assert len(parts) >= 4 * 2, parts  # each answer of 3-5 MB came in parts
    assert max(parts) <= 2 * wire.PART_BYTES, max(parts)


async def test_the_engine_stops_reading_while_its_parts_wait_to_be_taken() -> None:
    """Nothing is taken for 0.5 s while a 5 MB answer (ten times over) arrives: the engine
    holds no more than HOLD_BYTES of parts and a part per connection, then reads on."""
    needs_wire()

    def big(peer: Peer, n: int, head: bytes) -> bool:
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 * len(BODY)))
        for _ in range(10):
            peer.sock.sendall(BODY)
        return True

    with raw_server(big) as url:
        c = wire.WireClient(parse_target(url), timeout=20)
        spy = Spy(c._engine)
        c._engine = spy
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        try:
            c.submit_at(prepared(url, "/big"), 0, fut, resolve)
            await asyncio.sleep(0.5)
            c.collect()
            first = sum(size for _, size in spy.takes[0])
            await gather(c, [fut], 20)
        finally:
            await c.close()
    o = fut.result()
    assert (o.error, o.status, o.body_hash) == (
        None, 200, hashlib.blake2b(BODY * 10, digest_size=16).hexdigest()
    )  # fmt: skip
    assert wire.HOLD_BYTES <= first <= wire.HOLD_BYTES + 2 * wire.PART_BYTES


async def test_an_answer_cut_after_its_parts_is_a_reset_never_sent_again() -> None:
    """On a reused connection, a part's worth of a 5 MB answer then the close: the engine has
    none of it left when the close comes (all handed over), which must not read as a stale
    keep-alive connection's (whose request goes again on a new one)."""
    needs_wire()
    with raw_server(_long) as url:
        c = wire.WireClient(parse_target(url), timeout=20)
        try:
            ok = await _one(c, url, "/ok")
            cut = await _one(c, url, "/cut")
        finally:
            await c.close()
    assert (ok.error, ok.status) == (None, 200)
    assert cut.error == "reset" and cut.status == 200, (cut.error, cut.error_msg)
    assert cut.bytes_in == wire.PART_BYTES and cut.body_hash is None
    assert c.resends == 0 and c.connects == 1


async def test_a_long_answer_paused_for_the_taker_is_abandoned_whole_at_the_close() -> None:
    """Closed while its connection waits for the taker (out of the epoll set): the answer
    comes back interrupted, with every byte the engine had read, and nothing hangs."""
    needs_wire()

    def big(peer: Peer, n: int, head: bytes) -> bool:
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (20 * len(BODY)))
        try:
            for _ in range(20):
                peer.sock.sendall(BODY)
        except OSError:
            pass  # the client closed
        return False

    with raw_server(big) as url:
        c = wire.WireClient(parse_target(url), timeout=20)
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        c.submit_at(prepared(url, "/big"), 0, fut, resolve)
        await asyncio.sleep(0.3)  # nothing taken: paused at HOLD_BYTES
        await c.close()
    o = fut.result()
    assert (o.error, o.status) == ("interrupted", 200)
    assert wire.HOLD_BYTES <= o.bytes_in <= wire.HOLD_BYTES + 3 * wire.PART_BYTES, o.bytes_in
    assert c.outstanding == 0 and not c._parts
