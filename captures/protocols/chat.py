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
    TOOL_ID,
    Answer,
    RequestFields,
    ResponseFields,
    Surface,
    _bool,
    _int,
    _str,
    dumps,
    event_data,
    parse,
    salt_first_user,
    text_len,
    usage_int,
)
from .canonical import (
    AnswerParts,
    Msg,
    canonical_args,
    content_text,
    json_escaped,
    merged,
    msg_hash,
    string_at,
)

# a key whose value is a non-empty string (escaped quotes inside strings cannot match `"key"`)
_TEXT = re.compile(rb'"(?:content|refusal)"\s*:\s*"(?!")')
_REASONING = re.compile(rb'"(?:reasoning_content|reasoning)"\s*:\s*"(?!")')
_TOOL = re.compile(rb'"(?:arguments|name)"\s*:\s*"(?!")')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_CONTENT = re.compile(rb'"content"\s*:\s*"(?!")')
_CONTENT_VALUE = re.compile(rb'"content"\s*:\s*"((?:[^"\\]|\\.)*)"')
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
    if delta is None:  # LiteLLM's usage chunk keeps one empty choice
        obj["choices"] = [{"index": 0, "delta": {}}] if a.extra_nulls else []
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
        return self.scan(event)[0]

    def scan(self, event: bytes) -> tuple[int, bytes | None]:
        if b"[DONE]" in event[:16]:
            return TERMINAL, None
        # keys before "delta" (id, model, created) cannot be output; inside delta any order
        start = max(event.find(b'"delta"'), 0)
        m = _CONTENT.search(event, start)  # a non-empty string value
        text = string_at(event, m.end()) if m is not None else None
        f = TEXT if text else 0
        if _RARE.search(event, start) is None:
            return f, text or None
        return f | self._full(event), text or None

    def _full(self, event: bytes) -> int:
        """Every flag, for the few events that carry more than text."""
        f = 0
        if _TEXT.search(event) is not None:
            f = TEXT
        if b'"reasoning' in event and _REASONING.search(event) is not None:
            f |= REASONING
        if (b'"tool_calls"' in event or b'"function_call"' in event) and _TOOL.search(event):
            f |= TOOL
            if b'"id"' in event:
                f |= TOOL_ID
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
            if not isinstance(ch, dict):
                continue
            if isinstance(ch.get("finish_reason"), str):
                acc.finish_reason = ch["finish_reason"]
            msg = ch.get("delta") if isinstance(ch.get("delta"), dict) else ch.get("message")
            for tc in (msg or {}).get("tool_calls") or () if isinstance(msg, dict) else ():
                if isinstance(tc, dict) and isinstance(tc.get("id"), str) and tc["id"]:
                    acc.tool_call_ids.append(tc["id"])
        _usage(obj.get("usage"), acc)

    def body(self, obj: Any, acc: ResponseFields) -> None:
        self.meta(obj, acc)
        acc.shape_ok = isinstance(obj, dict) and isinstance(obj.get("choices"), list)
        try:
            msg = obj["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            return
        if isinstance(msg, dict):
            acc.answer = _msg({**msg, "role": "assistant"})

    # -- conversations -------------------------------------------------------------------------
    def history(self, obj: dict[str, Any]) -> list[Msg]:
        msgs = obj.get("messages")
        return (
            merged([_msg(m) for m in msgs if isinstance(m, dict)]) if isinstance(msgs, list) else []
        )

    def tool_results(self, obj: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for m in reversed(obj.get("messages") or []):
            if not isinstance(m, dict) or m.get("role") not in ("tool", "function"):
                break
            if isinstance(m.get("tool_call_id"), str):
                out.append(m["tool_call_id"])
        return out[::-1]

    def referenced_ids(self, obj: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for m in obj.get("messages") or []:
            if not isinstance(m, dict):
                continue
            for tc in m.get("tool_calls") or ():
                if isinstance(tc, dict) and isinstance(tc.get("id"), str):
                    out.append(tc["id"])
            if isinstance(m.get("tool_call_id"), str):
                out.append(m["tool_call_id"])
        return out

    def piece(self, event: bytes, flags: int, acc: AnswerParts) -> None:
        """Tool-call pieces (the text came with scan())."""
        if flags & TOOL:
            obj = parse(event_data(event))
            for ch in (obj or {}).get("choices") or () if isinstance(obj, dict) else ():
                delta = ch.get("delta") if isinstance(ch, dict) else None
                if not isinstance(delta, dict):
                    continue
                calls = list(delta.get("tool_calls") or ())
                if isinstance(delta.get("function_call"), dict):
                    calls.append({"index": 0, "function": delta["function_call"]})
                for tc in calls:
                    fn = tc.get("function") or {} if isinstance(tc, dict) else {}
                    args = fn.get("arguments")
                    acc.tool(
                        int(tc.get("index") or 0),
                        fn.get("name"),
                        json_escaped(args) if isinstance(args, str) and args else None,
                    )

    def replace_answer(self, obj: dict[str, Any], old: str, new: Msg) -> bool:
        done = False
        for m in obj.get("messages") or []:
            if isinstance(m, dict) and m.get("role") == "assistant" and msg_hash(_msg(m)) == old:
                m["content"] = new[1] if new[1] or not m.get("tool_calls") else None
                calls = m.get("tool_calls")
                if isinstance(calls, list) and len(calls) == len(new[2]):
                    for tc, (name, args) in zip(calls, new[2], strict=True):
                        if isinstance(tc, dict) and isinstance(tc.get("function"), dict):
                            tc["function"].update(name=name, arguments=args)
                done = True
        return done

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


ROLES = {"developer": "system", "function": "tool"}


def _msg(m: dict[str, Any]) -> Msg:
    """A chat message in the canonical form."""
    role = str(m.get("role") or "user")
    calls = [tc.get("function") for tc in m.get("tool_calls") or () if isinstance(tc, dict)]
    if isinstance(m.get("function_call"), dict):
        calls.append(m["function_call"])
    tools = tuple(
        (str(fn.get("name") or ""), canonical_args(fn.get("arguments") or ""))
        for fn in calls
        if isinstance(fn, dict)
    )
    return (ROLES.get(role, role), content_text(m.get("content")), tools)


SURFACE = Chat()
