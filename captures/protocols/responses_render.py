"""Rendering an `Answer` as the Responses API sends it: the whole response, and the stream of
typed events with sequence numbers (response.created ... response.completed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .base import Answer, dumps


class ResponsesRender:
    # -- rendering (the mock gateway, the test factories) ------------------------------------
    def output(self, a: Answer) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if a.reasoning:
            out.append(
                {
                    "id": f"rs_{a.rid}",
                    "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": "".join(a.reasoning)}],
                }
            )
        if a.text:
            out.append(
                {
                    "id": f"msg_{a.rid}",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": "".join(a.text), "annotations": []}
                    ],
                }
            )
        if a.tool_name:
            out.append(
                {
                    "id": f"fc_{a.rid}",
                    "type": "function_call",
                    "call_id": a.tool_call_id,
                    "name": a.tool_name,
                    "arguments": "".join(a.tool_args),
                    "status": "completed",
                }
            )
        return out

    def response(self, a: Answer, status: str, with_output: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": a.rid,
            "object": "response",
            "created_at": a.created,
            "model": a.model,
            "status": status,
            "output": self.output(a) if with_output else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "error": None,
        }
        if status in ("completed", "incomplete"):
            doc["usage"] = {
                "input_tokens": a.prompt_tokens,
                "input_tokens_details": {"cached_tokens": a.cached_tokens},
                "output_tokens": a.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": len(a.reasoning)},
                "total_tokens": a.prompt_tokens + a.completion_tokens,
            }
        return doc

    def final_status(self, a: Answer) -> str:
        return "incomplete" if a.finish == "length" else "completed"

    def render_body(self, a: Answer) -> bytes:
        return dumps(self.response(a, self.final_status(a)))

    def render_stream(self, a: Answer) -> Iterator[tuple[bool, bytes]]:
        seq = iter(range(10**9))

        def ev(kind: str, **fields: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(seq), **fields}
            return f"event: {kind}\n".encode() + b"data: " + dumps(data) + b"\n\n"

        yield False, ev("response.created", response=self.response(a, "in_progress", False))
        yield False, ev("response.in_progress", response=self.response(a, "in_progress", False))
        for i, item in enumerate(self.output(a)):
            empty = {**item, "status": "in_progress"}
            if item["type"] == "message":
                empty["content"] = []
            elif item["type"] == "reasoning":
                empty["summary"] = []
            elif item["type"] == "function_call":
                empty["arguments"] = ""
            # a function call's name comes with its item: that is its first output
            yield (
                item["type"] == "function_call",
                ev("response.output_item.added", output_index=i, item=empty),
            )
            ids = {"item_id": item["id"], "output_index": i}
            if item["type"] == "reasoning":
                part: dict[str, Any] = {"type": "summary_text", "text": ""}
                yield (
                    False,
                    ev("response.reasoning_summary_part.added", **ids, summary_index=0, part=part),
                )
                for piece in a.reasoning:
                    yield (
                        True,
                        ev(
                            "response.reasoning_summary_text.delta",
                            **ids,
                            summary_index=0,
                            delta=piece,
                        ),
                    )
                yield (
                    False,
                    ev(
                        "response.reasoning_summary_text.done",
                        **ids,
                        summary_index=0,
                        text="".join(a.reasoning),
                    ),
                )
            elif item["type"] == "message":
                part = {"type": "output_text", "text": "", "annotations": []}
                yield False, ev("response.content_part.added", **ids, content_index=0, part=part)
                for piece in a.text:
                    yield (
                        True,
                        ev(
                            "response.output_text.delta",
                            **ids,
                            content_index=0,
                            delta=piece,
                            logprobs=[],
                        ),
                    )
                yield (
                    False,
                    ev(
                        "response.output_text.done",
                        **ids,
                        content_index=0,
                        text="".join(a.text),
                        logprobs=[],
                    ),
                )
                done = {**part, "text": "".join(a.text)}
                yield False, ev("response.content_part.done", **ids, content_index=0, part=done)
            else:
                for piece in a.tool_args:
                    yield True, ev("response.function_call_arguments.delta", **ids, delta=piece)
                yield (
                    False,
                    ev(
                        "response.function_call_arguments.done",
                        **ids,
                        arguments="".join(a.tool_args),
                    ),
                )
            yield False, ev("response.output_item.done", output_index=i, item=item)
        status = self.final_status(a)
        yield False, ev(f"response.{status}", response=self.response(a, status))

    def error_event(self, kind: str, message: str) -> bytes:
        data = {
            "type": "error",
            "code": kind,
            "message": message,
            "param": None,
            "sequence_number": 0,
        }
        return b"event: error\ndata: " + dumps(data) + b"\n\n"
