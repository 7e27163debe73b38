"""The one form a conversation takes whatever its API: messages as (role, text, tool calls by
name with canonical JSON arguments), without the server's ids; and an answer rebuilt from a
stream's raw string pieces. The conversation tracker, the replay's live history and diff compare
in this form, so an SDK's re-serialisation, fresh ids and timestamps do not count."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# One message of a conversation, in no API's shape: (role, text, tool calls as (name, arguments
# as canonical JSON)). Roles: system, user, assistant, tool. Ids are left out: they are the
# server's, and differ between a recording and a replay.
Msg = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class AnswerParts:
    """An answer's pieces as a stream carries them: text and tool arguments still JSON-escaped
    (decoding them once at the end costs one decode, not one per event)."""

    text: list[bytes] = field(default_factory=list)
    tools: dict[int, list[Any]] = field(default_factory=dict)  # index -> [name, [arg pieces]]

    def tool(self, index: int, name: str | None = None, args: bytes | None = None) -> None:
        slot = self.tools.setdefault(index, ["", []])
        if name:
            slot[0] = name
        if args:
            slot[1].append(args)

    def answer(self) -> Msg:
        text = unescape(b"".join(self.text))
        calls = tuple(
            (name, canonical_args(unescape(b"".join(args))))
            for _, (name, args) in sorted(self.tools.items())
        )
        return ("assistant", text.strip(), calls)


def unescape(raw: bytes) -> str:
    """The text of raw JSON string content (pieces of one string joined)."""
    if b"\\" not in raw:
        return raw.decode("utf-8", "replace")
    try:
        out: str = json.loads(b'"' + raw + b'"')
        return out
    except ValueError:
        return raw.decode("utf-8", "replace")


def canonical_args(args: Any) -> str:
    """Tool arguments as canonical JSON (sorted keys), so equal arguments compare equal."""
    value = args
    if isinstance(args, str):
        try:
            value = json.loads(args) if args.strip() else {}
        except ValueError:
            return args.strip()
    out: str = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return out


def msg_hash(m: Msg) -> str:
    """A short stable hash of a message (the conversation tracker's and diff's key)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(m, ensure_ascii=False, separators=(",", ":")).encode())
    return h.hexdigest()


def merged(msgs: list[Msg]) -> list[Msg]:
    """Consecutive assistant parts (text, then tool calls as separate items) as one turn."""
    out: list[Msg] = []
    for m in msgs:
        if out and m[0] == "assistant" and out[-1][0] == "assistant":
            role, text, tools = out[-1]
            out[-1] = (role, (text + " " + m[1]).strip(), tools + m[2])
        else:
            out.append(m)
    return out


TEXT_PARTS = frozenset({None, "text", "input_text", "output_text"})


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in TEXT_PARTS:
                text = part.get("text")
                parts.append(text if isinstance(text, str) else "")
        return "".join(parts).strip()
    return ""


def string_at(event: bytes, start: int) -> bytes:
    """The raw content of the JSON string that starts at `start` (just past its opening quote):
    up to the next quote not escaped by a backslash."""
    j = event.find(b'"', start)
    while j > 0 and event[j - 1] == 92:  # a backslash: escaped, unless it is itself escaped
        k = j - 1
        while k > start and event[k - 1] == 92:
            k -= 1
        if (j - k) % 2 == 0:
            break
        j = event.find(b'"', j + 1)
    return event[start:j] if j >= 0 else event[start:]


def json_escaped(text: str) -> bytes:
    """A decoded string as raw JSON string content (for pieces parsed out of their event)."""
    return json.dumps(text, ensure_ascii=False)[1:-1].encode()


def replace_ids(body: bytes, ids: dict[str, str]) -> bytes:
    """A JSON body with the given ids (whole string values) replaced."""
    for old, new in ids.items():
        body = body.replace(b'"' + old.encode() + b'"', b'"' + new.encode() + b'"')
    return body
