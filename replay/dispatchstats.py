"""What the dispatcher counts as it sends: shots sent and completed, the span of the sends and
of their due times (the rates in run.json), the latest and largest lag, and the plan's shots left
unsent by reason."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DispatchStats:
    sent: int = 0
    staged: int = 0  # of them, sent on a connection readied before their instant
    completed: int = 0
    last_due_ns: int = 0  # scheduled offset of the latest shot sent
    last_lag_ns: int = 0
    max_lag_ns: int = 0
    first_due_ns: int | None = None
    first_sent_ns: int | None = None  # monotonic
    last_sent_ns: int = 0
    unsent: dict[str, int] = field(default_factory=dict)
    unsent_counted: bool = True  # False: a stopped plan's rest was too long to count

    def count(self, due: int, intended: int, now: int) -> None:
        """A shot due at offset `due` (intended at monotonic `intended`) sent at `now`. In any
        order: a timed client's sends are counted as their results come back."""
        lag = now - intended
        self.sent += 1
        if due > self.last_due_ns:
            self.last_due_ns = due
        if now > self.last_sent_ns:
            self.last_sent_ns = now
        if self.first_sent_ns is None or now < self.first_sent_ns:
            self.first_sent_ns = now
        if self.first_due_ns is None or due < self.first_due_ns:
            self.first_due_ns = due
        self.last_lag_ns = lag
        if lag > self.max_lag_ns:
            self.max_lag_ns = lag

    def rates(self, *, closed: bool) -> tuple[float | None, float | None]:
        """(scheduled, achieved) send rates per second over the sends' span (a closed loop
        has no schedule)."""
        if self.sent < 2 or self.first_sent_ns is None or self.first_due_ns is None:
            return None, None
        sched_span = self.last_due_ns - self.first_due_ns
        sent_span = self.last_sent_ns - self.first_sent_ns
        scheduled = (self.sent - 1) / (sched_span / 1e9) if sched_span > 0 else None
        achieved = (self.sent - 1) / (sent_span / 1e9) if sent_span > 0 else None
        return (None if closed else scheduled), achieved
