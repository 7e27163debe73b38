"""Rewrite: target, headers, environment expansion, redacted values, model map, framing."""

from __future__ import annotations

import gzip
import json

import pytest

from captures import codec
from captures.errors import UserError
from replay.planrows import Request
from replay.rewrite import Rewriter
from replay.targets import parse_header_args, parse_model_map, parse_target


def req(**kw: object) -> Request:
    base = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": None,
        "headers": [
            ("Host", "prod-gateway.internal:8443"),
            ("Content-Type", "application/json"),
            ("Content-Length", "999"),
            ("Connection", "keep-alive"),
            ("Transfer-Encoding", "chunked"),
            ("Authorization", "Bearer [REDACTED:authorization:0123abcd]"),
            ("X-Trace", "t-1"),
        ],
        "body": json.dumps(
            {"model": "gpt-4o-mini", "messages": [], "api_key": "[REDACTED:json-api_key:00aa11bb]"}
        ).encode(),
    }
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def test_target_parsing() -> None:
    t = parse_target("https://gw.example:8443/base/")
    assert (t.scheme, t.host, t.port, t.base_path, t.host_header) == (
        "https",
        "gw.example",
        8443,
        "/base",
        "gw.example:8443",
    )
    assert parse_target("http://127.0.0.1").port == 80
    assert parse_target("http://[::1]:9000").host_header == "[::1]:9000"
    for bad in ("127.0.0.1:8000", "ftp://x", "http://", "http://h/?q=1", "http://h:99999"):
        with pytest.raises(UserError):
            parse_target(bad)


def test_prepare_rewrites_host_framing_and_drops_redacted_values() -> None:
    rw = Rewriter(parse_target("http://127.0.0.1:8000/gw"))
    p = rw.prepare(req(query="api_key=%5BREDACTED%3Aquery-api_key%3A01234567%5D&x=1"))
    names = [n.lower() for n, _ in p.headers]
    assert p.headers[0] == ("Host", "127.0.0.1:8000")
    assert "connection" not in names and "transfer-encoding" not in names
    assert "authorization" not in names  # redacted: never sent as it is
    assert dict(p.headers)["Content-Length"] == str(len(p.body))
    assert p.path == "/gw/v1/chat/completions?x=1"
    body = json.loads(p.body)
    assert "api_key" not in body and body["model"] == "gpt-4o-mini"
    assert rw.dropped_redacted == 3
    head, _, rest = p.raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /gw/v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert rest == p.body
    assert b"prod-gateway" not in p.raw
    # `;` separates parameters too; a redacted one goes with its separator
    m = "%5BREDACTED%3Aquery-sig%3A01234567%5D"
    p = rw.prepare(req(query=f"sig={m};a=1&b=2;key={m}&c=3"))
    assert p.path == "/gw/v1/chat/completions?a=1&b=2&c=3"


def test_headers_set_remove_and_env_expansion() -> None:
    sets, removes = parse_header_args(
        ["Authorization: Bearer ${GATEWAY_KEY}", "X-Trace:", "X-Tenant: blue"],
        {"GATEWAY_KEY": "k-123"},
    )
    rw = Rewriter(parse_target("http://127.0.0.1:1"), set_headers=sets, remove_headers=removes)
    p = rw.prepare(req())
    h = dict(p.headers)
    assert h["Authorization"] == "Bearer k-123" and h["X-Tenant"] == "blue" and "X-Trace" not in h
    with pytest.raises(UserError, match="GATEWAY_KEY is not set"):
        parse_header_args(["Authorization: Bearer ${GATEWAY_KEY}"], {})
    for bad in ("NoColon", ": value", "Bad Name: x"):
        with pytest.raises(UserError):
            parse_header_args([bad], {})


def test_model_map_and_gzip_bodies() -> None:
    mm = parse_model_map(["gpt-4o-mini=llama-3.1-8b"])
    rw = Rewriter(parse_target("http://127.0.0.1:1"), model_map=mm)
    p = rw.prepare(req())
    assert json.loads(p.body)["model"] == "llama-3.1-8b" and p.model == "llama-3.1-8b"
    gz = gzip.compress(json.dumps({"model": "gpt-4o-mini"}).encode())
    p2 = rw.prepare(req(body=gz, content_encoding="gzip", headers=[("Content-Encoding", "gzip")]))
    assert json.loads(gzip.decompress(p2.body))["model"] == "llama-3.1-8b"
    assert dict(p2.headers)["Content-Length"] == str(len(p2.body))
    for enc in ("br", "zstd", "deflate"):  # every coding a capture stores is edited the same
        coded = codec.encode(json.dumps({"model": "gpt-4o-mini"}).encode(), enc)
        p3 = rw.prepare(req(body=coded, content_encoding=enc, headers=[("Content-Encoding", enc)]))
        assert json.loads(codec.decode(p3.body, enc) or b"")["model"] == "llama-3.1-8b"
    with pytest.raises(UserError):
        parse_model_map(["no-equals"])


