"""OpenAI legacy completions: `POST .../completions` with a `prompt`, streamed as `data: {...}`
events whose `choices[].text` is the output, and a final `data: [DONE]`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .base import (
    ERROR,
    META,
    TERMINAL,
    TEXT,
    Answer,
    RequestFields,
    ResponseFields,
    Surface,
    _bool,
    _int,
    _str,
    dumps,
    salt_content,
)
from .canonical import AnswerParts, Msg, content_text
from .chat import FINISH
from .chat import SURFACE as CHAT

_TEXT = re.compile(rb'"text"\s*:\s*"(?!")')
_TEXT_VALUE = re.compile(rb'"text"\s*:\s*"((?:[^"\\]|\\.)*)"')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')


class Completions(Surface):
    name = "completions"
    path_suffixes = ("/completions",)
    streams = True

    def matches_path(self, path: str) -> bool:
        return super().matches_path(path) and not CHAT.matches_path(path)

    def matches_body(self, obj: Any) -> bool:
        return isinstance(obj, dict) and "prompt" in obj and "model" in obj

    def request(self, obj: dict[str, Any]) -> RequestFields:
        out = RequestFields(
            model=_str(obj.get("model")),
            stream=_bool(obj.get("stream")),
            max_tokens=_int(obj.get("max_tokens")),
            user=_str(obj.get("user")),
        )
        p = obj.get("prompt")
        if isinstance(p, str):
            out.prompt_chars = len(p)
        elif isinstance(p, list):
            out.prompt_chars = sum(len(x) for x in p if isinstance(x, str))
        return out

    def classify(self, event: bytes) -> int:
        return self.scan(event)[0]

    def scan(self, event: bytes) -> tuple[int, bytes | None]:
        if b"[DONE]" in event[:16]:
            return TERMINAL, None
        m = _TEXT_VALUE.search(event)
        text = m.group(1) if m is not None and m.group(1) else None
        f = TEXT if text else 0
        if (b'"finish_reason"' in event and _FINISH.search(event) is not None) or (
            b'"usage"' in event and _USAGE.search(event) is not None
        ):
            f |= META
        if b'"error"' in event:
            f |= ERROR
        return f, text

    def meta(self, obj: Any, acc: ResponseFields) -> None:
        CHAT.meta(obj, acc)  # the same choices[].finish_reason, usage and error shapes

    def body(self, obj: Any, acc: ResponseFields) -> None:
        self.meta(obj, acc)
        acc.shape_ok = isinstance(obj, dict) and isinstance(obj.get("choices"), list)
        text = self.output_text(obj)
        if text is not None:
            acc.answer = ("assistant", text.strip(), ())

    def output_text(self, obj: Any) -> str | None:
        try:
            text = obj["choices"][0].get("text")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return text if isinstance(text, str) else None

    def salt(self, obj: dict[str, Any], salt: str) -> bool:
        return salt_content(obj, "prompt", salt)

    def history(self, obj: dict[str, Any]) -> list[Msg]:
        return [("user", content_text(obj.get("prompt")), ())]

    def piece(self, event: bytes, flags: int, acc: AnswerParts) -> None:
        """Nothing but text, which came with scan()."""

    def _obj(self, a: Answer, text: str, finish: str | None) -> dict[str, Any]:
        return {
            "id": a.rid,
            "object": "text_completion",
            "created": a.created,
            "model": a.model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        }

    def usage(self, a: Answer) -> dict[str, int]:
        n = a.completion_tokens
        return {
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": a.prompt_tokens + n,
        }

    def render_body(self, a: Answer) -> bytes:
        return dumps({**self._obj(a, "".join(a.text), FINISH[a.finish]), "usage": self.usage(a)})

    def render_stream(self, a: Answer) -> Iterator[tuple[bool, bytes]]:
        for piece in a.text:
            yield True, b"data: " + dumps(self._obj(a, piece, None)) + b"\n\n"
        yield False, b"data: " + dumps(self._obj(a, "", FINISH[a.finish])) + b"\n\n"
        if a.include_usage:
            tail = {**self._obj(a, "", None), "choices": [], "usage": self.usage(a)}
            yield False, b"data: " + dumps(tail) + b"\n\n"
        yield False, b"data: [DONE]\n\n"


SURFACE = Completions()
