"""HTTP content codings: gzip, deflate, br and zstd, undone with a bound and redone the same way.

Capture undoes a body's coding to read and redact it and stores it coded again, so a replay
sends what the client sent; replay undoes it to edit a request (model map, salting, dropped
markers), and undoes an answer's as it arrives to read its usage, events and hash (`decoder`).
All use this module. A coding list (`gzip, br`) is undone last-applied first.
Decoding never yields more than `limit` bytes: a body that inflates beyond it is refused (None),
like one whose data is bad or whose coding is unknown.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import brotli
import zstandard

LIMIT = 64 << 20  # never inflate a body beyond this
DATA_ERRORS = (zlib.error, brotli.error, zstandard.ZstdError, EOFError)  # bad coded data
_STEP = 4096  # brotli and zstd are fed this much at a time, the output checked after each


def codings(content_encoding: str | None) -> list[str]:
    """The codings a Content-Encoding names, in the order they were applied (identity left
    out)."""
    out = [c.strip().lower() for c in (content_encoding or "").split(",")]
    return [c for c in out if c and c != "identity"]


def known(content_encoding: str | None) -> bool:
    return all(c in _DECODERS for c in codings(content_encoding))


def decode(body: bytes, content_encoding: str | None, limit: int = LIMIT) -> bytes | None:
    """The body with its codings undone; None if a coding is unknown, the data is bad or the
    result would exceed `limit`."""
    out = body
    for c in reversed(codings(content_encoding)):
        fn = _DECODERS.get(c)
        if fn is None:
            return None
        try:
            got = fn(out, limit)
        except DATA_ERRORS:
            return None
        if got is None:
            return None
        out = got
    return out


def encode(body: bytes, content_encoding: str | None) -> bytes:
    """The body coded as `content_encoding` says (ValueError for an unknown coding)."""
    out = body
    for c in codings(content_encoding):
        fn = _ENCODERS.get(c)
        if fn is None:
            raise ValueError(f"unknown content coding {c!r}")
        out = fn(out)
    return out


def _zlib(wbits: int) -> Callable[[bytes, int], bytes | None]:
    def run(data: bytes, limit: int) -> bytes | None:
        d = zlib.decompressobj(wbits)
        out = d.decompress(data, limit + 1)
        return out if len(out) <= limit and d.eof else None

    return run


def _deflate(data: bytes, limit: int) -> bytes | None:
    """`deflate` is zlib-wrapped by the standard, raw by some servers: both are read."""
    try:
        return _zlib(zlib.MAX_WBITS)(data, limit)
    except zlib.error:
        return _zlib(-zlib.MAX_WBITS)(data, limit)


def _stepped(feed: Callable[[bytes], bytes], data: bytes, limit: int) -> bytes | None:
    """Feed a decompressor _STEP bytes at a time, giving up once the output passes `limit`
    (brotli and zstd take no output bound of their own)."""
    parts: list[bytes] = []
    size = 0
    for i in range(0, len(data), _STEP):
        got = feed(data[i : i + _STEP])
        size += len(got)
        if size > limit:
            return None
        parts.append(got)
    return b"".join(parts)


def _brotli(data: bytes, limit: int) -> bytes | None:
    d = brotli.Decompressor()
    out = _stepped(d.process, data, limit)
    return out if out is not None and d.is_finished() else None


def _zstd(data: bytes, limit: int) -> bytes | None:
    d = zstandard.ZstdDecompressor().decompressobj()
    out = _stepped(d.decompress, data, limit)
    return out if out is not None and d.eof else None


Feed = Callable[[bytes], bytes]


def decoder(content_encoding: str | None) -> Feed | None:
    """The body's codings undone as it arrives: each call takes the next coded bytes and gives
    the plain bytes they make (raising one of DATA_ERRORS for bad data). None for no coding, and
    for a coding this module does not know (the bytes are then read as they come)."""
    steps: list[Feed] = []
    for c in reversed(codings(content_encoding)):
        make = _STREAMS.get(c)
        if make is None:
            return None
        steps.append(make())
    if len(steps) < 2:
        return steps[0] if steps else None

    def chained(data: bytes) -> bytes:
        for step in steps:
            data = step(data)
        return data

    return chained


def decode_parts(
    parts: list[bytes], content_encoding: str | None, limit: int = LIMIT
) -> list[bytes] | None:
    """A coded stream's network chunks, each decoded: what each chunk's arrival made readable.
    Unlike `decode`, the coding need not have ended (a client that closes once it has a stream's
    last event never sees the coder's end). None if a coding is unknown, the data is bad or the
    whole would exceed `limit` (fed _STEP bytes at a time, the output checked after each)."""
    decode = decoder(content_encoding)
    if decode is None:
        return None
    out: list[bytes] = []
    size = 0
    try:
        for part in parts:
            got = _stepped(decode, part, limit - size)
            if got is None:
                return None
            size += len(got)
            out.append(got)
    except DATA_ERRORS:
        return None
    return out


class _Deflate:
    """`deflate` as it arrives: zlib-wrapped by the standard, raw by some servers (told apart by
    the zlib header's check bits once two bytes have come)."""

    def __init__(self) -> None:
        self._d: Any = None
        self._head = b""

    def __call__(self, data: bytes) -> bytes:
        if self._d is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return self._d.decompress(data)  # type: ignore[no-any-return]


def _gzip_stream() -> Feed:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress


_STREAMS: dict[str, Callable[[], Feed]] = {
    "gzip": _gzip_stream,
    "x-gzip": _gzip_stream,
    "deflate": _Deflate,
    "br": lambda: brotli.Decompressor().process,
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj().decompress,
}


def encoder(coding: str) -> tuple[Feed, Callable[[], bytes]]:
    """A body coded as it is written, as a compressing proxy codes a stream: (code the next
    bytes, flushed so that what they say can be read at once; end the coding). No coding ("",
    identity): the bytes as they are."""
    if coding in ("", "identity"):
        return (lambda d: d), bytes  # bytes(): b""
    if coding in ("gzip", "x-gzip", "deflate"):
        z = zlib.compressobj(wbits=16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS)
        return (lambda d: z.compress(d) + z.flush(zlib.Z_SYNC_FLUSH)), z.flush
    if coding == "br":
        b = brotli.Compressor()
        return (lambda d: b.process(d) + b.flush()), b.finish
    if coding == "zstd":
        c = zstandard.ZstdCompressor().compressobj()
        return (lambda d: c.compress(d) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)), c.flush
    raise ValueError(f"unknown content coding {coding!r}")


def accepts(accept_encoding: str | None, coding: str) -> bool:
    """An Accept-Encoding header allows this coding (RFC 9110 12.5.3): named with a q-value above
    0, or not named while `*` is, above 0. `br;q=0` refuses br."""
    star = None
    for item in (accept_encoding or "").split(","):
        name, *params = (x.strip().lower() for x in item.split(";"))
        q = 1.0
        for p in params:
            key, _, value = p.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a q-value that is not one allows nothing
        if name == coding or (coding == "gzip" and name == "x-gzip"):
            return q > 0
        if name == "*":
            star = q > 0
    return bool(star)


def _gzip_encode(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


_DECODERS: dict[str, Callable[[bytes, int], bytes | None]] = {
    "gzip": _zlib(16 + zlib.MAX_WBITS),
    "x-gzip": _zlib(16 + zlib.MAX_WBITS),
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}
_ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _gzip_encode,
    "x-gzip": _gzip_encode,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


NOT_JSON: Any = object()  # parse_json's answer for a body that is not (complete) JSON


def looks_like_json(plain: bytes, content_type: str | None) -> bool:
    return "json" in (content_type or "").lower() or plain.lstrip()[:1] in (b"{", b"[")


def parse_json(plain: bytes, content_type: str | None) -> Any:
    if not looks_like_json(plain, content_type):
        return NOT_JSON
    try:
        return json.loads(plain)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return NOT_JSON


@dataclass
class Decoded:
    plain: bytes | None  # None: the content coding could not be undone
    obj: Any  # the parsed JSON, or NOT_JSON


def decode_and_parse(
    body: bytes, content_encoding: str | None, content_type: str | None
) -> Decoded:
    """Undo the content coding and parse JSON, once (capture's surface reading and its
    redaction share the result)."""
    plain = decode(body, content_encoding)
    if plain is None:
        return Decoded(None, NOT_JSON)
    return Decoded(plain, parse_json(plain, content_type))
