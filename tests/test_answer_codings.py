"""An answer coded gzip, deflate (zlib-wrapped or raw), br, zstd, or a list of them, is measured
as the same answer uncoded: usage, finish, events, token times and the body's hash (that of the
decoded body, as the capture hashes it). A gateway behind a compressing proxy answers so when
the replayed request's Accept-Encoding allows it (the openai SDK asks for br and zstd where their
modules are installed); before, br and zstd answers came out as `bad_body` or `truncated`."""

from __future__ import annotations

import dataclasses
import gzip
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import brotli
import pyarrow.parquet as pq
import pytest
import zstandard
from rawserver import Peer, raw_server
from test_client import CLIENTS, make, send

from captures import codec
from captures.protocols import BY_NAME, Surface, read_response
from captures.testing import T0_NS, chat_record, chat_snapshot, write_capture
from replay.api import run_replay
from replay.mock.threaded import running_gateway
from replay.send.outcome import Outcome, StreamScanner
from replay.workload.replaying import ReplayOptions


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


# a name: (its Content-Encoding, the coding)
CODINGS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("gzip", gzip.compress),
    "deflate": ("deflate", zlib.compress),
    "deflate raw": ("deflate", _raw_deflate),
    "br": ("br", brotli.compress),
    "zstd": ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
    "gzip then br": ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
}


def _answer(api: str, stream: bool) -> bytes:
    parts = chat_snapshot(api=api, stream=stream, completion_tokens=9, reasoning_tokens=2)
    assert parts.resp_parts is not None
    return b"".join(parts.resp_parts)


def _scan(surface: Surface, ctype: bytes, enc: str, data: bytes, rng: random.Random) -> Outcome:
    """The scanner fed `data` in random pieces, each at its own stamp."""
    out = Outcome(sent_ns=1, status=200)
    scan = StreamScanner(out, ctype, enc.encode(), surface)
    i = 0
    while i < len(data):
        n = rng.randint(1, 40)
        scan.feed(data[i : i + n], 1000 + i)
        i += n
    out.end_ns = 10**9
    scan.finish()
    return out


@pytest.mark.parametrize("coding", list(CODINGS))
def test_every_surface_reads_alike_coded_or_not(coding: str) -> None:
    rng = random.Random(3)
    for api in ("chat", "completions", "responses", "messages", "embeddings"):
        for stream in (False, True) if api != "embeddings" else (False,):
            body = _answer(api, stream)
            ctype = b"text/event-stream" if stream else b"application/json"
            want = dataclasses.asdict(_scan(BY_NAME[api], ctype, "", body, random.Random(1)))
            enc, code = CODINGS[coding]
            got = dataclasses.asdict(_scan(BY_NAME[api], ctype, enc, code(body), rng))
            times = ("first_token_ns", "first_text_ns", "token_ns", "end_ns")  # the pieces differ
            for key in times:
                want.pop(key), got.pop(key)
            assert got == want, (api, stream, coding)
            assert got["error"] is None and got["body_hash"] is not None
            assert got["prompt_tokens"] is not None  # the usage was read


def _coded(parts: list[bytes], coding: str, *, ended: bool = True) -> list[bytes]:
    """Chunks coded as a compressing proxy codes a stream: each flushed as it is written; the
    coder's end after the last unless not `ended` (the client closed before it came)."""
    for c in codec.codings(coding):
        code, end = codec.encoder(c)
        parts = [code(p) for p in parts]
        if ended:
            parts[-1] += end()
    return parts


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_a_recorded_answer_reads_alike_coded_or_not(coding: str) -> None:
    """Capture's reading of a recorded answer (captures.protocols.read_response): a coded stream
    keeps each event at its chunk, and a whole body its usage. Before, br and zstd answers were
    not read at all, and a gzip stream's events were all put at its first chunk (its recorded
    TTFT)."""
    for api in ("chat", "completions", "responses", "messages", "embeddings"):
        for stream in (False, True) if api != "embeddings" else (False,):
            body = _answer(api, stream)
            ctype = "text/event-stream" if stream else "application/json"
            plain = [e + b"\n\n" for e in body.split(b"\n\n")[:-1]] if stream else [body]
            if stream:
                plain = [b": keep-alive\n\n", *plain]  # the first output is not in chunk 0
            want = read_response(BY_NAME[api], plain, ctype, None)
            got = read_response(BY_NAME[api], _coded(plain, coding), ctype, coding)
            assert got == want, (api, stream, coding)
            assert got.fields.prompt_tokens is not None, (api, stream)
            if not stream:  # a whole body cut short is not read, rather than read in part
                cut = _coded(plain, coding)[0][:-8]
                assert (
                    read_response(BY_NAME[api], [cut], ctype, coding).fields.prompt_tokens is None
                )
                continue
            assert got.first_output_chunk is not None and got.first_output_chunk > 0
            # the coder's end not come (an SDK closes once it has the last event), or the
            # stream cut before its last events: read as far as it goes, as the same uncoded
            open_ = _coded(plain, coding, ended=False)
            for n in (len(plain), len(plain) - 2):
                cut_got = read_response(BY_NAME[api], open_[:n], ctype, coding)
                assert cut_got == read_response(BY_NAME[api], plain[:n], ctype, None), (api, n)
            assert read_response(BY_NAME[api], open_, ctype, coding).complete is True


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_a_coded_stream_is_decoded_within_its_bound(coding: str) -> None:
    """A stream decoded chunk by chunk stops at the bound (a small body that inflates hugely),
    and bad data is not read."""
    parts = _coded([b"data: " + b"x" * 3_000_000 + b"\n\n", b"data: [DONE]\n\n"], coding)
    got = codec.decode_parts(parts, coding, 4_000_000)
    assert got is not None and b"".join(got).endswith(b"data: [DONE]\n\n")
    assert codec.decode_parts(parts, coding, 2_000_000) is None
    assert codec.decode_parts([b"not coded at all, not at all"], coding) is None


