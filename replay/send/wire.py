"""The compiled sender: requests handed ahead of their instant to a C thread (wire_c/engine.c) that
writes each at its instant and reads its answer; the Python side takes the finished exchanges
in batches and reads them with llhttp, as the fast sender does, each read's bytes stamped with
the time the engine read them. A plain answer (a well-formed head and a stated length: most of a
load test's) comes with its head already read in C (wire_c/head.h), and is measured without
llhttp: 2 us instead of 5.8 a response here (outcome.read_plain, held to llhttp by
test_wire_head).

Why: an open-loop request in Python costs two wakeups of the event loop (its instant, then its
answer), and a wakeup of the interpreter is dear; the engine's thread pays them in C, and the
loop wakes once per tick for many requests (docs/performance.md). What it serves: plain HTTP/1.1
targets (no TLS), open loop, no session state applied at the send; `replay --client` says
which sender runs (`auto` picks this one where it can). The heads of requests due together go
in one io_uring system call where the kernel has it (wire_c/uring.h; `uring`, `batched`).

The outcome is the fast sender's: the same stamps (sent before the first write, or for a
burst's head the kernel's stamp of its write, wire_c/stamp.h; headers, each body event and the
end when the read that brought them returned), the same error kinds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import httptools

from captures.protocols import PLAIN
from replay.rewrite import Prepared
from replay.targets import Target

from .client import ResponseHead
from .outcome import INTERRUPTED_MSG, Outcome, StreamScanner, classify, read_plain

try:
    from . import _wire  # type: ignore[attr-defined]
except ImportError:  # not built here (no C compiler, not Linux): the Python sender runs
    _wire = None

# A long answer comes from the engine in parts of about PART_BYTES as it arrives; with
# HOLD_BYTES of parts not yet taken, it stops reading until they are (engine.h).
PART_BYTES = _wire.PART_BYTES if _wire is not None else 0
HOLD_BYTES = _wire.HOLD_BYTES if _wire is not None else 0
PART = _wire.PART if _wire is not None else -1

Done = Callable[[Any, Outcome], None]  # (the request's tag, its outcome)
Unsent = Callable[[Any], None]  # (the request's tag)


def available() -> bool:
    return _wire is not None


def _call(done: Callable[[Outcome], None], out: Outcome) -> None:
    """`submit`'s way: the tag is the callback itself."""
    done(out)


class _Reader(ResponseHead):
    """llhttp's callbacks over an answer the engine read: what the fast sender's connection
    does as the bytes arrive, at the stamps of the reads that brought them (on_header:
    ResponseHead)."""

    __slots__ = ("head", "out", "parser", "scan", "surface", "t", "whole")

    def __init__(self, out: Outcome, req: Prepared) -> None:
        self.out = out
        self.parser = httptools.HttpResponseParser(self)
        self.surface = req.surface
        self.head = req.method == "HEAD"
        self._new_head()
        self.scan: StreamScanner | None = None
        self.t = 0
        self.whole = False

    def on_headers_complete(self) -> None:
        out = self.out
        out.headers_ns = self.t
        out.status = self.parser.get_status_code()
        if self._retry is not None:
            out.retry_after = self._retry.decode("latin-1")
        self.scan = StreamScanner(out, self._ctype, self._enc, self.surface or PLAIN)
        if self.head:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.scan is not None:
            self.scan.feed(body, self.t)

    def on_message_complete(self) -> None:
        if not self.whole:
            self.whole = True
            self.out.end_ns = self.t
            if self.scan is not None:
                self.scan.finish()

    def feed(self, answer: bytes, stamps: tuple[int, ...]) -> bool:
        """Feeds llhttp the bytes read by read, each at its read's stamp; False if they are not
        HTTP (out.error says why)."""
        out, parser = self.out, self.parser
        done = 0
        view = memoryview(answer)
        try:
            for i in range(0, len(stamps), 2):
                upto, self.t = stamps[i], stamps[i + 1]
                if upto > done:
                    out.bytes_in += upto - done
                    parser.feed_data(view[done:upto])
                    done = upto
                if self.whole:
                    break
        except httptools.HttpParserUpgrade:
            out.error, out.error_msg = "protocol", "unexpected protocol upgrade"
            return False
        except httptools.HttpParserError as exc:
            out.error, out.error_msg = "protocol", f"invalid HTTP from the target: {exc}"
            return False
        return True


def read_answer(
    out: Outcome,
    req: Prepared,
    answer: bytes,
    stamps: tuple[int, ...],
    ended: bool,
    reader: _Reader | None = None,
) -> bool:
    """Feeds the answer to llhttp read by read (after its parts, to their `reader`); True if it
    was a whole response. `ended`: the engine framed it whole (a body without a length ends at
    the close: llhttp is not told)."""
    if reader is None:
        reader = _Reader(out, req)
    if not reader.feed(answer, stamps):
        return False
    scan = reader.scan
    if not reader.whole and scan is not None and (ended or scan.complete):
        reader.on_message_complete()  # at the close, or after the stream's terminal event
    return reader.whole


