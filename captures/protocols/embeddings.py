"""OpenAI embeddings: `POST .../embeddings` with `input` (a string, strings, or token arrays);
never streamed. The answer is `data` (one vector per input) and `usage.prompt_tokens`."""

from __future__ import annotations

from typing import Any

from .base import (
    Answer,
    RequestFields,
    ResponseFields,
    Surface,
    _int,
    _str,
    dumps,
    salt_content,
)


class Embeddings(Surface):
    name = "embeddings"
    path_suffixes = ("/embeddings",)

    def request(self, obj: dict[str, Any]) -> RequestFields:
        inp = obj.get("input")
        if isinstance(inp, str):
            chars, count = len(inp), 1
        elif isinstance(inp, list):
            chars = sum(len(x) for x in inp if isinstance(x, str))
            count = len(inp)
        else:
            chars, count = 0, 0
        return RequestFields(
            model=_str(obj.get("model")),
            stream=False,
            message_count=count or None,
            prompt_chars=chars,
            user=_str(obj.get("user")),
        )

    def body(self, obj: Any, acc: ResponseFields) -> None:
        if not isinstance(obj, dict):
            acc.shape_ok = False
            return
        if isinstance(obj.get("model"), str):
            acc.model = obj["model"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            acc.prompt_tokens = _int(usage.get("prompt_tokens"))
            acc.completion_tokens = 0
        if isinstance(obj.get("error"), dict):
            acc.error = str(obj["error"].get("message") or "error")[:300]
        acc.shape_ok = isinstance(obj.get("data"), list)

    def salt(self, obj: dict[str, Any], salt: str) -> bool:
        return salt_content(obj, "input", salt)

    def render_body(self, a: Answer) -> bytes:
        """One 8-dimensional vector per input (a.text holds one piece per input)."""
        vectors = [
            {"object": "embedding", "index": i, "embedding": [((i + k) % 7) / 7 for k in range(8)]}
            for i in range(max(len(a.text), 1))
        ]
        return dumps(
            {
                "object": "list",
                "data": vectors,
                "model": a.model,
                "usage": {"prompt_tokens": a.prompt_tokens, "total_tokens": a.prompt_tokens},
            }
        )


SURFACE = Embeddings()
