"""Redaction by tables (captures/redact/): names, header schemes and cookies, query strings,
forms and multipart, credential formats, assignments in text, echoes, coded bodies, secrets
cut across stream events, and what must stay untouched (LLM bodies, prose). The leak matrix
through a real proxy is tests/test_capture_leaks.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captures import codec
from captures.exchange import build_record
from captures.redact import MARKER_RE, RedactionPolicy, Redactor
from captures.redact.names import is_secret_header, is_secret_key, is_secret_param
from captures.snapshot import Snapshot

RED = Redactor(RedactionPolicy(), b"k" * 32)
SK = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx0123"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("userPassword", True),
        ("PWD", True),
        ("auth_token", True),
        ("X-Api-Key", True),
        ("clientSecret", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("refreshToken", True),
        ("private_key", True),
        ("credentials", True),
        ("max_tokens", False),
        ("completion_tokens", False),
        ("token_type", False),
        ("tokenizer", False),
        ("auth_url", False),
        ("author", False),
        ("keyword", False),
        ("monkey", False),
        ("budget_tokens", False),
        ("key", False),
    ],
)
def test_json_and_text_names(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


def test_header_and_param_names() -> None:
    for h in ("X-Goog-Api-Key", "Ocp-Apim-Subscription-Key", "X-Amz-Security-Token", "Cookie"):
        assert is_secret_header(h)
    for h in ("Idempotency-Key", "Content-Type", "WWW-Authenticate", "Sec-WebSocket-Key"):
        assert not is_secret_header(h)
    assert is_secret_header("X-Tenant", frozenset({"x-tenant"}))
    for p in ("key", "code", "sig", "X-Amz-Signature", "access_token", "client_secret"):
        assert is_secret_param(p)
    for p in ("model", "limit", "order", "max_tokens"):
        assert not is_secret_param(p)


@pytest.mark.parametrize(
    ("name", "value", "kept"),
    [
        ("Authorization", f"Bearer {SK}", "Bearer "),
        ("Authorization", "token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "token "),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ab12",
            "AWS4-HMAC-SHA256 ",
        ),
        ("Proxy-Authorization", 'Digest username="u", response="abcdef"', "Digest "),
        ("Authorization", "rawsecretvalue", ""),
        ("Set-Cookie", "sid=abc123def; Path=/; HttpOnly", "sid="),
    ],
)
def test_header_values_keep_their_scheme(name: str, value: str, kept: str) -> None:
    ((_, out),) = RED.exchange().headers([(name, value)], "h")
    assert out.startswith(kept) and MARKER_RE.search(out)
    secret = value[len(kept) :].split(";")[0]
    assert secret not in out
    if name == "Set-Cookie":
        assert out.endswith("; Path=/; HttpOnly")


def test_cookies_and_plain_headers() -> None:
    x = RED.exchange()
    out = dict(
        x.headers(
            [
                ("Cookie", "theme=dark; session=s3cr3tsession"),
                ("User-Agent", "curl/8.0"),
                ("X-Debug", f"key={SK}"),
                ("Idempotency-Key", "req-42"),
            ],
            "h",
        )
    )
    assert out["Cookie"].startswith("theme=[REDACTED:") and "session=[REDACTED:" in out["Cookie"]
    assert out["User-Agent"] == "curl/8.0" and out["Idempotency-Key"] == "req-42"
    assert SK not in out["X-Debug"] and "[REDACTED:sk:" in out["X-Debug"]


def test_query_with_both_separators() -> None:
    x = RED.exchange()
    q = "a=1;api_key=zz9zz9&code=oauth123&X-Amz-Signature=f00d&limit=5;q=hello+" + SK
    out = x.query(q) or ""
    for secret in ("zz9zz9", "oauth123", "f00d", SK):
        assert secret not in out
    assert out.startswith("a=1;api_key=%5BREDACTED%3A") and "&limit=5;" in out


def test_form_and_multipart_bodies() -> None:
    x = RED.exchange()
    form = b"user=bob&password=hunter2%21&client_secret=cs123456&note=hi"
    out = x.body(form, None, "application/x-www-form-urlencoded", "req_body") or b""
    assert b"hunter2" not in out and b"cs123456" not in out and out.startswith(b"user=bob&")
    mp = (
        b'--BB\r\nContent-Disposition: form-data; name="password"\r\n\r\nmp-secret-1\r\n'
        b'--BB\r\nContent-Disposition: form-data; name="file"; filename="a.env"\r\n\r\n'
        b"OPENAI_API_KEY=" + SK.encode() + b"\r\n"
        b'--BB\r\nContent-Disposition: form-data; name="img"\r\n\r\n\x00\x01binary\r\n--BB--\r\n'
    )
    out = x.body(mp, None, "multipart/form-data; boundary=BB", "req_body") or b""
    assert b"mp-secret-1" not in out and SK.encode() not in out
    assert out.count(b"--BB") == 4 and b"\x00\x01binary" in out and out.endswith(b"--BB--\r\n")


def test_json_stays_json_and_llm_fields_stay() -> None:
    body = {
        "model": "m",
        "max_tokens": 9,
        "messages": [{"role": "user", "content": f"my key is {SK}, keep the tokens short"}],
        "logprobs": {"content": [{"token": "Hello", "logprob": -0.1, "bytes": [72]}]},
        "thinking": [{"type": "thinking", "thinking": "hm", "signature": "EqQBCkYIBz"}],
        "usage": {"prompt_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 1}},
        "tool": json.dumps({"password": 'pa ss"word', "city": "Paris"}),
        "nested": {"deep": [{"clientSecret": 'cs-1\\u00e9"x'}]},
    }
    raw = json.dumps(body).encode()
    out = RED.exchange().body(raw, None, "application/json", "req_body") or b""
    got = json.loads(out)
    assert SK not in out.decode() and "pa ss" not in out.decode() and "cs-1" not in out.decode()
    assert got["logprobs"] == body["logprobs"] and got["thinking"] == body["thinking"]
    assert got["usage"] == body["usage"] and got["max_tokens"] == 9
    assert json.loads(got["tool"])["city"] == "Paris"
    assert MARKER_RE.fullmatch(got["nested"]["deep"][0]["clientSecret"])
    # a body with no secret comes back as the very same object
    plain = json.dumps({k: v for k, v in body.items() if k in ("model", "logprobs")}).encode()
    assert RED.exchange().body(plain, None, "application/json", "b") is plain


@pytest.mark.parametrize("enc", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_coded_bodies_are_redacted_and_coded_again(enc: str) -> None:
    raw = json.dumps({"password": "pw-123456", "text": SK}).encode()
    coded = codec.encode(raw, enc)
    out = RED.exchange().body(coded, enc, "application/json", "b")
    assert out is not None and out != coded
    plain = codec.decode(out, enc)
    assert plain is not None and b"pw-123456" not in plain and SK.encode() not in plain
    assert json.loads(plain)["password"].startswith("[REDACTED:")
    # a body that does not decode is not stored
    notes_scope = RED.exchange()
    assert notes_scope.body(b"not " + enc.encode(), enc, None, "b") is None
    assert "b:undecodable" in notes_scope.notes


def test_echoes_in_every_form() -> None:
    secret = 'pä/ss w"rd<1>'
    x = RED.exchange()
    basic = base64.b64encode(b"deploy:basicpass9").decode()
    x.headers([("Authorization", f"Basic {basic}"), ("X-Auth-Token", secret)], "req")
    from urllib.parse import quote, quote_plus

    forms = [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        "p&auml;/ss w&quot;rd&lt;1&gt;".replace("&auml;", "ä"),
    ]
    page = " | ".join([*forms, basic, "deploy:basicpass9", "basicpass9"]).encode()
    out = x.data(page, "resp_body")
    for f in [*forms, basic, "basicpass9"]:
        assert f.encode() not in out, f
    assert "resp_body:echo" in x.notes


def test_a_text_read_clean_before_is_still_an_echo_where_it_is_a_secret() -> None:
    """Texts found clean are remembered across exchanges; an exchange's own echoes still apply
    to them."""
    red = Redactor(RedactionPolicy(), b"k" * 32)
    value = "release-candidate-7"
    assert red.exchange().headers([("X-Build", value)], "req") == [("X-Build", value)]
    assert value in red.clean
    x = red.exchange()
    (_, auth), (_, build) = x.headers([("X-Auth-Token", value), ("X-Build", value)], "req")
    assert MARKER_RE.fullmatch(auth) and build == auth
    assert "req:x-build:echo" in x.notes
    # the next exchange without the secret reads it as clean again
    assert red.exchange().headers([("X-Build", value)], "req") == [("X-Build", value)]


def test_markers_are_stable_and_distinct() -> None:
    a = RED.exchange().text(f"one {SK}") or ""
    b = RED.exchange().text(f"two {SK}") or ""
    c = RED.exchange().text(f"two {SK[:-1]}X") or ""
    assert MARKER_RE.findall(a) == MARKER_RE.findall(b) != MARKER_RE.findall(c)
    other_key = Redactor(RedactionPolicy(), b"j" * 32)
    assert MARKER_RE.findall(other_key.exchange().text(a.replace(a, f"one {SK}")) or "") != (
        MARKER_RE.findall(a)
    )


PROSE = (
    "Summarise the key points of the design review. The tokens per second budget is tight; "
    "the password reset flow sends a link, and the secret to good latency is fewer hops. "
    "APPROXIMATELY 40% of requests hit the cache. Note: see https://example.com/docs?id=42. "
    "Our authorization model uses roles. Keyboard shortcuts: Ctrl+K. "
)


def test_prose_and_ids_are_not_secrets() -> None:
    text = PROSE * 20 + " chatcmpl-9x8Yz1AbCdEfGhIjKlMnOpQrStUv resp_67ccd2bed1ec8190b14f964abc05"
    assert RED.exchange().text(text) == text
    sse = b"".join(
        b'data: {"id":"chatcmpl-9x8Yz1AbCdEfGhIjKl","choices":[{"delta":{"content":" w%d"}}]}\n\n'
        % i
        for i in range(50)
    )
    assert RED.exchange().data(sse) is sse


def _snapshot(chunks: list[bytes]) -> Snapshot:
    req = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    t = 1.7e9
    return Snapshot(
        conn_id="c",
        inflight=1,
        req_start=t,
        req_end=t,
        method=b"POST",
        scheme=b"http",
        host="127.0.0.1",
        port=1,
        path=b"/v1/chat/completions",
        http_version=b"HTTP/1.1",
        req_headers=((b"Content-Type", b"application/json"),),
        req_body=req.encode(),
        status=200,
        reason=b"OK",
        resp_headers=((b"Content-Type", b"text/event-stream"),),
        resp_start=t,
        resp_end=t + 1,
        chunk_times=[t + i / 100 for i in range(len(chunks))],
        chunk_sizes=[len(c) for c in chunks],
        resp_parts=chunks,
        resp_total=sum(len(c) for c in chunks),
    )


def _chunk(text: str) -> bytes:
    obj = {"id": "c1", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_a_secret_cut_across_stream_events_drops_the_body() -> None:
    cut = [
        _chunk("the key is sk-proj-AbCdEfGh"),
        _chunk("IjKlMnOpQrSt0123 ok"),
        b"data: [DONE]\n\n",
    ]
    rec = build_record(_snapshot(cut), RED, [("connection", "")], 1 << 20)
    assert rec["resp_body"] is None and "resp_body:split-secret-dropped" in rec["redacted"]
    assert rec["chunk_sizes"] and rec["stream_complete"]
    whole = [_chunk(f"the key is {SK}"), _chunk(" ok"), b"data: [DONE]\n\n"]
    rec = build_record(_snapshot(whole), RED, [("connection", "")], 1 << 20)
    assert rec["resp_body"] and SK.encode() not in rec["resp_body"]
    assert b"[REDACTED:sk:" in rec["resp_body"]
    clean = [_chunk("nothing to see"), b"data: [DONE]\n\n"]
    rec = build_record(_snapshot(clean), RED, [("connection", "")], 1 << 20)
    assert rec["resp_body"] == b"".join(clean) and not rec["redacted"]


_KEYS = st.sampled_from(["password", "apiKey", "client_secret", "note", "model", "items", "x"])
_LEAVES = st.one_of(
    st.integers(), st.booleans(), st.none(), st.text(max_size=12), st.just(SK), st.just("pw")
)
_TREES = st.recursive(
    _LEAVES,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_KEYS, kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_TREES)
def test_any_json_stays_json_without_its_secrets(tree: Any) -> None:
    raw = json.dumps(tree).encode()
    out = RED.exchange().body(raw, None, "application/json", "b") or b""
    again = json.loads(out)
    assert SK not in out.decode()

    def check(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("password", "apiKey", "client_secret") and isinstance(v, str) and v:
                    assert MARKER_RE.fullmatch(v) or v in ("true", "false", "null"), (k, v)
                check(v)
        elif isinstance(node, list):
            for v in node:
                check(v)

    check(again)


@pytest.mark.parametrize(
    ("raw", "redacted"),
    [
        (b'{"password": "True"}', True),  # quoted: a string, whatever it spells (fuzzing found it)
        (b'{"password": "None"}', True),
        (b"{'password': 'False'}", True),
        (b'{"password": "true"}', False),  # JSON's own literals, quoted, are let through
        (b'{"password": null}', False),
        (b'{"password": true}', False),
        (b"password=True", False),  # a literal, bare: not a credential
        (b"use_password=None", False),
    ],
)
def test_a_literal_is_not_a_credential_but_a_quoted_word_is(raw: bytes, redacted: bool) -> None:
    ctype = "application/json" if raw.startswith(b"{") else "text/plain"
    out = RED.exchange().body(raw, None, ctype, "b") or b""
    assert (b"[REDACTED:" in out) is redacted, out
