"""The live progress line (rich), fed by the engine every half second."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.live import Live

from .settings import Progress


def describe(p: Progress) -> str:
    parts = [
        f"{p.elapsed_s:6.1f}s (sched {p.scheduled_s:.1f}s)",
        f"sent {p.sent}",
        f"ok {p.ok}",
        f"exp {p.expected}" if p.expected else "",
        f"fail {p.failed}" if p.failed else "fail 0",
        f"in flight {p.in_flight}",
        f"{p.rate:.0f} req/s",
        f"p99 {p.p99_ms:.1f} ms" if p.p99_ms is not None else "p99 -",
        f"lag p99 {p.lag_p99_ms:.1f} ms" if p.lag_p99_ms is not None else "",
    ]
    return "  ".join(x for x in parts if x)


class LiveLine:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._live: Live | None = None

    def __enter__(self) -> LiveLine:
        if self.enabled:
            self._live = Live(console=Console(stderr=True), refresh_per_second=4, transient=True)
            self._live.start()
        return self

    def update(self, p: Progress) -> None:
        if self._live is not None:
            self._live.update(describe(p))

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()
