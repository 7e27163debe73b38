"""OpenAI chat completions: `POST .../chat/completions`, streamed as `data: {chunk}` events and a
final `data: [DONE]`.

Output in a chunk's `choices[].delta`: `content` and `refusal` (visible text),
`reasoning_content` or `reasoning` (the reasoning field of DeepSeek, vLLM, OpenRouter and
LiteLLM), `tool_calls[].function.name/arguments` and the legacy `function_call` (tool output).
Usage arrives in a last chunk with empty choices (`stream_options.include_usage`), with
`prompt_tokens_details.cached_tokens` and `completion_tokens_details.reasoning_tokens`.
A mid-stream error, as OpenAI-compatible servers send it, is a `data: {"error": {...}}` event.
"""

from __future__ import annotations

import re
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
    salt_first_user,
    text_len,
    usage_int,
)

# a key whose value is a non-empty string (escaped quotes inside strings cannot match `"key"`)
_TEXT = re.compile(rb'"(?:content|refusal)"\s*:\s*"(?!")')
_REASONING = re.compile(rb'"(?:reasoning_content|reasoning)"\s*:\s*"(?!")')
_TOOL = re.compile(rb'"(?:arguments|name)"\s*:\s*"(?!")')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_CONTENT = re.compile(rb'"content"\s*:\s*"(?!")')
# anything but plain text: one pass over the event (a shared-prefix alternation is cheap), so
# the common token event costs two regex scans and no more
_RARE = re.compile(
    rb'"(?:r(?:easoning|efusal)|tool_calls|function_call|finish_reason"\s*:\s*"|usage"\s*:\s*\{'
    rb'|error")'
)


def _usage(usage: Any, acc: ResponseFields) -> None:
    if not isinstance(usage, dict):
        return
    acc.prompt_tokens = _int(usage.get("prompt_tokens"))
    acc.completion_tokens = _int(usage.get("completion_tokens"))
    acc.cached_tokens = usage_int(usage, "prompt_tokens_details", "cached_tokens")
    acc.reasoning_tokens = usage_int(usage, "completion_tokens_details", "reasoning_tokens")


def chunk(
    a: Answer,
    delta: dict[str, Any] | None = None,
    *,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    """One `data: {chat.completion.chunk}` event."""
    obj: dict[str, Any] = {
        "id": a.rid,
        "object": "chat.completion.chunk",
        "created": a.created,
        "model": a.model,
    }
    if delta is None:
        obj["choices"] = []
    else:
        d = dict(delta)
        if a.extra_nulls:  # LiteLLM's chunks carry every field, null where unused
            for k in ("content", "role", "function_call", "tool_calls", "refusal"):
                d.setdefault(k, None)
        obj["choices"] = [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}]
    if a.extra_nulls:
        obj["system_fingerprint"] = None
        obj.setdefault("usage", None)
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls"}


