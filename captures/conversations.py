"""Conversations found from content, for traffic that carries no session hint.

Applications rarely send a session header or `user`, and an SDK opens a new connection after a
stream, so neither a hint nor the connection keeps a multi-turn conversation together. The
content does: each turn repeats what came before. The tracker sees exchanges in the order they
finished (a turn is sent after its predecessor's answer, so predecessors come first) and links
a request to an earlier conversation by, strongest first:

1. a tool result naming a tool call an earlier answer made (its call id);
2. Responses' `previous_response_id` naming an earlier response, or its `conversation` naming
   the server-side conversation an earlier request used;
3. its history: the last assistant turn in it, with the message before it, is an earlier
   request's last message and that request's answer (each message hashed in a canonical form
   that all API surfaces share, so re-serialisation by an SDK does not matter, and a client
   that sends only a window of its history still matches). Where several earlier turns match,
   the one whose preceding message matches too wins, then the latest.

A request that links to nothing starts a conversation. Everything is bounded (the oldest
entries are dropped first) and held in memory only, as hashes.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from typing import Any

from .protocols import Surface
from .protocols.canonical import Msg, msg_hash


@dataclass
class Turn:
    """What the tracker says of one exchange."""

    conversation: str
    turn: int  # 0 for the first request of a conversation
    think_ns: int | None  # from the previous turn's answer to this request (None: first turn)


@dataclass
class _Conv:
    turns: int
    last_end_ns: int | None


class Tracker:
    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._convs: collections.OrderedDict[str, _Conv] = collections.OrderedDict()
        self._ids: collections.OrderedDict[str, str] = collections.OrderedDict()  # minted id
        # (hash of the message before the answer, hash of the answer) -> [(context, conv)]
        self._pairs: collections.OrderedDict[tuple[str, str], list[tuple[str, str]]] = (
            collections.OrderedDict()
        )
        self._n = 0

    def see(
        self,
        surface: Surface,
        obj: Any,
        answer: Msg | None,
        minted: list[str],
        start_ns: int,
        end_ns: int | None,
    ) -> Turn | None:
        """One finished exchange: its conversation (None for plain HTTP), and what later turns
        will be matched against (its answer and the ids its answer minted) recorded."""
        if not isinstance(obj, dict):
            return None
        history = surface.history(obj)
        if not history:
            return None
        conv = self._find(surface, obj, history)
        if conv is None:
            self._n += 1
            seed = f"{self._n}:{start_ns}:{msg_hash(history[0])}".encode()
            conv = "conv-" + hashlib.blake2b(seed, digest_size=6).hexdigest()
            state = self._convs[conv] = _Conv(0, None)
            turn = Turn(conv, 0, None)
        else:
            state = self._convs[conv]
            self._convs.move_to_end(conv)
            think = start_ns - state.last_end_ns if state.last_end_ns is not None else None
            turn = Turn(conv, state.turns, max(think, 0) if think is not None else None)
        state.turns += 1
        state.last_end_ns = end_ns if end_ns is not None else state.last_end_ns
        for i in minted:
            self._put(self._ids, i, conv)
        if (thread := surface.thread(obj)) is not None:
            self._put(self._ids, thread, conv)
        if answer is not None:
            last = history[-1]
            context = msg_hash(history[-2]) if len(history) > 1 else ""
            key = (msg_hash(last), msg_hash(answer))
            entries = self._pairs.get(key)
            if entries is None:
                self._put(self._pairs, key, [(context, conv)])
            else:
                entries.append((context, conv))
                del entries[:-8]
                self._pairs.move_to_end(key)
        self._trim()
        return turn

    def _find(self, surface: Surface, obj: dict[str, Any], history: list[Msg]) -> str | None:
        for call in surface.tool_results(obj):
            if call in self._ids:
                return self._ids[call]
        for parent in (surface.parent(obj), surface.thread(obj)):
            if parent is not None and parent in self._ids:
                return self._ids[parent]
        for j in range(len(history) - 1, 0, -1):  # the last assistant turn with its prompt
            if history[j][0] != "assistant":
                continue
            entries = self._pairs.get((msg_hash(history[j - 1]), msg_hash(history[j])))
            if not entries:
                return None
            context = msg_hash(history[j - 2]) if j >= 2 else ""
            same = [c for ctx, c in entries if ctx == context]
            return (same or [c for _, c in entries])[-1]
        return None

    @staticmethod
    def _put(d: collections.OrderedDict[Any, Any], key: Any, value: Any) -> None:
        d[key] = value
        d.move_to_end(key)

    def _trim(self) -> None:
        for d in (self._convs, self._ids, self._pairs):
            while len(d) > self.limit:
                d.popitem(last=False)
