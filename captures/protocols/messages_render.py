"""Rendering an `Answer` as Anthropic's Messages API sends it: the whole message, the stream of
named events (message_start ... message_stop), and its error shapes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .base import Answer, dumps, sse

STOP = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}


def _args(a: Answer) -> Any:
    try:
        return json.loads("".join(a.tool_args) or "{}")
    except ValueError:
        return {}


class MessagesRender:
    # -- rendering (the mock gateway, the test factories) ------------------------------------
    def blocks(self, a: Answer) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if a.reasoning:
            out.append({"type": "thinking", "thinking": "".join(a.reasoning), "signature": "sig"})
        if a.text:
            out.append({"type": "text", "text": "".join(a.text)})
        if a.tool_name:
            out.append(
                {"type": "tool_use", "id": a.tool_call_id, "name": a.tool_name, "input": _args(a)}
            )
        return out

    def usage(self, a: Answer, output: int) -> dict[str, Any]:
        return {
            "input_tokens": a.prompt_tokens - a.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": a.cached_tokens,
            "output_tokens": output,
        }

    def message(self, a: Answer, content: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
        return {
            "id": a.rid,
            "type": "message",
            "role": "assistant",
            "model": a.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self.usage(a, a.completion_tokens if stop else 1),
        }

    def render_body(self, a: Answer) -> bytes:
        return dumps(self.message(a, self.blocks(a), STOP[a.finish]))

    def render_stream(self, a: Answer) -> Iterator[tuple[bool, bytes]]:
        yield (
            False,
            sse({"type": "message_start", "message": self.message(a, [], None)}, "message_start"),
        )
        yield False, sse({"type": "ping"}, "ping")
        for i, block in enumerate(self.blocks(a)):
            kind = block["type"]
            empty = {
                "thinking": {"type": "thinking", "thinking": "", "signature": ""},
                "text": {"type": "text", "text": ""},
                "tool_use": {**block, "input": {}},
            }[kind]
            start = {"type": "content_block_start", "index": i, "content_block": empty}
            yield kind == "tool_use", sse(start, "content_block_start")
            pieces, delta_type, key = {
                "thinking": (a.reasoning, "thinking_delta", "thinking"),
                "text": (a.text, "text_delta", "text"),
                "tool_use": (a.tool_args, "input_json_delta", "partial_json"),
            }[kind]
            for piece in pieces:
                delta = {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": delta_type, key: piece},
                }
                yield True, sse(delta, "content_block_delta")
            if kind == "thinking":
                sig = {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "signature_delta", "signature": "sig"},
                }
                yield False, sse(sig, "content_block_delta")
            yield False, sse({"type": "content_block_stop", "index": i}, "content_block_stop")
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": STOP[a.finish], "stop_sequence": None},
            "usage": {"output_tokens": a.completion_tokens},
        }
        yield False, sse(delta, "message_delta")
        yield False, sse({"type": "message_stop"}, "message_stop")

    def error_body(self, status: int, kind: str, message: str) -> bytes:
        return dumps({"type": "error", "error": {"type": kind, "message": message}})

    def error_event(self, kind: str, message: str) -> bytes:
        return sse({"type": "error", "error": {"type": kind, "message": message}}, "error")
