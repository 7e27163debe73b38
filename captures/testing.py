"""Factories for capture records and whole captures (tests, benchmarks and the demo share them)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import protocols
from .exchange import build_record
from .protocols.base import Answer, approx_tokens
from .redact import RedactionPolicy, Redactor
from .schema import Headers, Record
from .snapshot import Snapshot
from .writer import CaptureWriter

T0_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, a fixed epoch for reproducible data

WORDS = (
    "the quick brown fox jumps over a lazy dog while gateway latency budgets hold steady under "
    "replayed production traffic with streaming tokens and careful measurement"
).split()


# records are built as a live capture builds them, without redaction (factories plant no secret)
_PLAIN = Redactor(RedactionPolicy(enabled=False), b"x" * 32)


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


API_PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
    "embeddings": "/v1/embeddings",
}


def request_body(
    api: str,
    model: str,
    prompt: str,
    *,
    stream: bool = False,
    max_tokens: int | None = None,
    user: str | None = None,
) -> bytes:
    """A request of an API surface with one user turn."""
    if api == "chat":
        return chat_request_body(
            model, [("user", prompt)], stream=stream, max_tokens=max_tokens, user=user
        )
    obj: dict[str, Any] = {"model": model}
    if api == "completions":
        obj.update(prompt=prompt, stream=stream)
        if max_tokens is not None:
            obj["max_tokens"] = max_tokens
    elif api == "responses":
        obj.update(input=prompt, stream=stream)
        if max_tokens is not None:
            obj["max_output_tokens"] = max_tokens
    elif api == "messages":
        obj.update(
            messages=[{"role": "user", "content": prompt}],
            stream=stream,
            max_tokens=max_tokens or 1024,
        )
    elif api == "embeddings":
        obj["input"] = prompt
    if user is not None:
        obj["user"] = user
    return json.dumps(obj).encode()


def chat_snapshot(
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
    path: str | None = None,
    extra_headers: Headers | None = None,
    api: str = "chat",
    reasoning_tokens: int = 0,
    tool: str | None = None,
) -> Snapshot:
    """The snapshot the capture addon hands its worker for a `chat_record` exchange."""
    return _chat_exchange(**locals())[0]


def _chat_exchange(**kw: Any) -> tuple[Snapshot, dict[str, Any]]:
    """The snapshot and the exact times it was made from (its float seconds round)."""
    start_ns, model, stream, prompt = kw["start_ns"], kw["model"], kw["stream"], kw["prompt"]
    completion_tokens, max_tokens, user = kw["completion_tokens"], kw["max_tokens"], kw["user"]
    conn_id, status, ttft_ms, itl_ms = kw["conn_id"], kw["status"], kw["ttft_ms"], kw["itl_ms"]
    host, port, path, extra_headers = kw["host"], kw["port"], kw["path"], kw["extra_headers"]
    api, reasoning_tokens, tool = kw["api"], kw["reasoning_tokens"], kw["tool"]
    surface = protocols.BY_NAME[api]
    body = request_body(api, model, prompt, stream=stream, max_tokens=max_tokens, user=user)
    path = path or API_PATHS[api]
    answer = Answer(
        rid="resp-test" if api == "responses" else "chatcmpl-test",
        model=model,
        created=0,
        text=[] if tool else [f" tok{i}" for i in range(completion_tokens)],
        reasoning=[f" think{i}" for i in range(reasoning_tokens)],
        tool_name=tool,
        tool_args=['{"a": ', "1}"] if tool else [],
        tool_call_id="call_test" if tool else "",
        finish="tool" if tool else "stop",
        prompt_tokens=approx_tokens(len(prompt)),
        include_usage=True,
    )
    resp_start = start_ns + 200_000
    offsets: list[int] = []
    sizes: list[int] = []
    if status != 200:
        resp_body = surface.error_body(status, "server_error", "overloaded")
        ctype = "application/json"
        offsets, sizes = [0], [len(resp_body)]
        resp_end = resp_start + 100_000
    elif stream:
        chunks = list(surface.render_stream(answer))
        resp_body = b"".join(c for _, c in chunks)
        ctype = "text/event-stream"
        t_us, first = 0.0, True
        for timed, c in chunks:
            if timed:
                t_us = ttft_ms * 1000 if first else t_us + itl_ms * 1000
                first = False
            offsets.append(int(t_us))
            sizes.append(len(c))
        resp_end = resp_start + offsets[-1] * 1000 + 1000
    else:
        resp_body = surface.render_body(answer)
        ctype = "application/json"
        gen_us = int((ttft_ms + itl_ms * max(answer.pieces - 1, 0)) * 1000)
        offsets, sizes = [gen_us], [len(resp_body)]
        resp_end = resp_start + gen_us * 1000 + 1000
    headers: Headers = [
        ("Host", f"{host}:{port}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    if extra_headers:
        headers += list(extra_headers)
    snap = Snapshot(
        conn_id=conn_id or "",
        inflight=1,
        req_start=start_ns / 1e9,
        req_end=(start_ns + 100_000) / 1e9,
        method=b"POST",
        scheme=b"http",
        host=host,
        port=port,
        path=path.encode(),
        http_version=b"HTTP/1.1",
        req_headers=tuple((n.encode(), v.encode()) for n, v in headers),
        req_body=body,
        status=status,
        reason=b"OK" if status == 200 else b"Service Unavailable",
        resp_headers=(
            (b"Content-Type", ctype.encode()),
            (b"Content-Length", str(len(resp_body)).encode()),
        ),
        resp_start=resp_start / 1e9,
        resp_end=resp_end / 1e9,
        chunk_times=[(resp_start + o * 1000) / 1e9 for o in offsets],
        chunk_sizes=sizes,
        resp_parts=_split(resp_body, sizes),
        resp_total=len(resp_body),
    )
    exact = {
        "resp_start_ns": resp_start,
        "resp_end_ns": resp_end,
        "chunk_offsets_us": offsets,
    }
    return snap, exact


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
    path: str | None = None,
    extra_headers: Headers | None = None,
    api: str = "chat",
    reasoning_tokens: int = 0,
    tool: str | None = None,
) -> Record:
    """A complete exchange of an API surface (chat completions by default) as the capture addon
    would record it: the first output event `ttft_ms` after the response started, one every
    `itl_ms` after it."""
    snap, exact = _chat_exchange(
        start_ns=start_ns,
        model=model,
        stream=stream,
        prompt=prompt,
        completion_tokens=completion_tokens,
        max_tokens=max_tokens,
        session_key=session_key,
        user=user,
        conn_id=conn_id,
        status=status,
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        host=host,
        port=port,
        path=path,
        extra_headers=extra_headers,
        api=api,
        reasoning_tokens=reasoning_tokens,
        tool=tool,
    )
    rec = build_record(snap, _PLAIN, [("header", "X-Session-Id"), ("none", "")], 64 << 20)
    # exact values, not the float round trip of the snapshot's seconds
    rec.update(
        conn_id=conn_id,
        session_key=session_key,
        req_start_ns=start_ns,
        req_end_ns=start_ns + 100_000,
        redacted=None,
        **exact,
    )
    return rec


def _split(body: bytes, sizes: list[int]) -> list[bytes]:
    out, i = [], 0
    for n in sizes:
        out.append(body[i : i + n])
        i += n
    return out


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
