"""The replay stream: a capture's requests at their recorded timing (windowed, scaled, looped,
re-paced to a constant rate, amplified), and `loadtape replay`'s options, which make one such
stream per target plus any `--synthetic` stress streams sampling the same capture."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from captures.errors import CaptureError, UserError
from captures.filters import RowFilter
from captures.reader import Capture
from captures.rows import Chunk
from replay import plan as planmod
from replay import planrows
from replay.measure.results import Expect
from replay.rewrite import Rewriter
from replay.settings import RunSettings, StreamPlan
from replay.targets import (
    Target,
    mask_url,
    parse_header_args,
    parse_model_map,
    parse_target,
    parse_targets,
    scoped,
)

from .stress import synthetic_from_flag
from .synthetic import amplify as amplify_shots


def capture_source(
    cap: Capture, filt: RowFilter | None
) -> Callable[[int, int | None], Iterable[Chunk]]:
    base = filt or RowFilter()

    def source(lo: int, hi: int | None) -> Iterator[Chunk]:
        start = lo if base.start_ns is None else max(lo, base.start_ns)
        if base.end_ns is None or hi is None:
            end = hi if base.end_ns is None else base.end_ns
        else:
            end = min(hi, base.end_ns)
        f = RowFilter(
            methods=base.methods,
            path_globs=base.path_globs,
            models=base.models,
            statuses=base.statuses,
            start_ns=start,
            end_ns=end,
        )
        # small slices: a slice's Python lists are made holding the GIL (larger ones measured
        # no cheaper a row: 128, 512 and 2048 rows alike within the noise)
        return cap.chunks(planrows.PLAN_COLUMNS, f, batch_size=128)

    return source


@dataclass
class ReplayOptions:
    capture: str
    target: str | list[str]  # a URL, or NAME=URL items for several targets
    out: str | None = None
    force: bool = False
    skip_damaged: bool = False  # a damaged capture part is left out (and said), not an error
    include_junk: bool = False  # client aborts and HTTP/2 prefaces are replayed too
    speed: float = 1.0
    from_s: float = 0.0
    to_s: float | None = None
    duration_s: float | None = None
    loops: int = 1
    sessions: str = "none"  # none | ordered
    history: str = "recorded"  # recorded | live
    concurrency: int | None = None  # closed loop with N workers
    requests: int | None = None  # stop after this many shots (loops the capture as needed)
    max_in_flight: int = 1000
    timeout_s: float = 60.0
    headers: list[str] = field(default_factory=list)
    model_map: list[str] = field(default_factory=list)
    expect_status: str = ""
    filt: RowFilter | None = None
    client: str = "fast"  # fast | aiohttp
    insecure: bool = False
    keep_host: bool = False
    spin_ms: float = 1.5
    send_slack_s: float = 0.0
    rt_priority: int = 0
    warm_up: bool = True
    stream: str = "replay"
    amplify: float = 1.0
    amplify_mode: str = "spread"
    salt_prompts: bool = False
    seed: int = 0
    synthetic: list[str] = field(default_factory=list)  # --synthetic specs
    env: dict[str, str] | None = None
    rate: float | None = None  # constant rate, recorded order (instead of recorded timing)
    workers: int = 1
    ray: str | None = None

    def settings(self) -> RunSettings:
        return RunSettings(
            out=self.out,
            force=self.force,
            concurrency=self.concurrency,
            max_in_flight=self.max_in_flight,
            sessions=self.sessions,
            history=self.history,
            requests=self.requests,
            timeout_s=self.timeout_s,
            client=self.client,
            insecure=self.insecure,
            spin_ms=self.spin_ms,
            send_slack_s=self.send_slack_s,
            rt_priority=self.rt_priority,
            warm_up=self.warm_up,
            workers=self.workers,
            ray=self.ray,
        )


def make_rewriter(
    target: str | Target,
    headers: list[str],
    model_map: list[str],
    keep_host: bool,
    env: dict[str, str] | None = None,
) -> Rewriter:
    set_headers, remove_headers = parse_header_args(headers, env)
    return Rewriter(
        parse_target(target) if isinstance(target, str) else target,
        set_headers=set_headers,
        remove_headers=remove_headers,
        model_map=parse_model_map(model_map),
        keep_host=keep_host,
    )


def replay_stream(
    name: str,
    capture: str,
    rewriter: Rewriter,
    *,
    speed: float = 1.0,
    from_s: float = 0.0,
    to_s: float | None = None,
    duration_s: float | None = None,
    loops: int = 1,
    filt: RowFilter | None = None,
    amplify: float = 1.0,
    amplify_mode: str = "spread",
    salt_prompts: bool = False,
    seed: int = 0,
    start_s: float = 0.0,
    expect: Expect | None = None,
    rate: float | None = None,
    skip_damaged: bool = False,
    include_junk: bool = False,
) -> StreamPlan:
    """A replay stream: the capture's window, scaled, looped, amplified, starting at start_s."""
    popts = planmod.PlanOptions(
        speed=speed,
        start_s=from_s,
        end_s=to_s,
        duration_s=duration_s,
        loops=loops,
        stream=name,
        include_junk=include_junk,
    )
    try:
        popts.validate()
        if not 1 <= amplify < math.inf:
            raise ValueError(f"--amplify must be a finite number >= 1, got {amplify}")
        if amplify_mode not in ("spread", "burst"):
            raise ValueError(f"--amplify-mode must be spread or burst, got {amplify_mode!r}")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cap = Capture(capture, skip_damaged=skip_damaged)
    span = cap.time_span()
    if span is None:
        raise CaptureError(f"{capture}: the capture holds no requests")
    stats = planmod.PlanStats()
    shots: Iterable[planmod.Shot] = planmod.plan_replay(
        capture_source(cap, filt), span[0], popts, stats
    )
    first = next(iter(shots), None)  # a plan that matches nothing is bad input, said now
    if first is None:
        raise UserError(_nothing_matched(capture, cap, popts, filt, stats))
    shots = itertools.chain([first], shots)
    if rate is not None:
        if not rate > 0:
            raise UserError(f"--rate must be > 0, got {rate}")
        shots = planmod.paced(shots, rate)
    if amplify > 1:
        shots = amplify_shots(shots, amplify, mode=amplify_mode, seed=seed, salt=salt_prompts)
    if start_s:
        shots = _shifted(shots, round(start_s * 1e9))
    planned, end_s = _planned(cap, popts, span, loops * amplify, rate)
    return StreamPlan(
        name,
        shots,
        rewriter,
        expect or Expect(),
        stats,
        describe={
            "kind": "replay",
            "capture": str(Path(capture).resolve()),
            "capture_id": cap.capture_id,
            "speed": speed,
            "rate": rate,
            "loops": loops,
            "amplify": amplify,
            "start_s": start_s,
        },
        planned=planned,
        planned_approx=filt is not None or amplify != int(amplify),
        planned_end_s=start_s + end_s if end_s is not None else None,
    )


