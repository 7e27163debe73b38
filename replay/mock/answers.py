"""What the mock gateway answers an LLM request with, in no API's shape (the surfaces in
captures/protocols render it), and the state a stateful API keeps.

- Output length: `max_tokens` (under the surface's spelling) when the request gives one (finish
  "length"), else a seeded lognormal draw around the profile's median (finish "stop"). Anthropic
  requires `max_tokens`, so there it is a cap: the draw, or `max_tokens` if the draw is longer.
- Reasoning: the profile's `reasoning_tokens`, or 8 when the request asks for reasoning
  (`reasoning_effort`, `reasoning`, or Anthropic's `thinking`) and the profile has none.
- Tools: a request that offers tools gets a call of the first one, unless its last input is a
  tool result (then it gets text): so a tool-call round is two requests, as with a real model.
- Responses are stateful: `ResponseStore` keeps the ids the mock issued and the tool-call ids
  each response made; an unknown `previous_response_id` gets 404 and a `function_call_output`
  naming a call the previous response did not make gets 400, as the real API answers.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from captures.protocols import CHAT, MESSAGES, RESPONSES, Surface
from captures.protocols.base import Answer, approx_tokens
from captures.protocols.canonical import msg_hash
from captures.protocols.messages import ERROR_TYPES

from .config import ModelProfile

TOOL_ARGS = ['{"', "city", '": "', "Par", "is", '"}']


@dataclass
class Refusal:
    """A request the API would refuse: its status, error type and message."""

    status: int
    kind: str
    message: str
    param: str | None = None


def wants_reasoning(surface: Surface, obj: dict[str, Any]) -> bool:
    if surface is CHAT:
        return bool(obj.get("reasoning_effort"))
    if surface is RESPONSES:
        return isinstance(obj.get("reasoning"), dict)
    if surface is MESSAGES:
        thinking = obj.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") == "enabled"
    return False


def tool_to_call(surface: Surface, obj: dict[str, Any]) -> str | None:
    """The tool the mock calls: the first one offered, unless the last input is a tool result."""
    tools = obj.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    first = tools[0]
    name = first.get("name") or (first.get("function") or {}).get("name") or "tool"
    last: Any = None
    if surface is CHAT:
        msgs = obj.get("messages") or [None]
        last = msgs[-1] if isinstance(msgs, list) and msgs else None
        if isinstance(last, dict) and last.get("role") == "tool":
            return None
    elif surface is RESPONSES:
        inp = obj.get("input")
        last = inp[-1] if isinstance(inp, list) and inp else None
        if isinstance(last, dict) and last.get("type") == "function_call_output":
            return None
    elif surface is MESSAGES:
        msgs = obj.get("messages")
        last = msgs[-1] if isinstance(msgs, list) and msgs else None
        content = last.get("content") if isinstance(last, dict) else None
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            return None
    else:
        return None
    return str(name)


def content_rng(surface: Surface, obj: dict[str, Any], seed: int) -> random.Random:
    """A draw seeded by what the request says (its canonical history: no ids, no formatting),
    so the same request gets the same answer whenever it comes and whatever ids it names: a
    replay against an identical mock gets the recording's answers back."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{seed}:{surface.name}:{obj.get('model')}:".encode())
    for m in surface.history(obj):
        h.update(msg_hash(m).encode())
    caps = [obj.get(k) for k in ("max_tokens", "max_output_tokens", "max_completion_tokens")]
    h.update(json.dumps(caps).encode())
    return random.Random(int.from_bytes(h.digest(), "big"))


def plan_answer(
    surface: Surface,
    obj: dict[str, Any],
    prof: ModelProfile,
    rng: random.Random,
    n: int,
    created: int,
    instance: str = "",
) -> tuple[Answer, int]:
    """The answer to request number n (its ids), drawn from rng (its length), and its prompt
    size in tokens."""
    fields = surface.request(obj)
    prompt_tokens = approx_tokens(fields.prompt_chars or 0)
    mu = math.log(max(prof.output_tokens_median, 1))
    drawn = max(1, int(rng.lognormvariate(mu, prof.output_tokens_sigma)))
    cap = fields.max_tokens if fields.max_tokens is not None and fields.max_tokens > 0 else None
    if cap is not None and (surface is not MESSAGES or drawn >= cap):
        n_out, finish = cap, "length"
    else:
        n_out, finish = drawn, "stop"
    prefix = {"responses": "resp_mock", "messages": "msg_mock"}.get(surface.name, "chatcmpl-mock")
    a = Answer(
        rid=f"{prefix}{instance}{n:08d}",
        model=fields.model or "unknown",
        created=created,
        prompt_tokens=prompt_tokens,
        include_usage=bool((obj.get("stream_options") or {}).get("include_usage")),
    )
    reasoning = prof.reasoning_tokens or (8 if wants_reasoning(surface, obj) else 0)
    reasoning = min(reasoning, max(n_out - 1, 0))
    a.reasoning = [f" think{i}" for i in range(reasoning)]
    tool = tool_to_call(surface, obj)
    if tool is not None:
        a.tool_name = tool
        a.tool_args = list(TOOL_ARGS)
        a.tool_call_id = (
            "toolu_mock" if surface is MESSAGES else "call_mock"
        ) + f"{instance}{n:08d}"
        a.finish = "tool"
    else:
        a.text = [f" tok{i}" for i in range(n_out - reasoning)]
        a.finish = finish
    return a, prompt_tokens


class ResponseStore:
    """The Responses API's state: ids the mock issued (bounded, oldest dropped first) and the
    tool-call ids each response made."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._calls: collections.OrderedDict[str, frozenset[str]] = collections.OrderedDict()

    def __contains__(self, rid: object) -> bool:
        return rid in self._calls

    def add(self, a: Answer) -> None:
        self._calls[a.rid] = frozenset([a.tool_call_id] if a.tool_name else [])
        while len(self._calls) > self.limit:
            self._calls.popitem(last=False)

    def check(self, obj: dict[str, Any]) -> Refusal | None:
        prev = obj.get("previous_response_id")
        if prev is None:
            return None
        if not isinstance(prev, str) or prev not in self._calls:
            return Refusal(
                404,
                "invalid_request_error",
                f"Previous response with id '{prev}' not found.",
                "previous_response_id",
            )
        inp = obj.get("input")
        for item in inp if isinstance(inp, list) else ():
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                call = item.get("call_id")
                if call not in self._calls[prev]:
                    return Refusal(
                        400,
                        "invalid_request_error",
                        f"No tool call found for function call output with call_id {call}.",
                        "input",
                    )
        return None


def error_body(surface: Surface, r: Refusal) -> bytes:
    if surface is MESSAGES:
        return surface.error_body(r.status, _anthropic_kind(r.status), r.message)
    return json.dumps(
        {"error": {"message": r.message, "type": r.kind, "param": r.param, "code": None}}
    ).encode()


def _anthropic_kind(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error")
