"""OpenAI Responses: `POST .../responses` with `input` (a string or a list of items),
`instructions`, `previous_response_id`; streamed as typed events (`event: TYPE`, and `"type"` in
the data), each with a `sequence_number`.

Output events: `response.output_text.delta` and `response.refusal.delta` (text),
`response.reasoning_summary_text.delta` and `response.reasoning_text.delta` (reasoning),
`response.function_call_arguments.delta`, `response.custom_tool_call_input.delta` and
`response.mcp_call_arguments.delta` (tool). The stream ends with `response.completed`,
`response.incomplete` (with `incomplete_details.reason`) or `response.failed` (with `error`),
each carrying the whole response: its `status`, `usage.input_tokens`, `output_tokens`,
`input_tokens_details.cached_tokens` and `output_tokens_details.reasoning_tokens`. An `error`
event reports a failure mid-stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .base import (
    ERROR,
    META,
    REASONING,
    TERMINAL,
    TEXT,
    TOOL,
    Answer,
    RequestFields,
    ResponseFields,
    Surface,
    _bool,
    _int,
    _str,
    dumps,
    event_name,
    json_type,
    salt_content,
    suffix_key,
    text_len,
    type_pattern,
    usage_int,
)

_DELTAS = {
    b"response.output_text.delta": TEXT,
    b"response.refusal.delta": TEXT,
    b"response.reasoning_summary_text.delta": REASONING,
    b"response.reasoning_text.delta": REASONING,
    b"response.function_call_arguments.delta": TOOL,
    b"response.custom_tool_call_input.delta": TOOL,
    b"response.mcp_call_arguments.delta": TOOL,
}
_FINAL = {
    b"response.completed": TERMINAL | META,
    b"response.incomplete": TERMINAL | META,
    b"response.failed": TERMINAL | META | ERROR,
    b"error": ERROR | META,
    b"response.created": META,  # the response id and model
}


_TYPE = type_pattern(r"response\.[a-z_.]+|error")


def _input_chars(inp: Any) -> tuple[int, int]:
    """(characters of text, items) in an `input` value."""
    if isinstance(inp, str):
        return len(inp), 1
    if not isinstance(inp, list):
        return 0, 0
    return sum(text_len([item]) for item in inp if isinstance(item, dict)), len(inp)


class Responses(Surface):
    name = "responses"
    path_suffixes = ("/responses",)
    streams = True

    def matches_body(self, obj: Any) -> bool:
        return (
            isinstance(obj, dict)
            and "input" in obj
            and any(k in obj for k in ("instructions", "previous_response_id", "max_output_tokens"))
        )

    def request(self, obj: dict[str, Any]) -> RequestFields:
        chars, items = _input_chars(obj.get("input"))
        if isinstance(obj.get("instructions"), str):
            chars += len(obj["instructions"])
        tools = obj.get("tools")
        user = _str(obj.get("user")) or _str(obj.get("safety_identifier"))
        return RequestFields(
            model=_str(obj.get("model")),
            stream=_bool(obj.get("stream")),
            max_tokens=_int(obj.get("max_output_tokens")),
            message_count=items or None,
            prompt_chars=chars,
            user=user,
            tools=len(tools) if isinstance(tools, list) else None,
        )

    def classify(self, event: bytes) -> int:
        kind = event_name(event) or json_type(event, _TYPE)
        f = _DELTAS.get(kind)
        if f is not None:
            return f if b'"delta":""' not in event and b'"delta": ""' not in event else 0
        if kind == b"response.output_item.added":  # a function call's name comes with its item
            return TOOL if b'"function_call"' in event else 0
        return _FINAL.get(kind, 0)

    def meta(self, obj: Any, acc: ResponseFields) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("type") == "error":
            acc.error = str(obj.get("message") or obj.get("code") or "error event")[:300]
            return
        resp: dict[str, Any] = obj["response"] if isinstance(obj.get("response"), dict) else obj
        self._response(resp, acc)

    def _response(self, resp: dict[str, Any], acc: ResponseFields) -> None:
        if isinstance(resp.get("id"), str):
            acc.response_id = resp["id"]
        if isinstance(resp.get("model"), str):
            acc.model = resp["model"]
        status = resp.get("status")
        if status in ("completed", "incomplete", "failed", "cancelled"):
            reason = (resp.get("incomplete_details") or {}).get("reason")
            acc.finish_reason = reason if status == "incomplete" and reason else status
        if status == "failed":
            err = resp.get("error") or {}
            acc.error = str(err.get("message") or err.get("code") or "response failed")[:300]
        usage = resp.get("usage")
        if isinstance(usage, dict):
            acc.prompt_tokens = _int(usage.get("input_tokens"))
            acc.completion_tokens = _int(usage.get("output_tokens"))
            acc.cached_tokens = usage_int(usage, "input_tokens_details", "cached_tokens")
            acc.cache_write_tokens = usage_int(usage, "input_tokens_details", "cache_write_tokens")
            acc.reasoning_tokens = usage_int(usage, "output_tokens_details", "reasoning_tokens")

    def body(self, obj: Any, acc: ResponseFields) -> None:
        if isinstance(obj, dict):
            self._response(obj, acc)
        acc.shape_ok = isinstance(obj, dict) and obj.get("object") == "response"

    def output_text(self, obj: Any) -> str | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("output"), list):
            return None
        parts = [
            c.get("text", "")
            for item in obj["output"]
            if isinstance(item, dict) and item.get("type") == "message"
            for c in item.get("content") or ()
            if isinstance(c, dict) and c.get("type") == "output_text"
        ]
        return "".join(p for p in parts if isinstance(p, str)) if parts else None

    def salt(self, obj: dict[str, Any], salt: str) -> bool:
        inp = obj.get("input")
        if isinstance(inp, str):
            return salt_content(obj, "input", salt)
        if isinstance(inp, list):
            for item in inp:
                if isinstance(item, dict) and item.get("role") == "user":
                    return salt_content(item, "content", salt)
        return False

    def copy_user(self, obj: dict[str, Any], k: int) -> bool:
        return suffix_key(obj, "user", k) | suffix_key(obj, "safety_identifier", k)

    # -- rendering ---------------------------------------------------------------------------------
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


SURFACE = Responses()
