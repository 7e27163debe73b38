"""What a run is made of and what it gives back: the streams (`StreamPlan`, built by the
workloads), the settings of the run (`RunSettings`), progress snapshots for the live line and the
summary of a finished run. Shared by the workloads that build streams, the runner that runs them
and the scale-out backends that shard them; none of them imports another for these."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captures.errors import UserError
from replay.measure.metrics import Metrics
from replay.measure.results import Expect

from . import plan as planmod
from .dispatchstats import DispatchStats
from .priority import check as check_realtime
from .rewrite import Rewriter

# senders (send/router.py): auto is the compiled one where it can run, else fast
CLIENTS = ("auto", "wire", "fast", "aiohttp")
MAX_SEND_SLACK_S = 0.01  # past this, shots sent together are no longer the recorded timing


@dataclass
class StreamPlan:
    """One stream of a run: its shots (in offset order), how to rewrite them, what is expected."""

    name: str
    shots: Iterable[planmod.Shot]
    rewriter: Rewriter
    expect: Expect = field(default_factory=Expect)
    stats: planmod.PlanStats | None = None
    describe: dict[str, Any] = field(default_factory=dict)  # for run.json
    # what the plan will hold, for the progress line: requests (None: unknown; `approx`: an
    # estimate, e.g. a Poisson stream or a filtered window) and when its last one is due
    planned: int | None = None
    planned_approx: bool = False
    planned_end_s: float | None = None


@dataclass
class RunSettings:
    out: str | None = None
    force: bool = False  # replace the results of an earlier run in `out`
    concurrency: int | None = None  # closed loop
    max_in_flight: int = 1000
    sessions: str = "none"
    history: str = (
        "recorded"  # recorded | live: earlier answers in a history as the target gave them
    )
    requests: int | None = None  # stop after this many shots
    timeout_s: float = 60.0
    client: str = "auto"
    insecure: bool = False
    spin_ms: float = 1.5
    # how late a shot may go to share a wakeup with the shots due just after it (Dispatcher)
    send_slack_s: float = 0.0
    rt_priority: int = 0  # SCHED_FIFO priority of the sending loop's thread (priority.py); 0: off
    warm_up: bool = True  # open loop: connections for the first shots opened before the start
    workers: int = 1  # local worker processes (replay/workers.py shards the plan)
    ray: str | None = None  # a Ray cluster's address ("auto", "local", host:port): actors
    # set by the worker runner for one shard: (index, count), the result part, the start instant
    shard: tuple[int, int] | None = None
    part: str | None = None
    start_wall_ns: int | None = None

    @property
    def sharded(self) -> bool:
        return self.workers > 1 or bool(self.ray)

    @property
    def closed(self) -> bool:
        return self.concurrency is not None

    def validate(self) -> None:
        if self.sessions not in ("none", "ordered"):
            raise UserError(f"--sessions {self.sessions!r}: want ordered or none")
        if self.history not in ("recorded", "live"):
            raise UserError(f"--history {self.history!r}: want recorded or live")
        if self.history == "live" and self.sessions != "ordered":
            raise UserError(
                "--history live needs --sessions ordered (a turn's history holds the answers "
                "to the turns before it)"
            )
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError("--concurrency must be >= 1")
        if self.max_in_flight < 1:
            raise UserError("--max-in-flight must be >= 1")
        if self.requests is not None and self.requests < 1:
            raise UserError("--requests must be >= 1")
        if self.timeout_s <= 0:
            raise UserError("--timeout must be > 0")
        if self.client not in CLIENTS:
            raise UserError(f"--client {self.client!r}: want one of {', '.join(CLIENTS)}")
        if self.workers < 1:
            raise UserError("--workers must be >= 1")
        if not 0 <= self.send_slack_s <= MAX_SEND_SLACK_S:
            raise UserError(
                f"--send-slack must be between 0 and {MAX_SEND_SLACK_S * 1000:g}ms (how late a "
                "shot may go to share a wakeup with the next ones)"
            )
        if self.rt_priority:
            check_realtime(self.rt_priority)


@dataclass
class Progress:
    """A snapshot for the live line."""

    elapsed_s: float
    scheduled_s: float
    planned: int | None
    planned_approx: bool
    planned_end_s: float | None
    sent: int
    ok: int
    expected: int
    failed: int
    in_flight: int
    rate: float
    p99_ms: float | None
    lag_p99_ms: float | None
    behind_s: float = 0.0  # how late the oldest shot due and not yet sent is (0: on schedule)
    scheduled: int | None = None  # shots due so far by the plan (None: closed loop)
    planning: int | None = None  # before the start: shots planned ahead so far
    # since the start (replay/hostcpu.py; None where the kernel does not say): how long the
    # sending thread waited for a CPU, how long the cgroup's CPU limit held the replay back
    sender_wait_s: float | None = None
    throttled_s: float | None = None


@dataclass
class RunSummary:
    out_dir: Path
    metrics: Metrics
    run: dict[str, Any]
    dispatch: DispatchStats
    interrupted: bool


def default_out_dir() -> Path:
    """runs/<time>, with a suffix when a run of the same second has it already."""
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out
