"""The report's data: one document built from a results directory, no traffic.

Every output format (text, markdown, json, html) and the SLO gates read this document, so they
cannot disagree. Its keys are stable and documented in docs/reporting.md; times are
milliseconds (three decimals: histogram precision is microseconds), rates per second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hdrh.histogram import HdrHistogram

from captures import hdr
from captures.errors import UserError
from replay.measure.groups import GroupStats
from replay.measure.metrics import GROUP_DIMS, METRICS, PER_SECOND, GroupKey, Metrics
from replay.measure.resultsdir import Results

REPORT_VERSION = 1
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
STAT_NAMES = ("p50", "p90", "p95", "p99", "p99.9", "max", "mean")
RUN_KEYS = (
    "loadtape_version",
    "start",
    "start_ns",
    "duration_s",
    "mode",
    "target",
    "targets",
    "streams",
    "counts",
    "scheduled_rate",
    "achieved_rate",
    "max_lag_ms",
    "interrupted",
    "machine",
)


def parse_by(spec: str | Sequence[str] | None, metrics: Metrics | None = None) -> tuple[str, ...]:
    """`--by stream,endpoint,model,status` (any of stream, target, endpoint, model, status).
    Default: stream, endpoint, model, plus target when the run had several."""
    if spec is None or spec == "" or spec == []:
        dims = ["stream", "endpoint", "model"]
        if metrics is not None and several_targets(metrics):
            dims.insert(1, "target")
        return tuple(dims)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        d = raw.strip().lower()
        if d == "all":
            continue
        if d not in GROUP_DIMS:
            raise UserError(f"--by {raw!r}: want some of {', '.join(GROUP_DIMS)} (or all)")
        if d not in out:
            out.append(d)
    return tuple(out)


def several_targets(metrics: Metrics) -> bool:
    return len({k[1] for k in metrics.hists}) > 1


def _ms(us: float) -> float:
    return round(us / 1000, 3)


def metric_stats(h: HdrHistogram) -> dict[str, Any]:
    """count, p50 p90 p95 p99 p99.9 max mean (ms); null percentiles for an empty histogram."""
    n = int(h.total_count)
    if not n:
        return {"count": 0, **dict.fromkeys(STAT_NAMES)}
    ps = hdr.percentiles(h, (*PERCENTILES, 100.0))
    doc: dict[str, Any] = {"count": n}
    for name, p in zip(STAT_NAMES, (*PERCENTILES, 100.0), strict=False):
        doc[name] = _ms(ps[p])
    doc["mean"] = _ms(hdr.mean(h))
    return doc


def _rate(n: int, span_s: float, count: int) -> float | None:
    """A rate over a group's span; none for a group of one request (its "span" is that
    request's latency, and 1/latency reads as a throughput it never had)."""
    return round(n / span_s, 3) if span_s > 0 and count >= 2 else None


def group_doc(dims: dict[str, str], hs: dict[str, HdrHistogram], st: GroupStats) -> dict[str, Any]:
    scheduled_span = ((st.last_intended_ns or 0) - (st.first_intended_ns or 0)) / 1e9
    span = ((st.last_end_ns or 0) - (st.first_intended_ns or 0)) / 1e9
    return {
        "key": dims,
        "label": " ".join(f"{k}={v}" for k, v in dims.items() if v) or "all",
        "count": st.count,
        "ok": st.ok,
        "expected": st.expected,
        "failed": st.failed,
        "error_rate": round(st.failed / st.count, 6) if st.count else None,
        "errors": dict(sorted(st.errors.items())),
        "statuses": {str(k): v for k, v in sorted(st.statuses.items())},
        "duration_s": round(span, 6),
        "scheduled_rate": round((st.count - 1) / scheduled_span, 3)
        if st.count > 1 and scheduled_span > 0
        else None,
        "throughput": _rate(st.count, span, st.count),
        "goodput": _rate(st.ok, span, st.count),
        "tokens_per_s": _rate(st.completion_tokens, span, st.count),
        "completion_tokens": st.completion_tokens,
        "prompt_tokens": st.prompt_tokens,
        "reasoning_tokens": st.reasoning_tokens,
        "cached_tokens": st.cached_tokens,
        "finish_reasons": dict(sorted(st.finish_reasons.items())),
        "bytes_in": st.bytes_in,
        "metrics": {m: metric_stats(hs[m]) for m in METRICS},
    }


