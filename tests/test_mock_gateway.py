"""The mock gateway over real HTTP on loopback: timing model, capacity, every fault."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from captures.protocols import CHAT, read_response
from captures.protocols.base import event_data, split_events
from replay.mock.config import PROFILES, Faults, GatewayConfig, ModelProfile
from replay.mock.gateway import MockGateway
from replay.mock.threaded import running_gateway

SLOW = ModelProfile("test-slow", ttft_base_ms=120.0, ttft_per_prompt_token_ms=1.0, itl_ms=25.0)


def cfg(**kw: Any) -> GatewayConfig:
    base = GatewayConfig(profiles={**PROFILES, "test-slow": SLOW}, models={"m": "test-slow"})
    return replace(base, **kw)


def chat(stream: bool, max_tokens: int = 6, prompt: str = "x" * 40, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
        "max_tokens": max_tokens,
        **extra,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@pytest.fixture()
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def read_events(resp: aiohttp.ClientResponse, t0: float) -> list[tuple[float, bytes]]:
    """(seconds since t0, event bytes) for every SSE event as it arrives."""
    out = []
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            out.append((time.monotonic() - t0, ev))
    return out


async def test_streamed_timing_follows_the_profile(session: aiohttp.ClientSession) -> None:
    async with MockGateway(cfg()) as gw:
        t0 = time.monotonic()
        async with session.post(f"{gw.url}/v1/chat/completions", json=chat(True, 6)) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            events = await read_events(r, t0)
    datas = [e.removeprefix(b"data: ") for _, e in events]
    assert datas[-1] == b"[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    contents = [
        i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    assert len(contents) == 6
    ttft = events[contents[0]][0]
    # TTFT = 120 ms + 1 ms x 10 prompt tokens = 130 ms
    assert 0.125 <= ttft < 0.25, ttft
    gaps = [events[b][0] - events[a][0] for a, b in itertools.pairwise(contents)]
    assert all(0.018 <= g < 0.08 for g in gaps), gaps
    usage = chunks[-1]["usage"]
    assert usage == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
    body = b"".join(e + b"\n\n" for _, e in events)
    parsed = read_response(CHAT, [body], "text/event-stream", None).fields
    assert parsed.finish_reason == "length" and parsed.completion_tokens == 6


async def test_plain_completion_waits_for_all_tokens(session: aiohttp.ClientSession) -> None:
    async with MockGateway(cfg()) as gw:
        t0 = time.monotonic()
        async with session.post(f"{gw.url}/v1/chat/completions", json=chat(False, 5)) as r:
            body = await r.json()
        elapsed = time.monotonic() - t0
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"
    assert 0.130 + 4 * 0.025 - 0.005 <= elapsed < 0.5


async def test_output_length_is_seeded_by_the_request_without_max_tokens(
    session: aiohttp.ClientSession,
) -> None:
    """The same request gets the same answer, in any order, from any instance with the same
    seed (a replay against an identical mock gets the recording's answers back); different
    requests get different lengths."""
    prompts = [f"question {i}" for i in range(6)]
    lengths = []
    for order in (prompts, prompts[::-1]):
        async with MockGateway(cfg(default_profile="instant", models={}, seed=7)) as gw:
            got = {}
            for q in order:
                body = {"model": "x", "messages": [{"role": "user", "content": q}]}
                async with session.post(f"{gw.url}/v1/chat/completions", json=body) as r:
                    j = await r.json()
                    got[q] = j["usage"]["completion_tokens"]
                    assert j["choices"][0]["finish_reason"] == "stop"
            lengths.append(got)
    assert lengths[0] == lengths[1]
    assert len(set(lengths[0].values())) > 1


async def test_capacity_turns_into_503_with_retry_after(session: aiohttp.ClientSession) -> None:
    async with MockGateway(cfg(max_in_service=2, max_queue=1)) as gw:

        async def one() -> tuple[int, str | None]:
            async with session.post(f"{gw.url}/v1/chat/completions", json=chat(False, 3)) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")

        results = await asyncio.gather(*[one() for _ in range(6)])
        assert sorted(s for s, _ in results) == [200, 200, 200, 503, 503, 503]
        assert all(ra == "1" for s, ra in results if s == 503)
        assert gw.stats.rejected == 3 and gw.stats.max_in_service_seen == 2


async def test_overload_status_429(session: aiohttp.ClientSession) -> None:
    async with MockGateway(cfg(max_in_service=1, max_queue=0, overload_status=429)) as gw:

        async def one() -> int:
            async with session.post(f"{gw.url}/v1/chat/completions", json=chat(False, 2)) as r:
                return r.status

        assert sorted(await asyncio.gather(one(), one())) == [200, 429]


async def test_stall_fault_holds_every_response(session: aiohttp.ClientSession) -> None:
    faults = Faults(stall_ms=400, stall_every_s=1.0)
    async with MockGateway(cfg(default_profile="instant", models={}, faults=faults)) as gw:
        # The gateway starts inside a stall window (phase 0): a request now waits ~400 ms.
        t0 = time.monotonic()
        async with session.get(f"{gw.url}/echo/x") as r:
            assert r.status == 200
        stalled = time.monotonic() - t0
        await asyncio.sleep(max(0.0, 0.55 - (time.monotonic() - t0)))
        t1 = time.monotonic()
        async with session.get(f"{gw.url}/echo/x") as r:
            assert r.status == 200
        free = time.monotonic() - t1
    assert stalled >= 0.35, stalled
    assert free < 0.1, free


async def test_error_rate_is_deterministic(session: aiohttp.ClientSession) -> None:
    runs = []
    for _ in range(2):
        faults = Faults(error_rate=0.5)
        async with MockGateway(
            cfg(default_profile="instant", models={}, faults=faults, seed=3)
        ) as gw:
            statuses = []
            for _ in range(20):
                body = {
                    "model": "x",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1,
                }
                async with session.post(f"{gw.url}/v1/chat/completions", json=body) as r:
                    statuses.append(r.status)
            runs.append(statuses)
    assert runs[0] == runs[1]
    assert 3 <= runs[0].count(500) <= 17


async def test_reset_mid_stream(session: aiohttp.ClientSession) -> None:
    async with MockGateway(
        cfg(default_profile="instant", models={}, faults=Faults(reset_rate=1.0))
    ) as gw:
        body = {**chat(True, 10), "model": "x"}
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(f"{gw.url}/v1/chat/completions", json=body) as r:
                assert r.status == 200
                await r.read()
        assert gw.stats.resets == 1


async def test_malformed_sse_event(session: aiohttp.ClientSession) -> None:
    faults = Faults(malformed_rate=1.0)
    gw = MockGateway(cfg(default_profile="instant", models={}, faults=faults))
    body = {**chat(True, 4), "model": "x"}
    async with gw, session.post(f"{gw.url}/v1/chat/completions", json=body) as r:
        raw = await r.read()
    bad = 0
    for data in (event_data(e) for e in split_events(raw)):
        if data != b"[DONE]":
            try:
                json.loads(data)
            except ValueError:
                bad += 1
    assert bad == 1


async def test_slow_drip(session: aiohttp.ClientSession) -> None:
    faults = Faults(drip_rate=1.0, drip_delay_ms=1.0)
    gw = MockGateway(cfg(default_profile="instant", models={}, faults=faults))
    body = {**chat(False, 1), "model": "x"}
    async with gw, session.post(f"{gw.url}/v1/chat/completions", json=body) as r:
        chunks = [c async for c in r.content.iter_any()]
    body = b"".join(chunks)
    assert json.loads(body)["usage"]["completion_tokens"] == 1
    assert len(chunks) > 20  # arrived in many small pieces


async def test_completions_models_health_echo(session: aiohttp.ClientSession) -> None:
    async with MockGateway(cfg(default_profile="instant")) as gw:
        async with session.post(
            f"{gw.url}/v1/completions", json={"model": "z", "prompt": "abc", "max_tokens": 3}
        ) as r:
            j = await r.json()
            assert j["object"] == "text_completion" and j["usage"]["completion_tokens"] == 3
        async with session.post(
            f"{gw.url}/v1/completions",
            json={"model": "z", "prompt": "abc", "max_tokens": 2, "stream": True},
        ) as r:
            raw = await r.read()
            assert raw.endswith(b"data: [DONE]\n\n")
        async with session.get(f"{gw.url}/v1/models") as r:
            ids = {m["id"] for m in (await r.json())["data"]}
            assert "m" in ids
        async with session.get(f"{gw.url}/health") as r:
            assert (await r.json()) == {"status": "ok"}
        async with session.put(f"{gw.url}/echo/a/b?x=1", data=b"12345") as r:
            j = await r.json()
            assert (j["method"], j["path"], j["query"], j["body_size"]) == (
                "PUT",
                "/echo/a/b",
                "x=1",
                5,
            )
        async with session.get(f"{gw.url}/echo?status=404&size=3") as r:
            assert r.status == 404 and await r.read() == b"xxx"
        async with session.post(f"{gw.url}/v1/chat/completions", data=b"not json") as r:
            assert r.status == 400


def test_threaded_gateway_for_sync_code() -> None:
    import urllib.request

    with running_gateway(default_profile="instant") as gw:
        with urllib.request.urlopen(f"{gw.url}/health", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        assert gw.url.startswith("http://127.0.0.1:")


def test_refuses_non_loopback_and_bad_config() -> None:
    with pytest.raises(ValueError, match="loopback"):
        MockGateway(GatewayConfig(host="0.0.0.0"))
    with pytest.raises(ValueError, match="error_rate"):
        MockGateway(GatewayConfig(faults=Faults(error_rate=2.0)))
    with pytest.raises(ValueError, match="unknown profile"):
        MockGateway(GatewayConfig(default_profile="nope"))


@pytest.mark.parametrize(
    ("accept", "coded"),
    [
        ("gzip, deflate, br, zstd", True),
        ("br;q=0.2", True),
        ("gzip, br;q=0", False),  # refused by its q-value
        ("*", True),
        ("*, br;q=0", False),
        ("*;q=0", False),
        ("identity", False),
    ],
)
async def test_coding_follows_accept_encoding_and_its_q_values(accept: str, coded: bool) -> None:
    """`coding="br"` codes an answer only where the request's Accept-Encoding allows br (RFC
    9110: named above q=0, or `*` above q=0 and br not named); otherwise it answers uncoded."""
    async with (
        MockGateway(cfg(default_profile="instant", models={}, coding="br")) as gw,
        aiohttp.ClientSession(auto_decompress=False) as s,
    ):
        for stream in (False, True):
            async with s.post(
                f"{gw.url}/v1/chat/completions",
                json=chat(stream, 3),
                headers={"Accept-Encoding": accept},
            ) as r:
                raw = await r.read()
                enc = r.headers.get("Content-Encoding")
            assert enc == ("br" if coded else None), (accept, stream)
            ctype = "text/event-stream" if stream else "application/json"
            seen = read_response(CHAT, [raw], ctype, enc).fields
            assert seen.completion_tokens == 3, (accept, stream)
