"""The compiled sender reads a plain answer's head in C (wire_c/head.h) and skips llhttp for it;
so does the Python sender for an answer that comes whole in one read. That is only sound if the two agree: every answer the C reader accepts, llhttp must read whole,
and what the outcome says of it (status, stamps, bytes, body hash, an LLM body's usage, events
and tokens) must be the same either way. These tests hold the C reader to llhttp on real
bodies of every surface split into reads at random, and on thousands of mangled heads."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import random
from typing import Any

import httptools
import pytest
from rawserver import Peer, raw_server
from wired import needs_wire

from captures.protocols import BY_NAME, PLAIN, Surface
from captures.snapshot import Snapshot
from captures.testing import chat_snapshot
from replay.planrows import Request
from replay.rewrite import Prepared, Rewriter
from replay.send import client as client_mod
from replay.send import wire
from replay.send.client import FastClient
from replay.send.outcome import Head, Outcome, plain_head, read_plain
from replay.targets import parse_target

TARGET = parse_target("http://127.0.0.1:9")


def _req(surface: Surface, method: str = "GET") -> Prepared:
    return Prepared(method, TARGET, "/", [], b"", b"", None, False, surface)


def _answer(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _body(snap: Snapshot) -> bytes:
    assert snap.resp_parts is not None
    return b"".join(snap.resp_parts)


def _bodies() -> list[tuple[Surface, str, bytes, list[tuple[str, str]]]]:
    """(surface, status line, body, headers) of what a gateway answers, each API and plain."""
    out: list[tuple[Surface, str, bytes, list[tuple[str, str]]]] = []
    for api in ("chat", "completions", "responses", "messages", "embeddings"):
        for stream in (False, True) if api != "embeddings" else (False,):
            snap = chat_snapshot(api=api, stream=stream, completion_tokens=12, reasoning_tokens=2)
            body = _body(snap)
            ctype = "text/event-stream" if stream else "application/json"
            out.append((BY_NAME[api], "200 OK", body, [("Content-Type", ctype)]))
        err = chat_snapshot(api=api, status=429)
        out.append(
            (
                BY_NAME[api],
                "429 Too Many Requests",
                _body(err),
                [("Content-Type", "application/json"), ("Retry-After", "3")],
            )
        )
    chat = chat_snapshot(api="chat", completion_tokens=5)
    out.append(
        (
            BY_NAME["chat"],
            "200 OK",
            gzip.compress(_body(chat)),
            [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
        )
    )
    out.append((BY_NAME["chat"], "200 OK", b"{not json", [("Content-Type", "application/json")]))
    nginx = [
        ("Server", "nginx/1.22.1"),
        ("Date", "Mon, 07 Dec 2026 13:00:00 GMT"),
        ("Content-Type", "application/octet-stream"),
        ("Connection", "keep-alive"),
    ]
    out.append((PLAIN, "200 OK", b"ok", nginx))
    out.append((PLAIN, "200 OK", b"", nginx))
    out.append((PLAIN, "503", bytes(range(256)) * 40, [("content-TYPE", "Text/Plain\t ")]))
    out.append((PLAIN, "200 OK", b"data: {}\n\n", [("Content-Type", "text/event-stream")]))
    out.append((PLAIN, "200 OK", gzip.compress(b"x" * 3000), [("Content-Encoding", "gzip")]))
    return out


def _stamps(rng: random.Random, n: int) -> tuple[int, ...]:
    """Reads that brought `n` bytes: (bytes so far, ns) each, at random cuts."""
    cuts = sorted({rng.randrange(1, n) for _ in range(rng.randrange(0, 6))} | {n}) if n > 1 else [n]
    out: list[int] = []
    for k, upto in enumerate(cuts):
        out += [upto, 1_000_000 + 1000 * k]
    return tuple(out)


class _Keep:
    """llhttp's word on keeping the connection (asked as the fast sender asks it)."""

    def __init__(self, answer: bytes) -> None:
        self.keep: bool | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parser.feed_data(answer)

    def on_headers_complete(self) -> None:
        self.keep = self.parser.should_keep_alive()


