"""The live progress line (rich), fed by the engine every half second."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.live import Live

from .settings import Progress


def clock(s: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = max(0, round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(p: Progress) -> float | None:
    """Seconds left: by the schedule's end where it is known (open loop keeps time), else by
    the requests left at the current rate."""
    if p.planned_end_s is not None and p.planned_end_s > 0:
        return max(p.planned_end_s - p.elapsed_s, 0.0)
    if p.planned is not None and p.rate > 0:
        return max(p.planned - p.sent, 0) / p.rate
    return None


def done_share(p: Progress) -> float | None:
    if p.planned_end_s is not None and p.planned_end_s > 0:
        return min(p.elapsed_s / p.planned_end_s, 1.0)
    if p.planned:
        return min(p.sent / p.planned, 1.0)
    return None


def describe(p: Progress) -> str:
    if p.planning is not None:
        of = f"/{'~' if p.planned_approx else ''}{p.planned}" if p.planned is not None else ""
        return f"planning ahead: {p.planning}{of} shots (the run starts when they are planned)"
    sent = f"sent {p.sent}"
    if p.planned is not None:
        sent += f"/{'~' if p.planned_approx else ''}{p.planned}"
    share, left = done_share(p), eta(p)
    parts = [
        f"{p.elapsed_s:6.1f}s (sched {p.scheduled_s:.1f}s)",
        sent,
        f"{share * 100:.0f}%" if share is not None else "",
        f"ETA {clock(left)}" if left is not None else "",
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
