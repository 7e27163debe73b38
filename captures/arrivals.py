"""Synthetic arrival processes and value distributions. Pure and seeded: the same spec and seed
give the same offsets.

Arrival specs (command line `kind:key=value,...`, or a TOML table with `process` and the keys):

| process | keys | inter-arrival times |
|---|---|---|
| constant | rate | exactly 1/rate |
| poisson | rate | exponential, mean 1/rate |
| gamma | rate, cv | gamma with mean 1/rate and coefficient of variation cv (cv > 1: bursty) |
| ramp | from, to, over | Poisson whose rate goes linearly from `from` to `to` over `over` |
| steps | steps = "RATE@DUR,RATE@DUR,..." | Poisson at each rate for its duration, in turn |

Distribution specs (prompt and output lengths): `fixed:N`, `uniform:LO:HI`, `normal:MEAN:SD`,
`lognormal:MEDIAN:SIGMA`, and (built by the request makers) `empirical:FILE`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .units import parse_duration

S = 1_000_000_000


@dataclass(frozen=True)
class Arrival:
    process: str
    rate: float = 0.0
    cv: float = 1.0
    r0: float = 0.0
    r1: float = 0.0
    over_s: float = 0.0
    steps: tuple[tuple[float, float], ...] = ()

    def mean_rate(self) -> float:
        if self.process == "ramp":
            return (self.r0 + self.r1) / 2
        if self.process == "steps":
            total = sum(d for _, d in self.steps)
            return sum(r * d for r, d in self.steps) / total if total else 0.0
        return self.rate

    def natural_duration_s(self) -> float | None:
        """How long the process lasts by itself (ramps and steps), or None (open-ended)."""
        if self.process == "ramp":
            return self.over_s
        if self.process == "steps":
            return sum(d for _, d in self.steps)
        return None


def _num(value: Any, what: str, positive: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: not a number: {value!r}") from None
    if not math.isfinite(v) or (positive and v <= 0) or v < 0:
        raise UserError(f"{what}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return v


def parse_kv(spec: str) -> tuple[str, dict[str, str]]:
    """'poisson:rate=40,cv=2' -> ('poisson', {'rate': '40', 'cv': '2'})"""
    kind, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    last = ""
    if rest.strip():
        for item in rest.split(","):
            k, sep, v = item.partition("=")
            if not sep and last:  # 'steps=10@5s,50@5s': a list value goes on after a comma
                params[last] += "," + item.strip()
                continue
            if not sep or not k.strip():
                raise UserError(f"{spec!r}: want KIND:key=value,... (bad part {item!r})")
            last = k.strip()
            params[last] = v.strip()
    return kind.strip().lower(), params


def arrival_from(params: Mapping[str, Any], where: str = "arrival") -> Arrival:
    process = str(params.get("process", "")).lower()
    known = {
        "constant": {"rate"},
        "poisson": {"rate"},
        "gamma": {"rate", "cv"},
        "ramp": {"from", "to", "over"},
        "steps": {"steps"},
    }
    if process not in known:
        raise UserError(f"{where}: unknown process {process!r} (want {', '.join(known)})")
    extra = set(params) - known[process] - {"process", "start", "duration", "count", "seed"}
    if extra:
        raise UserError(f"{where}: unknown key(s) for {process}: {', '.join(sorted(extra))}")
    missing = known[process] - set(params) - ({"cv"} if process == "gamma" else set())
    if missing:
        raise UserError(f"{where}: {process} needs {', '.join(sorted(missing))}")
    if process in ("constant", "poisson"):
        return Arrival(process, rate=_num(params["rate"], f"{where}.rate"))
    if process == "gamma":
        return Arrival(
            process,
            rate=_num(params["rate"], f"{where}.rate"),
            cv=_num(params.get("cv", 1.0), f"{where}.cv"),
        )
    if process == "ramp":
        try:
            over = parse_duration(params["over"])
        except ValueError as exc:
            raise UserError(f"{where}.over: {exc}") from None
        if over <= 0:
            raise UserError(f"{where}.over: must be > 0")
        return Arrival(
            process,
            r0=_num(params["from"], f"{where}.from", positive=False),
            r1=_num(params["to"], f"{where}.to", positive=False),
            over_s=over,
        )
    steps = []
    raw = params["steps"]
    items = re.split(r"[,;]", raw) if isinstance(raw, str) else list(raw)
    for item in items:
        rate, sep, dur = str(item).partition("@")
        if not sep:
            raise UserError(f"{where}.steps: want RATE@DURATION,..., got {item!r}")
        try:
            d = parse_duration(dur)
        except ValueError as exc:
            raise UserError(f"{where}.steps: {exc}") from None
        steps.append((_num(rate, f"{where}.steps rate", positive=False), d))
    if not steps:
        raise UserError(f"{where}.steps: empty")
    return Arrival(process, steps=tuple(steps))


def parse_arrival(spec: str) -> Arrival:
    kind, params = parse_kv(spec)
    return arrival_from({"process": kind, **params}, where=spec)


def offsets(arrival: Arrival, duration_s: float, seed: int) -> Iterator[int]:
    """Arrival offsets in ns from the stream's start, in [0, duration)."""
    rng = random.Random(seed)
    end = duration_s * S
    p = arrival.process
    if p == "constant":
        step = S / arrival.rate
        k = 0
        while k * step < end:
            yield round(k * step)
            k += 1
        return
    if p in ("poisson", "gamma"):
        draw: Callable[[], float]
        if p == "gamma":
            shape = 1.0 / (arrival.cv**2)
            scale = 1.0 / (arrival.rate * shape)

            def draw() -> float:
                return rng.gammavariate(shape, scale)
        else:

            def draw() -> float:
                return rng.expovariate(arrival.rate)

        t = draw() * S
        while t < end:
            yield round(t)
            t += draw() * S
        return
    if p == "ramp":
        # Inhomogeneous Poisson by inversion: Lambda(t) = r0 t + (r1 - r0) t^2 / (2 T) on [0, T],
        # then r1 after T. Unit-rate arrivals E mapped through Lambda^-1.
        r0, r1, T = arrival.r0, arrival.r1, arrival.over_s
        a = (r1 - r0) / (2 * T)
        lam_T = r0 * T + a * T * T
        e = rng.expovariate(1.0)
        while True:
            if e <= lam_T:
                if abs(a) < 1e-12:
                    t = e / r0 if r0 > 0 else math.inf
                else:
                    t = (-r0 + math.sqrt(r0 * r0 + 4 * a * e)) / (2 * a)
            else:
                t = T + (e - lam_T) / r1 if r1 > 0 else math.inf
            if t * S >= end or math.isinf(t):
                return
            yield round(t * S)
            e += rng.expovariate(1.0)
    if p == "steps":
        base = 0.0
        for rate, dur in arrival.steps:
            t = base + (rng.expovariate(rate) if rate > 0 else dur)
            while t < base + dur and t * S < end:
                yield round(t * S)
                t += rng.expovariate(rate)
            base += dur
            if base * S >= end:
                return
        return
    raise UserError(f"unknown arrival process {p!r}")


