"""One HTTP exchange as the proxy saw it (`Snapshot`: raw bytes and numbers, no decoding), and
how it becomes a capture record (`build_record`: headers decoded, secrets redacted, the API
surface's fields read by captures/protocols, bodies cut to the limit). The capture addon's worker
and the HAR and mitmproxy importers share it.

For a stream, the surface's event scanner reads the chunks as they were recorded, so the record
knows which chunk carried the first output event (`first_token_us`) and the first visible text
(`first_text_us`), how many output events there were, and whether the terminal event came."""

from __future__ import annotations

from . import protocols
from .codec import decode_and_parse
from .conversations import Tracker
from .protocols.canonical import msg_hash
from .redact import MARKER_RE, Redactor, Scope
from .schema import Headers, Record, headers_get
from .snapshot import Snapshot


def _h(s: bytes) -> str:
    try:
        return s.decode("utf-8")
    except UnicodeDecodeError:
        return s.decode("latin-1")


def _first_values(headers: Headers) -> dict[str, str]:
    """Lower-cased header name -> its first value."""
    out: dict[str, str] = {}
    for name, value in headers:
        out.setdefault(name.lower(), value)
    return out


def _ns(seconds: float) -> int:
    """Epoch seconds (a float, as mitmproxy keeps them) -> ns, to the microsecond: at ~1.7e9 s a
    double resolves ~0.24 us, so the digits below a microsecond are rounding noise."""
    return round(seconds * 1e6) * 1000


def _us(seconds: float) -> int:
    """Seconds -> microseconds (rounded: a difference of two epoch floats is off by a few tenths
    of a microsecond), clamped to the int32 column (0 to ~35 minutes)."""
    return min(max(0, round(seconds * 1e6)), 2**31 - 1)


def error_kind(msg: str) -> str:
    """mitmproxy's error message -> the capture format's error kind."""
    m = msg.lower()
    if "killed" in m and "client" not in m:
        return "killed"
    if "client disconnected" in m or "client closed" in m or "stream reset by client" in m:
        return "client_abort"
    if "refused" in m or "connect call failed" in m or "errno 111" in m or "unreachable" in m:
        return "upstream_refused"
    if "timeout" in m or "timed out" in m:
        return "upstream_timeout"
    if "tls" in m or "ssl" in m or "certificate" in m or "handshake" in m:
        return "tls"
    if "peer closed" in m or "server disconnected" in m or "reset" in m or "eof" in m:
        return "upstream_reset"
    if "invalid" in m or "malformed" in m or "protocol" in m or "smuggling" in m:
        return "protocol"
    return "other"