def _keep(answer: bytes) -> bool | None:
    return _Keep(answer).keep


def _llhttp(req: Prepared, answer: bytes, stamps: tuple[int, ...]) -> Outcome | None:
    out = Outcome(sent_ns=1)
    return out if wire.read_answer(out, req, answer, stamps, True) else None


def _plain(req: Prepared, answer: bytes, stamps: tuple[int, ...], head: Head) -> Outcome:
    out = Outcome(sent_ns=1, end_ns=stamps[-1])
    read_plain(out, req.surface, answer, stamps, head)
    return out


def test_every_surface_measures_the_same_without_llhttp() -> None:
    needs_wire()
    rng = random.Random(7)
    for surface, status, body, headers in _bodies():
        answer = _answer(status, [*headers, ("Content-Length", str(len(body)))], body)
        for _ in range(20):
            stamps = _stamps(rng, len(answer))
            head = plain_head(answer, stamps)
            assert head is not None, answer[:200]
            want = _llhttp(_req(surface), answer, stamps)
            assert want is not None
            assert head[6] is _keep(answer)
            assert dataclasses.asdict(_plain(_req(surface), answer, stamps, head)) == (
                dataclasses.asdict(want)
            ), (surface.name, answer[:200], stamps)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",  # llhttp refuses
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: identity\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 1\r\n\r\nx",  # a folded line
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nx",  # shorter than it says
        b"HTTP/1.1 200 OK\r\n\r\nx",  # ends at the close
        b"HTTP/1.1 200 OK\r\nX: \x80\r\nContent-Length: 1\r\n\r\nx",  # llhttp's to judge
        b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
        b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
        b"HTTP/2 200 OK\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nx",
    ],
)
def test_what_the_c_reader_is_not_sure_of_goes_to_llhttp(answer: bytes) -> None:
    needs_wire()
    assert plain_head(answer, (len(answer), 5)) is None


def test_a_head_not_yet_read_whole_by_the_last_stamp_goes_to_llhttp() -> None:
    needs_wire()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert plain_head(answer, (10, 5)) is None  # the stamps do not reach the end
    assert plain_head(answer, ()) is None
    assert plain_head(answer, (10, 5, len(answer), 9)) == (200, 38, 9, b"", b"", None, True)


@pytest.mark.parametrize(
    ("status_line", "connection", "keep"),
    [
        ("HTTP/1.1 200 OK", None, True),
        ("HTTP/1.1 200 OK", "close", False),
        ("HTTP/1.1 200 OK", "Close \t", False),
        ("HTTP/1.1 200 OK", "keep-alive", True),
        ("HTTP/1.0 200 OK", None, False),
        ("HTTP/1.0 200 OK", "Keep-Alive", True),
        ("HTTP/1.0 200 OK", "close", False),
    ],
)
def test_the_connection_is_kept_as_llhttp_says(
    status_line: str, connection: str | None, keep: bool
) -> None:
    needs_wire()
    head = f"{status_line}\r\n" + (f"Connection: {connection}\r\n" if connection else "")
    answer = (head + "Content-Length: 2\r\n\r\nok").encode()
    got = plain_head(answer, (len(answer), 5))
    assert got is not None and got[6] is keep is _keep(answer)


def _mangle(rng: random.Random, answer: bytes, body_len: int) -> bytes:
    """One to three random edits (replace, insert, delete) anywhere in the head."""
    b = bytearray(answer)
    alphabet = b"\r\n\t :;,-/0123456789aAzZ\x00\x7f\x80\xff"
    for _ in range(rng.randint(1, 3)):
        head_len = len(b) - body_len
        i = rng.randrange(head_len)
        c = rng.choice(alphabet) if rng.random() < 0.7 else rng.randrange(256)
        op = rng.random()
        if op < 0.4:
            b[i] = c
        elif op < 0.7:
            b.insert(i, c)
        else:
            del b[i]
    return bytes(b)