# -- distributions -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    kind: str
    a: float = 0.0
    b: float = 0.0
    values: tuple[int, ...] = ()

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            v = self.a
        elif self.kind == "uniform":
            v = rng.uniform(self.a, self.b)
        elif self.kind == "normal":
            v = rng.gauss(self.a, self.b)
        elif self.kind == "lognormal":
            v = rng.lognormvariate(math.log(self.a), self.b)
        elif self.kind == "empirical":
            v = rng.choice(self.values)
        else:  # pragma: no cover - parse_dist validates
            raise ValueError(self.kind)
        return max(1, round(v))


def parse_dist(spec: str | int, what: str, empirical: Sequence[int] | None = None) -> Dist:
    if isinstance(spec, int) and not isinstance(spec, bool):
        return Dist("fixed", a=float(spec))
    parts = str(spec).split(":")
    kind = parts[0].strip().lower()
    args = parts[1:]
    try:
        if kind == "fixed" and len(args) == 1:
            return Dist("fixed", a=_num(args[0], what))
        if kind == "uniform" and len(args) == 2:
            lo, hi = _num(args[0], what), _num(args[1], what)
            if hi < lo:
                raise UserError(f"{what}: uniform needs LO <= HI")
            return Dist("uniform", a=lo, b=hi)
        if kind == "normal" and len(args) == 2:
            return Dist("normal", a=_num(args[0], what), b=_num(args[1], what, positive=False))
        if kind == "lognormal" and len(args) == 2:
            return Dist("lognormal", a=_num(args[0], what), b=_num(args[1], what, positive=False))
        if kind == "empirical" and empirical is not None:
            if not empirical:
                raise UserError(f"{what}: the empirical source has no values")
            return Dist("empirical", values=tuple(int(v) for v in empirical))
        if kind.isdigit() and not args:
            return Dist("fixed", a=float(kind))
    except UserError:
        raise
    raise UserError(
        f"{what}: bad distribution {spec!r} (want fixed:N, uniform:LO:HI, normal:MEAN:SD, "
        "lognormal:MEDIAN:SIGMA or empirical:FILE)"
    )


def parse_mix(spec: str, what: str = "models") -> tuple[tuple[str, float], ...]:
    """'small:0.7,large:0.3' -> (('small', 0.7), ('large', 0.3)); weights need not sum to 1."""
    out = []
    for item in spec.split(","):
        name, sep, w = item.strip().rpartition(":")
        if not sep:
            name, w = item.strip(), "1"
        if not name:
            raise UserError(f"{what}: bad entry {item!r} (want NAME:WEIGHT,...)")
        out.append((name, _num(w, f"{what} weight of {name}")))
    return tuple(out)
