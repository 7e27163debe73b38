"""The API surfaces a gateway carries, one module each: OpenAI chat completions (`chat`), legacy
completions (`completions`), Responses (`responses`), Anthropic Messages (`messages`),
embeddings (`embeddings`), and plain HTTP (`http`) for everything else.

Capture (`captures.exchange`), the replay's stream scanner (`replay.send.outcome`), the request
edits of amplification and `--model-map` (`replay.rewrite`), the mock gateway, inspect and the
test factories all go through here; none has its own parsing. A surface is chosen by the
request's path (`.../chat/completions`, `.../responses`, `.../v1/messages`, ...), then, for
paths a gateway names its own way, by the request body's shape.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from .. import codec
from .base import RequestFields, ResponseFields, Surface
from .chat import SURFACE as CHAT
from .completions import SURFACE as COMPLETIONS
from .embeddings import SURFACE as EMBEDDINGS
from .messages import SURFACE as MESSAGES
from .plain import SURFACE as PLAIN
from .responses import SURFACE as RESPONSES
from .scan import EventScanner

__all__ = [
    "BY_NAME",
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "MESSAGES",
    "PLAIN",
    "RESPONSES",
    "SURFACES",
    "EventScanner",
    "RecordedStream",
    "RequestFields",
    "ResponseFields",
    "Surface",
    "decode_body",
    "detect",
    "parse_request",
    "read_response",
]

SURFACES: tuple[Surface, ...] = (CHAT, COMPLETIONS, RESPONSES, MESSAGES, EMBEDDINGS)
BY_NAME: dict[str, Surface] = {s.name: s for s in (*SURFACES, PLAIN)}
MAX_DECODED = codec.LIMIT  # never inflate a body beyond this for parsing
JSON_KEEP = 1 << 20  # a JSON body larger than this is not parsed whole for its usage


def detect(path: str, obj: Any = None, *, anthropic: bool = False) -> Surface:
    """The surface of a request: by its path, else by its body (an `anthropic-version` header
    says Messages for a chat-shaped body)."""
    by_path = _by_path(path)
    if by_path is not None:
        return by_path
    if isinstance(obj, dict):
        if anthropic and CHAT.matches_body(obj):
            return MESSAGES
        for s in (RESPONSES, CHAT, COMPLETIONS):
            if s.matches_body(obj):
                return s
    return PLAIN


@functools.lru_cache(maxsize=4096)
def _by_path(path: str) -> Surface | None:
    """The surface a path names (a replay asks this once per request, of a few paths)."""
    for s in SURFACES:
        if s.matches_path(path):
            return s
    return None


def decode_body(body: bytes | None, content_encoding: str | None) -> bytes | None:
    """The body with its content codings undone (gzip, deflate, br, zstd and lists of them;
    captures/codec.py), bounded; None if a coding is unknown, the data is bad or cut short."""
    if not body:
        return body
    return codec.decode(body, content_encoding, MAX_DECODED)


def parse_request(
    path: str, body: bytes | None, content_encoding: str | None = None, *, anthropic: bool = False
) -> tuple[Surface, RequestFields]:
    """A request's surface and fields, from its path and (decoded) body."""
    raw = decode_body(body, content_encoding)
    obj = None
    if raw and raw.lstrip()[:1] == b"{":
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            obj = None
    surface = detect(path, obj, anthropic=anthropic)
    fields = surface.request(obj) if isinstance(obj, dict) else RequestFields()
    return surface, fields


@dataclass
class RecordedStream:
    """What a recorded response said, and for a stream when its events came (chunk indices)."""

    fields: ResponseFields
    streamed: bool = False
    first_output_chunk: int | None = None
    first_text_chunk: int | None = None
    output_events: int = 0
    complete: bool | None = None  # streams: the terminal event arrived; bodies: None


def read_response(
    surface: Surface,
    parts: list[bytes] | None,
    content_type: str | None,
    content_encoding: str | None,
) -> RecordedStream:
    """A recorded response body (its network chunks, in order) read by its surface."""
    ctype = (content_type or "").lower()
    identity = (content_encoding or "").strip().lower() in ("", "identity")
    if not parts:
        return RecordedStream(ResponseFields())
    if "event-stream" in ctype or (identity and parts[0][:5] in (b"data:", b"event")):
        scan = EventScanner(surface, keep_times=False)
        if identity:
            for i, part in enumerate(parts):
                scan.feed(part, i)
            scan.finish(len(parts) - 1)
        else:
            _scan_coded(scan, parts, content_encoding)
        return RecordedStream(
            scan.fields,
            streamed=True,
            first_output_chunk=scan.first_output,
            first_text_chunk=scan.first_text,
            output_events=scan.output_events,
            complete=scan.complete,
        )
    fields = ResponseFields()
    raw = decode_body(b"".join(parts), content_encoding)
    if raw and len(raw) <= JSON_KEEP and ("json" in ctype or raw.lstrip()[:1] == b"{"):
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            fields.shape_ok = False
        else:
            surface.body(obj, fields)
    return RecordedStream(fields)


def _scan_coded(scan: EventScanner, parts: list[bytes], content_encoding: str | None) -> None:
    """A coded stream's events, decoded chunk by chunk so that each keeps its chunk's index
    (when it came). Not read where a coding is unknown, the data is bad or it would inflate
    beyond MAX_DECODED. A coding that did not end is read as far as it goes: an SDK closes once
    it has the last event, before a compressing proxy's end of the coding."""
    plain = codec.decode_parts(parts, content_encoding, MAX_DECODED)
    if plain is None:
        return
    for i, part in enumerate(plain):
        scan.feed(part, i)
    scan.finish(len(parts) - 1)
