"""Plan: which request to send at which intended offset from the run's start. Pure: no clock, no
I/O; capture rows come in through an injected source, so tests are tables.

Time scaling: offset = (t_i - t_first) / speed, where t_first is the first request of the window.
A window selects requests by their start relative to the capture's first request (`from`, `to`,
or `from` + `duration`). `loops` repeats the window back to back: each loop starts one window
period after the previous one (the window's length when it has an end, else the span of its
requests plus one mean gap, so the pacing carries on across the seam).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from captures.rows import Chunk, per_batch

from .planrows import Recorded, Request, planned_rows


@dataclass(slots=True)
class Shot:
    """One request of the plan: what to send, when (offset from the run's start), tagged."""

    offset_ns: int
    seq: int
    request: Request
    session: str | None = None
    stream: str = "replay"
    target: str = ""  # the target's name when a run has several (--target NAME=URL)
    copy: int = 0
    source: tuple[str, int] | None = None  # (writer_id, seq) of the capture row
    recorded: Recorded | None = None
    loop: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    prepared: Any = None  # the rewritten request, when the plan thread prepared it


SHOT_OVERHEAD_BYTES = 2048  # a shot's own objects (Shot, Request, Prepared, headers, tuples)


def shot_bytes(shot: Shot) -> int:
    """About the memory a planned shot holds: its objects, the recorded body, and the request
    prepared from it (whole, plus its body where rewritten)."""
    body = shot.request.body
    n = SHOT_OVERHEAD_BYTES + len(body or b"") + 64 * len(shot.request.headers)
    p = shot.prepared
    if p is not None:
        n += len(p.raw) + (len(p.body) if p.body is not body else 0)
    return n


@dataclass(frozen=True)
class PlanOptions:
    speed: float = 1.0
    start_s: float = 0.0  # --from: seconds after the capture's first request
    end_s: float | None = None  # --to
    duration_s: float | None = None  # --duration: window length from --from
    loops: int = 1
    stream: str = "replay"
    include_junk: bool = False  # replay what the recording shows was not real traffic too

    def validate(self) -> None:
        if not 0 < self.speed < math.inf:
            raise ValueError(f"speed must be a finite number > 0, got {self.speed}")
        for name, v in (
            ("--from", self.start_s),
            ("--to", self.end_s),
            ("--duration", self.duration_s),
        ):
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        if self.loops < 1:
            raise ValueError(f"loop count must be >= 1, got {self.loops}")
        if self.start_s < 0:
            raise ValueError("--from must be >= 0")
        if self.end_s is not None and self.duration_s is not None:
            raise ValueError("give --to or --duration, not both")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError("--to must be after --from")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("--duration must be > 0")

    def window_ns(self, capture_first_ns: int) -> tuple[int, int | None]:
        lo = capture_first_ns + round(self.start_s * 1e9)
        if self.end_s is not None:
            return lo, capture_first_ns + round(self.end_s * 1e9)
        if self.duration_s is not None:
            return lo, lo + round(self.duration_s * 1e9)
        return lo, None


# A looped window's requests are kept in memory for the loops after the first, up to so many
# requests and about so many bytes of their bodies; a longer window is read again each loop.
# Not kept for a single pass: replaying 10k POSTs of 50 KB once peaked at 875 MB with them
# kept, 556 MB without.
TEMPLATE_LIMIT = 50_000
TEMPLATE_BYTES = 64 << 20


@dataclass
class PlanStats:
    """What the plan skipped, and why (reported by the run)."""

    planned: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def plan_replay(
    source: Callable[[int, int | None], Iterable[Chunk]],
    capture_first_ns: int,
    opts: PlanOptions,
    stats: PlanStats | None = None,
) -> Iterator[Shot]:
    """Shots in intended-offset order.

    `source(lo_ns, hi_ns)` yields chunks of capture columns (captures/rows.py) whose rows have
    lo <= req_start < hi (hi None: to the end), in request-start order; it is called once per
    loop, so a plan over a large capture streams."""
    opts.validate()
    st = stats if stats is not None else PlanStats()
    lo, hi = opts.window_ns(capture_first_ns)
    t_first: int | None = None
    t_last = 0
    count = 0
    period_ns = 0
    seq = 0
    # Loops after the first reuse the first loop's requests when the window is small enough to
    # keep (re-reading and re-parsing the capture each loop costs more than the send itself).
    templates: list[tuple[int, Request, str | None, tuple[str, int] | None, Recorded]] | None
    templates = [] if opts.loops > 1 else None
    kept = 0  # bytes of the templates' bodies
    for loop in range(opts.loops):
        base = loop * period_ns
        if loop > 0 and templates is not None:
            for rel, request, session, src, rec in templates:
                yield Shot(
                    offset_ns=base + rel,
                    seq=seq,
                    request=request,
                    session=session,
                    stream=opts.stream,
                    source=src,
                    recorded=rec,
                    loop=loop,
                )
                seq += 1
            continue
        rows = per_batch(source(lo, hi), lambda c: planned_rows(c, opts.include_junk))
        for t, reason, request, session, src, rec in rows:
            if t_first is None:
                t_first = t
            if loop == 0:
                t_last = t
                count += 1
            if reason is not None:
                if loop == 0:
                    st.skip(reason)
                continue
            rel = round((t - t_first) / opts.speed)
            shot = Shot(
                offset_ns=base + rel,
                seq=seq,
                request=request,
                session=session,
                stream=opts.stream,
                source=src,
                recorded=rec,
                loop=loop,
            )
            if loop == 0 and templates is not None:
                kept += len(shot.request.body or b"")
                if len(templates) < TEMPLATE_LIMIT and kept <= TEMPLATE_BYTES:
                    templates.append((rel, shot.request, shot.session, shot.source, shot.recorded))  # type: ignore[arg-type]
                else:
                    templates = None
            yield shot
            seq += 1
            if loop == 0:
                st.planned += 1
        if t_first is None:
            return  # an empty window: nothing to loop
        if loop == 0:
            if hi is not None:
                window = hi - t_first
            else:
                mean_gap = (t_last - t_first) / (count - 1) if count > 1 else 1e9
                window = round(t_last - t_first + mean_gap)
            period_ns = round(window / opts.speed)


def paced(shots: Iterable[Shot], rate: float) -> Iterator[Shot]:
    """The same requests in the same order, re-timed to a constant rate (`--rate`, sweeps over
    rates): shot i is due at i / rate seconds."""
    if not rate > 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    for i, s in enumerate(shots):
        s.offset_ns = round(i * 1e9 / rate)
        yield s
