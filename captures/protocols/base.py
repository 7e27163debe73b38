"""What every API surface module implements, and what they share.

A surface (OpenAI chat completions, legacy completions, Responses, Anthropic Messages,
embeddings, plain HTTP) knows how to recognise itself from a request's path and body, read the
request's fields, classify each event of a response stream (cheaply, without parsing its JSON
unless it carries metadata), read usage and the finish reason from an event or a whole body,
make the request edits that amplification and `--model-map` make, and render an `Answer` the
way that API would (the mock gateway and the test factories use that).

Event classification returns bit flags, because one event can be several things at once (the
last chat chunk may carry text and the finish reason; `response.completed` is terminal and
carries usage).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .canonical import AnswerParts, Msg

# -- event flags -----------------------------------------------------------------------------------
TEXT = 1  # visible output text (a refusal is visible text too)
REASONING = 2  # reasoning / thinking output
TOOL = 4  # tool-call output: a function name, argument JSON
META = 8  # carries usage, a finish reason, a status or ids: parse its JSON
TERMINAL = 16  # the stream is complete
ERROR = 32  # an error event (for chat-like streams: a JSON object with an "error" key)
TOOL_ID = 64  # names a tool call's id (the server minted it): parse it
OUTPUT = TEXT | REASONING | TOOL

KINDS = {"text": TEXT, "reasoning": REASONING, "tool": TOOL}


@dataclass(slots=True)
class RequestFields:
    """What a request says of itself (null where the API has no such field)."""

    model: str | None = None
    stream: bool | None = None
    max_tokens: int | None = None
    message_count: int | None = None
    prompt_chars: int | None = None
    user: str | None = None
    tools: int | None = None


@dataclass(slots=True)
class ResponseFields:
    """What a response said: usage by kind, the finish reason in the API's own spelling, the
    final status and error of APIs that have them."""

    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens read from a cache
    cache_write_tokens: int | None = None  # prompt tokens written to a cache
    model: str | None = None
    response_id: str | None = None
    error: str | None = None  # an error event's or a failed response's message
    shape_ok: bool | None = None  # a whole JSON body: is it this API's shape?
    tool_call_ids: list[str] = field(default_factory=list)  # minted by the server, in order
    answer: Msg | None = None  # what the assistant said (a whole body; streams: the scanner)

    @property
    def minted(self) -> list[str]:
        """The ids the server made for this answer that later requests may name: the
        response's id, then its tool calls' ids."""
        return ([self.response_id] if self.response_id else []) + self.tool_call_ids


@dataclass
class Answer:
    """What a mock answers, in no API's shape: the surfaces render it."""

    rid: str
    model: str
    created: int
    text: list[str] = field(default_factory=list)  # one piece per output token
    reasoning: list[str] = field(default_factory=list)  # thinking pieces, before the text
    tool_name: str | None = None  # a tool call instead of (or after) text
    tool_args: list[str] = field(default_factory=list)  # argument JSON, piece by piece
    tool_call_id: str = ""
    finish: str = "stop"  # "stop" | "length" | "tool"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    include_usage: bool = True  # chat and completions: stream_options.include_usage
    extra_nulls: bool = False  # chat: null fields on every chunk, as LiteLLM sends them

    @property
    def completion_tokens(self) -> int:
        return len(self.text) + len(self.reasoning) + len(self.tool_args)

    @property
    def pieces(self) -> int:
        """Output events in a stream (one per token)."""
        return self.completion_tokens


class Surface:
    """One API surface. Subclasses override what their API has."""

    name = "http"
    path_suffixes: tuple[str, ...] = ()
    streams = False  # does the API stream token events (SSE)?

    def matches_path(self, path: str) -> bool:
        p = path.split("?", 1)[0].rstrip("/")
        return p.endswith(self.path_suffixes)  # (an empty tuple: False)

    def matches_body(self, obj: Any) -> bool:
        """A request body of this API, when the path did not say (a gateway's own routes)."""
        return False

    def request(self, obj: dict[str, Any]) -> RequestFields:
        return RequestFields(model=_str(obj.get("model")), stream=_bool(obj.get("stream")))

    def classify(self, event: bytes) -> int:
        """Flags of one SSE event (its raw lines, without the blank line that ends it)."""
        return 0

    def scan(self, event: bytes) -> tuple[int, bytes | None]:
        """Flags, and the visible text the event carries (raw JSON string content), in one pass:
        the scanner keeps the answer this way at little more than the cost of classifying."""
        return self.classify(event), None

    def meta(self, obj: Any, acc: ResponseFields) -> None:
        """Read usage, finish reason, ids from a parsed stream event into acc."""

    def body(self, obj: Any, acc: ResponseFields) -> None:
        """Read a whole (not streamed) JSON body into acc, and whether it is this API's shape."""

    def output_text(self, obj: Any) -> str | None:
        """The visible answer text of a whole body (None if it has none)."""
        return None

    # -- conversations ---------------------------------------------------------------------------
    def history(self, obj: dict[str, Any]) -> list[Msg]:
        """The request's conversation, oldest first, consecutive assistant parts merged."""
        return []

    def parent(self, obj: dict[str, Any]) -> str | None:
        """The id of the response this request continues on the server (Responses'
        `previous_response_id`), if any."""
        return None

    def thread(self, obj: dict[str, Any]) -> str | None:
        """The id of a server-side conversation this request belongs to (Responses'
        `conversation`), if any."""
        return None

    def tool_results(self, obj: dict[str, Any]) -> list[str]:
        """The call ids of the tool results this request sends (answers to earlier calls)."""
        return []

    def referenced_ids(self, obj: dict[str, Any]) -> list[str]:
        """Every id in the request that a server minted (a previous response's id, tool-call
        ids in the history): what a replay maps to the ids its target minted."""
        return []

    def piece(self, event: bytes, flags: int, acc: AnswerParts) -> None:
        """Keep an output event's raw (still JSON-escaped) text or tool pieces."""

    def replace_answer(self, obj: dict[str, Any], old: str, new: Msg) -> bool:
        """Put `new` where an assistant turn whose hash is `old` stands in the history."""
        return False

    # -- request edits (amplified copies, --model-map) -------------------------------------------
    def set_model(self, obj: dict[str, Any], model: str) -> bool:
        if isinstance(obj.get("model"), str):
            obj["model"] = model
            return True
        return False

    def salt(self, obj: dict[str, Any], salt: str) -> bool:
        """Prefix the prompt (where this API keeps it) with a nonce; True if done."""
        return False

    def copy_user(self, obj: dict[str, Any], k: int) -> bool:
        """Make an amplified copy's end-user id its own (`<user>~c<k>`); True if done."""
        return suffix_key(obj, "user", k)

    # -- rendering (mock gateway, test factories) --------------------------------------------------
    def render_body(self, a: Answer) -> bytes:
        raise NotImplementedError(f"{self.name} has no body to render")

    def render_stream(self, a: Answer) -> Iterator[tuple[bool, bytes]]:
        """The stream's events in order, each with whether it carries one output token (the mock
        times those one inter-token gap apart; the others go out at once)."""
        raise NotImplementedError(f"{self.name} does not stream")

    def error_body(self, status: int, kind: str, message: str) -> bytes:
        return dumps({"error": {"message": message, "type": kind, "code": kind}})

    def error_event(self, kind: str, message: str) -> bytes:
        return b"data: " + dumps({"error": {"message": message, "type": kind}}) + b"\n\n"


