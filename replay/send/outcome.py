"""What a sender measures for one request, the one place exceptions become error kinds, and the
SSE scanner both senders share.

Times are monotonic nanoseconds. Error kinds: `connect` (refused, unreachable, DNS), `tls`,
`timeout`, `reset` (closed or reset mid-exchange), `protocol` (invalid HTTP, bad framing). An HTTP
status is not an error kind: the results decide success, expected shedding or failure from it.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import re
import ssl
import zlib
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(rb'"(?:content|text|reasoning_content)"\s*:\s*"(?!")')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([^"]+)"')
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
JSON_KEEP = 256 << 10  # bytes of a JSON body kept to read its usage


@dataclass(slots=True)
class Outcome:
    sent_ns: int
    end_ns: int = 0
    headers_ns: int | None = None
    first_token_ns: int | None = None
    token_ns: list[int] = field(default_factory=list)  # arrival of every token event
    status: int | None = None
    bytes_in: int = 0
    error: str | None = None
    error_msg: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    retry_after: str | None = None
    events: int = 0  # SSE events seen
    body_hash: str | None = None  # blake2b-128 of the body as decoded (content-encoding undone)


def classify(exc: BaseException) -> tuple[str, str]:
    """The error-mapping seam: (kind, one-line message) for anything a send can raise."""
    msg = f"{type(exc).__name__}: {exc}".strip()[:300]
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout", msg or "timed out"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls", msg
    if isinstance(exc, ConnectionRefusedError):
        return "connect", msg
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | EOFError):
        return "reset", msg
    try:
        import httptools

        if isinstance(exc, httptools.HttpParserError):
            return "protocol", msg
    except ImportError:  # pragma: no cover
        pass
    try:
        import aiohttp

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
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return "reset", msg
        if exc.errno == errno.ETIMEDOUT:
            return "timeout", msg
    if isinstance(exc, OSError):
        return "connect", msg  # refused, unreachable, name resolution
    return "protocol", msg


class StreamScanner:
    """Reads a response body as it arrives: SSE token events (without parsing each event's
    JSON: a token event is one whose content/text is a non-empty string), finish_reason and
    usage; for JSON bodies, the usage at the end."""

    __slots__ = ("_buf", "_hash", "_inflate", "_json", "out", "sse")

    def __init__(self, out: Outcome, content_type: bytes, content_encoding: bytes) -> None:
        self.out = out
        self.sse = b"event-stream" in content_type
        self._json = bytearray() if b"json" in content_type else None
        enc = content_encoding.strip().lower()
        self._inflate = (
            zlib.decompressobj(16 + zlib.MAX_WBITS)
            if enc == b"gzip"
            else zlib.decompressobj()
            if enc == b"deflate"
            else None
        )
        self._buf = b""
        self._hash: Any = hashlib.blake2b(digest_size=16)  # for `loadtape diff`

    def feed(self, data: bytes, now: int) -> None:
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                self._inflate = None
                self.sse = False
                self._hash = None  # undecodable: no hash rather than a wrong one
                return
        if self._hash is not None:
            self._hash.update(data)
        if self.sse:
            buf = self._buf + data
            if b"\n\n" not in buf and b"\r\n\r\n" not in buf:
                self._buf = buf
                return
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            *events, self._buf = buf.split(b"\n\n")
            out = self.out
            for ev in events:
                if not ev:
                    continue
                out.events += 1
                if _TOKEN.search(ev) is not None:
                    if out.first_token_ns is None:
                        out.first_token_ns = now
                    out.token_ns.append(now)
                # finish_reason and usage may ride on a token event too (the last one)
                if b'"usage"' in ev or _FINISH.search(ev) is not None:
                    self._meta(ev)
        elif self._json is not None and len(self._json) < JSON_KEEP:
            self._json += data

    def _meta(self, ev: bytes) -> None:
        out = self.out
        m = _FINISH.search(ev)
        if m:
            out.finish_reason = m.group(1).decode("ascii", "replace")
        m = _PROMPT.search(ev)
        if m:
            out.prompt_tokens = int(m.group(1))
        m = _COMPLETION.search(ev)
        if m:
            out.completion_tokens = int(m.group(1))

    def finish(self) -> None:
        if self._hash is not None:
            self.out.body_hash = self._hash.hexdigest()
        if self._json is not None and self._json:
            self._meta(bytes(self._json))
            self._json = None
        elif self.sse and self._buf.strip():
            self.feed(b"\n\n", self.out.end_ns)  # a last event without its blank line
