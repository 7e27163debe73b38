"""`loadtape sweep`: the same capture at rising load, one results directory per level, then the
throughput ceiling and the latency knee.

Levels are closed-loop concurrency (the same N requests at each level), open-loop speeds (the
recorded timing, scaled) or open-loop constant rates (the recorded requests in order). The
decisions are pure functions of the per-level figures (`ceiling`, `knee`), tested by tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from captures.errors import UserError
from captures.store import mkdir_private
from replay.api import run_replay
from replay.measure.resultsdir import Results
from replay.settings import RunSummary
from replay.workload.replaying import ReplayOptions

from .report import build
from .report.text import machine_note
from .slo import evaluate

KINDS = {"concurrency": "concurrency", "speeds": "speed", "rates": "rate"}


@dataclass(frozen=True)
class SweepOptions:
    kind: str  # concurrency | speeds | rates
    levels: tuple[float, ...]
    out: Path
    level_duration_s: float = 10.0  # rates: requests per level = rate * this (unless --requests)
    p99_limit_ms: float | None = None
    stop_error_rate: float | None = None  # a fraction
    tolerance: float = 0.05
    gates: tuple[Any, ...] = ()  # --slo: evaluated at every level; the first failing one named

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"sweep: want --concurrency, --speeds or --rates, not {self.kind}")
        if not self.levels:
            raise UserError("sweep: no levels")
        if any(not v > 0 for v in self.levels):
            raise UserError(f"--{self.kind}: every level must be > 0")
        if list(self.levels) != sorted(set(self.levels)):
            raise UserError(f"--{self.kind}: levels must rise (e.g. 1,10,50)")
        if self.kind == "concurrency" and any(v != int(v) for v in self.levels):
            raise UserError("--concurrency: whole numbers")
        if not 0 <= self.tolerance < 1:
            raise UserError("--tolerance must be in [0, 1)")


def parse_levels(text: str, flag: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(
            f"{flag} {text!r}: want numbers separated by commas, e.g. 1,10,50"
        ) from None
    if not vals:
        raise UserError(f"{flag}: no levels")
    return vals


# -- decisions (pure) -----------------------------------------------------------------------------
def ceiling(points: Sequence[tuple[float, float]], tolerance: float) -> dict[str, float] | None:
    """The throughput ceiling: the first level after which throughput rises by no more than
    `tolerance` (relative) at any higher level; None while it still rises at the last level
    (or with fewer than two levels: a ceiling needs a level above it to show).
    The figures say where each was measured: `throughput` at `level` (where the ceiling is
    reached), `peak` the highest at or above it, at `peak_level`."""
    for i in range(len(points) - 1):
        level, thr = points[i]
        if all(t <= thr * (1 + tolerance) for _, t in points[i + 1 :]):
            peak_level, peak = max(points[i:], key=lambda p: p[1])
            return {"level": level, "throughput": thr, "peak": peak, "peak_level": peak_level}
    return None


def knee(points: Sequence[tuple[float, float | None]], limit_ms: float) -> float | None:
    """The first level whose p99 crosses the limit (None if none does)."""
    for level, p99 in points:
        if p99 is not None and p99 > limit_ms:
            return level
    return None


# -- running --------------------------------------------------------------------------------------
def level_name(kind: str, value: float) -> str:
    return f"{KINDS[kind]}-{value:g}"


def level_options(base: ReplayOptions, opts: SweepOptions, value: float) -> ReplayOptions:
    out = str(opts.out / level_name(opts.kind, value))
    if opts.kind == "concurrency":
        return replace(base, out=out, concurrency=int(value), requests=base.requests or 1000)
    if opts.kind == "speeds":
        return replace(base, out=out, speed=value, concurrency=None)
    requests = base.requests or max(1, math.ceil(value * opts.level_duration_s))
    return replace(base, out=out, rate=value, concurrency=None, requests=requests)


def level_figures(kind: str, value: float, results: Results) -> dict[str, Any]:
    rep = build(results, by=[])
    t = rep["total"]
    lat, ttft, lag = (t["metrics"][m] for m in ("latency", "ttft", "lag"))
    return {
        "level": value,
        "dir": str(results.path),
        "count": t["count"],
        "ok": t["ok"],
        "failed": t["failed"],
        "error_rate": t["error_rate"],
        "throughput": t["throughput"],
        "goodput": t["goodput"],
        "scheduled_rate": results.run.get("scheduled_rate"),
        "latency_p50": lat["p50"],
        "latency_p95": lat["p95"],
        "latency_p99": lat["p99"],
        "ttft_p99": ttft["p99"],
        "lag_p99": lag["p99"],
        "tokens_per_s": t["tokens_per_s"],
        "interrupted": bool(results.run.get("interrupted")),
        # its machine busy or its cgroup throttled: the level's figures may be the machine's
        "machine": machine_note(rep),
    }


def run_sweep(
    base: ReplayOptions,
    opts: SweepOptions,
    *,
    on_level: Callable[[dict[str, Any]], None] | None = None,
    runner: Callable[[ReplayOptions], RunSummary] | None = None,
    on_start: Callable[[float, ReplayOptions], None] | None = None,
) -> dict[str, Any]:
    """Every level in turn; `on_start` before each (a level can run for minutes: say so),
    `on_level` with its figures after it."""
    opts.validate()
    if isinstance(base.target, list) and len(base.target) > 1:
        raise UserError("sweep: one --target (compare targets with replay --target NAME=URL)")
    run = runner or (lambda o: run_replay(o, install_signals=True))
    mkdir_private(opts.out)
    levels: list[dict[str, Any]] = []
    stopped = None
    for value in opts.levels:
        lopts = level_options(base, opts, value)
        if on_start is not None:
            on_start(value, lopts)
        r = run(lopts)
        res = Results(r.out_dir, r.run, r.metrics)
        fig = level_figures(opts.kind, value, res)
        if opts.gates:
            rows = evaluate(list(opts.gates), r.metrics)
            fig["slo_failed"] = [f"{x['expr']} (measured {x['measured_text']})" for x in rows
                                 if not x["pass"]]  # fmt: skip
            fig["slo_passed"] = sum(1 for x in rows if x["pass"])
        levels.append(fig)
        if on_level is not None:
            on_level(fig)
        if r.interrupted:
            stopped = f"interrupted at {level_name(opts.kind, value)}"
            break
        er = fig["error_rate"] or 0.0
        if opts.stop_error_rate is not None and er > opts.stop_error_rate:
            stopped = (
                f"error rate {er * 100:.2f}% > {opts.stop_error_rate * 100:g}% at "
                f"{level_name(opts.kind, value)}"
            )
            break
    doc = summarize(opts, levels, stopped)
    (opts.out / "sweep.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def summarize(
    opts: SweepOptions, levels: list[dict[str, Any]], stopped: str | None
) -> dict[str, Any]:
    # on goodput: a gateway shedding with fast 503s "gains throughput" it does not serve
    ceil = ceiling([(f["level"], f["goodput"] or 0.0) for f in levels], opts.tolerance)
    doc: dict[str, Any] = {
        "format": "loadtape-sweep",
        "version": 1,
        "kind": opts.kind,
        "levels": levels,
        "planned_levels": list(opts.levels),
        "tolerance": opts.tolerance,
        "ceiling": ceil,
        "max_throughput": max((f["throughput"] or 0.0 for f in levels), default=None),
        "p99_limit_ms": opts.p99_limit_ms,
        "knee": knee([(f["level"], f["latency_p99"]) for f in levels], opts.p99_limit_ms)
        if opts.p99_limit_ms is not None
        else None,
        "slo": [g.expr for g in opts.gates],
        # the knee by gate: the first level at which a gate fails, and which
        "slo_knee": next(
            (
                {"level": f["level"], "failed": f["slo_failed"]}
                for f in levels
                if f.get("slo_failed")
            ),
            None,
        )
        if opts.gates
        else None,
        "stopped": stopped,
    }
    return doc


def load(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((path / "sweep.json").read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: not a sweep directory ({exc})") from None
    return doc
