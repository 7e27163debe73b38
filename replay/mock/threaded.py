"""The mock gateway on its own event loop in a daemon thread, for synchronous code (tests,
benchmarks): `with running_gateway(max_in_service=4) as gw: ... gw.url`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from .config import GatewayConfig, GatewayStats
from .gateway import MockGateway


class ThreadedGateway:
    """A MockGateway running on its own event loop in a daemon thread (for sync code)."""

    def __init__(
        self, config: GatewayConfig | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.gateway = MockGateway(config, ssl_context)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mock-gateway", daemon=True
        )

    def start(self) -> ThreadedGateway:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def stats(self) -> GatewayStats:
        return self.gateway.stats

    def __enter__(self) -> ThreadedGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_gateway(
    config: GatewayConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **overrides: Any,
) -> Iterator[ThreadedGateway]:
    """`with running_gateway(max_in_service=4) as gw: ... gw.url`"""
    cfg = replace(config or GatewayConfig(), **overrides)
    gw = ThreadedGateway(cfg, ssl_context).start()
    try:
        yield gw
    finally:
        gw.stop()
