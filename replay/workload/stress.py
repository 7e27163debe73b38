"""`--synthetic` stress streams of `loadtape replay`: an arrival process that samples the
replayed capture's requests (so the stress looks like the real traffic), on the replay's
timeline."""

from __future__ import annotations

from captures.arrivals import Arrival, arrival_from, parse_kv
from captures.errors import UserError
from captures.units import parse_duration
from replay.measure.results import Expect
from replay.rewrite import Rewriter
from replay.settings import StreamPlan

from .makers import SampleMaker
from .synthetic import plan_synthetic


def _synthetic_count(arrival: Arrival, duration_s: float) -> int:
    return round(arrival.mean_rate() * duration_s)


def synthetic_from_flag(
    spec: str,
    i: int,
    capture: str,
    rewriter: Rewriter,
    expect: Expect,
    default_duration_s: float,
    seed: int,
) -> StreamPlan:
    """`--synthetic 'poisson:rate=40[,duration=2m,start=30s,name=stress]'`: a stress stream that
    samples the replayed capture (so it looks like the real traffic)."""
    kind, params = parse_kv(spec)
    name = params.pop("name", "synthetic" if i == 0 else f"synthetic-{i}")
    try:
        start = parse_duration(params.pop("start", "0"))
        duration = parse_duration(params.pop("duration")) if "duration" in params else None
    except ValueError as exc:
        raise UserError(f"--synthetic {spec!r}: {exc}") from None
    arrival = arrival_from({"process": kind, **params}, where=f"--synthetic {spec!r}")
    if duration is None:
        duration = arrival.natural_duration_s() or default_duration_s
    shots = plan_synthetic(
        arrival,
        duration,
        SampleMaker(capture, seed=seed + 1000 + i),
        seed=seed + 1000 + i,
        stream=name,
        start_s=start,
    )
    return StreamPlan(
        name,
        shots,
        rewriter,
        expect,
        None,
        describe={"kind": "synthetic", "spec": spec, "start_s": start, "duration_s": duration},
        planned=_synthetic_count(arrival, duration),
        planned_approx=True,
        planned_end_s=start + duration,
    )
