"""The mock gateway's echo endpoint (`/echo...`): what a gateway's debug endpoint or error page
does, returning what it was sent. Redaction is tested against it (a value redacted in the
request must not come back in the response), and plain HTTP traffic uses it too.

Query knobs:
- `status=`, `delay_ms=`;
- `size=N`: N bytes of `x` instead of the echo (with `gzip=1`: gzip-coded by aiohttp);
- `body=1`: the request body comes back too, as text;
- `sse=1`: the echo as a text/event-stream, one event per header, per query and for the body;
- `enc=gzip|deflate|br|zstd`: the echo coded so;
- `header=Name:Value` (repeatable): added to the response;
- `set_cookie=1`: a random session cookie (kept in `cookies_issued`);
- `issue_key=1`: the server's own credential, in an `X-Auth-Token` header and in the body's
  `issued.api_key` (kept in `keys_issued`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from captures import codec


async def echo_response(request: web.Request, issued: dict[str, list[str]]) -> web.StreamResponse:
    """The response (the caller has admitted the request and waited its delay)."""
    body = await request.read()
    q = request.query
    size = int(q.get("size", "-1"))
    status = int(q.get("status", "200"))
    extra_headers: list[tuple[str, str]] = []
    if q.get("set_cookie") == "1":
        issued["cookies"].append(f"sid={uuid.uuid4().hex}")
        extra_headers.append(("Set-Cookie", f"{issued['cookies'][-1]}; Path=/; HttpOnly"))
    doc: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "headers": list(request.headers.items()),
        "body_size": len(body),
    }
    if q.get("body") == "1":
        doc["body"] = body.decode("utf-8", "replace")
    if q.get("issue_key") == "1":
        key = f"sk-issued-{uuid.uuid4().hex}"
        issued["keys"].append(key)
        extra_headers.append(("X-Auth-Token", key))
        doc["issued"] = {"api_key": key}
    for item in q.getall("header", []):
        name, sep, value = item.partition(":")
        if sep and name:
            extra_headers.append((name.strip(), value.strip()))
    if size >= 0:
        resp = web.Response(body=b"x" * size, status=status, content_type="text/plain")
        if q.get("gzip") == "1":
            resp.enable_compression(web.ContentCoding.gzip)
    elif q.get("sse") == "1":
        events = [{"headers": h} for h in doc.pop("headers")] + [doc]
        data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        resp = _coded(data, "text/event-stream", status, q.get("enc"))
    else:
        resp = _coded(json.dumps(doc).encode(), "application/json", status, q.get("enc"))
    for name, value in extra_headers:
        resp.headers.add(name, value)
    return resp


def _coded(data: bytes, ctype: str, status: int, enc: str | None) -> web.Response:
    resp = web.Response(body=codec.encode(data, enc) if enc else data, status=status)
    resp.content_type = ctype
    if enc:
        resp.headers["Content-Encoding"] = enc
    return resp
