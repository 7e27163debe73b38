"""A capture row as the plan reads it: the request to send, what the recording saw, and whether
it is replayed at all. Made a row at a time (`not_replayable`, `request_of`, `recorded_info`:
the sampler) or a batch of column lists at a time (`planned_rows`: the replay's plan), each on
the same per-value functions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from captures.rows import Columns
from captures.schema import Headers, Record

PLAN_COLUMNS = [
    "writer_id",
    "seq",
    "session_key",
    "req_start_ns",
    "method",
    "path",
    "query",
    "req_headers",
    "req_body",
    "req_body_truncated",
    "req_content_encoding",
    "api",
    "model",
    "stream",
    "status",
    "resp_start_ns",
    "resp_end_ns",
    "chunk_offsets_us",
    "first_token_us",
    "completion_tokens",
    "finish_reason",
    "response_id",
    "tool_call_ids",
    "answer_hash",
    "replayable",
    "error_kind",
]


@dataclass(slots=True)
class Request:
    """A recorded request, before it is rewritten for the target."""

    method: str
    path: str
    query: str | None
    headers: Headers
    body: bytes | None
    content_encoding: str | None = None
    model: str | None = None
    stream: bool | None = None
    api: str | None = None  # the API surface the capture recorded (captures/protocols)


@dataclass(slots=True)
class Recorded:
    """What the recording saw, for response diffs and stream-shape comparisons."""

    status: int | None
    ttfb_us: int | None
    duration_us: int | None
    chunks: int | None
    first_chunk_us: int | None
    completion_tokens: int | None
    finish_reason: str | None
    minted: tuple[str, ...] = ()  # ids the recorded server made: the response's, its tool calls'
    answer_hash: str | None = None  # the recorded answer, in canonical form (diff, live history)


def not_replayable(row: Record, include_junk: bool = False) -> str | None:
    """Why a recorded exchange is not replayed (None: it is). Reported, never fatal.
    Junk, left out unless asked for (`include_junk`): an HTTP/2 connection preface recorded as
    a request (`PRI *`), and requests whose client went away before the answer (a cancelled
    generation is not the load the application meant to send)."""
    return _why_not(
        row.get("replayable", True),
        row.get("req_body_truncated"),
        row.get("method"),
        row.get("path"),
        row.get("error_kind"),
        include_junk,
    )


def _why_not(
    replayable: bool | None,
    truncated: bool | None,
    method: str | None,
    path: str | None,
    error_kind: str | None,
    include_junk: bool,
) -> str | None:
    if not replayable:
        return "not replayable (websocket or tunnel)"
    if truncated:
        return "request body was cut by the capture's body limit"
    method = (method or "").upper()
    if method == "CONNECT":
        return "CONNECT tunnel"
    if include_junk:
        return None
    if method == "PRI" and path == "*":
        return "HTTP/2 connection preface (PRI *)"
    if error_kind == "client_abort":
        return "client aborted it in the recording (--include-junk replays it)"
    return None


# what Recorded is made of, in _recorded's order
RECORDED_COLUMNS = (
    "status",
    "req_start_ns",
    "resp_start_ns",
    "resp_end_ns",
    "chunk_offsets_us",
    "first_token_us",
    "stream",
    "completion_tokens",
    "finish_reason",
    "response_id",
    "tool_call_ids",
    "answer_hash",
)


def recorded_info(row: Record) -> Recorded:
    return _recorded(*(row.get(c) for c in RECORDED_COLUMNS))


def _recorded(
    status: int | None,
    start: int | None,
    rs: int | None,
    re_: int | None,
    offsets: list[int] | None,
    first_content: int | None,  # the chunk with the first output event
    stream: bool | None,
    completion_tokens: int | None,
    finish_reason: str | None,
    response_id: str | None,
    tool_call_ids: list[str] | None,
    answer_hash: str | None,
) -> Recorded:
    offsets = offsets or None
    ids = tuple(tool_call_ids or ())
    if first_content is None and offsets:
        # captures written before first_token_us: for SSE the first chunk is usually the role
        # event and the first content arrives with the second; a plain body has one chunk.
        first_content = offsets[1] if stream and len(offsets) > 1 else offsets[0]
    return Recorded(
        status=status,
        ttfb_us=(rs - start) // 1000 if rs and start else None,
        duration_us=(re_ - start) // 1000 if re_ and start else None,
        chunks=len(offsets) if offsets else None,
        first_chunk_us=first_content,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        minted=(response_id, *ids) if response_id else ids,
        answer_hash=answer_hash,
    )


# a Request's fields in its order, as the capture's columns name them
REQUEST_COLUMNS = (
    "method",
    "path",
    "query",
    "req_headers",
    "req_body",
    "req_content_encoding",
    "model",
    "stream",
    "api",
)


def request_of(row: Record) -> Request:
    return _request(*(row.get(c) for c in REQUEST_COLUMNS))


def _request(
    method: Any,  # a str in every capture row (Any: read from a row or a column list)
    path: Any,
    query: str | None,
    headers: Headers | None,
    body: bytes | None,
    content_encoding: str | None,
    model: str | None,
    stream: bool | None,
    api: str | None,
) -> Request:
    return Request(
        method, path, query, list(headers or ()), body, content_encoding, model, stream, api
    )


Planned = tuple[int, "str | None", Request, "str | None", "tuple[str, int] | None", Recorded]


def planned_rows(cols: Columns, include_junk: bool = False) -> list[Planned]:
    """Every row of a batch of capture columns as (request start, why it is not replayed or
    None, its Request, session, source, Recorded): made from the lists zipped, a column at a
    time, with no dict per row (what `not_replayable`, `request_of` and `recorded_info` give
    for one row). A column the batch lacks reads as nulls (`replayable` as true)."""
    n = len(cols["req_start_ns"])
    blank = [None] * n

    def col(name: str, default: Any = None) -> list[Any]:
        v = cols.get(name)
        if v is None:
            return blank if default is None else [default] * n
        return v

    reasons = list(
        map(
            _why_not,
            col("replayable", True),
            col("req_body_truncated"),
            col("method"),
            col("path"),
            col("error_kind"),
            itertools.repeat(include_junk),
        )
    )
    requests = list(map(_request, *(col(c) for c in REQUEST_COLUMNS)))
    recorded = list(map(_recorded, *(col(c) for c in RECORDED_COLUMNS)))
    sources = [(w, q) if w else None for w, q in zip(col("writer_id"), col("seq"), strict=True)]
    return list(
        zip(
            col("req_start_ns"),
            reasons,
            requests,
            col("session_key"),
            sources,
            recorded,
            strict=True,
        )
    )