def _planned(
    cap: Capture,
    popts: planmod.PlanOptions,
    span: tuple[int, int],
    copies: float,
    rate: float | None,
) -> tuple[int, float | None]:
    """Requests in the window (one column read, before filters) times the copies, and when
    the last is due (seconds after the stream's start)."""
    lo, hi = popts.window_ns(span[0])
    n, first, last = 0, None, None
    for b in cap.batches(["req_start_ns"]):
        t = b.column(0).to_numpy(zero_copy_only=False)
        t = t[(t >= lo) & (t < hi)] if hi is not None else t[t >= lo]
        if len(t):
            n += len(t)
            first = int(t.min()) if first is None else min(first, int(t.min()))
            last = int(t.max()) if last is None else max(last, int(t.max()))
    total = round(n * copies)
    if first is None or last is None:
        return total, None
    if rate is not None:
        return total, total / rate
    one = (last - first) / 1e9 / popts.speed
    return total, one * popts.loops


def _nothing_matched(
    capture: str,
    cap: Capture,
    popts: planmod.PlanOptions,
    filt: RowFilter | None,
    stats: planmod.PlanStats,
) -> str:
    """Why a replay's plan is empty, in one line: the window, the filters, what was skipped."""
    why = []
    if popts.start_s or popts.end_s is not None or popts.duration_s is not None:
        span = cap.time_span()
        length = (span[1] - span[0]) / 1e9 if span else 0.0
        end = (
            popts.end_s
            if popts.end_s is not None
            else (popts.start_s + popts.duration_s if popts.duration_s is not None else None)
        )
        window = (
            f"{popts.start_s:g}s to {end:g}s" if end is not None else f"from {popts.start_s:g}s"
        )
        why.append(f"the window {window} (the capture spans {length:.1f}s)")
    if filt is not None and not filt.is_empty():
        why.append(f"the filters {filt.describe()}")
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items()))
    tail = f"; skipped: {skipped}" if skipped else ""
    return (
        f"{capture}: nothing to replay: no request matches "
        + (" and ".join(why) if why else "the capture")
        + tail
    )