def build_record(
    s: Snapshot,
    red: Redactor,
    session_sources: list[tuple[str, str]],
    body_limit: int,
    tracker: Tracker | None = None,
) -> Record:
    """A snapshot as a capture record: headers decoded, secrets redacted, LLM fields parsed,
    bodies cut to the limit, its conversation found (with a tracker that has seen the
    exchanges before it). (Live capture and the HAR and mitmproxy importers share it.)"""
    red_x = red.exchange()  # this exchange's redaction: the request first, then the response
    req_headers: Headers = [(_h(n), _h(v)) for n, v in s.req_headers]
    path_q = _h(s.path)
    path, _, query = path_q.partition("?")
    req_map = _first_values(req_headers)
    req_ct = req_map.get("content-type")
    req_ce = req_map.get("content-encoding")
    raw_req = s.req_body
    req_size = len(raw_req) if raw_req is not None else 0
    # Headers, path and query are redacted before the body, so a secret sent in a header is
    # known when it reappears in the body.
    red_headers = red_x.headers(req_headers, "req_headers")
    red_path = red_x.text(path, "path") or path
    red_query = red_x.query(query) if query else None
    # Decode and parse the whole request body once (LLM fields and redaction share it),
    # redact it, then cut it to the body limit.
    anthropic = "anthropic-version" in req_map
    obj = None
    if raw_req:
        decoded = decode_and_parse(raw_req, req_ce, req_ct)
        surface = protocols.detect(path, decoded.obj, anthropic=anthropic)
        obj = decoded.obj
        fields = surface.request(obj) if isinstance(obj, dict) else protocols.RequestFields()
        req_body = red_x.body(raw_req, req_ce, req_ct, "req_body", decoded=decoded)
    else:
        surface = protocols.detect(path, anthropic=anthropic)
        fields, req_body = protocols.RequestFields(), raw_req
    req_trunc = False
    if req_body is not None and len(req_body) > body_limit:
        req_body, req_trunc = req_body[:body_limit], True
    rec: Record = {
        "conn_id": s.conn_id,
        "req_start_ns": _ns(s.req_start),
        "req_end_ns": _ns(s.req_end) if s.req_end else None,
        "proxy_inflight": s.inflight,
        "method": _h(s.method),
        "scheme": _h(s.scheme),
        "host": s.host,
        "port": s.port,
        "path": red_path,
        "query": red_query,
        "http_version": _h(s.http_version),
        "req_headers": red_headers,
        "req_body": req_body,
        "req_body_size": req_size,
        "req_body_truncated": req_trunc,
        "req_content_encoding": req_ce,
        "api": surface.name,
        "model": fields.model,
        "stream": fields.stream,
        "max_tokens": fields.max_tokens,
        "message_count": fields.message_count,
        "prompt_chars": fields.prompt_chars,
        "user": red_x.text(fields.user, "user"),
        "replayable": not s.websocket,
    }
    resp = protocols.ResponseFields()
    if s.status is not None and s.resp_headers is not None:
        resp_headers: Headers = [(_h(n), _h(v)) for n, v in s.resp_headers]
        resp_map = _first_values(resp_headers)
        ct = resp_map.get("content-type")
        ce = resp_map.get("content-encoding")
        if s.resp_parts is not None:
            body: bytes | None = b"".join(s.resp_parts)
            parts = s.resp_parts
            size = s.resp_total
        else:
            body = s.resp_body
            parts = [body] if body else []
            size = len(body) if body else 0
        truncated = body is not None and size > len(body)
        # A cut body is still read for what its kept part says (a stream's early events), unless
        # it is encoded: a cut compressed body cannot be decoded.
        readable = not truncated or ce in (None, "", "identity")
        seen = protocols.read_response(surface, parts if readable else None, ct, ce)
        resp = seen.fields
        red_resp_headers = red_x.headers(resp_headers, "resp_headers")
        red_body = red_x.body(body, ce, ct, "resp_body") if not truncated or not ce else None
        if truncated and ce:
            red_x.note("resp_body:cut-encoded-dropped")
        if red_body is not None and seen.streamed and _split_secret(red_x, resp, red_body):
            red_body = None  # a secret in the answer, cut across events: the body cannot be kept
            red_x.note("resp_body:split-secret-dropped")
        t0 = s.resp_start or s.req_start
        rec.update(
            {
                "status": s.status,
                "reason": _h(s.reason or b""),
                "resp_headers": red_resp_headers,
                "resp_body": red_body,
                "resp_body_size": size,
                "resp_body_truncated": truncated,
                "resp_content_encoding": ce,
                "resp_start_ns": _ns(s.resp_start) if s.resp_start else None,
                "resp_end_ns": _ns(s.resp_end) if s.resp_end else None,
                "finish_reason": resp.finish_reason,
                "prompt_tokens": resp.prompt_tokens,
                "completion_tokens": resp.completion_tokens,
                "reasoning_tokens": resp.reasoning_tokens,
                "cached_tokens": resp.cached_tokens,
                "cache_write_tokens": resp.cache_write_tokens,
                "response_id": red_x.text(resp.response_id, "response_id"),
                "tool_call_ids": [red_x.text(i, "tool_call_ids") or i for i in resp.tool_call_ids]
                or None,
                "answer_hash": msg_hash(resp.answer) if resp.answer is not None else None,
            }
        )
        offsets: list[int] = []
        if s.chunk_times is not None:
            offsets = [_us(t - t0) for t in s.chunk_times]
            rec["chunk_offsets_us"] = offsets
            rec["chunk_sizes"] = list(s.chunk_sizes or ())
        elif body:
            offsets = [_us((s.resp_end or t0) - t0)]
            rec["chunk_offsets_us"] = offsets
            rec["chunk_sizes"] = [size]
        if seen.streamed:
            rec["output_events"] = seen.output_events
            rec["stream_complete"] = seen.complete
            for col, idx in (
                ("first_token_us", seen.first_output_chunk),
                ("first_text_us", seen.first_text_chunk),
            ):
                if idx is not None and idx < len(offsets):
                    rec[col] = offsets[idx]
            if resp.error and not s.error:
                rec["error_kind"] = "stream_error"
                rec["error_message"] = red_x.text(resp.error[:500], "error_message")
    if s.error:
        kind = error_kind(s.error)
        if kind == "client_abort" and rec.get("stream_complete") and s.chunk_times:
            # The client closed once it had the terminal event ([DONE], response.completed,
            # message_stop), before the upstream closed its chunked body: SDKs do this. The
            # exchange is complete; it ended when its last chunk arrived.
            rec["resp_end_ns"] = _ns(s.chunk_times[-1])
        else:
            rec["error_kind"] = kind
            rec["error_message"] = red_x.text(s.error[:500], "error_message")
    turn = None
    if tracker is not None and rec.get("status") is not None:
        end = rec.get("resp_end_ns")
        turn = tracker.see(surface, obj, resp.answer, resp.minted, rec["req_start_ns"], end)
    if turn is not None:
        rec.update(conversation=turn.conversation, turn=turn.turn)
        rec["think_us"] = turn.think_ns // 1000 if turn.think_ns is not None else None
    rec["session_key"] = red_x.text(_session_key(session_sources, rec, fields.user), "session_key")
    rec["redacted"] = sorted(set(red_x.notes)) or None
    red.counted(red_x)
    return rec


def _split_secret(red_x: Scope, resp: protocols.ResponseFields, body: bytes) -> bool:
    """Whether the answer assembled from a stream holds a secret that the redacted body does
    not show as a marker: one cut across events, which no scan of the body finds."""
    if resp.answer is None or not red_x.on:
        return False
    _, text, tools = resp.answer
    for piece in (text, *(args for _, args in tools)):
        if not piece:
            continue
        probe = red_x.redactor.exchange()
        probe.echoes = red_x.echoes
        red = probe.text(piece)
        if red == piece:
            continue
        markers = {m.encode() for m in MARKER_RE.findall(red or "")}
        if not all(m in body for m in markers):
            return True
    return False


def _session_key(sources: list[tuple[str, str]], rec: Record, user: str | None) -> str | None:
    for kind, arg in sources:
        if kind == "header":
            v = headers_get(rec["req_headers"], arg)
            if v:
                return v
        elif kind == "user" and user:
            return user
        elif kind == "chain" and rec.get("conversation"):
            return str(rec["conversation"])
        elif kind == "connection":
            return str(rec["conn_id"])
        elif kind == "none":
            return None
    return None