def _address(host: str, port: int) -> str:
    """The target's numeric address: of several (localhost: ::1 and 127.0.0.1), the first that
    takes a connection, as asyncio's create_connection would find it (the engine dials one)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addrs = list(dict.fromkeys(str(i[4][0]) for i in infos))
    if len(addrs) > 1:
        for a in addrs:
            try:
                socket.create_connection((a, port), timeout=0.5).close()
                return a
            except OSError:
                continue
    return addrs[0]


class WireClient:
    """A client of one plain-HTTP target whose sends are timed by the engine (`submit_at`);
    results come in `collect()`, which the dispatcher calls every tick."""

    timed = True

    def __init__(self, target: Target, *, timeout: float = 60.0) -> None:
        if _wire is None:
            raise RuntimeError("the compiled sender is not built here")
        if target.scheme != "http":
            raise ValueError("the compiled sender speaks plain HTTP only")
        self.target = target
        self.timeout = timeout
        host = _address(target.host, target.port)
        self._engine = _wire.Engine(host, target.port, int(timeout * 1e9) if timeout else 0)
        self._ids = itertools.count()
        self._out: dict[int, tuple[Prepared, Any, Done, Unsent | None]] = {}
        # a long answer's reader while its parts come in (the engine holds no more than a part)
        self._parts: dict[int, _Reader] = {}
        self._closed = False

    # -- sending ---------------------------------------------------------------------------------
    def submit_at(
        self,
        req: Prepared,
        due_ns: int,
        tag: Any,
        done: Done,
        unsent: Unsent | None = None,
    ) -> None:
        """Send at monotonic `due_ns` (at once if it has passed): `done(tag, outcome)` with its
        result, or `unsent(tag)` if it never goes (unsend(), or the client closed first). The
        caller's `tag` says which request it was: one tuple a request, not a closure."""
        i = next(self._ids)
        self._out[i] = (req, tag, done, unsent)
        self._engine.submit(i, due_ns, req.raw, req.method == "HEAD")

    def submit(self, req: Prepared, done: Callable[[Outcome], None]) -> bool:
        self.submit_at(req, time.monotonic_ns(), done, _call)
        return False

    def stage(self, req: Prepared, done: Callable[[Outcome], None]) -> None:
        return None  # the engine's thread times every send: nothing to ready on the loop

    def unsend(self) -> None:
        """What the engine has not written yet comes back (to `unsent`) at the next collect."""
        self._engine.unsend()

    @property
    def outstanding(self) -> int:
        return len(self._out)

    # -- results -----------------------------------------------------------------------------------
    def collect(self) -> int:
        """Hands every finished exchange to its `done`; how many."""
        results = self._engine.take()
        out_map, parts, n = self._out, self._parts, 0
        for i, kind, err, msg, sent, end, answer, stamps, head in results:
            if kind == PART:
                reader = parts.get(i)
                if reader is None:
                    reader = parts[i] = _Reader(Outcome(sent_ns=sent), out_map[i][0])
                if reader.out.error is None:  # not HTTP: the rest is not read
                    reader.feed(answer, stamps)
                continue
            n += 1
            req, tag, done, unsent = out_map.pop(i)
            if kind == _wire.UNSENT:
                if unsent is not None:
                    unsent(tag)
                else:
                    done(tag, Outcome(sent_ns=end, end_ns=end, error="interrupted",
                                      error_msg=INTERRUPTED_MSG))  # fmt: skip
                continue
            reader = parts.pop(i, None)
            if head is not None and reader is None:  # a plain answer: llhttp is not needed
                out = Outcome(sent_ns=sent, end_ns=end)
                read_plain(out, req.surface or PLAIN, answer, stamps, head)
                done(tag, out)
                continue
            out = Outcome(sent_ns=sent) if reader is None else reader.out
            if not (
                (answer or reader is not None)
                and out.error is None
                and read_answer(out, req, answer, stamps, kind == _wire.OK, reader)
            ):
                if out.error is None or kind == _wire.PROTOCOL:  # the engine's word first
                    out.error, out.error_msg = self._error(kind, err, msg)
                out.end_ns = end
            done(tag, out)
        return n

    def _error(self, kind: int, err: int, msg: str | None) -> tuple[str, str]:
        if kind == _wire.OK:
            return "protocol", "the response's framing could not be read"
        if kind == _wire.CONNECT:
            return classify(OSError(err, os.strerror(err)) if err else ConnectionError())
        if kind == _wire.TIMEOUT:
            return "timeout", f"no complete response within {self.timeout:g} s"
        if kind == _wire.PROTOCOL:
            return "protocol", msg or "invalid HTTP from the target"
        if kind == _wire.INTERRUPTED:
            return "interrupted", INTERRUPTED_MSG
        if err:
            return classify(OSError(err, os.strerror(err)))
        return "reset", "connection closed by the target before the response ended"

    # -- the pool --------------------------------------------------------------------------------
    async def warm(self, n: int, timeout: float) -> int:
        """Opens connections until `n` are idle (within `timeout` s); how many opened."""
        idle = self._engine.counts()[2]
        if n <= idle:
            return 0
        self._engine.preopen(n - idle)
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._engine.counts()[2] < n:
            await asyncio.sleep(0.002)
        return max(0, int(self._engine.counts()[2]) - int(idle))

    @property
    def uring(self) -> bool:
        """Requests due together have their first writes in one system call (wire_c/uring.h);
        False: one send() each (no io_uring here, or LOADTAPE_WIRE_URING=0)."""
        return bool(self._engine.uring())

    @property
    def batched(self) -> int:
        """Requests whose first write went with others in one system call."""
        return int(self._engine.counts()[3])

    @property
    def thread_id(self) -> int:
        """The engine thread's kernel id: the thread that sends (`--rt-priority` raises it)."""
        return int(self._engine.tid())

    @property
    def connects(self) -> int:
        return int(self._engine.counts()[0])

    @property
    def resends(self) -> int:
        return int(self._engine.counts()[1])

    async def close(self) -> None:
        """Stops the engine: what was in flight is abandoned (and said so), the rest unsent."""
        if not self._closed:
            self._closed = True
            self._engine.close()
            self.collect()
