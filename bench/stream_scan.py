"""Benchmark: CPU per stream event of the replay's response scanner (`StreamScanner`), the hot
path of every streamed LLM response, per API surface.

Each surface's mock rendering of a 256-token answer is fed in network-sized pieces (one event
per feed, as a token stream arrives), many times over; the figure is CPU time per event. Run it
from two trees (before and after a change) to compare:

    python bench/stream_scan.py [--tokens 256] [--repeat 400]
    cd OTHER_TREE && python /path/to/bench/stream_scan.py   # the same bench on older code

On trees from before captures/protocols (one chat-only scanner) only the chat row is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path.cwd()))


def chat_events(tokens: int) -> list[bytes]:
    """A chat completion stream as OpenAI sends it (built by hand: the same bytes for both
    trees)."""

    def ev(delta: dict[str, Any] | None, finish: str | None = None, **more: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        obj = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": choices,
            **more,
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    out = [ev({"role": "assistant", "content": ""})]
    out += [ev({"content": f" tok{i}"}) for i in range(tokens)]
    out.append(ev({}, "stop"))
    out.append(ev(None, usage={"prompt_tokens": 9, "completion_tokens": tokens}))
    out.append(b"data: [DONE]\n\n")
    return out


def surfaces(tokens: int) -> dict[str, tuple[Any, list[bytes]]]:
    """name -> (surface or None, events)."""
    out: dict[str, tuple[Any, list[bytes]]] = {}
    if not (Path.cwd() / "captures" / "protocols").is_dir():  # an older tree: chat only
        return {"chat": (None, chat_events(tokens))}
    from captures import protocols
    from captures.protocols.base import Answer

    out["chat"] = (protocols.CHAT, chat_events(tokens))
    for s in (protocols.COMPLETIONS, protocols.RESPONSES, protocols.MESSAGES):
        a = Answer(
            rid="r", model="m", created=1, text=[f" tok{i}" for i in range(tokens)], prompt_tokens=9
        )
        out[s.name] = (s, [e for _, e in s.render_stream(a)])
    return out


def scanner(surface: Any) -> Any:
    if (Path.cwd() / "replay" / "send").is_dir():
        from replay.send.outcome import Outcome, StreamScanner
    else:  # before the layout issue
        from replay.outcome import Outcome, StreamScanner  # type: ignore[no-redef]
    out = Outcome(sent_ns=0)
    out.status = 200
    if surface is None:
        return StreamScanner(out, b"text/event-stream", b"")
    return StreamScanner(out, b"text/event-stream", b"", surface)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=400)
    args = ap.parse_args()
    for name, (surface, events) in surfaces(args.tokens).items():
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(args.repeat):
                sc = scanner(surface)
                for i, ev in enumerate(events):
                    sc.feed(ev, i)
                sc.out.end_ns = len(events)
                sc.finish()
            best = min(best, time.process_time() - t0)
        per = best / (args.repeat * len(events)) * 1e9
        out = sc.out
        print(
            f"{name:<12} {per:7.0f} ns/event  ({len(events)} events a stream; "
            f"first token at event {out.first_token_ns}, {len(out.token_ns)} output events, "
            f"completion tokens {out.completion_tokens})"
        )


if __name__ == "__main__":
    main()
