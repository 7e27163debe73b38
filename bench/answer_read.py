"""Benchmark: CPU to measure one whole answer, read from its head in C (wire_c/head.h, then
outcome.read_plain) against llhttp's reading of the same bytes (wire.read_answer), the peer in
the same run. This is what each sender pays per response, on the event loop, once the bytes are
in: the compiled sender for every plain answer, the Python sender for one that came in one read.

Answers: nginx's small GET answer, a 4 KB plain body, a chat completion (JSON: usage and shape
parsed), an error with Retry-After, and a streamed chat answer with a length (its events
scanned). Each in one read and in three.

    python bench/answer_read.py [--repeat 50000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captures.protocols import CHAT, PLAIN, Surface
from captures.testing import chat_snapshot
from replay.rewrite import Prepared
from replay.send import wire
from replay.send.outcome import Outcome, plain_head, read_plain
from replay.targets import parse_target

NGINX = [
    ("Server", "nginx/1.22.1"),
    ("Date", "Mon, 07 Dec 2026 13:00:00 GMT"),
    ("Content-Type", "application/octet-stream"),
    ("Connection", "keep-alive"),
]


def answer(status: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{n}: {v}" for n, v in headers)]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def cases() -> list[tuple[str, Surface, bytes]]:
    def body(**kw: object) -> bytes:
        parts = chat_snapshot(**kw).resp_parts  # type: ignore[arg-type]
        assert parts is not None
        return b"".join(parts)

    json_type = [("Content-Type", "application/json")]
    retry, sse = ("Retry-After", "2"), ("Content-Type", "text/event-stream")
    tokens = {"completion_tokens": 40}
    return [
        ("nginx GET, 2 bytes", PLAIN, answer("200 OK", NGINX, b"ok")),
        ("plain, 4 KB", PLAIN, answer("200 OK", NGINX, bytes(range(256)) * 16)),
        ("chat completion", CHAT, answer("200 OK", json_type, body(completion_tokens=40))),
        ("429, Retry-After", CHAT, answer("429 Too Many", [*json_type, retry], body(status=429))),
        ("chat stream, 40 tokens", CHAT, answer("200 OK", [sse], body(stream=True, **tokens))),
    ]


def by_llhttp(req: Prepared, data: bytes, stamps: tuple[int, ...]) -> None:
    wire.read_answer(Outcome(sent_ns=1), req, data, stamps, True)


def by_head(surface: Surface, data: bytes, stamps: tuple[int, ...]) -> None:
    head = plain_head(data, stamps)
    assert head is not None
    read_plain(Outcome(sent_ns=1, end_ns=stamps[-1]), surface, data, stamps, head)


def per_call(fn: Callable[[], None], repeat: int) -> float:
    """CPU microseconds a call, the best of three timings."""
    best = []
    for _ in range(3):
        t = time.process_time()
        for _ in range(repeat):
            fn()
        best.append((time.process_time() - t) / repeat * 1e6)
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=50_000)
    args = ap.parse_args()
    if not wire.available():
        sys.exit("the compiled sender is not built here: no C head reader to measure")
    ratios = []
    target = parse_target("http://127.0.0.1:9")
    for name, surface, data in cases():
        req = Prepared("GET", target, "/", [], b"", b"", None, False, surface)
        n = len(data)
        for reads in (1, 3):
            cuts = [n * (k + 1) // reads for k in range(reads)]
            stamps = tuple(x for k, c in enumerate(cuts) for x in (c, 1000 + k))

            a = per_call(partial(by_llhttp, req, data, stamps), args.repeat)
            b = per_call(partial(by_head, surface, data, stamps), args.repeat)
            ratios.append(a / b)
            print(
                f"{name:24s} {reads} read(s): llhttp {a:6.2f} us  head in C {b:6.2f} us  ", end=""
            )
            print(f"llhttp/C {a / b:4.2f}x")
    print(f"median llhttp/C {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
