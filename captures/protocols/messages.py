"""Anthropic Messages: `POST .../v1/messages` with `system`, `messages` (content a string or
blocks: text, image, tool_use, tool_result) and a required `max_tokens`; streamed as named
events (`event: TYPE`).

The sequence: `message_start` (the message with `usage.input_tokens`,
`cache_creation_input_tokens`, `cache_read_input_tokens`), per content block
`content_block_start` / `content_block_delta` / `content_block_stop`, then `message_delta`
(`delta.stop_reason`, cumulative `usage.output_tokens`) and `message_stop`; `ping` events may
come at any time and an `error` event (`{"type": "error", "error": {"type", "message"}}`) ends a
failed stream. Deltas: `text_delta` (text), `thinking_delta` (reasoning), `input_json_delta`
(tool arguments); `signature_delta` and `citations_delta` are not output. A `tool_use` block's
start carries the tool's name: that is tool output too.

Prompt tokens are reported as input + cache read + cache creation (Anthropic counts the three
apart; the total is what the other APIs call prompt tokens).
"""

from __future__ import annotations

import json
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
    salt_first_user,
    text_len,
    type_pattern,
    typed_ids,
)
from .canonical import AnswerParts, Msg, canonical_args, content_text, merged, msg_hash
from .messages_render import MessagesRender

# delta type -> (its output key holding a non-empty string, flag); found in either key order
_DELTAS = (
    (b'"text_delta"', re.compile(rb'"text"\s*:\s*"(?!")'), TEXT),
    (b'"thinking_delta"', re.compile(rb'"thinking"\s*:\s*"(?!")'), REASONING),
    (b'"input_json_delta"', re.compile(rb'"partial_json"\s*:\s*"(?!")'), TOOL),
)
_EVENTS = {
    b"message_start": META,
    b"message_delta": META,
    b"message_stop": TERMINAL,
    b"error": ERROR | META,
}
_BLOCK_INDEX = re.compile(rb'"index"\s*:\s*(\d+)')
_TEXT_VALUE = re.compile(rb'"text"\s*:\s*"((?:[^"\\]|\\.)*)"')
_JSON_VALUE = re.compile(rb'"partial_json"\s*:\s*"((?:[^"\\]|\\.)*)"')
_TYPE = type_pattern(
    "message_start|message_delta|message_stop|content_block_start|content_block_delta"
    "|content_block_stop|ping|error"
)


