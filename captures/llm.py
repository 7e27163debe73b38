"""Parse OpenAI-style fields from request and response bodies (null when not such a body)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_DECODED = 64 << 20  # never inflate a body beyond this for parsing
SSE_TAIL = 8192  # bytes at the end of an SSE body that hold the finish and usage events


@dataclass
class RequestFields:
    model: str | None = None
    stream: bool | None = None
    max_tokens: int | None = None
    message_count: int | None = None
    prompt_chars: int | None = None
    user: str | None = None


@dataclass
class ResponseFields:
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None


def decode_body(body: bytes | None, content_encoding: str | None) -> bytes | None:
    """Undo gzip/deflate (bounded); None if the encoding is unknown or the data is bad."""
    if not body:
        return body
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif enc == "deflate":
        d = zlib.decompressobj()
    else:
        return None  # br, zstd, ...: not parsed (the body is still stored as sent)
    try:
        return d.decompress(body, MAX_DECODED)
    except zlib.error:
        return None


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v if -(2**31) <= v < 2**31 else None


def _text_len(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
        n = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                n += len(part["text"])
        return n
    return 0


def parse_request(body: bytes | None, content_encoding: str | None = None) -> RequestFields:
    raw = decode_body(body, content_encoding)
    if not raw or raw[:1] not in (b"{", b" ", b"\n", b"\r", b"\t"):
        return RequestFields()
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return RequestFields()
    return request_fields(obj)


def request_fields(obj: Any) -> RequestFields:
    """The LLM fields of an already parsed request body."""
    out = RequestFields()
    if not isinstance(obj, dict):
        return out
    if isinstance(obj.get("model"), str):
        out.model = obj["model"]
    if isinstance(obj.get("stream"), bool):
        out.stream = obj["stream"]
    out.max_tokens = _int(obj.get("max_tokens"))
    if out.max_tokens is None:
        out.max_tokens = _int(obj.get("max_completion_tokens"))
    if isinstance(obj.get("user"), str):
        out.user = obj["user"]
    msgs = obj.get("messages")
    if isinstance(msgs, list):
        out.message_count = len(msgs)
        out.prompt_chars = sum(_text_len(m.get("content")) for m in msgs if isinstance(m, dict))
    elif "prompt" in obj:
        p = obj["prompt"]
        if isinstance(p, str):
            out.prompt_chars = len(p)
        elif isinstance(p, list):
            out.prompt_chars = sum(len(x) for x in p if isinstance(x, str))
    return out


def iter_sse_data(text: str) -> Iterator[str]:
    """The `data:` payloads of an SSE body (events joined per the spec; comments skipped)."""
    data: list[str] = []
    for line in text.splitlines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _apply_obj(out: ResponseFields, obj: dict[str, Any]) -> None:
    if isinstance(obj.get("model"), str):
        out.model = obj["model"]
    choices = obj.get("choices")
    if isinstance(choices, list):
        for ch in choices:
            if isinstance(ch, dict) and isinstance(ch.get("finish_reason"), str):
                out.finish_reason = ch["finish_reason"]
    usage = obj.get("usage")
    if isinstance(usage, dict):
        out.prompt_tokens = _int(usage.get("prompt_tokens"))
        out.completion_tokens = _int(usage.get("completion_tokens"))


def parse_response(
    body: bytes | None, content_type: str | None = None, content_encoding: str | None = None
) -> ResponseFields:
    out = ResponseFields()
    raw = decode_body(body, content_encoding)
    if not raw:
        return out
    ctype = (content_type or "").lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return out
    if "text/event-stream" in ctype or text.startswith("data:"):
        # finish_reason and usage come in the last events: parse only the tail of long streams.
        if len(text) > SSE_TAIL:
            cut = text.find("\n\n", len(text) - SSE_TAIL)
            text = text[cut + 2 :] if cut >= 0 else text[-SSE_TAIL:]
        for data in iter_sse_data(text):
            if data.strip() == "[DONE]":
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            if isinstance(obj, dict):
                _apply_obj(out, obj)
        return out
    if "json" not in ctype and not text.lstrip().startswith("{"):
        return out
    try:
        obj = json.loads(text)
    except ValueError:
        return out
    if isinstance(obj, dict):
        _apply_obj(out, obj)
    return out


# -- builders: OpenAI-shaped bodies (the mock gateway and the test factories share them) --------
def chat_chunk(
    rid: str,
    model: str,
    created: int,
    *,
    content: str | None = None,
    role: str | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    empty_choices: bool = False,
) -> bytes:
    """One SSE event of a streamed chat completion (`data: {...}\\n\\n`)."""
    obj: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    if empty_choices:
        obj["choices"] = []
    else:
        delta: dict[str, Any] = {}
        if role is not None:
            delta["role"] = role
        if content is not None:
            delta["content"] = content
        obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def chat_completion(
    rid: str,
    model: str,
    created: int,
    text: str,
    *,
    finish_reason: str = "stop",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> bytes:
    obj = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return json.dumps(obj, separators=(",", ":")).encode()


def approx_tokens(chars: int) -> int:
    """The stated approximation used where no tokenizer is at hand: about 4 characters a token."""
    return max(1, (chars + 3) // 4) if chars > 0 else 0
