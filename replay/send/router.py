"""Routing sends to targets: one client per target (the fast sender, or aiohttp with `--client
aiohttp`), and a router that gives each prepared request to its target's client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

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


def make_client(
    kind: str, target: Target, *, max_in_flight: int, timeout: float, insecure: bool
) -> TargetClient:
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

    async def warm_up(self, needs: dict[Target, int], timeout: float) -> int:
        """Each target's client opens the connections its first shots need, all at once."""
        jobs = [self.clients[t].warm(n, timeout) for t, n in needs.items() if n > 0]
        return sum(await asyncio.gather(*jobs))

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()

    @property
    def connects(self) -> int:
        return sum(getattr(c, "connects", 0) for c in self.clients.values())

    @property
    def resends(self) -> int:
        return sum(getattr(c, "resends", 0) for c in self.clients.values())
