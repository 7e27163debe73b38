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

import re
from typing import Any

from .base import (
    ERROR,
    META,
    REASONING,
    TERMINAL,
    TEXT,
    TOOL,
    TOOL_ID,
    RequestFields,
    ResponseFields,
    Surface,
    _bool,
    _int,
    _str,
    event_data,
    event_name,
    json_type,
    parse,
    salt_content,
    suffix_key,
    text_len,
    type_pattern,
    typed_ids,
    usage_int,
)
from .canonical import AnswerParts, Msg, canonical_args, content_text, merged, msg_hash
from .responses_render import ResponsesRender

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
_DELTA_VALUE = re.compile(rb'"delta"\s*:\s*"((?:[^"\\]|\\.)*)"')
_INDEX = re.compile(rb'"output_index"\s*:\s*(\d+)')


def _item(i: dict[str, Any]) -> Msg | None:
    """An input or output item in the canonical form (None: not part of the conversation)."""
    kind = i.get("type")
    if kind in (None, "message") and isinstance(i.get("role"), str):
        role = {"developer": "system"}.get(i["role"], i["role"])
        return (role, content_text(i.get("content")), ())
    if kind == "function_call":
        call = (str(i.get("name") or ""), canonical_args(i.get("arguments") or ""))
        return ("assistant", "", (call,))
    if kind == "function_call_output":
        out = i.get("output")
        return ("tool", out.strip() if isinstance(out, str) else content_text(out), ())
    return None


def _answer(output: list[Any]) -> Msg | None:
    turn = merged([m for m in (_item(i) for i in output if isinstance(i, dict)) if m is not None])
    return turn[0] if turn else None


def _is_assistant(i: Any) -> bool:
    return isinstance(i, dict) and (
        i.get("type") == "function_call" or i.get("role") == "assistant"
    )


def _put_answer(items: list[Any], new: Msg) -> None:
    """Replace an assistant turn's text and tool arguments (by position) with new."""
    calls = iter(new[2])
    text_done = False
    for it in items:
        if it.get("type") == "function_call":
            call = next(calls, None)
            if call is not None:
                it.update(name=call[0], arguments=call[1])
        elif not text_done:
            c = it.get("content")
            if isinstance(c, list) and c and isinstance(c[0], dict):
                c[0]["text"] = new[1]
                del c[1:]
            else:
                it["content"] = new[1]
            text_done = True


def _input_chars(inp: Any) -> tuple[int, int]:
    """(characters of text, items) in an `input` value."""
    if isinstance(inp, str):
        return len(inp), 1
    if not isinstance(inp, list):
        return 0, 0
    return sum(text_len([item]) for item in inp if isinstance(item, dict)), len(inp)


class Responses(ResponsesRender, Surface):
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
        return self.scan(event)[0]

    def scan(self, event: bytes) -> tuple[int, bytes | None]:
        kind = event_name(event) or json_type(event, _TYPE)
        f = _DELTAS.get(kind)
        if f is not None:
            m = _DELTA_VALUE.search(event)
            if m is None or not m.group(1):
                return 0, None
            text = m.group(1) if kind == b"response.output_text.delta" else None
            return f, text
        return self._other(kind, event), None

    def _other(self, kind: bytes, event: bytes) -> int:
        if kind == b"response.output_item.added":  # a function call's name comes with its item
            return TOOL | TOOL_ID if b'"function_call"' in event else 0
        f = _FINAL.get(kind)
        if f is None:  # a gateway's chat-style error event (LiteLLM): data: {"error": {...}}
            return ERROR | META if b'"error"' in event else 0
        return f

    def meta(self, obj: Any, acc: ResponseFields) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("type") == "error":
            acc.error = str(obj.get("message") or obj.get("code") or "error event")[:300]
            return
        if isinstance(obj.get("error"), dict) and "response" not in obj:
            err = obj["error"]
            acc.error = str(err.get("message") or err.get("type") or "error event")[:300]
            return
        item = obj.get("item")
        if obj.get("type") == "response.output_item.added" and isinstance(item, dict):
            if isinstance(item.get("call_id"), str):
                acc.tool_call_ids.append(item["call_id"])
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
        output = resp.get("output")
        if isinstance(output, list) and output:  # the whole answer: exact, better than pieces
            acc.answer = _answer(output)
            acc.tool_call_ids = [
                i["call_id"]
                for i in output
                if isinstance(i, dict) and isinstance(i.get("call_id"), str)
            ]
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

    # -- conversations -------------------------------------------------------------------------
    def history(self, obj: dict[str, Any]) -> list[Msg]:
        out: list[Msg] = []
        if isinstance(obj.get("instructions"), str):
            out.append(("system", obj["instructions"].strip(), ()))
        inp = obj.get("input")
        if isinstance(inp, str):
            out.append(("user", inp.strip(), ()))
        elif isinstance(inp, list):
            out += [m for m in (_item(i) for i in inp if isinstance(i, dict)) if m is not None]
        return merged(out)

    def parent(self, obj: dict[str, Any]) -> str | None:
        prev = obj.get("previous_response_id")
        return prev if isinstance(prev, str) and prev else None

    def thread(self, obj: dict[str, Any]) -> str | None:
        conv = obj.get("conversation")
        if isinstance(conv, dict):
            conv = conv.get("id")
        return conv if isinstance(conv, str) and conv else None

    def tool_results(self, obj: dict[str, Any]) -> list[str]:
        return typed_ids(obj.get("input"), "function_call_output", "call_id")

    def referenced_ids(self, obj: dict[str, Any]) -> list[str]:
        out = [p for p in (self.parent(obj), self.thread(obj)) if p]
        inp = obj.get("input")
        for i in inp if isinstance(inp, list) else []:
            if isinstance(i, dict):
                out += [i[k] for k in ("call_id", "id") if isinstance(i.get(k), str)]
        return out

    def piece(self, event: bytes, flags: int, acc: AnswerParts) -> None:
        """Tool-call pieces (the text came with scan())."""
        if flags & TOOL:
            m = _INDEX.search(event)
            index = int(m.group(1)) if m else 0
            if flags & TOOL_ID:
                obj = parse(event_data(event))
                item = obj.get("item") if isinstance(obj, dict) else None
                if isinstance(item, dict):
                    acc.tool(index, item.get("name"))
            else:
                d = _DELTA_VALUE.search(event)
                if d is not None:
                    acc.tool(index, None, d.group(1))

    def replace_answer(self, obj: dict[str, Any], old: str, new: Msg) -> bool:
        inp = obj.get("input")
        if not isinstance(inp, list):
            return False
        done = False
        i = 0
        while i < len(inp):  # an assistant turn: consecutive message and function_call items
            j = i
            while j < len(inp) and _is_assistant(inp[j]):
                j += 1
            if j > i:
                turn = merged([m for m in (_item(x) for x in inp[i:j]) if m is not None])
                if turn and msg_hash(turn[0]) == old:
                    _put_answer(inp[i:j], new)
                    done = True
                i = j
            else:
                i += 1
        return done

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


SURFACE = Responses()