def _shifted(shots: Iterable[planmod.Shot], by_ns: int) -> Iterator[planmod.Shot]:
    for s in shots:
        s.offset_ns += by_ns
        yield s


def build_replay(opts: ReplayOptions) -> tuple[list[StreamPlan], dict[str, Any]]:
    """The streams of a replay and what run.json says of it (no traffic, no clock)."""
    targets = parse_targets([opts.target] if isinstance(opts.target, str) else opts.target)
    names = [t.name for t in targets if t.name]
    headers, headers_for = scoped(opts.headers, names)
    model_map, model_map_for = scoped(opts.model_map, names)
    expect = Expect.parse(opts.expect_status)
    loops = opts.loops if opts.requests is None else 10**9
    window_s = _replay_window_s(opts) if opts.synthetic else 0.0
    streams = []
    for t in targets:
        rewriter = make_rewriter(
            t,
            headers + headers_for.get(t.name, []),
            model_map + model_map_for.get(t.name, []),
            opts.keep_host,
            opts.env,
        )
        streams.append(
            replay_stream(
                opts.stream,
                opts.capture,
                rewriter,
                speed=opts.speed,
                from_s=opts.from_s,
                to_s=opts.to_s,
                duration_s=opts.duration_s,
                loops=loops,
                filt=opts.filt,
                amplify=opts.amplify,
                amplify_mode=opts.amplify_mode,
                salt_prompts=opts.salt_prompts,
                seed=opts.seed,
                expect=expect,
                rate=opts.rate,
                skip_damaged=opts.skip_damaged,
                include_junk=opts.include_junk,
            )
        )
        if opts.synthetic:
            for i, spec in enumerate(opts.synthetic):
                streams.append(
                    synthetic_from_flag(
                        spec, i, opts.capture, rewriter, expect, window_s, opts.seed
                    )
                )
    info = {
        "capture": {
            "path": str(Path(opts.capture).resolve()),
            "capture_id": Capture(opts.capture).capture_id,
        },
        "options": _public_options(opts),
    }
    return streams, info


def _replay_window_s(opts: ReplayOptions) -> float:
    """How long the replay stream runs (for a --synthetic stream without its own duration)."""
    span = Capture(opts.capture).time_span()
    length = (span[1] - span[0]) / 1e9 if span else 0.0
    if opts.to_s is not None:
        length = min(length, opts.to_s) - opts.from_s
    elif opts.duration_s is not None:
        length = opts.duration_s
    else:
        length -= opts.from_s
    return max(length, 1.0) * opts.loops / opts.speed


def _public_options(opts: ReplayOptions) -> dict[str, Any]:
    """The run's options as recorded in run.json: header values never, only their names."""
    d = asdict(opts)
    d.pop("env", None)
    d["target"] = (
        mask_url(opts.target)
        if isinstance(opts.target, str)
        else [
            f"{t.name}={mask_url(t.url)}" if t.name else mask_url(t.url)
            for t in parse_targets(opts.target)
        ]
    )
    d["headers"] = [
        h.partition(":")[0].strip() + (": <set>" if h.partition(":")[2].strip() else ": <removed>")
        for h in opts.headers
    ]
    d["filt"] = (
        {k: (sorted(v) if isinstance(v, frozenset) else v) for k, v in asdict(opts.filt).items()}
        if opts.filt
        else None
    )
    return d
