"""What a sender measures for one request, the one place exceptions become error kinds, and the
response scanner both senders share (its events classified by the request's API surface, in
captures/protocols).

Times are monotonic nanoseconds. Error kinds: `connect` (refused, unreachable, DNS), `tls`,
`timeout`, `reset` (closed or reset mid-exchange), `protocol` (invalid HTTP, bad framing), and
for LLM APIs answering 2xx: `stream_error` (the API's own error event mid-stream, or a failed
Responses response), `truncated` (a stream that ended without its terminal event or a finish
reason), `bad_body` (a whole JSON body that is not that API's shape), and `interrupted` (in
flight when the run was stopped, abandoned: not the target's doing). `client`: this machine ran
out of file descriptors (the open-file limit, or the system's) or of local ports for new
connections: not the target's doing either,
and a run with any is not a measure of the target (the run exits 1). An HTTP status is not an
error kind: the results decide success, expected shedding or failure from it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import re
import resource
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from captures import codec
from captures.protocols import PLAIN, EventScanner, ResponseFields, Surface
from captures.protocols.canonical import Msg

try:  # the compiled sender's module: its reader of a plain answer's head (wire_c/head.h)
    from . import _wire  # type: ignore[attr-defined]
except ImportError:  # not built here: llhttp reads every answer
    _wire = None

INTERRUPTED_MSG = "in flight when the run was stopped: abandoned"
JSON_KEEP = 256 << 10  # a JSON body up to this is kept and parsed whole for usage and shape
JSON_TAIL = 16 << 10  # of a larger one, the end is kept: usage comes last
_USAGE_KEYS = (
    ("prompt_tokens", re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d+)')),
    ("completion_tokens", re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d+)')),
)


@dataclass(slots=True)
class Outcome:
    sent_ns: int
    end_ns: int = 0
    headers_ns: int | None = None
    first_token_ns: int | None = None  # the first output event of any kind (TTFT)
    first_text_ns: int | None = None  # the first visible text (reasoning and tools come first)
    token_ns: Sequence[int] = ()  # arrival of every output event
    status: int | None = None
    bytes_in: int = 0
    error: str | None = None
    error_msg: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    finish_reason: str | None = None
    retry_after: str | None = None
    events: int = 0  # SSE events seen
    text_events: int = 0
    reasoning_events: int = 0
    tool_events: int = 0
    complete: bool | None = None  # a stream's terminal event arrived (None: not a stream)
    response_id: str | None = None
    minted: Sequence[str] = ()  # ids the target made: response, tool calls
    answer: Msg | None = None  # what the target answered, in canonical form
    body_hash: str | None = None  # blake2b-128 of the body as decoded (content-encoding undone)


def classify(exc: BaseException) -> tuple[str, str]:
    """The error-mapping seam: (kind, one-line message) for anything a send can raise."""
    msg = f"{type(exc).__name__}: {exc}".strip()[:300]
    code = getattr(exc, "errno", None)
    if code in (errno.EMFILE, errno.ENFILE):
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return "client", f"{msg} (this process may open {limit}: ulimit -n)"[:300]
    if code == errno.EADDRNOTAVAIL:  # no local port left for a new connection
        return "client", f"{msg} (no local port free: net.ipv4.ip_local_port_range)"[:300]
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout", msg or "timed out"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls", msg
    if isinstance(exc, ConnectionRefusedError):
        return "connect", msg
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | EOFError):
        return "reset", msg
    # Only a module already loaded can have raised its exception: none is imported here (an
    # import needs a file descriptor, and running out of them is one of the errors classified).
    httptools = sys.modules.get("httptools")
    if httptools is not None and isinstance(exc, httptools.HttpParserError):
        return "protocol", msg
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
            return "tls", msg
        if isinstance(exc, aiohttp.ClientConnectorError):
            return "connect", msg
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return "reset", msg
        if isinstance(exc, aiohttp.ClientResponseError):
            return "protocol", msg
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return "timeout", msg
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return "reset", msg
        if exc.errno == errno.ETIMEDOUT:
            return "timeout", msg
    if isinstance(exc, OSError):
        return "connect", msg  # refused, unreachable, name resolution
    return "protocol", msg


class StreamScanner:
    """Reads a response body as it arrives: an event stream's events classified by the request's
    API surface (without parsing each event's JSON: see captures/protocols), or, for a JSON
    body, its usage and shape at the end; and the body's hash."""

    __slots__ = ("_events", "_hash", "_inflate", "_json", "_tail", "out", "sse", "surface")

    def __init__(
        self, out: Outcome, content_type: bytes, content_encoding: bytes, surface: Surface = PLAIN
    ) -> None:
        self.out = out
        self.surface = surface
        self.sse = b"event-stream" in content_type
        self._events = EventScanner(surface) if self.sse else None
        # a JSON body is kept only where its surface reads it (plain HTTP reads nothing)
        self._json = bytearray() if b"json" in content_type and surface is not PLAIN else None
        self._tail = b""
        # gzip, deflate, br, zstd and lists of them, undone as the body arrives
        self._inflate = (
            codec.decoder(content_encoding.decode("latin-1")) if content_encoding else None
        )
        self._hash: Any = hashlib.blake2b(digest_size=16)  # for `loadtape diff`

    def feed(self, data: bytes, now: int) -> None:
        if self._inflate is not None:
            try:
                data = self._inflate(data)
            except codec.DATA_ERRORS:
                self._inflate = None
                self._events = None
                self._hash = None  # undecodable: no hash rather than a wrong one
                return
        if self._hash is not None:
            self._hash.update(data)
        if self._events is not None:
            self._events.feed(data, now)
        elif self._json is not None:
            if len(self._json) <= JSON_KEEP:
                self._json += data
            else:
                self._tail = (self._tail + data)[-JSON_TAIL:]

    @property
    def complete(self) -> bool:
        """The stream's terminal event has arrived (what comes after cannot fail it)."""
        return self._events is not None and self._events.complete

    def finish(self) -> None:
        out = self.out
        if self._hash is not None:
            out.body_hash = self._hash.hexdigest()
        ok = out.status is not None and 200 <= out.status < 300
        fields = None
        if self._events is not None:
            ev = self._events
            ev.finish(out.end_ns)
            fields = ev.fields
            out.events = ev.events
            out.first_token_ns = ev.first_output
            out.first_text_ns = ev.first_text
            out.token_ns = ev.output_times
            out.text_events, out.reasoning_events = ev.text_events, ev.reasoning_events
            out.tool_events = ev.tool_events
            if self.surface.streams:
                out.complete = ev.complete
                if ev.complete_at is not None:
                    # done when the terminal event came, as for an SDK, however long the
                    # server then takes to close its body
                    out.end_ns = ev.complete_at
                if ok and ev.error is not None:
                    out.error, out.error_msg = "stream_error", ev.error
                elif ok and not ev.complete and fields.finish_reason is None:
                    out.error = "truncated"
                    out.error_msg = "the stream ended without its terminal event"
        elif self._json is not None and self._json:
            fields = ResponseFields()
            if len(self._json) <= JSON_KEEP:
                try:
                    self.surface.body(json.loads(self._json), fields)
                except (ValueError, UnicodeDecodeError):
                    fields.shape_ok = False
            else:  # too large to parse whole: usage from its end
                tail = bytes(self._json[-JSON_TAIL:]) + self._tail
                for name, pat in _USAGE_KEYS:
                    found = pat.findall(tail)
                    if found:
                        setattr(fields, name, int(found[-1]))
            self._json = None
            if ok and fields.shape_ok is False and self.surface is not PLAIN:
                out.error = "bad_body"
                out.error_msg = f"the 2xx body is not a {self.surface.name} response"
        if fields is not None:
            out.finish_reason = fields.finish_reason
            out.prompt_tokens = fields.prompt_tokens
            out.completion_tokens = fields.completion_tokens
            out.reasoning_tokens = fields.reasoning_tokens
            out.cached_tokens = fields.cached_tokens
            out.cache_write_tokens = fields.cache_write_tokens
            out.response_id = fields.response_id
            out.minted = fields.minted
            out.answer = fields.answer


# (status, body offset, when the head's last byte was read, Content-Type, Content-Encoding,
# Retry-After, whether the connection may be kept)
Head = tuple[int, int, int, bytes, bytes, "bytes | None", bool]


def plain_head(answer: bytes, stamps: tuple[int, ...]) -> Head | None:
    """A whole answer's head read in C, where it is plain (wire_c/head.h: a subset of what
    llhttp accepts, read alike); None: llhttp reads it (so too where the module is not built).
    `stamps`: (bytes read so far, ns) per read that brought the answer."""
    if _wire is None:
        return None
    return _wire.plain_head(answer, stamps)  # type: ignore[no-any-return]


def read_plain(
    out: Outcome, surface: Surface, answer: bytes, stamps: tuple[int, ...], head: Head
) -> None:
    """What llhttp's reading of a plain answer gives, without llhttp, from its `head`. The
    caller sets `out.end_ns` first (a stream's scanner may move it)."""
    status, body_at, out.headers_ns, ctype, enc, retry, _ = head
    out.status = status
    out.bytes_in = len(answer)
    if retry is not None:
        out.retry_after = retry.decode("latin-1")
    ctype = ctype.lower()
    if surface is PLAIN and not enc and b"event-stream" not in ctype:  # read for its hash only
        out.body_hash = hashlib.blake2b(memoryview(answer)[body_at:], digest_size=16).hexdigest()
        return
    scan = StreamScanner(out, ctype, enc, surface)
    done = body_at
    for i in range(0, len(stamps), 2):
        upto = stamps[i]
        if upto > done:
            scan.feed(answer[done:upto], stamps[i + 1])
            done = upto
    scan.finish()