def test_bad_coded_data_is_not_read_and_no_hash_is_made() -> None:
    out = Outcome(sent_ns=1, status=200)
    scan = StreamScanner(out, b"application/json", b"br", BY_NAME["chat"])
    scan.feed(b"this is not brotli at all", 5)
    out.end_ns = 6
    scan.finish()
    assert out.body_hash is None and out.completion_tokens is None


def _coded_server(peer: Peer, n: int, head: bytes) -> bool:
    """?json: a br-coded chat completion with a length; else a zstd-coded stream, chunked."""
    if head.split(b" ", 2)[1].endswith(b"?json"):
        body = brotli.compress(_answer("chat", False))
        peer.sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: br\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        return True
    z = zstandard.ZstdCompressor().compressobj()
    peer.sock.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: zstd\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    for event in _answer("chat", True).split(b"\n\n")[:-1]:
        piece = z.compress(event + b"\n\n") + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        peer.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    tail = z.flush()
    if tail:
        peer.sock.sendall(b"%x\r\n%s\r\n" % (len(tail), tail))
    peer.sock.sendall(b"0\r\n\r\n")
    return True


@pytest.mark.parametrize("kind", CLIENTS)
async def test_each_sender_measures_br_and_zstd_answers(kind: str) -> None:
    """Every sender against a server that codes its answers: a completion's usage, a stream's
    events and token times, the decoded body's hash."""
    want_json = _scan(
        BY_NAME["chat"], b"application/json", "", _answer("chat", False), random.Random(1)
    )
    want_sse = _scan(
        BY_NAME["chat"], b"text/event-stream", "", _answer("chat", True), random.Random(1)
    )
    with raw_server(_coded_server) as url:
        client = make(kind, url)
        try:
            api = [("Content-Type", "application/json")]
            plain = await send(
                client, url, "/v1/chat/completions?json", "POST", b'{"model": "m"}', api
            )
            streamed = await send(
                client,
                url,
                "/v1/chat/completions?sse",
                "POST",
                b'{"model": "m", "stream": true}',
                api,
            )
        finally:
            await client.close()
    assert plain.error is None and plain.status == 200
    assert plain.completion_tokens == want_json.completion_tokens and plain.finish_reason == "stop"
    assert plain.body_hash == want_json.body_hash
    assert streamed.error is None and streamed.complete
    assert streamed.events == want_sse.events and len(streamed.token_ns) == len(want_sse.token_ns)
    assert streamed.completion_tokens == want_sse.completion_tokens
    assert streamed.body_hash == want_sse.body_hash


@pytest.mark.parametrize("client", ["auto", "fast"])
@pytest.mark.parametrize("coding", ["br", "zstd"])
def test_a_replay_through_a_compressing_gateway_measures_what_an_uncoded_one_does(
    tmp_path: Path, client: str, coding: str
) -> None:
    """The mock gateway coding its answers as a compressing proxy would (the recorded requests
    accept br and zstd, as the openai SDK's do where those modules are installed): the replay's
    statuses, usage, events and answers are those of the same replay uncoded."""
    accept = [("Accept-Encoding", "gzip, deflate, br, zstd")]
    records = [
        chat_record(start_ns=T0_NS + i * 20_000_000, stream=i % 2 == 1, extra_headers=accept)
        for i in range(8)
    ]
    cap = write_capture(tmp_path / "cap", records)
    seen = {}
    for name, with_coding in (("uncoded", ""), ("coded", coding)):
        with running_gateway(default_profile="instant", coding=with_coding) as gw:
            out = tmp_path / name
            opts = ReplayOptions(capture=str(cap), target=gw.url, out=str(out), client=client)
            run = run_replay(opts, install_signals=False)
        assert run.run["counts"] == {**run.run["counts"], "ok": 8, "failed": 0}
        rows = sorted(pq.read_table(out / "results.parquet").to_pylist(), key=lambda r: r["seq"])
        keys = ("status", "error_kind", "completion_tokens", "prompt_tokens", "events")
        more = ("finish_reason", "stream_complete", "answer_hash")  # the answer, canonical
        seen[name] = [tuple(r[k] for k in keys + more) for r in rows]
        seen[name + " bytes"] = sum(r["bytes_in"] for r in rows)
    assert seen["coded"] == seen["uncoded"]
    assert seen["coded bytes"] != seen["uncoded bytes"]  # the answers were coded on the wire
