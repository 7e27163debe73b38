"""Benchmark: what building a capture record costs the capture worker, redaction included.

The worker turns each proxied exchange into a record (`captures.exchange.build_record`: headers
decoded, the API surface read, secrets redacted, the conversation found). This times it per
exchange for the shapes a gateway carries, with redaction on and off, so the redaction's share
shows; `--tree DIR` runs the same exchanges against another checkout (e.g. a worktree of the
commit before a change), in its own process, for a before/after ratio in one run:

    git worktree add /tmp/before HEAD~1
    python bench/redaction.py --tree /tmp/before

The exchanges are built here from bytes (not with the package's factories) so that any checkout
can run them:
- chat, streamed: a 6-turn history (~6 KB of prose) and 200 SSE chunks with ids and usage;
- chat, one JSON body each way; Responses, streamed (150 events);
- embeddings: 16 inputs, 16 vectors of 1536 floats back (~330 KB of JSON);
- a plain GET with browser-like headers;
- secrets: the streamed chat with credentials in headers, query, body and prompt text, echoed
  back in the response (the path where redaction actually replaces things).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROSE = (
    "When the gateway routes a request it first checks the model map, then the rate limits, and "
    "only then forwards the prompt upstream; latency budgets are spent mostly while waiting for "
    "the first token, which is why replaying production traffic matters. "
)


def _sse(objs: list[dict[str, Any]], named: bool = False) -> bytes:
    out = []
    for o in objs:
        head = f"event: {o['type']}\n" if named else ""
        out.append(f"{head}data: {json.dumps(o)}\n\n".encode())
    if not named:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _chat_request(stream: bool, prompt_extra: str = "") -> bytes:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are helpful. " * 10}]
    for i in range(6):
        msgs.append({"role": "user", "content": f"Question {i}: " + PROSE * 2 + prompt_extra})
        msgs.append({"role": "assistant", "content": PROSE})
    msgs.append({"role": "user", "content": "And finally, summarise."})
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": msgs, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def _chat_stream(n: int, echo: str = "") -> bytes:
    rid = "chatcmpl-9x8Yz1AbCdEfGhIjKlMnOpQrStUv"
    base = {"id": rid, "object": "chat.completion.chunk", "created": 1733000000, "model": "m"}
    objs = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    for i in range(n):
        text = f" word{i}" if not (echo and i == n // 2) else f" {echo}"
        objs.append({**base, "choices": [{"index": 0, "delta": {"content": text}}]})
    objs.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 1500, "completion_tokens": n, "total_tokens": 1500 + n}
    objs.append({**base, "choices": [], "usage": usage})
    return _sse(objs)


def _responses_stream(n: int) -> bytes:
    rid = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    objs: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": rid, "status": "in_progress"}}
    ]
    for i in range(n):
        objs.append(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6",
                "output_index": 0,
                "content_index": 0,
                "delta": f" word{i}",
            }
        )
    usage = {"input_tokens": 1500, "output_tokens": n, "total_tokens": 1500 + n}
    objs.append(
        {
            "type": "response.completed",
            "response": {"id": rid, "status": "completed", "usage": usage},
        }
    )
    return _sse(objs, named=True)


def exchanges() -> dict[str, dict[str, Any]]:
    rng = random.Random(1)
    emb = {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": [rng.uniform(-1, 1) for _ in range(1536)],
            }
            for i in range(16)
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 800, "total_tokens": 800},
    }
    sse = [(b"Content-Type", b"text/event-stream")]
    js = [(b"Content-Type", b"application/json")]
    secret_headers = [
        (b"Authorization", b"Bearer sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
        (b"X-Goog-Api-Key", b"AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"),
        (b"Cookie", b"session=7f9a8b7c6d5e4f3a2b1c; theme=dark"),
    ]
    return {
        "chat-stream": {
            "path": b"/v1/chat/completions",
            "req": _chat_request(True),
            "resp": _chat_stream(200),
            "resp_headers": sse,
        },
        "chat-json": {
            "path": b"/v1/chat/completions",
            "req": _chat_request(False),
            "resp": json.dumps(
                {
                    "id": "chatcmpl-9x8Yz1AbCdEfGhIjKlMnOpQrStUv",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": PROSE * 8},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1500, "completion_tokens": 400},
                }
            ).encode(),
            "resp_headers": js,
        },
        "responses-stream": {
            "path": b"/v1/responses",
            "req": json.dumps({"model": "gpt-4o", "input": PROSE * 10, "stream": True}).encode(),
            "resp": _responses_stream(150),
            "resp_headers": sse,
        },
        "embeddings": {
            "path": b"/v1/embeddings",
            "req": json.dumps(
                {"model": "text-embedding-3-small", "input": [PROSE[:200]] * 16}
            ).encode(),
            "resp": json.dumps(emb).encode(),
            "resp_headers": js,
        },
        "plain-get": {
            "method": b"GET",
            "path": b"/v1/models?limit=20&order=desc",
            "req": b"",
            "req_headers": [
                (b"Host", b"gateway.internal"),
                (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
                (b"Accept", b"application/json"),
                (b"Accept-Language", b"en-GB,en;q=0.9"),
            ],
            "resp": json.dumps({"data": [{"id": f"model-{i}"} for i in range(20)]}).encode(),
            "resp_headers": js,
        },
        "secrets": {
            "path": b"/v1/chat/completions?api_key=q-AbCdEfGhIjKlMnOp1234",
            "req": _chat_request(True, " my key is sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv0123"),
            "req_headers": secret_headers,
            "resp": _chat_stream(200, echo="AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"),
            "resp_headers": [*sse, (b"Set-Cookie", b"sid=a1b2c3d4e5f6a7b8; Path=/; HttpOnly")],
        },
    }


def run_here(seconds: float) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(Path.cwd()))
    from captures.exchange import Snapshot, build_record
    from captures.redact import RedactionPolicy, Redactor

    red = {
        "on": Redactor(RedactionPolicy(), b"k" * 32),
        "off": Redactor(RedactionPolicy(enabled=False), b"k" * 32),
    }
    out: dict[str, dict[str, float]] = {}
    for name, x in exchanges().items():
        resp: bytes = x["resp"]
        parts = [resp[i : i + 400] for i in range(0, len(resp), 400)]
        headers = x.get("req_headers") or [
            (b"Host", b"gateway.internal"),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", str(len(x["req"])).encode()),
        ]
        snap = Snapshot(
            conn_id="c1",
            inflight=1,
            req_start=1.7e9,
            req_end=1.7e9 + 1e-4,
            method=x.get("method", b"POST"),
            scheme=b"http",
            host="127.0.0.1",
            port=8000,
            path=x["path"],
            http_version=b"HTTP/1.1",
            req_headers=tuple(headers),
            req_body=x["req"] or None,
            status=200,
            reason=b"OK",
            resp_headers=tuple(x["resp_headers"]),
            resp_start=1.7e9 + 2e-4,
            resp_end=1.7e9 + 0.5,
            chunk_times=[1.7e9 + 2e-4 + i * 1e-3 for i in range(len(parts))],
            chunk_sizes=[len(p) for p in parts],
            resp_parts=parts,
            resp_total=len(resp),
        )
        row = {}
        for mode, r in red.items():
            sources = [("header", "X-Session-Id"), ("connection", "")]
            build_record(snap, r, sources, 64 << 20)  # warm caches
            n, t0 = 0, time.perf_counter()
            deadline = t0 + seconds
            while time.perf_counter() < deadline:
                build_record(snap, r, sources, 64 << 20)
                n += 1
            row[mode] = (time.perf_counter() - t0) / n * 1e6
        row["bytes"] = float(len(x["req"]) + len(resp))
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0, help="per exchange and mode")
    ap.add_argument("--tree", help="another checkout to run the same exchanges against")
    ap.add_argument("--json", action="store_true", help="print JSON (used for --tree)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    a = ap.parse_args()
    if a.json:
        print(json.dumps(run_here(a.seconds)))
        return
    trees = {"this": str(ROOT)}
    if a.tree:
        trees["other"] = str(Path(a.tree).resolve())
    got = {}
    for label, tree in trees.items():
        p = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--json", "--seconds", str(a.seconds)],
            cwd=tree,
            capture_output=True,
            text=True,
            check=True,
        )
        got[label] = json.loads(p.stdout)
    print(
        f"{'exchange':18s} {'KB':>6s}  "
        + "  ".join(f"{t + ' on':>10s} {t + ' off':>10s}" for t in got)
    )
    for name in got["this"]:
        cells = "  ".join(f"{got[t][name]['on']:9.1f}µ {got[t][name]['off']:9.1f}µ" for t in got)
        print(f"{name:18s} {got['this'][name]['bytes'] / 1024:6.1f}  {cells}")
    if "other" in got:
        print("ratio this/other, redaction on:")
        for name in got["this"]:
            print(f"  {name:18s} {got['this'][name]['on'] / got['other'][name]['on']:.2f}x")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "redaction.json").write_text(json.dumps(got, indent=2) + "\n")


if __name__ == "__main__":
    main()
