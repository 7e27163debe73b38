"""The mock gateway run from synchronous code: on its own event loop in a daemon thread (tests,
benchmarks: `with running_gateway(max_in_service=4) as gw: ... gw.url`), or in the foreground
until a signal (`loadtape mock-gateway`: `serve_until_signal`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from captures.errors import UserError

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


def serve_until_signal(config: GatewayConfig, announce: Callable[[str], None]) -> None:
    """`loadtape mock-gateway`: serve until SIGINT or SIGTERM; `announce` gets the URL once it
    listens."""
    try:
        gw = MockGateway(config)
    except ValueError as exc:
        raise UserError(str(exc)) from None

    async def serve() -> None:
        try:
            await gw.start()
        except OSError as exc:
            raise UserError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from None
        announce(gw.url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gw.stop()

    asyncio.run(serve())