def groups(metrics: Metrics, by: Sequence[str]) -> dict[tuple[str, ...], list[GroupKey]]:
    """The run's group keys, projected on `by` (several keys may fold into one)."""
    idx = [GROUP_DIMS.index(d) for d in by]
    out: dict[tuple[str, ...], list[GroupKey]] = {}
    for k in sorted(metrics.hists):
        out.setdefault(tuple(k[i] for i in idx), []).append(k)
    return out


def over_time(metrics: Metrics) -> dict[str, list[dict[str, Any]]]:
    """Per series (stream, or stream@target), per second of the run: completions by outcome,
    requests scheduled and sent in that second, in flight at its end, and latency / TTFT /
    inter-token percentiles of the requests completed in it."""
    metrics.seal_intervals()
    out: dict[str, list[dict[str, Any]]] = {}
    for series in sorted(set(metrics.per_second) | set(metrics.intervals)):
        secs = sorted(set(metrics.per_second.get(series, {})) | set(metrics.intervals[series]))
        if secs:
            secs = list(range(secs[0], secs[-1] + 1))  # every second, quiet ones too
        rows = []
        in_flight = 0
        for sec in secs:
            counts = metrics.per_second.get(series, {}).get(sec, [0] * len(PER_SECOND))
            ok, exp, failed, scheduled, sent = counts
            in_flight += sent - ok - exp - failed
            row: dict[str, Any] = {
                "t": sec,
                "ok": ok,
                "expected": exp,
                "failed": failed,
                "scheduled": scheduled,
                "sent": sent,
                "in_flight": max(in_flight, 0),
            }
            blobs = metrics.intervals[series].get(sec, {})
            for m in ("latency", "ttft", "itl"):
                h = hdr.decode(blobs[m]) if m in blobs else None
                if h is not None and h.total_count:
                    ps = hdr.percentiles(h, (50.0, 99.0))
                    row[f"{m}_p50"], row[f"{m}_p99"] = _ms(ps[50.0]), _ms(ps[99.0])
                else:
                    row[f"{m}_p50"] = row[f"{m}_p99"] = None
            rows.append(row)
        out[series] = rows
    return out


def run_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The report's `run`: run.json's RUN_KEYS and the settings the notes read."""
    run = {k: doc.get(k) for k in RUN_KEYS}
    settings = doc.get("settings") or {}
    run["sessions"] = settings.get("sessions")
    run["send_slack_s"] = settings.get("send_slack_s") or 0.0
    run["rt_priority"] = settings.get("rt_priority") or 0
    return run


def build(results: Results, by: str | Sequence[str] | None = None) -> dict[str, Any]:
    metrics = results.metrics
    dims = parse_by(by, metrics)
    docs = []
    for proj, keys in groups(metrics, dims).items():
        hs, st = metrics.merged(keys)
        docs.append(group_doc(dict(zip(dims, proj, strict=True)), hs, st))
    hs, st = metrics.total()
    return {
        "format": "loadtape-report",
        "version": REPORT_VERSION,
        "results": str(results.path),
        "run": run_view(results.run),
        "by": list(dims),
        "groups": docs,
        "total": group_doc({}, hs, st),
        "out_of_range": dict(sorted(metrics.out_of_range.items())),
        "over_time": over_time(metrics),
    }


def scoped(
    metrics: Metrics, where: Sequence[tuple[str, str]]
) -> tuple[dict[str, Any], dict[str, HdrHistogram]] | None:
    """One group over every raw group matching all (dimension, value) pairs (all groups when
    none): its document and merged histograms; None when nothing matches."""
    idx = [(GROUP_DIMS.index(d), v) for d, v in where]
    keys = [k for k in metrics.hists if all(k[i] == v for i, v in idx)]
    if not keys:
        return None
    hs, st = metrics.merged(keys)
    return group_doc(dict(where), hs, st), hs
