"""The capture addon at the unit level, with mitmproxy's own test helpers (taddons, tflow).

Tests are async because taddons.context uses the running loop (it would leak a new one)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from captures.protocols import CHAT
from captures.protocols.base import Answer
from captures.reader import Capture
from captures.redact import RedactionPolicy, Redactor
from proxy_addons.capture import CaptureAddon, _Body, _Chunks
from proxy_addons.sink import CaptureSink, Snapshot, error_kind, parse_session_sources


@pytest.fixture()
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "redaction.key"


def configure(tctx: Any, addon: CaptureAddon, directory: Path, key_file: Path, **opts: Any) -> None:
    settings = {"capture_writer": "thread", "capture_compaction": "inline", "capture_stream": "all"}
    tctx.configure(
        addon,
        capture_dir=str(directory),
        capture_redaction_key_file=str(key_file),
        **{**settings, **opts},
    )


def chat_flow(
    stream: bool, *, secret_header: str = "Bearer sk-test1234567890abcdefgh"
) -> http.HTTPFlow:
    body = json.dumps(
        {
            "model": "small",
            "messages": [{"role": "user", "content": "hi there"}],
            "stream": stream,
            "max_tokens": 3,
            "user": "tenant-a",
        }
    ).encode()
    req = http.Request.make(
        "POST",
        "http://127.0.0.1:8000/v1/chat/completions?api_key=abc&x=1",
        body,
        {"Content-Type": "application/json", "authorization": secret_header, "X-Session-Id": "s-9"},
    )
    f = tflow.tflow(req=req)
    f.request.timestamp_start = 1000.0
    f.request.timestamp_end = 1000.001
    return f


def respond(
    addon: CaptureAddon, f: http.HTTPFlow, chunks: list[bytes], ctype: str, **headers: str
) -> None:
    f.response = http.Response.make(200, b"", {"Content-Type": ctype, **headers})
    f.response.timestamp_start = 1000.01
    addon.responseheaders(f)
    stream = f.response.stream
    assert isinstance(stream, _Chunks)
    for c in chunks:
        assert stream(c) == c  # passed on unchanged
    assert stream(b"") == b""
    f.response.timestamp_end = 1000.2
    addon.response(f)


async def test_streamed_and_plain_flows_are_recorded(tmp_path: Path, key_file: Path) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(tctx, addon, tmp_path / "cap", key_file)
        f1 = chat_flow(stream=True)
        addon.requestheaders(f1)
        a = Answer(
            rid="r", model="small", created=0, text=["a", "b"], finish="length", prompt_tokens=2
        )
        events = [e for _, e in CHAT.render_stream(a)]  # role, a, b, finish, usage, [DONE]
        respond(addon, f1, events, "text/event-stream")
        f2 = chat_flow(stream=False)
        addon.requestheaders(f2)
        plain = CHAT.render_body(
            Answer(rid="r", model="small", created=0, text=["a", "b"], prompt_tokens=2)
        )
        respond(
            addon, f2, [gzip.compress(plain)], "application/json", **{"Content-Encoding": "gzip"}
        )
        addon.done()
    rows = Capture(tmp_path / "cap").records()
    assert len(rows) == 2
    s, p = sorted(rows, key=lambda r: r["stream"], reverse=True)
    assert s["stream"] is True and s["chunk_sizes"] == [len(e) for e in events]
    assert len(s["chunk_offsets_us"]) == 6 and s["resp_body"] == b"".join(events)
    assert (s["finish_reason"], s["completion_tokens"], s["prompt_tokens"]) == ("length", 2, 2)
    assert s["model"] == "small" and s["max_tokens"] == 3 and s["user"] == "tenant-a"
    assert s["session_key"] == "s-9"
    assert s["req_start_ns"] == 1_000_000_000_000 and s["resp_start_ns"] == 1_000_010_000_000
    assert p["resp_content_encoding"] == "gzip" and gzip.decompress(p["resp_body"]) == plain
    assert p["completion_tokens"] == 2
    for r in rows:
        assert r["path"] == "/v1/chat/completions"
        assert "abc" not in (r["query"] or "") and r["query"].endswith("&x=1")
        auth = dict(r["req_headers"])["authorization"]
        assert auth.startswith("Bearer [REDACTED:authorization:") and "sk-test" not in auth
        assert "query:api_key" in r["redacted"] and "req_headers:authorization" in r["redacted"]


async def test_request_bodies_stream_through_a_recording_callable(
    tmp_path: Path, key_file: Path
) -> None:
    """A wanted request streams through _Body (what passed is recorded whole); a plain
    `stream = True` (stream_large_bodies) is recorded too; another addon's callable and a
    request already answered are left alone; capture_stream_requests=false buffers."""

    def body_via_stream(f: http.HTTPFlow) -> bytes:
        stream = f.request.stream
        assert isinstance(stream, _Body)
        whole = f.request.data.content or b""
        f.request.data.content = None  # what mitmproxy leaves on a streamed request
        for piece in (whole[:10], whole[10:], b""):
            assert stream(piece) == piece
        return whole

    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(tctx, addon, tmp_path / "cap", key_file)
        streamed, already, theirs, answered = (chat_flow(stream=False) for _ in range(4))
        addon.requestheaders(streamed)
        whole = body_via_stream(streamed)
        already.request.stream = True
        addon.requestheaders(already)
        body_via_stream(already)

        def own(data: bytes) -> bytes:
            return data

        theirs.request.stream = own
        addon.requestheaders(theirs)
        assert theirs.request.stream is own
        answered.response = http.Response.make(403)
        addon.requestheaders(answered)
        assert answered.request.stream is False
        for f in (streamed, already):
            respond(addon, f, [b"{}"], "application/json")
        tctx.options.capture_stream_requests = False
        off = chat_flow(stream=False)
        addon.requestheaders(off)
        assert off.request.stream is False
        addon.done()
    rows = Capture(tmp_path / "cap").records()
    assert [r["req_body_size"] for r in rows] == [len(whole)] * 2
    assert all(r["model"] == "small" and r["user"] == "tenant-a" for r in rows)


async def test_auto_streaming_streams_sse_and_big_bodies_and_buffers_small_ones(
    tmp_path: Path, key_file: Path
) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(
            tctx,
            addon,
            tmp_path / "cap",
            key_file,
            capture_stream="auto",
            capture_stream_above="1k",
        )
        cases = {
            "sse": ({"Content-Type": "text/event-stream"}, b"data: x\n\n", True),
            "small": ({"Content-Type": "application/json"}, b"{}", False),
            "big": ({"Content-Type": "application/json"}, b"[" + b"1," * 1000 + b"1]", True),
            "chunked": ({"Transfer-Encoding": "chunked"}, b"", True),
        }
        for name, (headers, body, want_stream) in cases.items():
            f = tflow.tflow()
            f.request.path = f"/{name}"
            addon.requestheaders(f)
            f.response = http.Response.make(200, body, headers)
            if name == "chunked":
                f.response.headers.pop("content-length", None)
            f.response.timestamp_start, f.response.timestamp_end = 1000.0, 1000.5
            addon.responseheaders(f)
            assert isinstance(f.response.stream, _Chunks) is want_stream, name
            if want_stream:
                assert f.response.stream(body) == body
                f.response.stream(b"")
                f.response.content = None
            addon.response(f)
        addon.done()
    rows = {r["path"]: r for r in Capture(tmp_path / "cap").records()}
    small = rows["/small"]
    assert small["resp_body"] == b"{}" and small["chunk_sizes"] == [2]
    assert small["chunk_offsets_us"] == [500_000]  # buffered: one chunk at the response end
    assert rows["/big"]["resp_body_size"] == len(cases["big"][1])


async def test_a_response_streamed_by_stream_large_bodies_is_recorded_and_another_addons_kept(
    tmp_path: Path, key_file: Path
) -> None:
    """A small JSON answer that stream_large_bodies has set to stream (`stream = True`) gets the
    recording callable, so its body and chunk times are kept; a callable another addon set is
    left in place, even on a token stream (replacing it would undo that addon's transform)."""
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(tctx, addon, tmp_path / "cap", key_file, capture_stream="auto")
        plain, theirs = tflow.tflow(), tflow.tflow()
        plain.request.path, theirs.request.path = "/plain", "/theirs"

        def own(data: bytes) -> bytes:
            return data.upper()

        for f, stream, ctype in (
            (plain, True, "application/json"),
            (theirs, own, "text/event-stream"),
        ):
            addon.requestheaders(f)
            body, headers = b'{"a": 1}', {"Content-Type": ctype}
            f.response = http.Response.make(200, body, headers)
            f.response.timestamp_start, f.response.timestamp_end = 1000.0, 1000.5
            f.response.stream = stream
            addon.responseheaders(f)
        assert theirs.response is not None and theirs.response.stream is own
        assert plain.response is not None and isinstance(plain.response.stream, _Chunks)
        for piece in (b'{"a"', b": 1}", b""):
            plain.response.stream(piece)
        for f in (plain, theirs):
            assert f.response is not None
            f.response.content = None  # what mitmproxy leaves on a streamed response
            addon.response(f)
        addon.done()
    rows = {r["path"]: r for r in Capture(tmp_path / "cap").records()}
    assert rows["/plain"]["resp_body"] == b'{"a": 1}' and rows["/plain"]["chunk_sizes"] == [4, 4]
    assert rows["/theirs"]["status"] == 200 and not rows["/theirs"]["resp_body"]


async def test_same_secret_same_marker_different_secret_different_marker(
    tmp_path: Path, key_file: Path
) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(tctx, addon, tmp_path / "cap", key_file)
        for secret in (
            "Bearer tenant-one-key-aaaa",
            "Bearer tenant-one-key-aaaa",
            "Bearer tenant-two-key-bbbb",
        ):
            f = chat_flow(False, secret_header=secret)
            addon.requestheaders(f)
            respond(addon, f, [b"{}"], "application/json")
        addon.done()
    auths = [dict(r["req_headers"])["authorization"] for r in Capture(tmp_path / "cap").records()]
    assert auths[0] == auths[1] != auths[2]


async def test_body_limit_keeps_prefix_and_full_size(tmp_path: Path, key_file: Path) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(tctx, addon, tmp_path / "cap", key_file, capture_body_limit="10")
        f = tflow.tflow()
        addon.requestheaders(f)
        respond(addon, f, [b"0123456", b"789abcdef"], "text/plain")
        addon.done()
    (r,) = Capture(tmp_path / "cap").records()
    assert (
        r["resp_body"] == b"0123456789" and r["resp_body_size"] == 16 and r["resp_body_truncated"]
    )
    assert r["chunk_sizes"] == [7, 9]


async def test_error_flow_is_recorded_with_kind(tmp_path: Path, key_file: Path) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(tctx, addon, tmp_path / "cap", key_file)
        f = tflow.tflow(err=True)
        f.error.msg = "Connect call failed ('127.0.0.1', 9)"  # type: ignore[union-attr]
        addon.requestheaders(f)
        addon.error(f)
        addon.done()
    (r,) = Capture(tmp_path / "cap").records()
    assert r["status"] is None and r["error_kind"] == "upstream_refused"


async def test_filters(tmp_path: Path, key_file: Path) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(
            tctx,
            addon,
            tmp_path / "cap",
            key_file,
            capture_include_paths=["/v1/*"],
            capture_methods=["POST"],
        )
        wanted, unwanted = chat_flow(False), tflow.tflow()  # tflow is GET /path
        addon.requestheaders(wanted)
        addon.requestheaders(unwanted)
        respond(addon, wanted, [b"{}"], "application/json")
        unwanted.response = http.Response.make(200, b"x")
        addon.responseheaders(unwanted)
        assert unwanted.response.stream is False  # not recorded: not even streamed through us
        addon.response(unwanted)
        assert addon.sink is not None and addon.sink.stats.filtered == 1
        addon.done()
    assert [r["path"] for r in Capture(tmp_path / "cap").records()] == ["/v1/chat/completions"]


def _snapshot(body: bytes = b"") -> Snapshot:
    return Snapshot(
        conn_id="c",
        inflight=1,
        req_start=1.0,
        req_end=1.0,
        method=b"POST",
        scheme=b"http",
        host="127.0.0.1",
        port=1,
        path=b"/p",
        http_version=b"HTTP/1.1",
        req_headers=(),
        req_body=body,
    )


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    sink = CaptureSink(
        tmp_path / "cap",
        Redactor(RedactionPolicy(), b"k" * 32),
        {},
        session_sources=[],
        body_limit=1 << 20,
        queue_records=3,
        queue_bytes=1000,
        compaction="inline",
    )
    # Not started: nothing drains the queue, so the bounds decide.
    assert sink.offer(_snapshot(b"x" * 600))
    assert not sink.offer(_snapshot(b"x" * 600))  # byte bound
    assert sink.offer(_snapshot()) and sink.offer(_snapshot())
    assert not sink.offer(_snapshot())  # count bound
    assert sink.stats.dropped == 2
    sink.start()
    sink.close()
    assert sink.stats.records == 3
    assert Capture(tmp_path / "cap").count() == 3


async def test_configure_rejects_bad_options(tmp_path: Path, key_file: Path) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="capture_allow_secrets"):
            configure(tctx, addon, tmp_path / "a", key_file, capture_redact="off")
        with pytest.raises(exceptions.OptionsError, match="bad size"):
            configure(tctx, addon, tmp_path / "b", key_file, capture_body_limit="lots")
        with pytest.raises(exceptions.OptionsError, match="session key source"):
            configure(tctx, addon, tmp_path / "c", key_file, capture_session_key="cookie")
        with pytest.raises(exceptions.OptionsError, match="bad duration"):
            configure(tctx, addon, tmp_path / "e", key_file, capture_hold_headers="soon")
        with pytest.raises(exceptions.OptionsError, match="0 to 19"):
            configure(tctx, addon, tmp_path / "f", key_file, capture_worker_nice=20)
        with pytest.raises(exceptions.OptionsError, match="must not live in the capture"):
            configure(tctx, addon, tmp_path / "d", tmp_path / "d" / "k")


