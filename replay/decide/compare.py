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

from captures.errors import UserError
from replay.decide.report.model import parse_by
from replay.measure.metrics import METRICS, status_class, timings
from replay.measure.resultsdir import Results

from .slo import percentile_of

DEFAULT_RULES = ("latency.p50=+10%", "latency.p99=+10%", "ttft.p99=+10%", "error_rate=+1pp")
SAMPLE_CAP = 10_000
RESAMPLES = 400
SAMPLE_COLUMNS = [
    "stream",
    "target",
    "api",
    "endpoint",
    "model",
    "status",
    "error_kind",
    "outcome",
    "intended_ns",
    "sent_ns",
    "headers_ns",
    "first_token_ns",
    "first_text_ns",
    "end_ns",
    "completion_tokens",
    "token_offsets_us",
]


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
    continuity floor so zero-error runs do not claim certainty)."""
    p0, p1 = k0 / n0, k1 / n1
    se = math.sqrt(max(p0 * (1 - p0), 0.5 / n0) / n0 + max(p1 * (1 - p1), 0.5 / n1) / n1)
    d = p1 - p0
    return d, d - 1.96 * se, d + 1.96 * se


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


def judge(rule: Rule, base_value: float, diff: tuple[float, float, float]) -> tuple[bool, float]:
    """(regression?, allowed increase in the metric's unit) for one rule and measured change."""
    point, low, _ = diff
    allowed = rule.allow * base_value if rule.kind == "rel" else rule.allow
    return point > allowed and low > 0, allowed


# -- samples --------------------------------------------------------------------------------------
def samples(results: Results, by: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Per group (projected on `by`): per-request samples of each timing metric (us) and the
    failure count."""
    t = results.table(SAMPLE_COLUMNS).to_pydict()
    n = len(t["end_ns"])
    classes = [status_class(s, e) for s, e in zip(t["status"], t["error_kind"], strict=True)]
    cols = {
        "stream": t["stream"],
        "target": [x or "" for x in t["target"]],
        "api": [x or "" for x in t["api"]],
        "endpoint": t["endpoint"],
        "model": [x or "" for x in t["model"]],
        "status": classes,
    }
    keys = list(zip(*(cols[d] for d in by), strict=True)) if by else [()] * n
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    rows_of: dict[tuple[str, ...], list[int]] = {}
    for i, k in enumerate(keys):
        rows_of.setdefault(k, []).append(i)

    t_us = timings(t)
    failed = np.array([o == "failed" for o in t["outcome"]], dtype=bool)
    for k, rows in rows_of.items():
        idx = np.array(rows, dtype=np.int64)
        d: dict[str, Any] = {"count": len(rows), "failed": int(failed[idx].sum())}
        for m in ("latency", "service", "lag"):
            d[m] = t_us[m][idx]
        for m in ("ttfb", "ttft", "ttft_text", "tpot"):  # -1: the request has none
            v = t_us[m][idx]
            d[m] = v[v >= 0]
        d["itl"] = t_us["itl"][np.isin(t_us["itl_row"], idx)]
        out[k] = d
    return out


def _cap(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return v if len(v) <= SAMPLE_CAP else rng.choice(v, SAMPLE_CAP, replace=False)


def compare(
    base: Results,
    cur: Results,
    rules: list[Rule],
    by: str | None = None,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    dims = parse_by(by, base.metrics)
    if by is None and any(k[1] for k in cur.metrics.hists) and "target" not in dims:
        dims = parse_by(None, cur.metrics)
    sb, sc = samples(base, dims), samples(cur, dims)
    rng = np.random.default_rng(seed)
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
                bv, cv = b[m], c[m]
                if not len(bv) or not len(cv):
                    continue
                row: dict[str, Any] = {
                    "metric": f"{m}.{stat}",
                    "baseline": round(float(statistic(bv, stat)) / 1000, 3),
                    "current": round(float(statistic(cv, stat)) / 1000, 3),
                }
                row["change"] = _rel(row["baseline"], row["current"])
                rule = next((r for r in rules if r.metric == m and r.stat == stat), None)
                need = samples_needed(stat)
                if rule is not None and (need is None or min(len(bv), len(cv)) < need):
                    row.update(
                        rule=rule.text,
                        regression=False,
                        note="not judged: max is one sample"
                        if need is None
                        else f"not judged: needs {need} samples per run",
                    )
                elif rule is not None:
                    point, low, high = bootstrap_diff(
                        _cap(bv, rng), _cap(cv, rng), stat, resamples=resamples, seed=seed
                    )
                    regressed, allowed = judge(
                        rule, row["baseline"], (point / 1000, low / 1000, high / 1000)
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
        if rule is not None:
            d = proportion_diff(b["failed"], b["count"], c["failed"], c["count"])
            regressed, allowed = judge(rule, er_b, d)
            row.update(rule=rule.text, ci=[round(d[1], 6), round(d[2], 6)], regression=regressed)
        rows.append(row)
        g["metrics"] = rows
        groups.append(g)
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
        "groups": groups,
        "regressions": regressions,
    }


def _rel(a: float, b: float) -> float | None:
    return round((b - a) / a, 6) if a else None
