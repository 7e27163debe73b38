"""Factories for capture records and whole captures (tests, benchmarks and the demo share them)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import llm
from .schema import Headers, Record
from .writer import CaptureWriter

T0_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, a fixed epoch for reproducible data

WORDS = (
    "the quick brown fox jumps over a lazy dog while gateway latency budgets hold steady under "
    "replayed production traffic with streaming tokens and careful measurement"
).split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chat_request_body(
    model: str,
    messages: Sequence[tuple[str, str]],
    *,
    stream: bool = False,
    max_tokens: int | None = None,
    user: str | None = None,
    include_usage: bool = True,
) -> bytes:
    obj: dict[str, Any] = {
        "model": model,
        "messages": [{"role": r, "content": c} for r, c in messages],
        "stream": stream,
    }
    if max_tokens is not None:
        obj["max_tokens"] = max_tokens
    if user is not None:
        obj["user"] = user
    if stream and include_usage:
        obj["stream_options"] = {"include_usage": True}
    return json.dumps(obj).encode()


def chat_record(
    *,
    start_ns: int = T0_NS,
    model: str = "small",
    stream: bool = False,
    prompt: str = "Hello there",
    completion_tokens: int = 8,
    max_tokens: int | None = None,
    session_key: str | None = None,
    user: str | None = None,
    conn_id: str | None = "conn-1",
    status: int = 200,
    ttft_ms: float = 20.0,
    itl_ms: float = 5.0,
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = "/v1/chat/completions",
    extra_headers: Headers | None = None,
) -> Record:
    """A complete chat-completions exchange as the capture addon would record it."""
    body = chat_request_body(
        model, [("user", prompt)], stream=stream, max_tokens=max_tokens, user=user
    )
    req = llm.parse_request(body)
    tokens = [f" tok{i}" for i in range(completion_tokens)]
    rid = "chatcmpl-test"
    usage = {
        "prompt_tokens": llm.approx_tokens(len(prompt)),
        "completion_tokens": completion_tokens,
        "total_tokens": llm.approx_tokens(len(prompt)) + completion_tokens,
    }
    resp_start = start_ns + 200_000
    offsets: list[int] = []
    sizes: list[int] = []
    if status != 200:
        resp_body = json.dumps(
            {"error": {"message": "overloaded", "type": "server_error"}}
        ).encode()
        ctype = "application/json"
        offsets, sizes = [0], [len(resp_body)]
        resp_end = resp_start + 100_000
    elif stream:
        chunks = [llm.chat_chunk(rid, model, 0, role="assistant", content="")]
        chunks += [llm.chat_chunk(rid, model, 0, content=t) for t in tokens]
        chunks.append(llm.chat_chunk(rid, model, 0, finish_reason="stop"))
        chunks.append(llm.chat_chunk(rid, model, 0, empty_choices=True, usage=usage))
        chunks.append(llm.SSE_DONE)
        resp_body = b"".join(chunks)
        ctype = "text/event-stream"
        t_us = 0.0
        for i, c in enumerate(chunks):
            if i == 1:
                t_us = ttft_ms * 1000
            elif i > 1:
                t_us += itl_ms * 1000 if i <= completion_tokens else 0
            offsets.append(int(t_us))
            sizes.append(len(c))
        resp_end = resp_start + offsets[-1] * 1000 + 1000
    else:
        resp_body = llm.chat_completion(
            rid,
            model,
            0,
            "".join(tokens),
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=completion_tokens,
        )
        ctype = "application/json"
        gen_us = int((ttft_ms + itl_ms * max(completion_tokens - 1, 0)) * 1000)
        offsets, sizes = [gen_us], [len(resp_body)]
        resp_end = resp_start + gen_us * 1000 + 1000
    resp = llm.parse_response(resp_body, ctype)
    headers: Headers = [
        ("Host", f"{host}:{port}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    if extra_headers:
        headers += list(extra_headers)
    return {
        "conn_id": conn_id,
        "session_key": session_key,
        "req_start_ns": start_ns,
        "req_end_ns": start_ns + 100_000,
        "resp_start_ns": resp_start,
        "resp_end_ns": resp_end,
        "chunk_offsets_us": offsets,
        "chunk_sizes": sizes,
        "proxy_inflight": 1,
        "method": "POST",
        "scheme": "http",
        "host": host,
        "port": port,
        "path": path,
        "query": None,
        "http_version": "HTTP/1.1",
        "req_headers": headers,
        "req_body": body,
        "req_body_size": len(body),
        "req_body_truncated": False,
        "status": status,
        "reason": "OK" if status == 200 else "Service Unavailable",
        "resp_headers": [("Content-Type", ctype), ("Content-Length", str(len(resp_body)))],
        "resp_body": resp_body,
        "resp_body_size": len(resp_body),
        "resp_body_truncated": False,
        "model": req.model,
        "stream": req.stream,
        "max_tokens": req.max_tokens,
        "message_count": req.message_count,
        "prompt_chars": req.prompt_chars,
        "user": req.user,
        "finish_reason": resp.finish_reason,
        "prompt_tokens": resp.prompt_tokens,
        "completion_tokens": resp.completion_tokens,
    }


def http_record(
    *,
    start_ns: int = T0_NS,
    method: str = "GET",
    path: str = "/health",
    query: str | None = None,
    status: int | None = 200,
    req_body: bytes = b"",
    resp_body: bytes = b"ok",
    host: str = "127.0.0.1",
    port: int = 8000,
    session_key: str | None = None,
    error_kind: str | None = None,
) -> Record:
    """A plain (non-LLM) exchange; status None with an error kind makes a failed flow."""
    done = status is not None
    return {
        "conn_id": "conn-1",
        "session_key": session_key,
        "req_start_ns": start_ns,
        "req_end_ns": start_ns + 50_000,
        "resp_start_ns": start_ns + 150_000 if done else None,
        "resp_end_ns": start_ns + 250_000 if done else None,
        "chunk_offsets_us": [0] if done else None,
        "chunk_sizes": [len(resp_body)] if done else None,
        "method": method,
        "scheme": "http",
        "host": host,
        "port": port,
        "path": path,
        "query": query,
        "http_version": "HTTP/1.1",
        "req_headers": [("Host", f"{host}:{port}")],
        "req_body": req_body,
        "req_body_size": len(req_body),
        "status": status,
        "reason": "OK" if done else None,
        "resp_headers": [("Content-Type", "text/plain")] if done else None,
        "resp_body": resp_body if done else None,
        "resp_body_size": len(resp_body) if done else None,
        "resp_body_truncated": False if done else None,
        "error_kind": error_kind,
        "error_message": f"{error_kind} (synthetic)" if error_kind else None,
    }


def synthetic_records(
    n: int,
    *,
    rate: float = 10.0,
    seed: int = 0,
    start_ns: int = T0_NS,
    models: Sequence[str] = ("small", "large"),
    stream_share: float = 0.5,
    sessions: int = 5,
    poisson: bool = True,
) -> list[Record]:
    """n chat exchanges arriving at `rate` per second (Poisson or evenly spaced), seeded."""
    rng = random.Random(seed)
    out = []
    t = float(start_ns)
    for i in range(n):
        if i:
            t += (rng.expovariate(rate) if poisson else 1.0 / rate) * 1e9
        session = f"s{rng.randrange(sessions)}" if sessions else None
        out.append(
            chat_record(
                start_ns=int(t),
                model=rng.choice(list(models)),
                stream=rng.random() < stream_share,
                prompt=words(rng, rng.randint(3, 60)),
                completion_tokens=rng.randint(1, 24),
                max_tokens=32,
                session_key=session,
                conn_id=f"conn-{session or i}",
            )
        )
    return out


def write_capture(directory: str | Path, records: Iterable[Record], **writer_kwargs: Any) -> Path:
    """Write records into a capture directory through the real writer; returns the directory."""
    with CaptureWriter(directory, **writer_kwargs) as w:
        w.append_many(records)
    return Path(directory)
