"""Stand-ins for the event loop and the timerfd that the dispatcher's table tests give it: they
record what the dispatcher asked for (a callback on the next turn, a wakeup instant), on
virtual time."""

from __future__ import annotations


class FakeLoop:
    def __init__(self) -> None:
        self.soon: list[object] = []

    def call_soon(self, cb: object) -> None:
        self.soon.append(cb)


class FakeTimer:
    def __init__(self) -> None:
        self.armed: list[int] = []

    def arm(self, ns: int) -> None:
        self.armed.append(ns)