# -- helpers the surfaces share --------------------------------------------------------------------
def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE event: `event: NAME` (when given) and one `data:` line of compact JSON."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + dumps(data) + b"\n\n"


def split_events(raw: bytes) -> list[bytes]:
    """A whole SSE body's events (line endings normalized; comments and blank ones left out)."""
    out = []
    for ev in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if ev.strip() and not (ev.startswith(b":") and b"\n" not in ev):
            out.append(ev)
    return out


def event_data(event: bytes) -> bytes:
    """The `data:` payload of an event (several data lines joined by newlines, per the spec)."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:].lstrip(b" ")
    out = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(out)


def event_name(event: bytes) -> bytes:
    """The `event:` field of an event (b"" if none)."""
    if not event.startswith(b"event:"):
        i = event.find(b"\nevent:")
        if i < 0:
            return b""
        event = event[i + 1 :]
    end = event.find(b"\n")
    return event[6 : end if end >= 0 else None].strip()


def type_pattern(names: str) -> re.Pattern[bytes]:
    """A `"type": "NAME"` finder for an API's event names (a regex alternation): nested objects
    have types of their own, and key order is the producer's."""
    return re.compile(rb'"type"\s*:\s*"(' + names.encode() + rb')"')


def json_type(data: bytes, pattern: re.Pattern[bytes]) -> bytes:
    """The event's type from its JSON, for streams without `event:` lines."""
    m = pattern.search(data)
    return m.group(1) if m else b""


def parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


def typed_ids(items: Any, kind: str, key: str) -> list[str]:
    """The string `key` of every dict in `items` whose `type` is `kind` (tool results naming
    the call they answer, in each API's own spelling)."""
    blocks = items if isinstance(items, list) else []
    return [
        b[key]
        for b in blocks
        if isinstance(b, dict) and b.get("type") == kind and isinstance(b.get(key), str)
    ]


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v if -(2**31) <= v < 2**31 else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def text_len(content: Any) -> int:
    """Characters of text in a content value: a string, or a list of parts with text."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        n = 0
        for part in content:
            if isinstance(part, str):
                n += len(part)
            elif isinstance(part, dict):
                for key in ("text", "content", "output"):
                    v = part.get(key)
                    if isinstance(v, str):
                        n += len(v)
                    elif isinstance(v, list):
                        n += text_len(v)
        return n
    return 0


def salt_content(holder: dict[str, Any], key: str, salt: str) -> bool:
    """Prefix the text of holder[key] (a string, or the first text part of a list)."""
    v = holder.get(key)
    if isinstance(v, str):
        holder[key] = f"[{salt}] {v}"
        return True
    if isinstance(v, list):
        for part in v:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] = f"[{salt}] {part['text']}"
                return True
            if isinstance(part, str):
                i = v.index(part)
                v[i] = f"[{salt}] {part}"
                return True
    return False


def salt_first_user(messages: Any, salt: str) -> bool:
    if not isinstance(messages, list):
        return False
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user" and salt_content(m, "content", salt):
            return True
    return False


def suffix_key(obj: dict[str, Any], key: str, k: int) -> bool:
    if k and isinstance(obj.get(key), str):
        obj[key] = f"{obj[key]}~c{k}"
        return True
    return False


def approx_tokens(chars: int) -> int:
    """The stated approximation where no tokenizer is at hand: about 4 characters a token."""
    return max(1, (chars + 3) // 4) if chars > 0 else 0


def usage_int(usage: Any, *path: str) -> int | None:
    """usage[path[0]][path[1]]... as an int (None where missing)."""
    v: Any = usage
    for p in path:
        if not isinstance(v, dict):
            return None
        v = v.get(p)
    return _int(v)