def test_keep_host_and_get_without_body() -> None:
    rw = Rewriter(parse_target("http://127.0.0.1:1"), keep_host=True)
    p = rw.prepare(Request("GET", "/health", "a=1", [("Host", "recorded:80")], None))
    assert p.headers == [("Host", "recorded:80")]
    assert p.raw == b"GET /health?a=1 HTTP/1.1\r\nHost: recorded:80\r\n\r\n"


def test_markers_inside_text_are_data_and_stay() -> None:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "key [REDACTED:sk:aa00bb11] here"}]}
    ).encode()
    p = Rewriter(parse_target("http://127.0.0.1:1")).prepare(req(body=body, headers=[]))
    assert json.loads(p.body)["messages"][0]["content"] == "key [REDACTED:sk:aa00bb11] here"


def test_cached_prepare_keeps_the_latest_distinct_requests_and_evicts_the_oldest() -> None:
    from replay.plan import Shot
    from replay.rewrite import cached_prepare

    prepare = cached_prepare(Rewriter(parse_target("http://127.0.0.1:9")), maxsize=2)
    shots = [
        Shot(offset_ns=0, seq=i, request=Request("GET", f"/{i}", None, [], None), source=("w", i))
        for i in range(3)
    ]
    first = [prepare(s) for s in shots]
    assert [p.path for p in first] == ["/0", "/1", "/2"]
    assert prepare(shots[2]) is first[2] and prepare(shots[1]) is first[1]  # kept
    again = prepare(shots[0])  # the oldest was evicted: prepared anew
    assert again is not first[0] and again.path == "/0"
    assert prepare(shots[2]) is first[2] and prepare(shots[1]) is not first[1]


def test_cached_prepare_holds_at_most_its_bytes() -> None:
    """Large requests are kept by bytes, not only by count: the oldest go first."""
    from replay.plan import Shot
    from replay.rewrite import cached_prepare

    prepare = cached_prepare(Rewriter(parse_target("http://127.0.0.1:9")), 100, 25_000)
    shots = [
        Shot(offset_ns=0, seq=i, source=("w", i),
             request=Request("POST", f"/{i}", None, [], b"x" * 10_000))
        for i in range(4)
    ]  # fmt: skip
    first = [prepare(s) for s in shots]  # 10 KB each: the newest two fit
    assert prepare(shots[3]) is first[3] and prepare(shots[2]) is first[2]
    assert prepare(shots[1]) is not first[1]


def test_a_header_list_seen_again_is_prepared_the_same_and_still_counted() -> None:
    """The kept headers are worked out once per distinct recorded list: a repeat gives the
    same bytes, a redacted header left out is counted for every request, and a different
    list (or a different body length) is not mixed up with it."""
    rw = Rewriter(parse_target("http://127.0.0.1:8000"), set_headers=[("X-Run", "7")])
    sdk = [("User-Agent", "OpenAI/Python"), ("Authorization", "Bearer [REDACTED:bearer:0123abcd]")]
    a = Request("POST", "/v1/chat/completions", None, sdk, b'{"a": 1}')
    b = Request("POST", "/v1/chat/completions", None, list(sdk), b'{"a": 12}')
    c = Request("GET", "/v1/models", None, [("User-Agent", "curl")], None)
    first, again, longer, other = rw.prepare(a), rw.prepare(a), rw.prepare(b), rw.prepare(c)
    assert first.raw == again.raw
    assert first.raw.startswith(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
        b"User-Agent: OpenAI/Python\r\nX-Run: 7\r\nContent-Length: 8\r\n\r\n"
    )
    assert b"Content-Length: 9\r\n\r\n" in longer.raw
    assert (
        other.raw
        == b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: curl\r\nX-Run: 7\r\n\r\n"
    )
    assert rw.dropped_redacted == 3  # the Authorization header, once per request that had it
    assert first.headers == [
        ("Host", "127.0.0.1:8000"), ("User-Agent", "OpenAI/Python"), ("X-Run", "7"),
        ("Content-Length", "8"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "anthropic", "want"),
    [
        ("/v1/messages", False, "messages"),  # the path says it
        ("/v1/chat/completions", True, "chat"),  # the path wins over the header
        ("/llm/claude", True, "messages"),  # a gateway's own path: header and chat-shaped body
        ("/llm/gpt", False, "chat"),
    ],
)
def test_a_request_without_a_recorded_surface_is_read_by_path_then_body_and_header(
    path: str, anthropic: bool, want: str
) -> None:
    """Captures without `api` (imported, or older): the surface comes from the path, else from
    the body, where an `anthropic-version` header says Messages for a chat-shaped body (as the
    capture decides it, captures/exchange.py)."""
    headers = [("Content-Type", "application/json")]
    if anthropic:
        headers.append(("anthropic-version", "2023-06-01"))
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    p = Rewriter(parse_target("http://127.0.0.1:9")).prepare(
        req(path=path, headers=headers, body=json.dumps(body).encode())
    )
    assert p.surface.name == want