class Messages(MessagesRender, Surface):
    name = "messages"
    path_suffixes = ("/messages",)
    streams = True

    def matches_path(self, path: str) -> bool:
        p = path.split("?", 1)[0].rstrip("/")
        return p.endswith("/messages") and not p.endswith("/threads/messages")

    def request(self, obj: dict[str, Any]) -> RequestFields:
        msgs = obj.get("messages")
        chars = (
            text_len(obj.get("system"))
            if not isinstance(obj.get("system"), str)
            else len(obj["system"])
        )
        count = None
        if isinstance(msgs, list):
            count = len(msgs)
            chars += sum(text_len(m.get("content")) for m in msgs if isinstance(m, dict))
        meta = obj.get("metadata")
        tools = obj.get("tools")
        return RequestFields(
            model=_str(obj.get("model")),
            stream=_bool(obj.get("stream")),
            max_tokens=_int(obj.get("max_tokens")),
            message_count=count,
            prompt_chars=chars,
            user=_str(meta.get("user_id")) if isinstance(meta, dict) else None,
            tools=len(tools) if isinstance(tools, list) else None,
        )

    def classify(self, event: bytes) -> int:
        return self.scan(event)[0]

    def scan(self, event: bytes) -> tuple[int, bytes | None]:
        kind = event_name(event) or json_type(event, _TYPE)
        if kind == b"content_block_delta":
            if b'"text_delta"' in event:
                m = _TEXT_VALUE.search(event)
                return (TEXT, m.group(1)) if m is not None and m.group(1) else (0, None)
            for marker, value, flag in _DELTAS:
                if marker in event:
                    return (flag if value.search(event) is not None else 0), None
            return 0, None
        return self._other(kind, event), None

    def _other(self, kind: bytes, event: bytes) -> int:
        if kind == b"content_block_start":
            tool = b'"tool_use"' in event or b'"server_tool_use"' in event
            return TOOL | TOOL_ID if tool else 0
        return _EVENTS.get(kind, 0)

    def meta(self, obj: Any, acc: ResponseFields) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "error":
            err = obj.get("error") or {}
            acc.error = str(err.get("message") or err.get("type") or "error event")[:300]
        elif kind == "message_start" and isinstance(obj.get("message"), dict):
            self._message(obj["message"], acc)
        elif kind == "message_delta":
            delta = obj.get("delta") or {}
            if isinstance(delta.get("stop_reason"), str):
                acc.finish_reason = delta["stop_reason"]
            self._usage(obj.get("usage"), acc)
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            if isinstance(block, dict) and isinstance(block.get("id"), str):
                acc.tool_call_ids.append(block["id"])

    def _usage(self, usage: Any, acc: ResponseFields) -> None:
        if not isinstance(usage, dict):
            return
        out = _int(usage.get("output_tokens"))
        if out is not None:
            acc.completion_tokens = out
        read = _int(usage.get("cache_read_input_tokens"))
        write = _int(usage.get("cache_creation_input_tokens"))
        if read is not None:
            acc.cached_tokens = read
        if write is not None:
            acc.cache_write_tokens = write
        inp = _int(usage.get("input_tokens"))
        if inp is not None:
            acc.prompt_tokens = inp + (acc.cached_tokens or 0) + (acc.cache_write_tokens or 0)
        thinking = _int((usage.get("output_tokens_details") or {}).get("thinking_tokens"))
        if thinking is not None:
            acc.reasoning_tokens = thinking

    def _message(self, msg: dict[str, Any], acc: ResponseFields) -> None:
        if isinstance(msg.get("id"), str):
            acc.response_id = msg["id"]
        if isinstance(msg.get("model"), str):
            acc.model = msg["model"]
        if isinstance(msg.get("stop_reason"), str):
            acc.finish_reason = msg["stop_reason"]
        self._usage(msg.get("usage"), acc)

    def body(self, obj: Any, acc: ResponseFields) -> None:
        if not isinstance(obj, dict):
            acc.shape_ok = False
            return
        if obj.get("type") == "error":
            self.meta(obj, acc)
        else:
            self._message(obj, acc)
        acc.shape_ok = obj.get("type") == "message" and isinstance(obj.get("content"), list)
        if acc.shape_ok:
            acc.answer = _msg({"role": "assistant", "content": obj["content"]})[0]
            acc.tool_call_ids = [
                b["id"]
                for b in obj["content"]
                if isinstance(b, dict)
                and b.get("type") == "tool_use"
                and isinstance(b.get("id"), str)
            ]

    # -- conversations -------------------------------------------------------------------------
    def history(self, obj: dict[str, Any]) -> list[Msg]:
        out: list[Msg] = []
        system = obj.get("system")
        if system:
            out.append(("system", content_text(system), ()))
        for m in obj.get("messages") or []:
            if isinstance(m, dict):
                out += _msg(m)
        return merged(out)

    def tool_results(self, obj: dict[str, Any]) -> list[str]:
        msgs = obj.get("messages") or []
        last = msgs[-1] if msgs else None
        content = last.get("content") if isinstance(last, dict) else None
        return typed_ids(content, "tool_result", "tool_use_id")

    def referenced_ids(self, obj: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for m in obj.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            for b in content if isinstance(content, list) else []:
                if isinstance(b, dict):
                    out += [b[k] for k in ("id", "tool_use_id") if isinstance(b.get(k), str)]
        return out

    def piece(self, event: bytes, flags: int, acc: AnswerParts) -> None:
        """Tool-call pieces (the text came with scan())."""
        m = _BLOCK_INDEX.search(event)
        index = int(m.group(1)) if m else 0
        if flags & TOOL_ID:
            obj = parse(event_data(event))
            block = obj.get("content_block") if isinstance(obj, dict) else None
            if isinstance(block, dict):
                acc.tool(index, block.get("name"))
        elif flags & TOOL:
            j = _JSON_VALUE.search(event)
            if j is not None:
                acc.tool(index, None, j.group(1))

    def replace_answer(self, obj: dict[str, Any], old: str, new: Msg) -> bool:
        done = False
        for m in obj.get("messages") or []:
            if not isinstance(m, dict) or m.get("role") != "assistant":
                continue
            turn = merged(_msg(m))
            if not turn or msg_hash(turn[0]) != old:
                continue
            content = m.get("content")
            if isinstance(content, str) or not isinstance(content, list):
                m["content"] = new[1]
            else:
                calls = iter(new[2])
                text_done = False
                for b in content:
                    if not isinstance(b, dict):
                        continue
                    if b.get("type") == "text" and not text_done:
                        b["text"], text_done = new[1], True
                    elif b.get("type") == "tool_use" and (call := next(calls, None)) is not None:
                        b["name"], b["input"] = call[0], json.loads(call[1] or "{}")
            done = True
        return done

    def output_text(self, obj: Any) -> str | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("content"), list):
            return None
        texts = [b.get("text") for b in obj["content"] if isinstance(b, dict)]
        return "".join(t for t in texts if isinstance(t, str))

    def salt(self, obj: dict[str, Any], salt: str) -> bool:
        return salt_first_user(obj.get("messages"), salt)

    def copy_user(self, obj: dict[str, Any], k: int) -> bool:
        meta = obj.get("metadata")
        if k and isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
            meta["user_id"] = f"{meta['user_id']}~c{k}"
            return True
        return False


def _msg(m: dict[str, Any]) -> list[Msg]:
    """A Messages message in the canonical form: tool results become tool messages."""
    role = str(m.get("role") or "user")
    content = m.get("content")
    if not isinstance(content, list):
        return [(role, content_text(content), ())]
    out: list[Msg] = []
    texts: list[str] = []
    tools: list[tuple[str, str]] = []
    for b in content:
        if not isinstance(b, dict):
            continue
        kind = b.get("type")
        if kind == "text" and isinstance(b.get("text"), str):
            texts.append(b["text"])
        elif kind in ("tool_use", "server_tool_use"):
            tools.append((str(b.get("name") or ""), canonical_args(b.get("input") or {})))
        elif kind == "tool_result":
            out.append(("tool", content_text(b.get("content")), ()))
    if texts or tools or not out:
        out.append((role, "".join(texts).strip(), tuple(tools)))
    return out


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

SURFACE = Messages()