def test_mangled_heads_the_c_reader_accepts_llhttp_reads_alike() -> None:
    """Thousands of heads with random edits: whatever the C reader accepts, llhttp reads whole
    and to the same outcome. Both kinds must occur, or the test proves nothing."""
    needs_wire()
    rng = random.Random(19)
    bodies = _bodies()
    accepted = refused = 0
    for _ in range(6000):
        surface, status, body, headers = rng.choice(bodies)
        answer = _mangle(
            rng, _answer(status, [*headers, ("Content-Length", str(len(body)))], body), len(body)
        )
        stamps = _stamps(rng, len(answer))
        head = plain_head(answer, stamps)
        if head is None:
            refused += 1
            continue
        accepted += 1
        want = _llhttp(_req(surface), answer, stamps)
        assert want is not None, answer
        assert head[6] is _keep(answer), answer
        assert dataclasses.asdict(_plain(_req(surface), answer, stamps, head)) == (
            dataclasses.asdict(want)
        ), answer[:300]
    assert accepted > 500 and refused > 500, (accepted, refused)


_TIMES = ("sent_ns", "headers_ns", "end_ns", "first_token_ns", "first_text_ns", "token_ns")


async def _fast_run(answers: list[tuple[Surface, bytes]]) -> tuple[list[dict[str, Any]], int]:
    """Each answer asked for in turn by the fast sender from a raw server that writes it whole
    (and answers 599 on a connection whose last answer said it would close: the sender must
    not reuse it): the outcomes without their times, and the connections."""

    said_close: set[Peer] = set()

    def serve(peer: Peer, n: int, head: bytes) -> bool:
        if peer in said_close:  # a connection the client should not have used again
            peer.sock.sendall(b"HTTP/1.1 599 Reused\r\nContent-Length: 0\r\n\r\n")
            return True
        answer = answers[int(head.split(b" ", 2)[1][1:])][1]
        peer.sock.sendall(answer)
        if not _keep(answer):
            said_close.add(peer)  # and left open: the client must close it
        return True

    outs: list[dict[str, Any]] = []
    with raw_server(serve) as url:
        client = FastClient(parse_target(url), timeout=5)
        rewriter = Rewriter(parse_target(url))
        for k, (surface, _) in enumerate(answers):
            req = rewriter.prepare(Request("GET", f"/{k}", None, [], None, api=surface.name))
            fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            client.submit(req, fut.set_result)
            out = dataclasses.asdict(await asyncio.wait_for(fut, 10))
            assert 0 < out["sent_ns"] <= out["headers_ns"] <= out["end_ns"], out
            out["token_ns"] = len(out["token_ns"])
            outs.append({k: v for k, v in out.items() if k not in _TIMES[:-1]})
        await client.close()
        return outs, client.connects


async def test_the_fast_sender_measures_a_whole_plain_answer_alike_without_llhttp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Python sender reads an answer that came whole in one read from its head read in C:
    the same outcome as llhttp's, the connection kept or closed as llhttp would."""
    needs_wire()
    answers = [
        (surface, _answer(status, [*headers, ("Content-Length", str(len(body)))], body))
        for surface, status, body, headers in _bodies()
    ]
    closing = [("Connection", "close"), ("Content-Length", "2")]
    answers.insert(3, (PLAIN, _answer("200 OK", closing, b"ok")))
    answers.insert(6, (PLAIN, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    read = 0

    def counted(*args: Any) -> None:
        nonlocal read
        read += 1
        read_plain(*args)

    monkeypatch.setattr(client_mod, "read_plain", counted)
    plain, plain_connects = await _fast_run(answers)
    assert read > len(answers) // 2  # most came in one read: the C reader's path was taken
    monkeypatch.setattr(client_mod, "plain_head", lambda answer, stamps: None)
    llhttp, llhttp_connects = await _fast_run(answers)
    assert plain == llhttp
    assert plain_connects == llhttp_connects == 3  # the first, after the close, after 1.0
