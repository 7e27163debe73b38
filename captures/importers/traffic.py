"""Real-traffic importers: HAR 1.2 files and mitmproxy flow files. Each exchange goes through the
same record building as a live capture (captures/exchange.py): redaction (on unless
--no-redact), LLM field parsing, session keys."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from captures import codec
from captures.conversations import Tracker
from captures.errors import UserError
from captures.exchange import build_record
from captures.redact import RedactionPolicy, Redactor, load_or_create_key
from captures.schema import Record
from captures.snapshot import SESSION_SOURCES, Snapshot, parse_session_sources

from . import ImportOptions, ImportSummary
from .traces import parse_timestamp_ns

BODY_LIMIT = 64 << 20
SESSIONS = parse_session_sources(SESSION_SOURCES)


def _redactor(opts: ImportOptions) -> Redactor:
    key = load_or_create_key(opts.key_file)
    return Redactor(RedactionPolicy.build(enabled=opts.redact), key)


Fields = tuple[tuple[bytes, bytes], ...]


def _fields(pairs: Any) -> Fields:
    out = []
    for h in pairs or ():
        if isinstance(h, dict) and "name" in h:
            name = str(h["name"])
            if name.startswith(":"):  # HTTP/2 pseudo-headers are not headers
                continue
            out.append((name.encode(), str(h.get("value", "")).encode()))
    return tuple(out)


def _decoded(headers: Fields, body: bytes | None) -> Fields:
    """The headers of a HAR body: HAR keeps bodies with their content coding undone (its spec;
    Chrome and mitmproxy's savehar write them so) beside the headers as sent, `Content-Encoding:
    br` included. Such a body is recorded as what it is: without the header (read as coded, its
    usage was lost and redaction dropped it). A body its header does decode is kept coded, as a
    live capture keeps it."""
    codings = [v for n, v in headers if n.lower() == b"content-encoding"]
    if not body or not codings:
        return headers
    if codec.decode(body, b", ".join(codings).decode("latin-1")) is not None:
        return headers  # the bytes as sent, coded (not what HAR's spec says, but it happens)
    return tuple(h for h in headers if h[0].lower() != b"content-encoding")


def har_rows(path: Path, opts: ImportOptions, summary: ImportSummary) -> Iterator[Record]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
        entries = doc["log"]["entries"]
        if not isinstance(entries, list):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a HAR file ({str(exc).splitlines()[0][:120]})") from None
    except RecursionError:
        raise UserError(f"{path}: not a HAR file (nested too deep)") from None
    except (KeyError, TypeError):
        raise UserError(f"{path}: not a HAR file (no log.entries list)") from None
    red = _redactor(opts)
    tracker = Tracker()
    ordered = sorted(
        entries, key=lambda e: str(e.get("startedDateTime", "")) if isinstance(e, dict) else ""
    )
    for n, e in enumerate(ordered):
        try:
            req, resp = e["request"], e.get("response") or {}
            start_ns = parse_timestamp_ns(str(e["startedDateTime"]).replace("T", " "))
            url = urlsplit(req["url"])
            timings = e.get("timings") or {}
            total_ms = float(e.get("time") or 0)
            send = max(float(timings.get("send") or 0), 0)
            receive = max(float(timings.get("receive") or 0), 0)
            post = req.get("postData") or {}
            body = post.get("text")
            req_body = body.encode() if isinstance(body, str) else b""
            content = resp.get("content") or {}
            text = content.get("text")
            resp_body: bytes | None = None
            if isinstance(text, str):
                resp_body = (
                    base64.b64decode(text) if content.get("encoding") == "base64" else text.encode()
                )
            status = int(resp.get("status") or 0) or None
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{path}: entry {n}: not a HAR entry ({type(exc).__name__}: {exc})"
            ) from None
        if url.scheme not in ("http", "https"):
            summary.skip(f"{url.scheme or 'no'} scheme")
            continue
        port = url.port or (443 if url.scheme == "https" else 80)
        path_q = url.path or "/"
        if url.query:
            path_q += "?" + url.query
        snap = Snapshot(
            conn_id=str(e.get("connection") or f"har-{n}"),
            inflight=0,
            req_start=start_ns / 1e9,
            req_end=(start_ns / 1e9) + send / 1000,
            method=str(req.get("method", "GET")).encode(),
            scheme=url.scheme.encode(),
            host=url.hostname or "",
            port=port,
            path=path_q.encode(),
            http_version=str(req.get("httpVersion") or "HTTP/1.1").encode(),
            req_headers=_decoded(_fields(req.get("headers")), req_body),
            req_body=req_body,
        )
        if status is not None:
            snap.status = status
            snap.reason = str(resp.get("statusText") or "").encode()
            snap.resp_headers = _decoded(_fields(resp.get("headers")), resp_body)
            snap.resp_start = (start_ns / 1e9) + max(total_ms - receive, 0) / 1000
            snap.resp_end = (start_ns / 1e9) + total_ms / 1000
            snap.resp_body = resp_body
        else:
            snap.error = "no response recorded in the HAR entry"
        rec = build_record(snap, red, SESSIONS, BODY_LIMIT, tracker)
        rec["replayable"] = (status or 0) != 101
        yield rec


def flow_rows(path: Path, opts: ImportOptions, summary: ImportSummary) -> Iterator[Record]:
    from mitmproxy import http, io
    from mitmproxy.exceptions import FlowReadException

    red = _redactor(opts)
    tracker = Tracker()
    try:
        fh = open(path, "rb")  # noqa: SIM115 - open errors get their own message
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        try:
            for f in io.FlowReader(fh).stream():
                if not isinstance(f, http.HTTPFlow):
                    summary.skip(f"{type(f).__name__} (not HTTP)")
                    continue
                req = f.request.data
                snap = Snapshot(
                    conn_id=f.client_conn.id,
                    inflight=0,
                    req_start=req.timestamp_start,
                    req_end=req.timestamp_end,
                    method=req.method,
                    scheme=req.scheme,
                    host=req.host,
                    port=req.port,
                    path=req.path,
                    http_version=req.http_version,
                    req_headers=req.headers.fields,
                    req_body=req.content,
                )
                if f.response is not None:
                    rd = f.response.data
                    snap.status, snap.reason, snap.resp_headers = (
                        rd.status_code,
                        rd.reason,
                        rd.headers.fields,
                    )
                    snap.resp_start, snap.resp_end, snap.resp_body = (
                        rd.timestamp_start,
                        rd.timestamp_end,
                        rd.content,
                    )
                    snap.websocket = rd.status_code == 101
                if f.error is not None:
                    snap.error = f.error.msg
                yield build_record(snap, red, SESSIONS, BODY_LIMIT, tracker)
        except FlowReadException as exc:
            raise UserError(f"{path}: not a mitmproxy flow file ({exc})") from None
