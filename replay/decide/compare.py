"""`loadtape compare BASELINE CURRENT`: per group and metric, both values and the change, and a
noise-aware verdict on regressions.

A rule allows a metric to grow by so much: `latency.p99=+10%` (relative), `ttft.p99=+50ms`
(absolute), `error_rate=+1pp` (percentage points). A change is a regression when

1. the point change (current - baseline, on the per-request samples) exceeds the allowance, and
2. the change is real: the lower bound of a 95 % bootstrap interval of the difference of the two
   runs' statistic (percentile difference; for error rates the normal interval of the difference
   of two proportions) is above zero.

(1) alone fails a CI job on noise (the same gateway measured twice moves a p99 by more than 10 %
on a few hundred requests); (2) alone fails it on changes too small to matter. Samples are read
from results.parquet (capped at 10,000 per group and metric, seeded subsample), so the values here
are exact where the report's are within histogram precision.

The core (`bootstrap_diff`, `judge`, `parse_rule`) is pure and tested by tables.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from captures import hdr
from captures.errors import UserError
from replay.decide.report.model import groups, parse_by, run_view, several_targets
from replay.decide.report.text import machine_note
from replay.measure.metrics import METRICS
from replay.measure.resultsdir import Results

from .samples import Reservoir, samples
from .slo import percentile_of

DEFAULT_RULES = ("latency.p50=+10%", "latency.p99=+10%", "ttft.p99=+10%", "error_rate=+1pp")
RESAMPLES = 400


@dataclass(frozen=True)
class Rule:
    text: str
    metric: str  # latency, ttft, ... or error_rate
    stat: str | None  # p50, p99.9, mean, max
    allow: float  # fraction (relative), ms (absolute), or a fraction of requests (pp)
    kind: str  # "rel" | "abs" | "pp"


_RULE = re.compile(
    r"^\s*(?P<metric>[a-z_]+)(?:\.(?P<stat>p\d+(?:\.\d+)?|mean|max))?\s*=\s*\+?"
    r"(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>%|pp|ms|s|us)\s*$"
)


def parse_rule(text: str) -> Rule:
    m = _RULE.match(text)
    if m is None:
        raise UserError(
            f"--max-regression {text!r}: want METRIC.STAT=+N% or +Nms (e.g. latency.p99=+10%, "
            "ttft.p99=+50ms) or error_rate=+Npp"
        )
    metric, stat, num, unit = m.group("metric", "stat", "num", "unit")
    value = float(num)
    if metric == "error_rate":
        if stat or unit not in ("pp", "%"):
            raise UserError(f"--max-regression {text!r}: error_rate takes +Npp (points), e.g. +1pp")
        return Rule(text.strip(), metric, None, value / 100, "pp")
    if metric not in METRICS:
        raise UserError(
            f"--max-regression {text!r}: unknown metric {metric!r} (want {', '.join(METRICS)} "
            "or error_rate)"
        )
    if stat is None:
        raise UserError(f"--max-regression {text!r}: {metric} needs a statistic, e.g. {metric}.p99")
    if stat.startswith("p") and percentile_of(stat) is None:
        raise UserError(f"--max-regression {text!r}: percentile out of range")
    if unit == "pp":
        raise UserError(f"--max-regression {text!r}: pp is for error_rate; use % or ms")
    if unit == "%":
        return Rule(text.strip(), metric, stat, value / 100, "rel")
    scale = {"ms": 1.0, "s": 1000.0, "us": 0.001}[unit]
    return Rule(text.strip(), metric, stat, value * scale, "abs")


def statistic(values: np.ndarray, stat: str) -> np.ndarray:
    """The statistic along the last axis (percentiles as HdrHistogram ranks them)."""
    if stat == "mean":
        out: np.ndarray = values.mean(axis=-1)
        return out
    if stat == "max":
        return np.asarray(values.max(axis=-1))
    p = percentile_of(stat)
    assert p is not None
    n = values.shape[-1]
    k = max(int(p / 100 * n + 0.5), 1) - 1
    return np.asarray(np.partition(values, k, axis=-1)[..., k])


def bootstrap_diff(
    base: np.ndarray, cur: np.ndarray, stat: str, *, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """(point difference cur - base, 95 % interval low, high) of the statistic, by resampling
    each run's samples with replacement."""
    rng = np.random.default_rng(seed)
    point = float(statistic(cur, stat) - statistic(base, stat))
    diffs = np.empty(resamples)
    step = max(1, 2_000_000 // max(len(base), len(cur), 1))  # resamples per block: bounded memory
    for lo in range(0, resamples, step):
        hi = min(lo + step, resamples)
        b = base[rng.integers(0, len(base), (hi - lo, len(base)))]
        c = cur[rng.integers(0, len(cur), (hi - lo, len(cur)))]
        diffs[lo:hi] = statistic(c, stat) - statistic(b, stat)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return point, float(low), float(high)


def proportion_diff(k0: int, n0: int, k1: int, n1: int) -> tuple[float, float, float]:
    """(p1 - p0, 95 % interval) for two error proportions (normal approximation, with a
    continuity floor so zero-error runs do not claim certainty), the interval clamped to what
    a difference of two proportions can be (-1..1)."""
    p0, p1 = k0 / n0, k1 / n1
    se = math.sqrt(max(p0 * (1 - p0), 0.5 / n0) / n0 + max(p1 * (1 - p1), 0.5 / n1) / n1)
    d = p1 - p0
    return d, max(-1.0, d - 1.96 * se), min(1.0, d + 1.96 * se)


MIN_RATE_N = 30  # requests in each run before a change in error rate is judged
MIN_CHANGE_MS = 1.0  # default floor: a timing change smaller than this is never a regression


MIN_TAIL = 10  # samples beyond a percentile, in each run, before it is judged


def samples_needed(stat: str | None) -> int | None:
    """How many samples a run needs before a change in this statistic is judged: a bootstrap
    of a tail percentile from a handful of tail samples is too narrow (it claimed regressions
    between two draws of one distribution when tried on p99 of 250 requests). None: never
    (the max is one sample)."""
    if stat == "max":
        return None
    p = percentile_of(stat)
    if p is None or p <= 50:
        return 2 * MIN_TAIL
    return math.ceil(MIN_TAIL / (1 - p / 100)) if p < 100 else None


def judge(
    rule: Rule, base_value: float, diff: tuple[float, float, float], floor: float = 0.0
) -> tuple[bool, float]:
    """(regression?, allowed increase in the metric's unit) for one rule and measured change.
    `floor`: the least change that can matter, whatever the rule allows (a +17 % on a 0.47 ms
    p50 is 0.08 ms: measured, real, and nothing anyone would act on)."""
    point, low, _ = diff
    allowed = rule.allow * base_value if rule.kind == "rel" else rule.allow
    allowed = max(allowed, floor)
    return point > allowed and low > 0, allowed


def compare(
    base: Results,
    cur: Results,
    rules: list[Rule],
    by: str | None = None,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    min_change_ms: float = MIN_CHANGE_MS,
) -> dict[str, Any]:
    dims = parse_by(by, base.metrics)
    if by is None and several_targets(cur.metrics) and "target" not in dims:
        dims = parse_by(None, cur.metrics)
    sb, sc = samples(base, dims, seed), samples(cur, dims, seed + 1)
    hb, hc = _group_hists(base, dims), _group_hists(cur, dims)
    show_stats = ("p50", "p90", "p99")
    groups = []
    for key in sorted(set(sb) | set(sc)):
        label = " ".join(f"{d}={v}" for d, v in zip(dims, key, strict=True) if v) or "all"
        g: dict[str, Any] = {"key": dict(zip(dims, key, strict=True)), "label": label}
        if key not in sb or key not in sc:
            g["only_in"] = "current" if key not in sb else "baseline"
            groups.append(g)
            continue
        b, c = sb[key], sc[key]
        g["count"] = {"baseline": b["count"], "current": c["count"]}
        rows = []
        wanted = {(r.metric, r.stat) for r in rules}
        for m in METRICS:
            for stat in dict.fromkeys([*show_stats, *(s for mm, s in wanted if mm == m and s)]):
                rb, rc = b[m], c[m]
                bv, cv = rb.values, rc.values
                if not len(bv) or not len(cv):
                    continue
                row: dict[str, Any] = {
                    "metric": f"{m}.{stat}",
                    "baseline": round(_point(rb, hb.get(key, {}).get(m), stat) / 1000, 3),
                    "current": round(_point(rc, hc.get(key, {}).get(m), stat) / 1000, 3),
                }
                row["change"] = _rel(row["baseline"], row["current"])
                rule = next((r for r in rules if r.metric == m and r.stat == stat), None)
                need = samples_needed(stat)
                if rule is not None and (need is None or min(rb.seen, rc.seen) < need):
                    row.update(
                        rule=rule.text,
                        regression=False,
                        note="not judged: max is one sample"
                        if need is None
                        else f"not judged: needs {need} samples per run",
                    )
                elif rule is not None:
                    point, low, high = bootstrap_diff(bv, cv, stat, resamples=resamples, seed=seed)
                    regressed, allowed = judge(
                        rule,
                        row["baseline"],
                        (point / 1000, low / 1000, high / 1000),
                        min_change_ms,
                    )
                    row.update(
                        rule=rule.text,
                        ci_ms=[round(low / 1000, 3), round(high / 1000, 3)],
                        allowed_ms=round(allowed, 3),
                        regression=regressed,
                    )
                rows.append(row)
        er_b, er_c = b["failed"] / b["count"], c["failed"] / c["count"]
        row = {
            "metric": "error_rate",
            "baseline": round(er_b, 6),
            "current": round(er_c, 6),
            "change": round(er_c - er_b, 6),
        }
        rule = next((r for r in rules if r.metric == "error_rate"), None)
        if rule is not None and min(b["count"], c["count"]) < MIN_RATE_N:
            row.update(
                rule=rule.text,
                regression=False,
                note=f"not judged: needs {MIN_RATE_N} requests per run",
            )
        elif rule is not None:
            d = proportion_diff(b["failed"], b["count"], c["failed"], c["count"])
            regressed, allowed = judge(rule, er_b, d)
            row.update(rule=rule.text, ci=[round(d[1], 6), round(d[2], 6)], regression=regressed)
        rows.append(row)
        g["metrics"] = rows
        groups.append(g)
    groups.sort(key=_order)
    regressions = [
        f"{g['label']}: {r['metric']}"
        for g in groups
        for r in g.get("metrics", [])
        if r.get("regression")
    ]
    return {
        "format": "loadtape-compare",
        "version": 1,
        "baseline": str(base.path),
        "current": str(cur.path),
        "by": list(dims),
        "rules": [r.text for r in rules],
        "min_change_ms": min_change_ms,
        "groups": groups,
        "regressions": regressions,
        # a run's machine busy, its cgroup throttled: a change may be the machine's, not the
        # target's (docs/replay.md)
        "machine_notes": {"baseline": _machine_note(base), "current": _machine_note(cur)},
    }


def _machine_note(res: Results) -> str | None:
    """What the run's report says of its machine (report/text.py machine_note)."""
    lag = res.metrics.total()[0].get("lag")
    p99 = hdr.value_at_percentile(lag, 99.0) / 1000 if lag is not None and lag.total_count else None
    return machine_note({"run": run_view(res.run), "total": {"metrics": {"lag": {"p99": p99}}}})


def _order(g: dict[str, Any]) -> tuple[int, int]:
    """Groups with a regression first, then by size; groups nothing could be judged on (in
    one run only, or too small for any rule) last."""
    rows = g.get("metrics", [])
    if any(r.get("regression") for r in rows):
        rank = 0
    elif "only_in" in g or not any("regression" in r and "note" not in r for r in rows):
        rank = 2
    else:
        rank = 1
    n = g.get("count", {})
    return rank, -max(n.get("baseline", 0), n.get("current", 0))


def _group_hists(res: Results, dims: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Each group's histograms (projected on `dims`), for the statistics of groups too big for
    their sample to hold every value."""
    out = {}
    for proj, keys in groups(res.metrics, dims).items():
        hs, _ = res.metrics.merged(keys)
        out[tuple(v or "" for v in proj)] = hs
    return out


def _point(res: Reservoir, hist: Any, stat: str) -> float:
    """A statistic (us): exact from the values when the sample holds them all, else from the
    run's histogram of the group (HdrHistogram, 3 significant digits), never from a sample."""
    if res.complete or hist is None or not hist.total_count:
        return float(statistic(res.values, stat))
    if stat == "mean":
        return hdr.mean(hist)
    if stat == "max":
        return float(hdr.value_at_percentile(hist, 100.0))
    p = percentile_of(stat)
    return float(hdr.value_at_percentile(hist, p if p is not None else 50.0))


def _rel(a: float, b: float) -> float | None:
    return round((b - a) / a, 6) if a else None
