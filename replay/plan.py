"""Plan: which request to send at which intended offset from the run's start. Pure: no clock, no
I/O; capture rows come in through an injected source, so tests are tables.

Time scaling: offset = (t_i - t_first) / speed, where t_first is the first request of the window.
A window selects requests by their start relative to the capture's first request (`from`, `to`,
or `from` + `duration`). `loops` repeats the window back to back: each loop starts one window
period after the previous one (the window's length when it has an end, else the span of its
requests plus one mean gap, so the pacing carries on across the seam).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from captures.rows import Chunk, Columns, per_batch
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


@dataclass(slots=True)
class Shot:
    """One request of the plan: what to send, when (offset from the run's start), tagged."""

    offset_ns: int
    seq: int
    request: Request
    session: str | None = None
    stream: str = "replay"
    target: str = ""  # the target's name when a run has several (--target NAME=URL)
    copy: int = 0
    source: tuple[str, int] | None = None  # (writer_id, seq) of the capture row
    recorded: Recorded | None = None
    loop: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    prepared: Any = None  # the rewritten request, when the plan thread prepared it


SHOT_OVERHEAD_BYTES = 2048  # a shot's own objects (Shot, Request, Prepared, headers, tuples)


def shot_bytes(shot: Shot) -> int:
    """About the memory a planned shot holds: its objects, the recorded body, and the request
    prepared from it (whole, plus its body where rewritten)."""
    body = shot.request.body
    n = SHOT_OVERHEAD_BYTES + len(body or b"") + 64 * len(shot.request.headers)
    p = shot.prepared
    if p is not None:
        n += len(p.raw) + (len(p.body) if p.body is not body else 0)
    return n


@dataclass(frozen=True)
class PlanOptions:
    speed: float = 1.0
    start_s: float = 0.0  # --from: seconds after the capture's first request
    end_s: float | None = None  # --to
    duration_s: float | None = None  # --duration: window length from --from
    loops: int = 1
    stream: str = "replay"
    include_junk: bool = False  # replay what the recording shows was not real traffic too

    def validate(self) -> None:
        if not 0 < self.speed < math.inf:
            raise ValueError(f"speed must be a finite number > 0, got {self.speed}")
        for name, v in (
            ("--from", self.start_s),
            ("--to", self.end_s),
            ("--duration", self.duration_s),
        ):
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        if self.loops < 1:
            raise ValueError(f"loop count must be >= 1, got {self.loops}")
        if self.start_s < 0:
            raise ValueError("--from must be >= 0")
        if self.end_s is not None and self.duration_s is not None:
            raise ValueError("give --to or --duration, not both")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError("--to must be after --from")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("--duration must be > 0")

    def window_ns(self, capture_first_ns: int) -> tuple[int, int | None]:
        lo = capture_first_ns + round(self.start_s * 1e9)
        if self.end_s is not None:
            return lo, capture_first_ns + round(self.end_s * 1e9)
        if self.duration_s is not None:
            return lo, lo + round(self.duration_s * 1e9)
        return lo, None


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


# A looped window's requests are kept in memory for the loops after the first, up to so many
# requests and about so many bytes of their bodies; a longer window is read again each loop.
# Not kept for a single pass: replaying 10k POSTs of 50 KB once peaked at 875 MB with them
# kept, 556 MB without.
TEMPLATE_LIMIT = 50_000
TEMPLATE_BYTES = 64 << 20


@dataclass
class PlanStats:
    """What the plan skipped, and why (reported by the run)."""

    planned: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def plan_replay(
    source: Callable[[int, int | None], Iterable[Chunk]],
    capture_first_ns: int,
    opts: PlanOptions,
    stats: PlanStats | None = None,
) -> Iterator[Shot]:
    """Shots in intended-offset order.

    `source(lo_ns, hi_ns)` yields chunks of capture columns (captures/rows.py) whose rows have
    lo <= req_start < hi (hi None: to the end), in request-start order; it is called once per
    loop, so a plan over a large capture streams."""
    opts.validate()
    st = stats if stats is not None else PlanStats()
    lo, hi = opts.window_ns(capture_first_ns)
    t_first: int | None = None
    t_last = 0
    count = 0
    period_ns = 0
    seq = 0
    # Loops after the first reuse the first loop's requests when the window is small enough to
    # keep (re-reading and re-parsing the capture each loop costs more than the send itself).
    templates: list[tuple[int, Request, str | None, tuple[str, int] | None, Recorded]] | None
    templates = [] if opts.loops > 1 else None
    kept = 0  # bytes of the templates' bodies
    for loop in range(opts.loops):
        base = loop * period_ns
        if loop > 0 and templates is not None:
            for rel, request, session, src, rec in templates:
                yield Shot(
                    offset_ns=base + rel,
                    seq=seq,
                    request=request,
                    session=session,
                    stream=opts.stream,
                    source=src,
                    recorded=rec,
                    loop=loop,
                )
                seq += 1
            continue
        rows = per_batch(source(lo, hi), lambda c: planned_rows(c, opts.include_junk))
        for t, reason, request, session, src, rec in rows:
            if t_first is None:
                t_first = t
            if loop == 0:
                t_last = t
                count += 1
            if reason is not None:
                if loop == 0:
                    st.skip(reason)
                continue
            rel = round((t - t_first) / opts.speed)
            shot = Shot(
                offset_ns=base + rel,
                seq=seq,
                request=request,
                session=session,
                stream=opts.stream,
                source=src,
                recorded=rec,
                loop=loop,
            )
            if loop == 0 and templates is not None:
                kept += len(shot.request.body or b"")
                if len(templates) < TEMPLATE_LIMIT and kept <= TEMPLATE_BYTES:
                    templates.append((rel, shot.request, shot.session, shot.source, shot.recorded))  # type: ignore[arg-type]
                else:
                    templates = None
            yield shot
            seq += 1
            if loop == 0:
                st.planned += 1
        if t_first is None:
            return  # an empty window: nothing to loop
        if loop == 0:
            if hi is not None:
                window = hi - t_first
            else:
                mean_gap = (t_last - t_first) / (count - 1) if count > 1 else 1e9
                window = round(t_last - t_first + mean_gap)
            period_ns = round(window / opts.speed)


def paced(shots: Iterable[Shot], rate: float) -> Iterator[Shot]:
    """The same requests in the same order, re-timed to a constant rate (`--rate`, sweeps over
    rates): shot i is due at i / rate seconds."""
    if not rate > 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    for i, s in enumerate(shots):
        s.offset_ns = round(i * 1e9 / rate)
        yield s
