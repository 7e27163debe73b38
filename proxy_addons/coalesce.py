"""A streamed response's head held back until its first body bytes, for a bounded time.

Streamed from its headers on (what the capture addon does for a token stream), mitmproxy writes
the response head to the client the moment the hook returns, and each body chunk after it in a
write of its own. When the first bytes follow the head closely (a fast upstream, a cached answer)
that is one more segment and one more wakeup of the client for nothing it can use: measured on
the 2-core development VM, streamed chat at one connection took 0.08-0.12 ms longer at p50 than
with the head held back (docs/performance.md). mitmproxy's own `stream_large_bodies` holds the
head back too, until the first body bytes, however long they take.

Here the client's socket is corked (TCP_CORK) when the head goes out, and uncorked right after
the first chunk has been written, or after `capture_hold_headers` (1 ms by default) if no chunk
has come by then: the head and the first bytes leave in one segment, and a slow first token
delays the head by the bound at most, never the token. HTTP/1 clients only (an HTTP/2
connection carries other streams, which a cork would hold back too); Linux only.

The client's socket comes from mitmproxy's proxy server, which does not publish it: the lookup
below reads the same internals in mitmproxy 11 and 12, and anything unexpected leaves the head
to go out at once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Protocol

from mitmproxy import ctx, http
from mitmproxy.net.http.http1 import expected_http_body_size

CORK: int | None = getattr(socket, "TCP_CORK", None)


class _Sock(Protocol):
    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


def client_socket(flow: http.HTTPFlow) -> _Sock | None:
    """The socket of the flow's client connection, or None."""
    try:
        server: Any = ctx.master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
        handler = server.connections[flow.client_conn.id]
        writer = handler.transports[flow.client_conn].writer
        sock = writer.get_extra_info("socket")
    except (AttributeError, KeyError, TypeError):
        return None
    return sock if hasattr(sock, "setsockopt") else None


def holdable(flow: http.HTTPFlow) -> bool:
    """An HTTP/1 response with a body to come (not a HEAD's, a 1xx, 204 or 304, nor one of
    length 0, whose head alone is the response)."""
    if CORK is None or flow.response is None or not flow.request.http_version.startswith("HTTP/1"):
        return False
    try:
        return expected_http_body_size(flow.request, flow.response) != 0
    except ValueError:
        return False


def hold(sock: _Sock) -> bool:
    """Cork the socket: what is written now waits for release() (or the kernel's 200 ms)."""
    assert CORK is not None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, CORK, 1)
    except OSError:
        return False
    return True


def release(sock: _Sock) -> None:
    """Uncork: what waits goes out now. A closed connection has nothing left to send."""
    assert CORK is not None
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, CORK, 0)


class Held:
    """One response's held head: released after its first chunk is written, or at the bound."""

    __slots__ = ("_sock", "_timer")

    def __init__(self, sock: _Sock, bound_s: float, loop: asyncio.AbstractEventLoop) -> None:
        self._sock: _Sock | None = sock
        self._timer = loop.call_later(bound_s, self.release)

    def first_chunk(self) -> None:
        """Called once, before the first chunk is handed on: its write follows in the same turn
        of the loop, so the uncork comes on the next one."""
        if self._sock is not None:
            self._timer.cancel()
            asyncio.get_running_loop().call_soon(self.release)

    def release(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self._timer.cancel()
            release(sock)
