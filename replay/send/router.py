"""Routing sends to targets: one client per target (the compiled sender, the fast sender, or
aiohttp; `--client`), and a router that gives each prepared request to its target's client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from captures.errors import UserError
from replay.rewrite import Prepared
from replay.targets import Target

from .outcome import Outcome


class Staged(Protocol):
    """A send made ready on a warm connection, to go at its instant."""

    def fire(self) -> None:
        """Send it now (stamped now)."""

    def cancel(self) -> None:
        """Not sent after all: the connection is free again."""


class Client(Protocol):
    def submit(self, req: Prepared, done: Callable[[Outcome], None]) -> bool | None:
        """Send (the result comes to `done`); True if it took a new connection."""

    def stage(self, req: Prepared, done: Callable[[Outcome], None]) -> Staged | None:
        """The send made ready on a warm connection, to `fire()` at its instant: all of a
        send's work but the write, done before it. None: no warm connection (or this client
        cannot); submit it at the instant."""

    async def close(self) -> None: ...


class TargetClient(Client, Protocol):
    """A client of one target: it can also open connections ahead of the run."""

    async def warm(self, n: int, timeout: float) -> int:
        """Open up to `n` idle connections before the run (within `timeout` s); how many."""


def pick_client(
    kind: str, *, open_loop: bool, stateful: bool, slack: bool, targets: list[Target]
) -> str:
    """The sender a run uses: `auto` is the compiled one (send/wire.py) where it can serve the
    run, else the fast one. Asked for by name where it cannot, a UserError says why."""
    if kind not in ("auto", "wire"):
        return kind
    from .wire import available

    why = (
        "it is not built here (no C compiler at install, or not Linux)"
        if not available()
        else "it serves the open loop only (not --concurrency)"
        if not open_loop
        else "it cannot apply session state at the send (--sessions ordered)"
        if stateful
        else "it sends each shot at its own instant (no --send-slack)"
        if slack
        else "it speaks plain HTTP only (an https target)"
        if any(t.scheme != "http" for t in targets)
        else None
    )
    if why is None:
        return "wire"
    if kind == "wire":
        raise UserError(f"--client wire: {why}")
    return "fast"


def make_client(
    kind: str, target: Target, *, max_in_flight: int, timeout: float, insecure: bool
) -> TargetClient:
    if kind == "wire":
        from .wire import WireClient

        return WireClient(target, timeout=timeout)
    if kind == "fast":
        from .client import FastClient

        return FastClient(target, timeout=timeout, insecure=insecure)
    from .client_aiohttp import AiohttpClient

    return AiohttpClient(target, workers=max_in_flight, timeout=timeout, insecure=insecure)


class Router:
    """One client per target; a prepared request goes to its target's client."""

    def __init__(self, clients: dict[Target, TargetClient]) -> None:
        self.clients = clients
        # Found by the target's identity first: a prepared request carries the very object
        # its rewriter was given, and hashing the frozen dataclass (its six fields, in Python)
        # was 3.8% of the loop's samples at 20k req/s. An equal object found by value.
        self._by_id = {id(t): c for t, c in clients.items()}

    def _client(self, target: Target) -> TargetClient:
        c = self._by_id.get(id(target))
        return c if c is not None else self.clients[target]

    def submit(self, req: Prepared, done: Callable[[Outcome], None]) -> bool | None:
        return self._client(req.target).submit(req, done)

    def stage(self, req: Prepared, done: Callable[[Outcome], None]) -> Staged | None:
        return self._client(req.target).stage(req, done)

    # -- a timed client's (send/wire.py): sends handed ahead with their instants ------------------
    def submit_at(
        self,
        req: Prepared,
        due_ns: int,
        tag: Any,
        done: Callable[[Any, Outcome], None],
        unsent: Callable[[Any], None] | None = None,
    ) -> None:
        self._client(req.target).submit_at(req, due_ns, tag, done, unsent)  # type: ignore[attr-defined]

    def collect(self) -> int:
        return sum(c.collect() for c in self.clients.values())  # type: ignore[attr-defined]

    def unsend(self) -> None:
        for c in self.clients.values():
            c.unsend()  # type: ignore[attr-defined]

    @property
    def outstanding(self) -> int:
        return sum(c.outstanding for c in self.clients.values())  # type: ignore[attr-defined]

    async def warm_up(self, needs: dict[Target, int], timeout: float) -> int:
        """Each target's client opens the connections its first shots need, all at once."""
        jobs = [self.clients[t].warm(n, timeout) for t, n in needs.items() if n > 0]
        return sum(await asyncio.gather(*jobs))

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()

    @property
    def sender_threads(self) -> list[int]:
        """The threads that send, where not the event loop's: the compiled sender's engines."""
        return [c.thread_id for c in self.clients.values() if hasattr(c, "thread_id")]

    @property
    def connects(self) -> int:
        return sum(getattr(c, "connects", 0) for c in self.clients.values())

    @property
    def resends(self) -> int:
        return sum(getattr(c, "resends", 0) for c in self.clients.values())

    @property
    def batched(self) -> int:
        """Requests whose first write went with others' in one system call (the compiled
        sender's bursts, wire_c/uring.h)."""
        return sum(getattr(c, "batched", 0) for c in self.clients.values())