async def test_redaction_off_needs_both_options(tmp_path: Path, key_file: Path) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(
            tctx,
            addon,
            tmp_path / "cap",
            key_file,
            capture_redact="off",
            capture_allow_secrets=True,
        )
        f = chat_flow(False)
        addon.requestheaders(f)
        respond(addon, f, [b"{}"], "application/json")
        addon.done()
    (r,) = Capture(tmp_path / "cap").records()
    assert dict(r["req_headers"])["authorization"] == "Bearer sk-test1234567890abcdefgh"
    assert json.loads(Capture(tmp_path / "cap").parts[0].redaction) == {"mode": "off"}


async def test_key_file_is_private_and_outside(tmp_path: Path, key_file: Path) -> None:
    addon = CaptureAddon()
    with taddons.context(addon) as tctx:
        configure(tctx, addon, tmp_path / "cap", key_file)
        addon.done()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.parent.stat().st_mode & 0o777 == 0o700
    key = key_file.read_bytes()
    for p in (tmp_path / "cap").rglob("*"):
        if p.is_file():
            assert key not in p.read_bytes()


def test_error_kinds_and_session_sources() -> None:
    assert error_kind("Client disconnected.") == "client_abort"
    assert error_kind("peer closed connection") == "upstream_reset"
    assert error_kind("Connect call failed ('127.0.0.1', 1)") == "upstream_refused"
    assert error_kind("Connection killed.") == "killed"
    assert error_kind("TLS handshake failed") == "tls"
    assert error_kind("something new") == "other"
    assert parse_session_sources("header:X-A, user,connection") == [
        ("header", "X-A"),
        ("user", ""),
        ("connection", ""),
    ]
    with pytest.raises(ValueError):
        parse_session_sources("header:")
