"""A raw asyncio HTTP server on loopback that misbehaves on request (tests only).

The path picks the behaviour: /ok, /close (accept and close), /reset-headers, /reset-body,
/invalid, /huge-headers, /drip, /hang (never answer), /sse-forever, /sse-malformed, /503, /429,
/429-retry, /close-delimited, /chunked, /slow-headers (answer after ?ms=N), /redirect (302 to
?to=URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from urllib.parse import parse_qs, urlsplit


def _resp(status: str, body: bytes, headers: str = "", ctype: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


# a chat completion's shape, so a chat path reads its usage (/ok is plain HTTP: no usage read)
OK_BODY = (
    b'{"object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
)


class FaultServer:
    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.requests = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FaultServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                line = head.split(b"\r\n", 1)[0].decode()
                method, target, _ = line.split(" ", 2)
                length = 0
                for h in head.split(b"\r\n")[1:]:
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                url = urlsplit(target)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if method == "HEAD":  # headers only, as HTTP requires
                    writer.write(_resp("200 OK", OK_BODY)[: -len(OK_BODY)])
                    await writer.drain()
                    continue
                keep = await self._respond(url.path, q, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _respond(self, path: str, q: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        w = writer.write
        if path in ("/ok", "/v1/chat/completions"):
            w(_resp("200 OK", OK_BODY))
        elif path == "/close":
            return False
        elif path == "/reset-headers":
            w(b"HTTP/1.1 200 OK\r\nContent-Ty")
            await writer.drain()
            self._reset(writer)
            return False
        elif path == "/reset-body":
            w(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            w(b'17\r\ndata: {"content":"a"}\n\n\r\n')
            await writer.drain()
            await asyncio.sleep(0.05)
            self._reset(writer)
            return False
        elif path == "/invalid":
            w(b"HTTP/1.1 2OO NOT A STATUS\r\n\r\n")
            await writer.drain()
            return False
        elif path == "/huge-headers":
            w(
                b"HTTP/1.1 200 OK\r\n"
                + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 8000) for i in range(200))
            )
            w(b"Content-Length: 0\r\n\r\n")
        elif path == "/drip":
            body = b'{"dripped":true}'
            w(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            )
            for i in range(len(body)):
                w(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(float(q.get("gap", "0.01")))
        elif path == "/hang":
            await asyncio.sleep(3600)
        elif path == "/sse-forever":
            w(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            while True:
                ev = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
                w(b"%x\r\n%s\r\n" % (len(ev), ev))
                await writer.drain()
                await asyncio.sleep(0.01)
        elif path == "/sse-malformed":
            body = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {broken\n\ndata: [DONE]\n\n'
            w(_resp("200 OK", body, ctype="text/event-stream"))
        elif path == "/503":
            w(_resp("503 Service Unavailable", b'{"error":"busy"}', "Retry-After: 2\r\n"))
        elif path == "/redirect":  # to another host: a replay must not follow it
            w(_resp("302 Found", b"{}", f"Location: {q.get('to', 'http://127.0.0.2:9/x')}\r\n"))
        elif path == "/429":
            w(_resp("429 Too Many Requests", b'{"error":"slow down"}'))
        elif path == "/close-delimited":
            w(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nno length here"
            )
            await writer.drain()
            return False
        elif path == "/chunked":
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"hello ", b"chunked ", b"world"):
                w(b"%x\r\n%s\r\n" % (len(part), part))
            w(b"0\r\n\r\n")
        elif path == "/slow-headers":
            await asyncio.sleep(int(q.get("ms", "100")) / 1000)
            w(_resp("200 OK", OK_BODY))
        else:
            w(_resp("404 Not Found", b"{}"))
        await writer.drain()
        return True
