"""The fast sender: HTTP/1.1 keep-alive connections as asyncio protocols, llhttp (httptools)
parsing, requests written as pre-built bytes, completion by callback.

No task or coroutine is created per request: a send is one transport.write, the parser's
callbacks as the response arrives, and one call of `done(outcome)`. Connections are kept alive and
reused; the pool never holds more connections than requests in flight, which the scheduler bounds.
Plain aiohttp measured 89-107 us of CPU per request on the development machine; this path is what
gets under the 50 us goal (see bench/replay_throughput.py). An answer that arrives whole in one
read with a plain head (outcome.plain_head: read in C where the compiled sender is built) is
measured from that head without llhttp, as the compiled sender measures it.

Redirects are never followed (a 3xx is a result like any other); TLS is verified unless
`insecure`; the connection goes only to the target given.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable

import httptools

from captures.protocols import PLAIN
from replay.rewrite import Prepared
from replay.targets import Target

from .outcome import (
    INTERRUPTED_MSG,
    Outcome,
    StreamScanner,
    classify,
    plain_head,
    read_plain,
)

Done = Callable[[Outcome], None]
_now = time.monotonic_ns
FIRST_WRITE = 2 * 1024  # a larger request is written in two parts (see _Conn.start_at)


class ResponseHead:
    """What llhttp's header callbacks keep of a response, for both senders that read with it
    (this one, and send/wire.py's reader of the compiled sender's answers): the body's type and
    coding (its scanner's), Retry-After, and whether the body is framed (a length or chunks)."""

    __slots__ = ("_ctype", "_enc", "_framed", "_retry")

    def _new_head(self) -> None:
        self._ctype = self._enc = b""
        self._retry: bytes | None = None
        self._framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"content-type":
            self._ctype = value.lower()
        elif n == b"content-encoding":
            self._enc = value
        elif n == b"retry-after":
            self._retry = value
        elif n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True


class _Conn(ResponseHead, asyncio.Protocol):
    __slots__ = (
        "_head",
        "_keep",
        "_primed",
        "_rest",
        "client",
        "deadline",
        "done",
        "out",
        "parser",
        "req",
        "reused",
        "scan",
        "transport",
    )

    def __init__(self, client: FastClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.out: Outcome | None = None
        self.done: Done | None = None
        self.scan: StreamScanner | None = None
        self.deadline = 0  # monotonic ns; checked by the client's sweeper (no timer per request)
        self._new_head()
        self._rest: Prepared | None = None  # a request whose body is not all written yet
        # staged: sent by fire(); its Outcome made beforehand (the instant has only the writes)
        self._primed: tuple[Prepared, Done, Outcome] | None = None
        self._keep = True
        self._head = False
        self.req: Prepared | None = None
        self.reused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same methods.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        out = self.out
        if out is None:
            self._close()  # data nobody asked for: the connection is not usable
            return
        if not out.bytes_in and not self._head:
            t = _now()
            stamps = (len(data), t)
            head = plain_head(data, stamps)
            if head is not None:  # the whole answer in this read, its head plain: no llhttp
                out.end_ns = t
                self._keep = head[6]
                req = self.req
                read_plain(out, req.surface if req is not None else PLAIN, data, stamps, head)
                self._complete()
                return
        out.bytes_in += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("protocol", "unexpected protocol upgrade")
        except httptools.HttpParserError as exc:
            self._fail("protocol", f"invalid HTTP from the target: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client._discard(self)
        out = self.out
        if out is None:
            return
        if exc is None and out.headers_ns is not None and not self._framed:
            self.on_message_complete()  # a close-delimited body ends at EOF
            return
        if self.scan is not None and self.scan.complete:
            self.on_message_complete()  # closed after the terminal event: the stream is whole
            return
        if exc is None:
            kind, msg = "reset", "connection closed by the target before the response ended"
        else:
            kind, msg = classify(exc)
        self._fail(kind, msg)

    # -- httptools callbacks (on_header: ResponseHead) -----------------------------------------
    def on_headers_complete(self) -> None:
        out = self.out
        assert out is not None
        out.headers_ns = _now()
        out.status = self.parser.get_status_code()
        self._keep = self.parser.should_keep_alive()
        if self._retry is not None:
            out.retry_after = self._retry.decode("latin-1")
        req = self.req
        surface = req.surface if req is not None else PLAIN
        self.scan = StreamScanner(out, self._ctype, self._enc, surface)
        if self._head:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.scan is not None:
            self.scan.feed(body, _now())

    def on_message_complete(self) -> None:
        out = self.out
        if out is None or self.done is None:
            return
        out.end_ns = _now()
        if self.scan is not None:
            self.scan.finish()
        self._complete()

    def _complete(self) -> None:
        """The answer is whole (its outcome measured): the connection goes back or closes."""
        out, done = self.out, self.done
        assert out is not None and done is not None
        if self._rest is not None:
            self._write_rest(self._rest)
        self._reset()
        if self._head or not self._keep:
            self._close()
        else:
            self.client._release(self)
        done(out)

    # -- requests ------------------------------------------------------------------------------
    def start(self, req: Prepared, done: Done) -> None:
        self.start_at(req, done, _now())

    def prime(self, req: Prepared, done: Done) -> None:
        self._primed = (req, done, Outcome(sent_ns=0))

    def fire(self) -> None:
        """Send the staged request now: on this connection, or (it was closed while it waited)
        on another."""
        primed, self._primed = self._primed, None
        if primed is None:
            return
        req, done, out = primed
        if self.transport is None or self.transport.is_closing():
            self.client.submit(req, done)
            return
        self.start_at(req, done, _now(), out)

    def cancel(self) -> None:
        if self._primed is not None:
            self._primed = None
            if self.transport is not None and not self.transport.is_closing():
                self.client._release(self)

    def start_at(self, req: Prepared, done: Done, sent_ns: int, out: Outcome | None = None) -> None:
        if out is None:
            out = Outcome(sent_ns=sent_ns)
        else:  # made when it was staged
            out.sent_ns = sent_ns
        self.out, self.done, self.req = out, done, req
        self._new_head()
        self._keep = True
        self._head = req.method == "HEAD"
        client = self.client
        if client.timeout_ns:
            self.deadline = sent_ns + client.timeout_ns
            client._busy.add(self)
        assert self.transport is not None
        raw = req.raw
        if len(raw) <= FIRST_WRITE:
            self.transport.write(raw)
        else:
            # The head now, the rest once every request due with it has begun: writing a
            # 500 KB body whole held back each request due after it in the same instant.
            self.transport.write(raw[:FIRST_WRITE])
            self._rest = req
            client.loop.call_soon(self._write_rest, req)

    def _write_rest(self, req: Prepared) -> None:
        """The rest of a request written in two parts, once. Also at its response's end if
        that came first (a server may answer before it reads a body): the connection's next
        request must not follow a body cut short, or the server reads it as the body's rest."""
        if self._rest is req:
            self._rest = None
            if self.transport is not None:
                self.transport.write(memoryview(req.raw)[FIRST_WRITE:])

    def _timed_out(self) -> None:
        self._fail("timeout", f"no complete response within {self.client.timeout:g} s")

    def _reset(self) -> None:
        if self.deadline:
            self.deadline = 0
            self.client._busy.discard(self)
        self.out = None
        self.done = None
        self.req = None
        self.scan = None

    def _fail(self, kind: str, msg: str) -> None:
        out, done, req = self.out, self.done, self.req
        self._reset()
        self._close()
        if out is None or done is None:
            return
        if kind == "reset" and self.reused and out.bytes_in == 0 and req is not None:
            # The target closed an idle keep-alive connection as we reused it: not the target
            # failing this request. Send it again on a new connection, timed from the first try.
            self.client._resend(req, done, out.sent_ns)
            return
        out.end_ns = _now()
        out.error, out.error_msg = kind, msg
        done(out)

    def _close(self) -> None:
        self.client._discard(self)
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class FastClient:
    """Sends prepared requests to one target over a pool of keep-alive connections."""

    def __init__(
        self,
        target: Target,
        *,
        timeout: float = 60.0,
        insecure: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.loop = loop or asyncio.get_running_loop()
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._busy: set[_Conn] = set()  # with a request out and a deadline
        self.timeout_ns = int(timeout * 1e9) if timeout else 0
        self._sweeper: asyncio.Task[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self.connects = 0
        self.resends = 0
        if target.scheme == "https":
            ctx = ssl.create_default_context()
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl = ctx

    async def _sweep(self) -> None:
        """Time requests out: one task checking deadlines, instead of a timer per request."""
        interval = min(0.1, self.timeout / 10)
        while True:
            await asyncio.sleep(interval)
            if self._busy:
                now = _now()
                for conn in [c for c in self._busy if c.deadline and c.deadline <= now]:
                    conn._timed_out()

    def submit(self, req: Prepared, done: Done) -> bool:
        """Send on an idle connection, or on a new one (True)."""
        if self._sweeper is None and self.timeout_ns:
            self._sweeper = self.loop.create_task(self._sweep())
        conn = self._warm()
        if conn is not None:
            conn.start(req, done)
            return False
        self.loop.create_task(self._connect_and_start(req, done, _now()))
        return True

    def stage(self, req: Prepared, done: Done) -> _Conn | None:
        """A warm connection readied for this request; its `fire()` sends it."""
        conn = self._warm()
        if conn is not None:
            conn.prime(req, done)
        return conn

    def _warm(self) -> _Conn | None:
        """An idle connection still open, to reuse (closed ones are dropped on the way)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def _resend(self, req: Prepared, done: Done, sent_ns: int) -> None:
        self.resends += 1
        self.loop.create_task(self._connect_and_start(req, done, sent_ns))

    async def _open(self) -> _Conn:
        """A new connection to the target, counted and known to the pool (not yet idle)."""
        _, proto = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: _Conn(self),
                self.target.host,
                self.target.port,
                ssl=self._ssl,
                server_hostname=self.target.host if self._ssl else None,
            ),
            timeout=self.timeout or None,
        )
        self.connects += 1
        self._all.add(proto)
        return proto

    async def _connect_and_start(self, req: Prepared, done: Done, t0: int) -> None:
        try:
            proto = await self._open()
        except Exception as exc:  # every failure to connect is a result, not an exception
            kind, msg = classify(exc)
            done(Outcome(sent_ns=t0, end_ns=_now(), error=kind, error_msg=msg))
            return
        if proto.transport is None:  # closed between connecting and now
            done(Outcome(sent_ns=t0, end_ns=_now(), error="reset", error_msg="closed at connect"))
            return
        proto.start_at(req, done, t0)

    async def warm(self, n: int, timeout: float) -> int:
        """Open connections until `n` are idle in the pool, before the run starts, so that
        its first shots do not each wait for a connect (a TLS handshake too); within
        `timeout` s. How many opened. A connection that fails or comes late is left out:
        the sends that need one open it, and meet any failure as their result."""
        want = n - len(self._idle)
        if want <= 0:
            return 0
        tasks = [self.loop.create_task(self._open()) for _ in range(want)]
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for t in late:
            t.cancel()
        opened = 0
        for conn in await asyncio.gather(*tasks, return_exceptions=True):  # failures read too
            if isinstance(conn, _Conn) and conn.transport is not None:
                self._idle.append(conn)
                opened += 1
        return opened

    def _release(self, conn: _Conn) -> None:
        self._idle.append(conn)

    def _discard(self, conn: _Conn) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def close(self) -> None:
        for conn in list(self._all):  # requests still in flight: abandoned, and said so
            if conn.out is not None:
                conn._fail("interrupted", INTERRUPTED_MSG)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for conn in list(self._all):
            conn._close()
        self._idle.clear()
        await asyncio.sleep(0)
