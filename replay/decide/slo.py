"""SLO gates: `--slo 'latency.p95<500ms'`, evaluated on a results directory's histograms.

Grammar (whitespace around the operator allowed):

    gate    := [scope ":"] measure op number [unit]
    scope   := dim "=" value ("," dim "=" value)*      dim: stream target endpoint model status
    measure := timing "." stat | rate
    timing  := latency | service | ttfb | ttft | itl | tpot | lag
    stat    := pN (any percentile, p99.9 too) | max | mean | min
    rate    := error_rate | success_rate | goodput | throughput | tokens_per_s | count
    op      := "<" | "<=" | ">" | ">="
    unit    := us | ms | s  (timings; none means ms)  |  % (error/success rate; none: a fraction)
               /s (goodput, throughput, tokens_per_s; optional)

The scope's value is everything between "=" and the next "," or the last ":" before the measure,
so model names with colons (`model=llama3:8b:ttft.p99<2s`) work. A gate whose scope matches no
requests fails ("no requests"): a gate that silently passes on nothing would hide a broken run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from captures import hdr
from captures.errors import UserError
from replay.decide.report.model import scoped
from replay.measure.metrics import GROUP_DIMS, METRICS, Metrics

RATES = ("error_rate", "success_rate", "goodput", "throughput", "tokens_per_s", "count")
TIME_UNITS = {"us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0}
OPS = ("<=", ">=", "<", ">")
_GATE = re.compile(
    r"^(?:(?P<scope>.*):)?\s*(?P<measure>[A-Za-z_][A-Za-z0-9_.]*)\s*"
    r"(?P<op><=|>=|<|>|==|=|!=)?\s*(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)?"
    r"\s*(?P<unit>\S*)\s*$",
    re.ASCII,  # digits are 0-9: a threshold in other scripts' digits is a typo, not a number
)


@dataclass(frozen=True)
class Gate:
    expr: str
    scope: tuple[tuple[str, str], ...]
    metric: str  # a timing metric or a rate name
    stat: str | None  # pN / max / mean / min for timings
    op: str
    threshold: float  # ms for timings; a fraction for error/success rate; per second for rates


def _bad(expr: str, pos: int, what: str) -> UserError:
    return UserError(f"--slo {expr!r}: {what} (at column {pos + 1})")


def parse_gate(expr: str) -> Gate:
    m = _GATE.match(expr)
    if not expr.strip() or m is None:
        raise UserError(f"--slo {expr!r}: want e.g. latency.p95<500ms or stream=chat:error_rate<1%")
    scope: list[tuple[str, str]] = []
    if m.group("scope") is not None:
        base = m.start("scope")
        for part in re.finditer(r"[^,]+", m.group("scope")):
            dim, eq, val = part.group().partition("=")
            pos = base + part.start()
            if not eq or not val.strip() or not dim.strip():
                raise _bad(expr, pos, f"scope {part.group()!r} is not dim=value")
            if dim.strip() not in GROUP_DIMS:
                raise _bad(
                    expr, pos, f"unknown scope {dim.strip()!r} (want {', '.join(GROUP_DIMS)})"
                )
            scope.append((dim.strip(), val.strip()))
    measure, mpos = m.group("measure"), m.start("measure")
    name, _, stat = measure.partition(".")
    op = m.group("op")
    if op is None:
        raise _bad(expr, m.end("measure"), "missing comparison (<, <=, >, >=)")
    if op not in OPS:
        raise _bad(expr, m.start("op"), f"operator {op!r} not allowed (want <, <=, >, >=)")
    if m.group("num") is None:
        raise _bad(expr, m.end("op"), "missing number after the operator")
    value = float(m.group("num"))
    npos = m.start("num")
    if not math.isfinite(value):
        raise _bad(expr, npos, f"threshold {m.group('num')} is not a finite number")
    if value < 0:
        raise _bad(expr, npos, "threshold must not be negative")
    unit, upos = m.group("unit"), m.start("unit")
    if name in METRICS:
        if not stat:
            raise _bad(expr, m.end("measure"), f"{name} needs a statistic, e.g. {name}.p99")
        if not (stat in ("max", "mean", "min") or percentile_of(stat) is not None):
            raise _bad(
                expr, mpos + len(name) + 1, f"unknown statistic {stat!r} (want pN, max, mean, min)"
            )
        if unit and unit not in TIME_UNITS:
            raise _bad(expr, upos, f"unknown time unit {unit!r} (want us, ms, s)")
        return Gate(expr, tuple(scope), name, stat, op, value * TIME_UNITS[unit or "ms"])
    if name in RATES:
        if stat:
            raise _bad(expr, mpos + len(name), f"{name} takes no statistic")
        if name in ("error_rate", "success_rate"):
            if unit not in ("", "%"):
                raise _bad(expr, upos, f"unknown unit {unit!r} for {name} (want % or a fraction)")
            value = value / 100 if unit == "%" else value
            if value > 1:
                raise _bad(expr, npos, f"{name} cannot be above 100% (a fraction is 0 to 1)")
        elif unit not in ("", "/s", "rps") or (name == "count" and unit):
            raise _bad(expr, upos, f"unknown unit {unit!r} for {name}")
        return Gate(expr, tuple(scope), name, None, op, value)
    raise _bad(
        expr,
        mpos,
        f"unknown metric {name!r} (want one of {', '.join(METRICS)} with a statistic such as "
        f".p99, or one of {', '.join(RATES)})",
    )


def percentile_of(stat: str | None) -> float | None:
    """The percentile of a `pN` statistic (p99 -> 99.0); None if not one, or out of (0, 100]."""
    if stat is None or not re.fullmatch(r"p\d+(\.\d+)?", stat, re.ASCII):
        return None
    p = float(stat[1:])
    return p if 0 < p <= 100 else None


def parse_gates(exprs: list[str] | tuple[str, ...]) -> list[Gate]:
    return [parse_gate(e) for e in exprs]


def _compare(v: float, op: str, t: float) -> bool:
    return {"<": v < t, "<=": v <= t, ">": v > t, ">=": v >= t}[op]


def _fmt(gate: Gate, v: float) -> str:
    if gate.metric in METRICS:
        return f"{v / 1000:.3g}s" if v >= 1000 else f"{v:.3g}ms"
    if gate.metric in ("error_rate", "success_rate"):
        return f"{v * 100:.3g}%"
    if gate.metric == "count":
        return f"{v:.0f}"
    return f"{v:.4g}/s"


def evaluate(gates: list[Gate], metrics: Metrics) -> list[dict[str, Any]]:
    """One row per gate: the measured value (ms for timings), pass or fail."""
    out = []
    for g in gates:
        row: dict[str, Any] = {
            "expr": g.expr,
            "scope": dict(g.scope),
            "metric": g.metric if g.stat is None else f"{g.metric}.{g.stat}",
            "op": g.op,
            "threshold": g.threshold,
            "measured": None,
        }
        found = scoped(metrics, g.scope)
        value: float | None = None
        if found is None or not found[0]["count"]:
            row["measured_text"] = "no requests"
        elif g.stat is not None:
            h = found[1][g.metric]
            if not h.total_count:
                row["measured_text"] = f"no {g.metric} values"
            else:
                if g.stat == "mean":
                    us = hdr.mean(h)
                elif g.stat == "min":
                    us = float(hdr.value_at_percentile(h, 0))
                elif g.stat == "max":
                    us = float(hdr.value_at_percentile(h, 100))
                else:
                    p = percentile_of(g.stat)
                    assert p is not None
                    us = float(hdr.value_at_percentile(h, p))
                value = round(us / 1000, 3)
        else:
            doc = found[0]
            if g.metric == "success_rate":
                value = doc["ok"] / doc["count"]
            elif g.metric == "count":
                value = float(doc["count"])
            else:
                value = doc[g.metric]
            if value is None:
                row["measured_text"] = "not measurable (one request)"
        if value is not None:
            row["measured"] = value
            row["measured_text"] = _fmt(g, value)
        row["pass"] = value is not None and _compare(value, g.op, g.threshold)
        out.append(row)
    return out
