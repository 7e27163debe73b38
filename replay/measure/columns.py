"""Result rows (one tuple each, as the loop collects them) as column lists, in steps: the
open loop builds them in its idle time between shots."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from captures.protocols.canonical import msg_hash
from replay.plan import Shot
from replay.rewrite import Prepared
from replay.send.outcome import Outcome

Row = tuple[Shot, "Prepared | None", int, Outcome, str]

# the columns the histograms take as numbers
NUMERIC = frozenset(
    {
        "intended_ns",
        "sent_ns",
        "headers_ns",
        "first_token_ns",
        "first_text_ns",
        "end_ns",
        "status",
        "bytes_in",
        "prompt_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "cached_tokens",
        "token_offsets_us",
    }
)


def column_steps(
    rows: list[Row], cols: dict[str, list[Any]], offset: int, target_by_stream: Mapping[str, str]
) -> Iterator[None]:
    """Fill `cols` (column lists) from result rows, yielding every few columns."""
    off = offset
    shots = [r[0] for r in rows]
    preps = [r[1] for r in rows]
    outs = [r[3] for r in rows]
    yield
    recs = [s.recorded for s in shots]
    reqs = [s.request for s in shots]
    nil = [None] * len(rows)
    yield
    cols["seq"] = [s.seq for s in shots]
    cols["stream"] = [s.stream for s in shots]
    cols["target"] = [s.target or target_by_stream.get(s.stream, "") for s in shots]
    cols["copy"] = [s.copy for s in shots]
    yield
    cols["loop"] = [s.loop for s in shots]
    cols["session"] = [s.session for s in shots]
    cols["source_writer"] = [s.source[0] if s.source else None for s in shots]
    cols["source_seq"] = [s.source[1] if s.source else None for s in shots]
    yield
    cols["method"] = [q.method for q in reqs]
    cols["api"] = [
        p.surface.name if p is not None else q.api for p, q in zip(preps, reqs, strict=True)
    ]
    cols["endpoint"] = [q.path for q in reqs]
    cols["model"] = [
        p.model if p is not None else q.model for p, q in zip(preps, reqs, strict=True)
    ]
    cols["req_bytes"] = [len(p.body) if p is not None else 0 for p in preps]
    yield
    cols["intended_ns"] = [r[2] + off for r in rows]
    cols["sent_ns"] = [o.sent_ns + off for o in outs]
    cols["headers_ns"] = [o.headers_ns + off if o.headers_ns is not None else None for o in outs]
    yield
    cols["first_token_ns"] = [
        o.first_token_ns + off if o.first_token_ns is not None else None for o in outs
    ]
    cols["first_text_ns"] = [
        o.first_text_ns + off if o.first_text_ns is not None else None for o in outs
    ]
    cols["end_ns"] = [o.end_ns + off for o in outs]
    yield
    cols["status"] = [o.status for o in outs]
    cols["outcome"] = [r[4] for r in rows]
    cols["error_kind"] = [o.error for o in outs]
    yield
    cols["error_message"] = [o.error_msg for o in outs]
    cols["retry_after"] = [o.retry_after for o in outs]
    cols["bytes_in"] = [o.bytes_in for o in outs]
    yield
    cols["prompt_tokens"] = [o.prompt_tokens for o in outs]
    cols["completion_tokens"] = [o.completion_tokens for o in outs]
    cols["reasoning_tokens"] = [o.reasoning_tokens for o in outs]
    yield
    cols["cached_tokens"] = [o.cached_tokens for o in outs]
    cols["cache_write_tokens"] = [o.cache_write_tokens for o in outs]
    cols["finish_reason"] = [o.finish_reason for o in outs]
    yield
    cols["events"] = [o.events for o in outs]
    cols["text_events"] = [o.text_events for o in outs]
    cols["reasoning_events"] = [o.reasoning_events for o in outs]
    yield
    cols["tool_events"] = [o.tool_events for o in outs]
    cols["stream_complete"] = [o.complete for o in outs]
    cols["response_id"] = [o.response_id for o in outs]
    cols["minted_ids"] = [o.minted or None for o in outs]
    yield
    cols["answer_hash"] = [msg_hash(o.answer) if o.answer is not None else None for o in outs]
    cols["token_offsets_us"] = [
        [(t - o.sent_ns) // 1000 for t in o.token_ns] if o.token_ns else None for o in outs
    ]
    cols["body_hash"] = [o.body_hash for o in outs]
    yield
    recorded = any(recs)
    for col, attr in _RECORDED:
        cols[col] = [getattr(r, attr) if r else None for r in recs] if recorded else nil
        if recorded:
            yield


_RECORDED = (
    ("recorded_status", "status"),
    ("recorded_ttfb_us", "ttfb_us"),
    ("recorded_first_chunk_us", "first_chunk_us"),
    ("recorded_chunks", "chunks"),
    ("recorded_completion_tokens", "completion_tokens"),
    ("recorded_finish_reason", "finish_reason"),
)
