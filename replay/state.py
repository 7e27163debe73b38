"""What a stateful API keeps, carried through a replay of conversations (`--sessions ordered`).

The recording holds ids its server minted: a Responses response's id (which the next turn names
as `previous_response_id`), tool-call ids (which tool results answer), Anthropic `tool_use`
ids. A new target never issued them, so a replay that sends them verbatim gets 404 or 400. As
each answer comes back, the ids the target minted are paired with the recorded ones, per
session (the response's id first, then tool calls by position): before a dependent request of
that session is sent, the recorded ids it names are replaced by the target's. Sessions are per
target and per amplified copy (their keys differ), so each keeps its own map.

With `--history live`, the target's answers are kept too: before a request is sent, each
earlier assistant turn in its history that was a recorded answer of this session is replaced by
what the target answered, so a conversation replayed against another model stays coherent and
the target's prefix cache sees the prompts it would really see.

Only the event loop thread calls this (from the dispatcher), so it needs no lock.
"""

from __future__ import annotations

import collections
import json
import zlib
from typing import Any

from captures.protocols.canonical import Msg, replace_ids

from .plan import Shot
from .rewrite import Prepared, rebuilt
from .send.outcome import Outcome

SESSIONS_KEPT = 100_000  # sessions whose maps are kept (the least recently used go first)


class SessionState:
    def __init__(self, live_history: bool = False) -> None:
        self.live_history = live_history
        self._ids: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()
        self._answers: collections.OrderedDict[str, dict[str, Msg]] = collections.OrderedDict()
        self.mapped = 0  # requests sent with ids mapped to the target's
        self.replaced = 0  # requests sent with live answers in their history

    def learn(self, shot: Shot, out: Outcome) -> None:
        """A session's request finished: pair the ids the target minted with the recorded."""
        rec, session = shot.recorded, shot.session
        if session is None or rec is None:
            return
        if rec.minted and out.minted:
            ids = _slot(self._ids, session)
            for old, new in zip(rec.minted, out.minted, strict=False):
                if old != new:
                    ids[old] = new
        if self.live_history and rec.answer_hash and out.answer is not None:
            _slot(self._answers, session)[rec.answer_hash] = out.answer

    def apply(self, shot: Shot, p: Prepared) -> Prepared:
        """The request as it must go to this target, given what its session learnt."""
        session = shot.session
        if session is None:
            return p
        ids = self._ids.get(session)
        answers = self._answers.get(session) if self.live_history else None
        if not (p.refs and ids) and not answers:
            return p
        gzip = any(n.lower() == "content-encoding" and "gzip" in v.lower() for n, v in p.headers)
        body = zlib.decompress(p.body, 16 + zlib.MAX_WBITS) if gzip else p.body
        changed = False
        if p.refs and ids:
            hits = {r: ids[r] for r in p.refs if r in ids}
            if hits:
                body, changed = replace_ids(body, hits), True
                self.mapped += 1
        if answers:
            new = _with_answers(p, body, answers)
            if new is not None:
                body, changed = new, True
                self.replaced += 1
        if not changed:
            return p
        if gzip:
            c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
            body = c.compress(body) + c.flush()
        return rebuilt(p, body)


def _with_answers(p: Prepared, body: bytes, answers: dict[str, Msg]) -> bytes | None:
    try:
        obj: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    done = False
    for old, new in answers.items():
        done |= p.surface.replace_answer(obj, old, new)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() if done else None


def _slot(d: collections.OrderedDict[str, Any], session: str) -> Any:
    slot = d.get(session)
    if slot is None:
        slot = d[session] = {}
        while len(d) > SESSIONS_KEPT:
            d.popitem(last=False)
    else:
        d.move_to_end(session)
    return slot
