"""The event scanner: an SSE body fed as it arrives (decoded bytes), each event classified by
its API surface. What it keeps: when the first output event came (any kind), when the first
visible text came, the arrival of every output event, counts by kind, usage and finish reason
from the events that carry them, whether the terminal event arrived, and an error event's
message. The replay's senders feed it with arrival times; capture feeds it chunk by chunk with
chunk indices, so a recording knows which network chunk carried the first token.

It never raises on bad input: a malformed event is an event with no flags, a cut stream is one
without its terminal event.
"""

from __future__ import annotations

from .base import (
    ERROR,
    META,
    OUTPUT,
    REASONING,
    TERMINAL,
    TEXT,
    TOOL,
    TOOL_ID,
    ResponseFields,
    Surface,
    event_data,
    parse,
)
from .canonical import AnswerParts


class EventScanner:
    __slots__ = (
        "_buf",
        "_crlf",
        "_parts",
        "_scan",
        "complete",
        "complete_at",
        "error",
        "events",
        "fields",
        "first_output",
        "first_text",
        "keep_times",
        "output_times",
        "reasoning_events",
        "surface",
        "text_events",
        "tool_events",
    )

    def __init__(
        self, surface: Surface, *, keep_times: bool = True, keep_answer: bool = True
    ) -> None:
        self.surface = surface
        self._scan = surface.scan
        self.fields = ResponseFields()
        self._buf = b""
        self._crlf: bool | None = None  # the stream's line endings, learnt from its first line
        self.keep_times = keep_times
        # the answer's pieces, still JSON-escaped: decoded once, at the end
        self._parts = AnswerParts() if keep_answer else None
        self.first_output: int | None = None
        self.first_text: int | None = None
        self.output_times: list[int] = []
        self.events = 0
        self.text_events = 0
        self.reasoning_events = 0
        self.tool_events = 0
        self.complete = False
        self.complete_at: int | None = None  # when the terminal event arrived
        self.error: str | None = None

    @property
    def output_events(self) -> int:
        return self.text_events + self.reasoning_events + self.tool_events

    def feed(self, data: bytes, now: int) -> None:
        buf = self._buf + data if self._buf else data
        crlf = self._crlf
        if crlf is None and b"\n" in buf:
            crlf = self._crlf = b"\r\n" in buf
        if crlf:
            buf = buf.replace(b"\r\n", b"\n")
        *events, self._buf = buf.split(b"\n\n")  # no separator: no event yet, all kept
        scan = self._scan
        parts = self._parts
        for ev in events:
            if not ev or (ev[0] == 58 and b"\n" not in ev):  # 58 = ":", a comment (keep-alive)
                continue
            self.events += 1
            f, text = scan(ev)
            if not f:
                continue
            if f & OUTPUT:
                if self.first_output is None:
                    self.first_output = now
                if self.keep_times:
                    self.output_times.append(now)
                if f & TEXT:
                    self.text_events += 1
                    if self.first_text is None:
                        self.first_text = now
                    if parts is not None and text is not None:
                        parts.text.append(text)
                if f & REASONING:
                    self.reasoning_events += 1
                if f & TOOL:
                    self.tool_events += 1
                if parts is not None and f & TOOL:
                    self.surface.piece(ev, f, parts)
                if not f & (META | ERROR | TERMINAL | TOOL_ID):
                    continue
            if f & (META | ERROR | TOOL_ID):
                self.surface.meta(parse(event_data(ev)), self.fields)
                if self.fields.error is not None:
                    self.error = self.fields.error
            if f & TERMINAL and not self.complete:
                self.complete = True
                self.complete_at = now

    def finish(self, now: int) -> None:
        """The body ended: an event without its closing blank line still counts."""
        if self._buf.strip():
            self.feed(b"\n\n", now)
        self._buf = b""
        if self._parts is not None and self.fields.answer is None and self.output_events:
            self.fields.answer = self._parts.answer()