class Chat(Surface):
    name = "chat"
    path_suffixes = ("/chat/completions",)
    streams = True

    def matches_body(self, obj: Any) -> bool:
        return isinstance(obj, dict) and isinstance(obj.get("messages"), list) and "model" in obj

    def request(self, obj: dict[str, Any]) -> RequestFields:
        msgs = obj.get("messages")
        tools = obj.get("tools") or obj.get("functions")
        out = RequestFields(
            model=_str(obj.get("model")),
            stream=_bool(obj.get("stream")),
            max_tokens=_int(obj.get("max_tokens")),
            user=_str(obj.get("user")),
            tools=len(tools) if isinstance(tools, list) else None,
        )
        if out.max_tokens is None:
            out.max_tokens = _int(obj.get("max_completion_tokens"))
        if isinstance(msgs, list):
            out.message_count = len(msgs)
            out.prompt_chars = sum(text_len(m.get("content")) for m in msgs if isinstance(m, dict))
        return out

    def classify(self, event: bytes) -> int:
        if b"[DONE]" in event[:16]:
            return TERMINAL
        # keys before "delta" (id, model, created) cannot be output; inside delta any order
        start = max(event.find(b'"delta"'), 0)
        f = TEXT if _CONTENT.search(event, start) is not None else 0
        if _RARE.search(event, start) is None:
            return f
        return f | self._full(event)

    def _full(self, event: bytes) -> int:
        """Every flag, for the few events that carry more than text."""
        f = 0
        if _TEXT.search(event) is not None:
            f = TEXT
        if b'"reasoning' in event and _REASONING.search(event) is not None:
            f |= REASONING
        if (b'"tool_calls"' in event or b'"function_call"' in event) and _TOOL.search(event):
            f |= TOOL
        if (b'"finish_reason"' in event and _FINISH.search(event) is not None) or (
            b'"usage"' in event and _USAGE.search(event) is not None
        ):
            f |= META
        if b'"error"' in event:
            f |= ERROR  # confirmed by the scanner: a top-level "error" key
        return f

    def meta(self, obj: Any, acc: ResponseFields) -> None:
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("error"), dict | str):
            err = obj["error"]
            acc.error = str(err.get("message") if isinstance(err, dict) else err)[:300]
        if isinstance(obj.get("model"), str):
            acc.model = obj["model"]
        if isinstance(obj.get("id"), str):
            acc.response_id = obj["id"]
        for ch in obj.get("choices") or ():
            if isinstance(ch, dict) and isinstance(ch.get("finish_reason"), str):
                acc.finish_reason = ch["finish_reason"]
        _usage(obj.get("usage"), acc)

    def body(self, obj: Any, acc: ResponseFields) -> None:
        self.meta(obj, acc)
        acc.shape_ok = isinstance(obj, dict) and isinstance(obj.get("choices"), list)

    def output_text(self, obj: Any) -> str | None:
        try:
            content = obj["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return content if isinstance(content, str) else None

    def salt(self, obj: dict[str, Any], salt: str) -> bool:
        return salt_first_user(obj.get("messages"), salt)

    # -- rendering ---------------------------------------------------------------------------------
    def message(self, a: Answer) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(a.text) or None}
        if a.reasoning:
            msg["reasoning_content"] = "".join(a.reasoning)
        if a.tool_name:
            msg["tool_calls"] = [
                {
                    "id": a.tool_call_id,
                    "type": "function",
                    "function": {"name": a.tool_name, "arguments": "".join(a.tool_args)},
                }
            ]
        return msg

    def usage(self, a: Answer) -> dict[str, Any]:
        u: dict[str, Any] = {
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
        }
        if a.cached_tokens:
            u["prompt_tokens_details"] = {"cached_tokens": a.cached_tokens}
        if a.reasoning:
            u["completion_tokens_details"] = {"reasoning_tokens": len(a.reasoning)}
        return u

    def render_body(self, a: Answer) -> bytes:
        return dumps(
            {
                "id": a.rid,
                "object": "chat.completion",
                "created": a.created,
                "model": a.model,
                "choices": [
                    {"index": 0, "message": self.message(a), "finish_reason": FINISH[a.finish]}
                ],
                "usage": self.usage(a),
            }
        )

    def render_stream(self, a: Answer) -> Iterator[tuple[bool, bytes]]:
        yield False, chunk(a, {"role": "assistant", "content": ""})
        for piece in a.reasoning:
            yield True, chunk(a, {"reasoning_content": piece})
        for piece in a.text:
            yield True, chunk(a, {"content": piece})
        if a.tool_name:
            head = {"index": 0, "id": a.tool_call_id, "type": "function"}
            yield (
                True,
                chunk(  # the name is output too: it comes when the model makes it
                    a,
                    {"tool_calls": [{**head, "function": {"name": a.tool_name, "arguments": ""}}]},
                ),
            )
            for piece in a.tool_args:
                yield (
                    True,
                    chunk(a, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                )
        yield False, chunk(a, {}, finish=FINISH[a.finish])
        if a.include_usage:
            yield False, chunk(a, None, usage=self.usage(a))
        yield False, DONE


SURFACE = Chat()
