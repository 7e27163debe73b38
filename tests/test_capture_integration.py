"""A real mitmdump with the capture addon in front of the mock gateway (loopback only)."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
from aioserve import serving
from proxies import start_proxy

from captures.reader import Capture
from proxy_addons.launch import CaptureProcess
from replay.mock.threaded import ThreadedGateway, running_gateway


def chat_body(stream: bool, n: int, tag: str) -> dict[str, Any]:
    return {
        "model": "small",
        "messages": [{"role": "user", "content": f"request {tag}"}],
        "stream": stream,
        "max_tokens": n,
        "stream_options": {"include_usage": True},
    }


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


async def test_reverse_mode_records_every_request(tmp_path: Path) -> None:
    with running_gateway() as gw:
        proc = start_proxy(tmp_path, gw.url)
        try:
            sent: dict[str, dict[str, Any]] = {}
            conn = aiohttp.TCPConnector(limit=1)  # one keep-alive connection for all of these
            async with aiohttp.ClientSession(proc.url, connector=conn) as s:
                for i, stream in enumerate([False, True, False, True]):
                    tag = f"ka{i}"
                    async with s.post(
                        "/v1/chat/completions",
                        json=chat_body(stream, 5, tag),
                        headers={"X-Tag": tag},
                    ) as r:
                        sent[tag] = {"status": r.status, "body": await r.read(), "stream": stream}
                gz_headers = {"X-Tag": "gz", "Accept-Encoding": "gzip"}
                async with s.get(
                    "/echo/big?size=3000&gzip=1", headers=gz_headers, auto_decompress=False
                ) as r:
                    assert r.headers["Content-Encoding"] == "gzip"
                    sent["gz"] = {"status": r.status, "body": await r.read(), "stream": False}
            # A client that aborts mid-stream.
            async with aiohttp.ClientSession(proc.url) as s:
                r = await s.post(
                    "/v1/chat/completions",
                    json=chat_body(True, 300, "abort"),
                    headers={"X-Tag": "abort"},
                )
                await r.content.readany()
                r.close()
                await asyncio.sleep(0.5)
            final = proc.stop()
        finally:
            proc.kill()
    assert final is not None and final["done"] and final["dropped"] == 0 and final["lost"] == 0
    rows = Capture(tmp_path / "cap").records()
    by_tag = {dict(r["req_headers"]).get("X-Tag"): r for r in rows}
    assert set(by_tag) == {*sent, "abort"}
    assert len({by_tag[f"ka{i}"]["conn_id"] for i in range(4)}) == 1, "keep-alive: one connection"
    for tag, want in sent.items():
        row = by_tag[tag]
        assert row["status"] == want["status"] == 200
        assert row["resp_body"] == want["body"], tag
        assert sum(row["chunk_sizes"]) == len(want["body"])
        assert row["error_kind"] is None
        if want["stream"]:
            # role + 5 tokens + finish + usage + [DONE]: tokens come ~4 ms apart, so at least one
            # chunk per token; the last events may arrive together.
            assert 6 <= len(row["chunk_sizes"]) <= 9, row["chunk_sizes"]
            assert row["completion_tokens"] == 5 and row["finish_reason"] == "length"
            assert row["chunk_offsets_us"] == sorted(row["chunk_offsets_us"])
        elif tag.startswith("ka"):
            assert json.loads(row["resp_body"])["usage"]["completion_tokens"] == 5
            assert row["req_body"] == json.dumps(chat_body(False, 5, tag)).encode()
    gz = by_tag["gz"]
    assert gz["resp_content_encoding"] == "gzip" and gzip.decompress(gz["resp_body"]) == b"x" * 3000
    ab = by_tag["abort"]
    assert ab["error_kind"] == "client_abort", (ab["error_kind"], ab["error_message"])
    assert ab["status"] == 200 and 1 <= len(ab["chunk_sizes"]) < 300
    starts = [r["req_start_ns"] for r in rows]
    assert starts == sorted(starts)


async def test_upstream_refused_is_an_error_row(tmp_path: Path) -> None:
    proc = start_proxy(tmp_path, f"http://127.0.0.1:{closed_port()}")
    try:
        async with aiohttp.ClientSession(proc.url) as s, s.get("/v1/models") as r:
            assert r.status == 502
        final = proc.stop()
    finally:
        proc.kill()
    assert final is not None and final["errors"] == 1
    (row,) = Capture(tmp_path / "cap").records()
    assert row["status"] is None and row["error_kind"] == "upstream_refused", row["error_message"]


async def test_regular_proxy_mode_http_and_https(
    tmp_path: Path, server_ssl: ssl.SSLContext
) -> None:
    with running_gateway() as plain, running_gateway(ssl_context=server_ssl) as tls:
        assert tls.url.startswith("https://")
        proc = start_proxy(tmp_path, None, mode="regular", ssl_insecure="true")
        try:
            client_ssl = ssl.create_default_context(cafile=str(proc.ca_cert()))
            async with aiohttp.ClientSession() as s:
                for gw, name in ((plain, "http"), (tls, "https")):
                    for stream in (False, True):
                        async with s.post(
                            f"{gw.url}/v1/chat/completions",
                            json=chat_body(stream, 3, name),
                            proxy=proc.url,
                            ssl=client_ssl if name == "https" else None,
                        ) as r:
                            assert r.status == 200
                            await r.read()
            final = proc.stop()
        finally:
            proc.kill()
    assert final is not None and final["records"] == 4
    rows = Capture(tmp_path / "cap").records()
    assert sorted((r["scheme"], bool(r["stream"])) for r in rows) == [
        ("http", False),
        ("http", True),
        ("https", False),
        ("https", True),
    ]
    for r in rows:
        assert r["status"] == 200 and r["completion_tokens"] == 3
        assert r["port"] in (plain.gateway.port, tls.gateway.port)


def _gw_stats(gw: ThreadedGateway) -> int:
    return gw.stats.completed


async def test_two_proxies_write_one_capture_directory(tmp_path: Path) -> None:
    """Capture at scale: two mitmdump processes (as behind a TCP load balancer) write one
    directory; it reads back as one time-ordered capture with every request once."""
    with running_gateway() as gw:
        procs = [start_proxy(tmp_path, gw.url, instance=name) for name in ("a", "b")]
        try:
            sent: list[str] = []

            async def client(i: int, proc: CaptureProcess) -> None:
                async with aiohttp.ClientSession(proc.url) as s:
                    for j in range(25):
                        tag = f"p{i}-{j}"
                        async with s.post(
                            "/v1/chat/completions",
                            json=chat_body(j % 2 == 0, 3, tag),
                            headers={"X-Tag": tag},
                        ) as r:
                            assert r.status == 200
                            await r.read()
                        sent.append(tag)

            await asyncio.gather(*(client(i, p) for i, p in enumerate(procs)))
            finals = [p.stop() for p in procs]
        finally:
            for p in procs:
                p.kill()
    assert all(f is not None and f["dropped"] == 0 and f["lost"] == 0 for f in finals)
    cap = Capture(tmp_path / "cap")
    rows = cap.records()
    tags = [dict(r["req_headers"]).get("X-Tag") for r in rows]
    assert sorted(tags) == sorted(sent) and len(rows) == 50  # every request, once
    assert len({r["writer_id"] for r in rows}) == 2  # two writers, one directory
    starts = [r["req_start_ns"] for r in rows]
    assert starts == sorted(starts)  # merged into one timeline
    # interleaved in time, not one writer's block after the other's
    writers = [r["writer_id"] for r in rows]
    assert sum(1 for a, b in itertools.pairwise(writers) if a != b) > 5


async def test_websocket_upgrade_is_recorded_as_not_replayable(tmp_path: Path) -> None:
    """A websocket through the proxy works, is recorded, marked not replayable, counted by
    inspect and skipped by replay with the reason (never fatal)."""
    with running_gateway() as gw:
        proc = start_proxy(tmp_path, gw.url)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.ws_connect(f"{proc.url}/ws") as ws:
                    await ws.send_str("hello")
                    assert (await ws.receive_str()) == "hello"
                async with s.get(f"{proc.url}/echo/x?size=5") as r:
                    assert r.status == 200
            final = proc.stop()
        finally:
            proc.kill()
        assert final is not None and final["lost"] == 0
        rows = Capture(tmp_path / "cap").records()
        ws_rows = [r for r in rows if r["path"] == "/ws"]
        assert len(ws_rows) == 1 and ws_rows[0]["replayable"] is False
        assert ws_rows[0]["status"] == 101
        import subprocess
        import sys

        cli = [sys.executable, "-c", "import cli; cli.main()"]
        p = subprocess.run(
            [
                *cli,
                "replay",
                str(tmp_path / "cap"),
                "--target",
                gw.url,
                "--speed",
                "10",
                "--out",
                str(tmp_path / "run"),
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 0, p.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["counts"]["sent"] == 1 and run["counts"]["skipped"] == {
        "not replayable (websocket or tunnel)": 1
    }


async def test_http2_client_through_the_proxy(tmp_path: Path, server_ssl: ssl.SSLContext) -> None:
    """curl speaking HTTP/2 (ALPN h2) to the proxy, over TLS, in regular proxy mode."""
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        import pytest

        pytest.skip("curl not installed")
    with running_gateway(ssl_context=server_ssl) as tls:
        proc = start_proxy(tmp_path, None, mode="regular", ssl_insecure="true")
        try:
            for i in range(3):
                p = subprocess.run(
                    [
                        curl,
                        "-sS",
                        "--http2",
                        "--proxy",
                        proc.url,
                        "--cacert",
                        str(proc.ca_cert()),
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_version} %{response_code}",
                        f"{tls.url}/echo/h2?size=100&n={i}",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert p.returncode == 0 and p.stdout == "2 200", (p.stdout, p.stderr)
            final = proc.stop()
        finally:
            proc.kill()
    assert final is not None and final["records"] == 3
    rows = Capture(tmp_path / "cap").records()
    assert {r["http_version"] for r in rows} == {"HTTP/2.0"}
    assert all(r["status"] == 200 and r["resp_body_size"] == 100 and r["replayable"] for r in rows)


async def test_a_streamed_response_s_headers_reach_the_client_as_they_arrive(
    tmp_path: Path,
) -> None:
    """An upstream that sends its headers, then its first event 0.4 s later (a model's time to
    first token): the client gets the headers at once, as it would without the proxy.
    mitmdump's stream_large_bodies holds them back until the first body bytes."""
    from aiohttp import web

    async def late(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.4)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", late)
    async with serving(app) as upstream:
        proc = start_proxy(tmp_path, upstream)
        try:
            async with aiohttp.ClientSession(proc.url) as s:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                async with s.post("/v1/chat/completions", json=chat_body(True, 1, "late")) as r:
                    headers_at = loop.time() - t0
                    first = await r.content.readany()
                    first_at = loop.time() - t0
                    await r.read()
            final = proc.stop()
        finally:
            proc.kill()
    assert first.startswith(b"data:")
    # bounds against holding the headers back, not speed figures
    assert first_at - headers_at > 0.25, (headers_at, first_at)
    assert final is not None and final["done"]
    (row,) = Capture(tmp_path / "cap").records()
    assert row["chunk_offsets_us"][0] >= 350_000  # the first event's time is recorded as it was
